// tests/kernels/gpu_quantize_rules.cpp — (label gpu) the 2026 NVFP4 rules on the GPU
// (kernels/nvfp4/quantize_rules.cu) against the CPU reference, byte for byte: Four Over Six (M 256
// and 448, MAE and MSE, 1x16 and 16x16) and row-scaled global scales (with and without Four Over
// Six), on random shapes (rows not a multiple of 16, stacked experts), three input dtypes, with and
// without a given amax; TransformerEngine's vectors (tests/data/vectors/te); row groups; the
// per-row amax and dequantization.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "io/safetensors.h"
#include "kernels/bench_hooks.h"
#include "kernels/common/tuning.h"
#include "kernels/quantize.h"
#include "tests/common/test_util.h"
#include "tests/kernels/gpu_quantize_util.h"

using fp4qat::Blocks;
using fp4qat::NVFP4Rule;
using fp4qat::test::bytes_equal;
using namespace fp4qat::test::gpu_quantize;

namespace {

const std::vector<std::vector<int64_t>> kShapes = {
    {1, 16}, {7, 96}, {17, 64}, {33, 160}, {255, 512}, {3, 16384}, {1, 5, 64}, {160, 17, 64}, {4, 300, 2048},
};

// Every byte of an NVFP4 operand (codes, scales, S_dec, fake values) equals the reference's; the
// failure names the part that differs.
::testing::AssertionResult same_operand(const fp4qat::NVFP4Operand& got, const fp4qat::NVFP4Operand& want) {
  for (const auto& [name, g, w] : {std::tuple{"codes", &got.packed.codes, &want.packed.codes},
                                   std::tuple{"scales", &got.packed.scales, &want.packed.scales},
                                   std::tuple{"s_dec", &got.packed.s_dec, &want.packed.s_dec},
                                   std::tuple{"values", &got.values, &want.values}}) {
    auto r = bytes_equal(*g, *w);
    if (!r) return r << " (" << name << ")";
  }
  return ::testing::AssertionSuccess();
}

std::vector<NVFP4Rule> rules() {
  std::vector<NVFP4Rule> out{{false, 256.0f, false, true}};
  for (bool rows : {false, true})
    for (float m : {256.0f, 448.0f})
      for (bool mse : {false, true}) out.push_back({true, m, mse, rows});
  return out;
}

}  // namespace

// Under the default kernels (Four Over Six with one amax an expert: the one-read kernels' Four Over
// Six forms where they apply, staged2 for 1x16 blocks, staged for 16x16 tiles) and with
// FP4QAT_NVFP4_KERNEL=fused (the rule kernels with tables).
TEST(GpuQuantizeRules, MatchReferenceOnRandomShapes) {
  FP4QAT_REQUIRE_GPU();
  uint64_t seed = 4600;
  int cases = 0, one_read = 0, one_read_2d = 0;
  for (const char* forced : {"", "fused"}) {
    const fp4qat::tuning::ScopedNvfp4Tuning tu(fp4qat::tuning::Nvfp4Tuning{}.with("FP4QAT_NVFP4_KERNEL", forced));
    for (const auto& dims : kShapes)
      for (auto dt : {at::kBFloat16, at::kFloat, at::kHalf})
        for (const auto& rule : rules())
          for (auto blocks : {Blocks::k1D, Blocks::k2D})
            for (bool given : {false, true}) {
              if (rule.row_scaled && blocks == Blocks::k2D) continue;
              SCOPED_TRACE(::testing::Message() << at::IntArrayRef(dims) << " " << dt << " " << fp4qat::describe(rule)
                                                << " " << fp4qat::to_string(blocks) << (given ? " given-amax" : "")
                                                << " kernel '" << forced << "'");
              const at::Tensor x = random_input(dims, dt, seed++);
              std::optional<at::Tensor> amax;
              if (given) amax = (rule.row_scaled ? fp4qat::row_amax(x) : fp4qat::global_amax(x)) * 1.5f;
              const auto want = fp4qat::nvfp4_quantize_and_fake(x, blocks, amax, rule);
              std::optional<at::Tensor> amax_d;
              if (amax) amax_d = amax->cuda();
              const auto got = fp4qat::nvfp4_quantize_and_fake(x.cuda(), blocks, amax_d, rule);
              ASSERT_TRUE(same_operand(got, want));
              const std::string kernel = ck::nvfp4_last_kernel();
              const bool one_amax_four = rule.four_over_six && !rule.row_scaled && *forced == '\0';
              if (kernel == "staged2-4over6") {
                EXPECT_TRUE(one_amax_four && blocks == Blocks::k1D);
                ++one_read;
              } else if (kernel == "staged-4over6") {
                EXPECT_TRUE(one_amax_four && blocks == Blocks::k2D && !given);
                ++one_read_2d;
              } else {
                EXPECT_TRUE(kernel.rfind("rule-", 0) == 0) << kernel;
                // Only a row wider than a slot (staged2: 48 KB; staged: 16 rows in 88 KB) keeps the
                // default Four Over Six off the one-read kernels (and, in 2D, a given amax).
                if (one_amax_four && blocks == Blocks::k1D) {
                  EXPECT_GT(dims.back() * x.element_size(), 49152) << kernel;
                }
                if (one_amax_four && blocks == Blocks::k2D && !given) {
                  EXPECT_GT(dims.back() * x.element_size() * 16, 88 * 1024) << kernel;
                }
              }
              // Dequantization (per-row S_dec where row-scaled) agrees too.
              ASSERT_TRUE(bytes_equal(fp4qat::nvfp4_dequantize(got.packed, at::kFloat),
                                      fp4qat::nvfp4_dequantize(want.packed, at::kFloat)));
              ++cases;
            }
  }
  EXPECT_GT(cases, 1000);
  EXPECT_GT(one_read, 100);
  EXPECT_GT(one_read_2d, 50);
}

TEST(GpuQuantizeRules, TransformerEngineVectorsOnGpu) {
  FP4QAT_REQUIRE_GPU();
  int n = 0;
  for (const auto& path : fp4qat::test::vector_files("te")) {
    fp4qat::st::Reader r(path);
    SCOPED_TRACE(path);
    const at::Tensor x = r.view("input").cuda();
    for (const auto& t : r.tensors()) {
      const std::string& name = t.name;
      if (name.size() < 8 || name.compare(name.size() - 7, 7, ".weight") != 0 || name == "input") continue;
      const std::string v = name.substr(0, name.size() - 7);
      if (v == "nvfp4_1d" || v == "nvfp4_2d") continue;  // the standard rule: gpu_quantize.cpp
      SCOPED_TRACE(v);
      NVFP4Rule rule;
      rule.four_over_six = v.find("4over6") != std::string::npos;
      rule.row_scaled = v.find("rows") != std::string::npos;
      rule.e4m3_max = v.find("_448_") != std::string::npos ? 448.0f : 256.0f;
      rule.mse = v.find("_mse") != std::string::npos;
      const auto q =
          fp4qat::nvfp4_quantize(x, v.find("_2d") != std::string::npos ? Blocks::k2D : Blocks::k1D, std::nullopt, rule);
      EXPECT_TRUE(bytes_equal(q.codes, r.view(v + ".weight")));
      EXPECT_TRUE(bytes_equal(q.scales, r.view(v + ".weight_scale")));
      EXPECT_TRUE(bytes_equal(q.s_dec, r.view(v + ".weight_scale_2")));
      ++n;
    }
  }
  EXPECT_GE(n, 100);
}

TEST(GpuQuantizeRules, RowGroupsAndRowAmax) {
  FP4QAT_REQUIRE_GPU();
  uint64_t seed = 4700;
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (const std::vector<int64_t>& off : {std::vector<int64_t>{0, 0, 5, 5, 300, 301}, std::vector<int64_t>{0, 1},
                                            std::vector<int64_t>{0, 64, 128, 1000}}) {
      const at::Tensor x = random_input({off.back(), 256}, dt, seed++);
      ASSERT_TRUE(bytes_equal(fp4qat::row_amax(x.cuda()), fp4qat::row_amax(x)));
      for (const auto& rule : rules()) {
        SCOPED_TRACE(::testing::Message() << dt << " groups " << off.size() - 1 << " " << fp4qat::describe(rule));
        const auto want = fp4qat::nvfp4_quantize_rows(x, off, /*packed=*/true, rule);
        const auto got = fp4qat::nvfp4_quantize_rows(x.cuda(), off, /*packed=*/true, rule);
        ASSERT_TRUE(same_operand(got, want));
      }
    }
}

// The one-read Four Over Six kernel's fast path (codes and fake values from the estimate's rounded
// magnitudes, the clamp left out where no product reaches 7) on the values where it must hand over
// to the exact path or to encoding again: signed zeros, values on either candidate's grid (ties),
// tiny negatives in blocks of a huge value (|x| * enc underflows: the code keeps no sign),
// subnormal block scales, blocks past 12 in float32 (tiny * enc underflows there), subnormal
// negatives beside a normal max (their codes keep the sign: the bf16 sign bits keep subnormals),
// NaN-free.
TEST(GpuQuantizeRules, FourOverSixOneReadSpecialValues) {
  FP4QAT_REQUIRE_GPU();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4800);
  const int64_t E = 3, N = 40, K = 2048;
  at::Tensor x = at::randn({E, N, K}, gen) * at::exp(at::randn({E, N, 1}, gen) * 3.0);
  auto r = x.accessor<float, 3>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; k += 7) {
        switch ((e * 31 + n * 7 + k) % 9) {
          case 0: r[e][n][k] = -0.0f; break;
          case 1: r[e][n][k] = 0.0f; break;
          case 2: r[e][n][k] = (k % 2 ? 1.5f : -4.0f) * r[e][n][0]; break;  // on a grid of the row's first value
          default: break;
        }
      }
  for (int64_t k = 0; k < K; k += 16) {  // expert 1, row 3: a huge value and tiny negatives in each block
    r[1][3][k] = 1e30f;
    for (int64_t i = 1; i < 16; i += 2) r[1][3][k + i] = -1e-30f * float(i);
  }
  for (int64_t k = 0; k < K; ++k) r[2][5][k] *= 1e3f;  // expert 2, row 5: blocks past 12
  for (int64_t k = 0; k < K; k += 16) {  // expert 0, row 11: a max of 1 and bf16 subnormals of either sign
    r[0][11][k] = 1.0f;
    for (int64_t i = 1; i < 16; ++i) r[0][11][k + i] = (i % 3 ? -1e-39f : 1e-39f) * float(i);
  }
  // The default shape (256 threads x 2 slots: 52 KB for bf16, 48 KB for f16 / f32),
  // FP4QAT_NVFP4_SLOTS=3 (24 KB slots), FP4QAT_NVFP4_THREADS=384 and 40 KB slots.
  const char* const names[] = {"", " 3 slots", " 384 threads", " 40 KB slots"};
  for (int shape = 0; shape < 4; ++shape)
  for (auto dt : {at::kBFloat16, at::kFloat, at::kHalf})
    for (float m : {256.0f, 448.0f})
      for (bool mse : {false, true}) {
        const fp4qat::tuning::Nvfp4Tuning none{};
        const fp4qat::tuning::ScopedNvfp4Tuning tu(
            shape == 1   ? none.with("FP4QAT_NVFP4_SLOTS", "3").with("FP4QAT_NVFP4_SLOT_BYTES", "24576")
            : shape == 2 ? none.with("FP4QAT_NVFP4_THREADS", "384")
            : shape == 3 ? none.with("FP4QAT_NVFP4_SLOT_BYTES", "40960")
                         : none);
        const NVFP4Rule rule{true, m, mse, false};
        at::Tensor xt = x.to(dt);
        if (dt == at::kHalf) xt = x.clamp(-60000.0f, 60000.0f).to(dt);
        SCOPED_TRACE(::testing::Message() << dt << " " << fp4qat::describe(rule) << names[shape]);
        const auto want = fp4qat::nvfp4_quantize_and_fake(xt, Blocks::k1D, std::nullopt, rule);
        const auto got = fp4qat::nvfp4_quantize_and_fake(xt.cuda(), Blocks::k1D, std::nullopt, rule);
        EXPECT_EQ(std::string(ck::nvfp4_last_kernel()), "staged2-4over6");
        ASSERT_TRUE(same_operand(got, want));
      }
}

// The one-read Four Over Six kernel with several heads a CTA (more slices than the CTAs hold), so
// that each next head's group is tested during the current head's last blocks (always complete
// with a given amax; by timing without) and the head starts without polling — or, where the group
// completes later, polls as before. Bytes equal to the CPU reference either way, for 2 and 3 slots.
TEST(GpuQuantizeRules, FourOverSixOneReadManyHeadsPerCta) {
  FP4QAT_REQUIRE_GPU();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4801);
  const int64_t E = 4, N = 1024, K = 2048;  // 16 KB slots: 256 slices an expert, 1,024 in all
  const at::Tensor x = (at::randn({E, N, K}, gen) * at::exp(at::randn({E, N, 1}, gen))).to(at::kBFloat16);
  const at::Tensor amax = fp4qat::global_amax(x);
  const at::Tensor xg = x.cuda(), amax_g = amax.cuda();
  for (const NVFP4Rule& rule : {NVFP4Rule{true, 256.0f, false, false}, NVFP4Rule{true, 448.0f, true, false}}) {
    const auto want = fp4qat::nvfp4_quantize_and_fake(x, Blocks::k1D, std::nullopt, rule);
    for (bool given : {false, true})
      for (const char* slots : {"", "3"}) {
        SCOPED_TRACE(::testing::Message() << fp4qat::describe(rule) << (given ? " given amax" : "") << " slots "
                                          << slots);
        const fp4qat::tuning::ScopedNvfp4Tuning tu(
            fp4qat::tuning::Nvfp4Tuning{}.with("FP4QAT_NVFP4_SLOT_BYTES", "16384").with("FP4QAT_NVFP4_SLOTS", slots));
        const auto got = fp4qat::nvfp4_quantize_and_fake(xg, Blocks::k1D, given ? std::optional<at::Tensor>(amax_g)
                                                                                : std::nullopt,
                                                         rule);
        EXPECT_EQ(std::string(ck::nvfp4_last_kernel()), "staged2-4over6");
        ASSERT_TRUE(same_operand(got, want));
      }
  }
}
