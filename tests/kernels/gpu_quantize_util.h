// tests/kernels/gpu_quantize_util.h — helpers of the NVFP4 GPU tests (tests/kernels/gpu_quantize.cpp,
// bench/dev/gpu_nvfp4_variants.cpp): random inputs, the raw launcher into poisoned outputs, and
// the check that a list of kernel variants (tuning knobs, kernels/common/tuning.h) each give the
// CPU reference's bytes and each really ran.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "kernels/bench_hooks.h"
#include "kernels/common/cuda_check.h"
#include "kernels/cuda_kernels.h"
#include "kernels/quantize.h"
#include "tests/common/test_util.h"

namespace fp4qat::test::gpu_quantize {

using fp4qat::Blocks;
using fp4qat::test::bytes_equal;
namespace ck = fp4qat::cuda_kernels;

inline at::Tensor random_input(const std::vector<int64_t>& dims, at::ScalarType dt, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor x = at::randn(dims, gen);
  // Per-row magnitude spread over many binades, so that block scales vary widely.
  std::vector<int64_t> rows = dims;
  rows.back() = 1;
  x = x * at::exp(at::randn(rows, gen) * 2.0);
  return x.to(dt);
}

inline ck::InType in_type(at::ScalarType t) {
  return t == at::kFloat ? ck::InType::F32 : (t == at::kBFloat16 ? ck::InType::BF16 : ck::InType::F16);
}

// Runs the raw launcher into outputs pre-filled with garbage; returns {codes, scales, fake, s_dec} on CPU.
inline std::vector<at::Tensor> run_poisoned(const at::Tensor& x_cpu, Blocks blocks, const at::Tensor* amax_cpu) {
  const at::Tensor x = x_cpu.cuda().contiguous();
  const int64_t E = x.dim() == 3 ? x.size(0) : 1, N = x.size(-2), K = x.size(-1);
  auto u8 = at::TensorOptions().dtype(at::kByte).device(at::kCUDA);
  at::Tensor codes = at::full({E, N, K / 2}, 0xAB, u8);
  at::Tensor scales = at::full({E, N, K / 16}, 0xCD, u8);
  at::Tensor fake = at::full({E, N, K}, 0x7FC1, at::TensorOptions().dtype(at::kShort).device(at::kCUDA));
  at::Tensor s_dec = at::full({E}, std::nanf(""), at::TensorOptions().device(at::kCUDA));
  at::Tensor ws = at::full({static_cast<int64_t>(ck::nvfp4_workspace_bytes(E))}, 0x5A, u8);
  at::Tensor given;
  if (amax_cpu) given = amax_cpu->reshape({E}).cuda();
  ck::Nvfp4Args a;
  a.x = x.data_ptr();
  a.type = in_type(x.scalar_type());
  a.E = E;
  a.N = N;
  a.K = K;
  a.two_d = blocks == Blocks::k2D;
  a.given_amax = amax_cpu ? given.data_ptr<float>() : nullptr;
  a.codes = codes.data_ptr<uint8_t>();
  a.scales = scales.data_ptr<uint8_t>();
  a.fake = reinterpret_cast<uint16_t*>(fake.data_ptr());
  a.s_dec = s_dec.data_ptr<float>();
  a.workspace = ws.data_ptr();
  ck::nvfp4_quantize(a, at::cuda::getCurrentCUDAStream().stream());
  FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
  return {codes.cpu(), scales.cpu(), fake.cpu().view(at::kBFloat16), s_dec.cpu()};
}

// One set of knobs: FP4QAT_NVFP4_KERNEL, _THREADS, _L2HINT, _UNROLL, _SLOT_BYTES, _SLOTS.
struct Variant {
  const char* kernel;
  const char* threads;
  const char* hint;
  const char* unroll;
  const char* slot = "32768";  // staged2: bytes per slot (small: many slices per expert, waits)
  const char* slots = "2";     // staged2: slots per CTA
};

// Every variant gives the reference's bytes on shapes with 1D / 2D blocks, amax computed / given,
// and each of them ran at least once (a variant that never runs would test nothing).
inline void check_nvfp4_variants(const std::vector<Variant>& variants) {
  const std::vector<std::vector<int64_t>> shapes = {
      {7, 96}, {1, 129, 2048}, {160, 17, 64}, {4, 768, 2048}, {2, 31, 4096}};
  uint64_t seed = 900;
  for (const auto& v : variants) {
    const fp4qat::tuning::ScopedNvfp4Tuning knobs(fp4qat::tuning::Nvfp4Tuning{}
                                                      .with("FP4QAT_NVFP4_KERNEL", v.kernel)
                                                      .with("FP4QAT_NVFP4_THREADS", v.threads)
                                                      .with("FP4QAT_NVFP4_L2HINT", v.hint)
                                                      .with("FP4QAT_NVFP4_UNROLL", v.unroll)
                                                      .with("FP4QAT_NVFP4_SLOT_BYTES", v.slot)
                                                      .with("FP4QAT_NVFP4_SLOTS", v.slots));
    int ran = 0;  // launches that used the forced kernel (a variant that never runs would test nothing)
    for (const auto& dims : shapes)
      for (auto blocks : {Blocks::k1D, Blocks::k2D})
        for (bool given : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << v.kernel << " threads " << v.threads << " hint " << v.hint << " unroll " << v.unroll
                       << " slot " << v.slot << " x " << v.slots << " " << at::IntArrayRef(dims) << " "
                       << fp4qat::to_string(blocks) << (given ? " given-amax" : ""));
          const at::Tensor x = random_input(dims, at::kBFloat16, seed++);
          at::Tensor amax;
          if (given) amax = fp4qat::global_amax(x) * 1.5f;
          const auto want = fp4qat::nvfp4_quantize(x, blocks, given ? std::optional<at::Tensor>(amax) : std::nullopt);
          const auto want_fake =
              fp4qat::nvfp4_fake_quantize(x, blocks, given ? std::optional<at::Tensor>(amax) : std::nullopt);
          const auto got = run_poisoned(x, blocks, given ? &amax : nullptr);
          ran += std::string(ck::nvfp4_last_kernel()) == v.kernel;
          const int64_t E = dims.size() == 3 ? dims[0] : 1, N = dims[dims.size() - 2];
          EXPECT_TRUE(bytes_equal(got[0], want.codes.reshape({E, N, -1})));
          EXPECT_TRUE(bytes_equal(got[1], want.scales.view(at::kByte).reshape({E, N, -1})));
          EXPECT_TRUE(bytes_equal(got[2], want_fake.values.reshape({E, N, -1})));
          EXPECT_TRUE(bytes_equal(got[3], want.s_dec.reshape({E})));
        }
    EXPECT_GT(ran, 0) << v.kernel << " never ran (threads " << v.threads << ", slot " << v.slot << " x " << v.slots
                      << ")";
  }
}

}  // namespace fp4qat::test::gpu_quantize
