// tests/kernels/gpu_quantize.cpp — (label gpu) every CUDA kernel against its CPU reference, byte
// for byte, on random inputs of many shapes and on ../shared/vectors. Outputs are poisoned
// before each run; a CUDA-graph capture proves the quantize path never synchronises the host.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "kernels/bench_hooks.h"
#include "kernels/common/cuda_check.h"
#include "kernels/cuda_kernels.h"
#include "kernels/quantize.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "tests/kernels/gpu_quantize_util.h"

using fp4qat::Blocks;
using fp4qat::test::bytes_equal;
using namespace fp4qat::test::gpu_quantize;
namespace ck = fp4qat::cuda_kernels;

namespace {

// Shapes: rows not a multiple of 16, one row, 3-D with E = 1 and E = 160, K up to 16384.
const std::vector<std::vector<int64_t>> kShapes = {
    {1, 16},     {1, 32},    {7, 96},        {17, 64},     {33, 160},     {128, 256},     {255, 512},    {3, 16384},
    {40, 16384}, {1, 5, 64}, {1, 129, 2048}, {160, 8, 32}, {160, 17, 64}, {4, 768, 2048}, {2, 31, 4096},
};

}  // namespace

TEST(GpuQuantize, NVFP4MatchesReferenceOnRandomShapes) {
  FP4QAT_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const auto& dims : kShapes)
    for (auto dt : {at::kBFloat16, at::kFloat, at::kHalf})
      for (auto blocks : {Blocks::k1D, Blocks::k2D})
        for (float factor : {0.0f, 1.5f, 0.25f}) {
          const bool given = factor > 0;
          SCOPED_TRACE(::testing::Message() << at::IntArrayRef(dims) << " " << dt << " " << fp4qat::to_string(blocks)
                                            << (given ? " given-amax x" : "") << (given ? factor : 0.0f));
          const at::Tensor x = random_input(dims, dt, seed++);
          // A given amax: larger than the tensor's own (a gated pair's shared amax), or smaller (the
          // flashinfer_static profile's static activation amax: blocks past it saturate).
          at::Tensor amax;
          if (given) amax = fp4qat::global_amax(x) * factor;
          const auto want = fp4qat::nvfp4_quantize(x, blocks, given ? std::optional<at::Tensor>(amax) : std::nullopt);
          const auto want_fake =
              fp4qat::nvfp4_fake_quantize(x, blocks, given ? std::optional<at::Tensor>(amax) : std::nullopt);
          const auto got = run_poisoned(x, blocks, given ? &amax : nullptr);
          const int64_t E = dims.size() == 3 ? dims[0] : 1;
          ASSERT_TRUE(bytes_equal(got[0], want.codes.reshape({E, dims[dims.size() - 2], -1})));
          ASSERT_TRUE(bytes_equal(got[1], want.scales.view(at::kByte).reshape({E, dims[dims.size() - 2], -1})));
          ASSERT_TRUE(bytes_equal(got[2], want_fake.values.reshape({E, dims[dims.size() - 2], -1})));
          ASSERT_TRUE(bytes_equal(got[3], want.s_dec.reshape({E})));
          // The public API on a CUDA tensor gives the same bytes.
          const auto api =
              fp4qat::nvfp4_quantize(x.cuda(), blocks, given ? std::optional<at::Tensor>(amax.cuda()) : std::nullopt);
          ASSERT_TRUE(bytes_equal(api.codes, want.codes));
          ASSERT_TRUE(bytes_equal(api.scales, want.scales));
          ASSERT_TRUE(bytes_equal(api.s_dec, want.s_dec));
        }
}

// Every kernel variant the tuning knobs select that kernels/ compiles (bench/RESULTS.md) gives
// the reference's bytes; the benchmark-only ones are checked in bench/dev/gpu_nvfp4_variants.cpp.
TEST(GpuQuantize, NVFP4KernelVariantsMatchReference) {
  FP4QAT_REQUIRE_GPU();
  check_nvfp4_variants({{"fused", "256", "0", "1"},
                        {"staged2", "256", "0", "1"},
                        {"staged2", "512", "0", "1", "98304"},
                        {"staged2", "512", "0", "1", "1024"},
                        {"park", "256", "0", "1", "49152"},
                        {"park", "256", "0", "1", "4096"}});
}

TEST(GpuQuantize, AmaxDequantizeAndMXFP8MatchReference) {
  FP4QAT_REQUIRE_GPU();
  uint64_t seed = 900;
  std::vector<std::vector<int64_t>> shapes = kShapes;
  shapes.push_back({3, 4096, 2048});  // 25M elements: more blocks than one sweep of the grid
  for (const auto& dims : shapes)
    for (auto dt : {at::kBFloat16, at::kFloat, at::kHalf}) {
      SCOPED_TRACE(::testing::Message() << at::IntArrayRef(dims) << " " << dt);
      const at::Tensor x = random_input(dims, dt, seed++);
      ASSERT_TRUE(bytes_equal(fp4qat::global_amax(x.cuda()), fp4qat::global_amax(x)));
      const auto q = fp4qat::nvfp4_quantize(x, Blocks::k1D);
      fp4qat::NVFP4Tensor qg{q.codes.cuda(), q.scales.cuda(), q.s_dec.cuda(), q.blocks};
      for (auto out : {at::kFloat, at::kBFloat16})
        ASSERT_TRUE(bytes_equal(fp4qat::nvfp4_dequantize(qg, out), fp4qat::nvfp4_dequantize(q, out)));
      if (dims.back() % 32) continue;
      const auto m = fp4qat::mxfp8_quantize(x);
      // One block a thread an iteration (the benchmark's variant), then the default (two for 16-bit).
      for (int v : {1}) {
        SCOPED_TRACE(::testing::Message() << "set_mxfp8_units " << v);
        fp4qat::cuda_kernels::set_mxfp8_units(v);
        const auto mv = fp4qat::mxfp8_quantize(x.cuda());
        fp4qat::cuda_kernels::set_mxfp8_units(0);
        ASSERT_TRUE(bytes_equal(mv.data, m.data));
        ASSERT_TRUE(bytes_equal(mv.scales, m.scales));
      }
      const auto mg = fp4qat::mxfp8_quantize(x.cuda());
      ASSERT_TRUE(bytes_equal(mg.data, m.data));
      ASSERT_TRUE(bytes_equal(mg.scales, m.scales));
      for (auto out : {at::kFloat, at::kBFloat16})
        ASSERT_TRUE(bytes_equal(fp4qat::mxfp8_dequantize(mg, out), fp4qat::mxfp8_dequantize(m, out)));
    }
}

// The MXFP8 subnormal-scale rule on the GPU: blocks whose amax / 448 is at, below or just above
// 2^-127 (code 0 with scale 2^-127, or code 1), amax-0 blocks holding -0.0, and normal blocks.
TEST(GpuQuantize, MXFP8SubnormalScalesMatchReference) {
  FP4QAT_REQUIRE_GPU();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
  const at::Tensor base = at::randn({64, 256}, gen);
  // Row r scaled by 2^-(100 + r): from normal scales through subnormal ones to all-underflow.
  const at::Tensor pw = at::pow(2.0, -(at::arange(64, at::kDouble) + 100.0)).to(at::kFloat).unsqueeze(1);
  at::Tensor x = base * pw;
  x.index_put_({at::indexing::Slice(60, 64)}, -0.0);
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    const at::Tensor xd = x.to(dt);
    const auto m = fp4qat::mxfp8_quantize(xd);
    const auto mg = fp4qat::mxfp8_quantize(xd.cuda());
    ASSERT_TRUE(bytes_equal(mg.data, m.data)) << dt;
    ASSERT_TRUE(bytes_equal(mg.scales, m.scales)) << dt;
    EXPECT_GT((m.scales == 0).sum().item<int64_t>(), 64) << "the case must reach code 0";
  }
}

TEST(GpuQuantize, SharedVectorsOnGpu) {
  FP4QAT_REQUIRE_GPU();
  int n = 0;
  for (const auto& path : fp4qat::test::vector_files()) {
    fp4qat::st::Reader r(path);
    SCOPED_TRACE(path);
    if (r.contains("input")) {
      const at::Tensor x = r.view("input").cuda();
      for (auto [b, tag] : {std::pair{Blocks::k1D, "nvfp4_1d"}, std::pair{Blocks::k2D, "nvfp4_2d"}}) {
        const auto q = fp4qat::nvfp4_quantize(x, b);
        EXPECT_TRUE(bytes_equal(q.codes, r.view(std::string(tag) + ".weight")));
        EXPECT_TRUE(bytes_equal(q.scales, r.view(std::string(tag) + ".weight_scale")));
        EXPECT_TRUE(bytes_equal(q.s_dec, r.view(std::string(tag) + ".weight_scale_2")));
      }
      if (r.contains("mxfp8.weight")) {
        const auto m = fp4qat::mxfp8_quantize(x);
        EXPECT_TRUE(bytes_equal(m.data, r.view("mxfp8.weight")));
        EXPECT_TRUE(bytes_equal(m.scales, r.view("mxfp8.weight_scale_inv")));
      }
      ++n;
    } else if (r.contains("gate")) {
      const at::Tensor g = r.view("gate").cuda(), u = r.view("up").cuda();
      const at::Tensor a = at::maximum(fp4qat::global_amax(g), fp4qat::global_amax(u));
      const auto qg = fp4qat::nvfp4_quantize(g, Blocks::k2D, a);
      EXPECT_TRUE(bytes_equal(qg.codes, r.view("gate.nvfp4_2d.weight")));
      EXPECT_TRUE(bytes_equal(qg.s_dec, r.view("gate.nvfp4_2d.weight_scale_2")));
      ++n;
    }
  }
  EXPECT_GE(n, 16);
}

TEST(GpuQuantize, QuantizeNeverSynchronisesTheHost) {
  // Capturing into a CUDA graph fails on any host synchronisation inside the captured calls.
  FP4QAT_REQUIRE_GPU();
  const at::Tensor x = random_input({8, 64, 256}, at::kBFloat16, 7).cuda();
  const auto want = fp4qat::nvfp4_quantize(x, Blocks::k2D);
  c10::cuda::CUDAStreamGuard sg(c10::cuda::getStreamFromPool());
  at::cuda::CUDAGraph graph;
  const auto want1 = fp4qat::nvfp4_quantize(x.cpu(), Blocks::k1D);
  fp4qat::NVFP4Tensor q, q1;
  fp4qat::NVFP4FakeQuant f;
  graph.capture_begin();
  q = fp4qat::nvfp4_quantize(x, Blocks::k2D);
  q1 = fp4qat::nvfp4_quantize(x, Blocks::k1D);  // the default one-read kernel's path (fused while capturing)
  f = fp4qat::nvfp4_fake_quantize(x, Blocks::k1D, fp4qat::global_amax(x));
  graph.capture_end();
  graph.replay();
  FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bytes_equal(q.codes, want.codes));
  EXPECT_TRUE(bytes_equal(q.scales, want.scales));
  EXPECT_TRUE(bytes_equal(q1.codes, want1.codes));
  EXPECT_TRUE(bytes_equal(q1.scales, want1.scales));
  EXPECT_TRUE(bytes_equal(f.values, fp4qat::nvfp4_fake_quantize(x.cpu(), Blocks::k1D).values));
}

// Quantizations on two streams at once (the trainer's forward and an export's side stream): the
// persistent kernels spin on each other's CTAs only within one launch, so neither may wait for
// CTAs that the other keeps off the device. Repeated, all results equal the reference.
TEST(GpuQuantize, ConcurrentQuantizationsOnTwoStreams) {
  FP4QAT_REQUIRE_GPU();
  // 1D (staged2 on sm_90) and 2D (staged on sm_90): one-read kernels whose CTAs wait for each
  // other, launched cooperatively, so two of them on two streams cannot starve each other.
  for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
    SCOPED_TRACE(fp4qat::to_string(blocks));
    const at::Tensor a = random_input({16, 768, 2048}, at::kBFloat16, 11).cuda();
    const at::Tensor b = random_input({64, 256, 768}, at::kBFloat16, 12).cuda();
    const auto want_a = fp4qat::nvfp4_quantize(a.cpu(), blocks), want_b = fp4qat::nvfp4_quantize(b.cpu(), blocks);
    const c10::cuda::CUDAStream s1 = c10::cuda::getStreamFromPool(), s2 = c10::cuda::getStreamFromPool();
    std::vector<fp4qat::NVFP4Tensor> qa, qb;
    for (int i = 0; i < 8; ++i) {
      {
        c10::cuda::CUDAStreamGuard g(s1);
        qa.push_back(fp4qat::nvfp4_quantize(a, blocks));
      }
      if (blocks == Blocks::k2D && at::cuda::getCurrentDeviceProperties()->major == 9)
        EXPECT_STREQ(ck::nvfp4_last_kernel(), "staged");  // the 2D default this test is about
      {
        c10::cuda::CUDAStreamGuard g(s2);
        qb.push_back(fp4qat::nvfp4_quantize(b, blocks));
      }
    }
    FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < 8; ++i) {
      EXPECT_TRUE(bytes_equal(qa[i].codes, want_a.codes));
      EXPECT_TRUE(bytes_equal(qa[i].scales, want_a.scales));
      EXPECT_TRUE(bytes_equal(qb[i].codes, want_b.codes));
      EXPECT_TRUE(bytes_equal(qb[i].s_dec, want_b.s_dec));
    }
  }
}

TEST(GpuQuantize, CliQuantizeOnCudaEqualsCpu) {
  FP4QAT_REQUIRE_GPU();
  fp4qat::test::TempDir d;
  ASSERT_EQ(fp4qat::test::run_fp4qat({"sample", "--out", d.file("in.safetensors"), "--experts", "3"}).exit_code, 0);
  for (std::string dev : {"cpu", "cuda"}) {
    const auto r = fp4qat::test::run_fp4qat({"quantize", "--in", d.file("in.safetensors"), "--out",
                                             d.file(dev + ".safetensors"), "--blocks", "2d", "--device", dev});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  EXPECT_EQ(fp4qat::test::read_bytes(d.file("cpu.safetensors")), fp4qat::test::read_bytes(d.file("cuda.safetensors")));
}

// The activations of a grouped linear quantized in place (nvfp4_quantize_rows): the raw launcher,
// outputs poisoned first, equals the CPU reference (each group's row slice quantized alone) byte
// for byte, and so does the at::Tensor API — groups with 0, 1, 15, 17 and many rows, bf16 / f16 /
// f32 inputs, K from 16 to 4096; by the default path (on sm_90+ the one-read staged2 kernel over
// the groups' slices, several slices a group) and by the two-pass kernels (FP4QAT_NVFP4_KERNEL=
// fused) and by the register-slot variant (park, bf16); a group with more slices than the
// one-read kernel holds at once (its fallback).
TEST(GpuQuantize, NVFP4RowGroupsMatchReference) {
  FP4QAT_REQUIRE_GPU();
  struct Case {
    std::vector<int64_t> counts;
    std::vector<int64_t> Ks;
    std::vector<at::ScalarType> types;
  };
  const std::vector<at::ScalarType> all = {at::kBFloat16, at::kHalf, at::kFloat};
  const std::vector<Case> cases = {
      {{1}, {16, 96, 2048, 4096}, all},
      {{0, 5, 0, 17}, {16, 96, 2048, 4096}, all},
      {{15, 1, 0, 300, 64}, {16, 96, 2048, 4096}, all},
      {{0, 0, 3}, {16, 96, 2048, 4096}, all},
      {{40, 0, 1, 300, 64, 0, 129, 77}, {768, 2048}, all},  // 2048: 8-row bf16 slices, 38 in a group
      {{3, 6000, 2}, {4096}, {at::kBFloat16}},              // 1500 4-row slices in one group
  };
  int64_t seed = 100;
  for (const char* kernel : {"", "fused", "park"})
    for (const auto& c : cases)
      for (int64_t K : c.Ks)
        for (auto dt : c.types) {
          const fp4qat::tuning::ScopedNvfp4Tuning knobs(
              fp4qat::tuning::Nvfp4Tuning{}.with("FP4QAT_NVFP4_KERNEL", kernel));
          std::vector<int64_t> off = {0};
          for (int64_t n : c.counts) off.push_back(off.back() + n);
          const int64_t T = off.back(), G = static_cast<int64_t>(c.counts.size());
          SCOPED_TRACE(::testing::Message() << "kernel '" << kernel << "' T " << T << " K " << K << " " << dt);
          const at::Tensor x = random_input({T, K}, dt, ++seed);
          const fp4qat::NVFP4Operand want = fp4qat::nvfp4_quantize_rows(x, off, /*packed=*/true);  // CPU reference
          // The raw launcher into poisoned outputs and workspace.
          const at::Tensor xd = x.cuda();
          const int64_t R = ck::nvfp4_rows_slice_rows(in_type(dt), K, /*fake=*/true);
          std::vector<int32_t> table(2 * (G + 1));
          const ck::RowsTable rt = ck::nvfp4_rows_table(off.data(), G, R, table.data());
          const at::Tensor table_d = at::tensor(table, at::kInt).cuda();
          auto u8 = at::TensorOptions().dtype(at::kByte).device(at::kCUDA);
          at::Tensor codes = at::full({T, K / 2}, 0xAB, u8), scales = at::full({T, K / 16}, 0xCD, u8);
          at::Tensor fake = at::full({T, K}, 0x7FC1, at::TensorOptions().dtype(at::kShort).device(at::kCUDA));
          at::Tensor s_dec = at::full({G}, std::nanf(""), at::TensorOptions().device(at::kCUDA));
          at::Tensor ws = at::full({static_cast<int64_t>(ck::nvfp4_workspace_bytes(G))}, 0x5A, u8);
          ck::nvfp4_quantize_rows(xd.data_ptr(), in_type(dt), T, K, table_d.data_ptr<int32_t>(), G, R, rt.total_slices,
                                  rt.max_slices, ws.data_ptr(), codes.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(),
                                  reinterpret_cast<uint16_t*>(fake.data_ptr()), s_dec.data_ptr<float>(),
                                  at::cuda::getCurrentCUDAStream().stream());
          FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
          EXPECT_TRUE(bytes_equal(codes, want.packed.codes));
          EXPECT_TRUE(bytes_equal(scales, want.packed.scales.view(at::kByte)));
          EXPECT_TRUE(bytes_equal(fake.view(at::kBFloat16), want.values));
          EXPECT_TRUE(bytes_equal(s_dec, want.packed.s_dec));
          const fp4qat::NVFP4Operand api = fp4qat::nvfp4_quantize_rows(xd, off, /*packed=*/false);
          EXPECT_TRUE(bytes_equal(api.values, want.values));
          EXPECT_TRUE(bytes_equal(api.packed.s_dec, want.packed.s_dec));
        }
}

// The one-read kernels' defaults keep two CTAs a SM (their shared memory is sized for two; a
// register count that allows only one halves the slices in flight: bench/RESULTS.md session 25
// found max6's staged2 at 96 registers a thread, one CTA a SM at 512 threads, 0.76 -> 1.03 ms on
// the MoE layer). On an expert stack shaped as a Qwen3-30B-A3B layer's gate/up weights: packed
// max6 (staged2, 512 x 2 slots), max6 with fake values (park), Four Over Six (staged2, 256 x 2 slots
// of 48 KB: two fit a SM's shared memory).
TEST(GpuQuantize, OneReadDefaultsKeepTwoCtasASm) {
  FP4QAT_REQUIRE_GPU();
  const at::Tensor x = random_input({4, 1536, 2048}, at::kBFloat16, 4900).cuda();
  const fp4qat::NVFP4Rule four{true, 256.0f, false, false};
  (void)fp4qat::nvfp4_quantize(x, Blocks::k1D);
  EXPECT_EQ(std::string(ck::nvfp4_last_kernel()), "staged2");
  EXPECT_EQ(ck::nvfp4_last_ctas_per_sm(), 2) << "max6 packed";
  (void)fp4qat::nvfp4_quantize_and_fake(x, Blocks::k1D);
  EXPECT_EQ(std::string(ck::nvfp4_last_kernel()), "park");
  EXPECT_EQ(ck::nvfp4_last_ctas_per_sm(), 2) << "max6 with fake values";
  (void)fp4qat::nvfp4_quantize_and_fake(x, Blocks::k1D, std::nullopt, four);
  EXPECT_EQ(std::string(ck::nvfp4_last_kernel()), "staged2-4over6");
  EXPECT_EQ(ck::nvfp4_last_ctas_per_sm(), 2) << "Four Over Six";
}
