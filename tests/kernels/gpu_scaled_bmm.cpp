// tests/kernels/gpu_scaled_bmm.cpp — (label gpu) the emulated NVFP4 GEMM with its fused epilogue
// (kernels/gemm/scaled_bmm.h, kernels/gemm/epilogue.cu) against its definition, byte for byte:
//  * small-integer operands, where every partial sum is exact in fp32 (so any accumulation order
//    gives the same fp32 value): equal to the CPU reference (fp32 GEMM, times alpha[b] in fp32,
//    one rounding) for bf16 / f16 / f32 outputs, with and without a row gather, with N a multiple
//    of 4 (vector path) or not (scalar path); alphas have full fp32 mantissas, so scaling a
//    rounded product or rounding twice would differ;
//  * random operands: the fused kernel equals the unfused ATen epilogue (at::mul_, to,
//    index_select) applied to the same cuBLAS result.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "kernels/gemm/scaled_bmm.h"
#include "tests/common/test_util.h"

using fp4qat::test::bytes_equal;

namespace {
at::Generator gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }
at::Tensor small_ints(std::vector<int64_t> shape, uint64_t seed) {  // integers in [-8, 8], exact in bf16
  return at::randint(-8, 9, shape, gen(seed)).to(at::kFloat);
}
// A gather of some rows of [B * M, N] in a scrambled order (what the padded grouped path passes).
at::Tensor some_rows(int64_t BM, uint64_t seed) {
  return at::randperm(BM, gen(seed), at::kLong).narrow(0, 0, (BM * 2 + 2) / 3);
}
struct Shape {
  int64_t B, M, N, K;
};
}  // namespace

TEST(GpuScaledBmm, ExactOnExactlySummableOperands) {
  FP4QAT_REQUIRE_GPU();
  for (const Shape s : {Shape{1, 1, 16, 16}, Shape{3, 37, 96, 128}, Shape{8, 256, 1536, 2048}, Shape{5, 64, 201, 48}})
    for (auto dt : {at::kBFloat16, at::kHalf})
      for (auto out : {at::kBFloat16, at::kHalf, at::kFloat})
        for (bool gather : {false, true}) {
          SCOPED_TRACE(::testing::Message() << s.B << "x" << s.M << "x" << s.N << "x" << s.K << " " << dt << " -> "
                                            << out << (gather ? " gathered" : ""));
          const at::Tensor a = small_ints({s.B, s.M, s.K}, 1).to(dt), w = small_ints({s.B, s.N, s.K}, 2).to(dt);
          const at::Tensor alpha = at::rand({s.B}, gen(3)).mul_(1e-3).add_(1e-5);  // full fp32 mantissas
          const at::Tensor rows = gather ? some_rows(s.B * s.M, 4) : at::Tensor();
          const at::Tensor want = fp4qat::gemm::scaled_bmm(a, w, alpha, out, rows);  // CPU reference
          const at::Tensor got =
              fp4qat::gemm::scaled_bmm(a.cuda(), w.cuda(), alpha.cuda(), out, gather ? rows.cuda() : rows);
          ASSERT_EQ(got.scalar_type(), out);
          ASSERT_EQ(got.sizes(), want.sizes());
          EXPECT_TRUE(bytes_equal(got, want));
        }
}

TEST(GpuScaledBmm, FusedEpilogueEqualsUnfusedOnRandomOperands) {
  FP4QAT_REQUIRE_GPU();
  for (const Shape s : {Shape{4, 300, 192, 512}, Shape{2, 33, 70, 64}}) {
    const at::Tensor a = at::randn({s.B, s.M, s.K}, gen(7)).to(at::kBFloat16).cuda();
    const at::Tensor w = at::randn({s.B, s.N, s.K}, gen(8)).to(at::kBFloat16).cuda();
    const at::Tensor alpha = at::rand({s.B}, gen(9)).add_(0.25).cuda();
    for (bool gather : {false, true}) {
      const at::Tensor rows = gather ? some_rows(s.B * s.M, 10).cuda() : at::Tensor();
      const at::Tensor fused = fp4qat::gemm::scaled_bmm(a, w, alpha, at::kBFloat16, rows);
      fp4qat::gemm::set_fused_epilogue(false);
      const at::Tensor unfused = fp4qat::gemm::scaled_bmm(a, w, alpha, at::kBFloat16, rows);
      fp4qat::gemm::set_fused_epilogue(true);
      EXPECT_TRUE(bytes_equal(fused, unfused)) << (gather ? "gathered" : "all rows");
    }
  }
}

TEST(GpuScaledBmm, RejectsMismatchedOperands) {
  FP4QAT_REQUIRE_GPU();
  const at::Tensor a = at::zeros({2, 4, 32}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
  const at::Tensor alpha = at::ones({2}, a.options().dtype(at::kFloat));
  EXPECT_THROW(fp4qat::gemm::scaled_bmm(a, at::zeros({2, 8, 16}, a.options()), alpha, at::kBFloat16), fp4qat::Error);
  EXPECT_THROW(
      fp4qat::gemm::scaled_bmm(a, at::zeros({2, 8, 32}, a.options()), at::ones({3}, alpha.options()), at::kBFloat16),
      fp4qat::Error);
  EXPECT_THROW(fp4qat::gemm::scaled_bmm(a, at::zeros({2, 8, 32}, a.options()), alpha.cpu(), at::kBFloat16),
               fp4qat::Error);
}

namespace {
// The padded batch x [E, Mmax, K] whose expert e holds counts[e] real rows, the rest zeros, and
// the row gather `rows` (int64 [T]) of the real rows, as the grouped NVFP4 function builds them.
struct Padded {
  at::Tensor x, rows;
  std::vector<int64_t> off;
};
Padded padded(const std::vector<int64_t>& counts, int64_t K, uint64_t seed, bool ints) {
  const int64_t E = static_cast<int64_t>(counts.size());
  int64_t Mmax = 1;
  for (int64_t c : counts) Mmax = std::max(Mmax, c);
  Padded p;
  p.x = at::zeros({E, Mmax, K});
  p.off = {0};
  std::vector<int64_t> rows;
  for (int64_t e = 0; e < E; ++e) {
    if (counts[e])
      p.x[e]
          .narrow(0, 0, counts[e])
          .copy_(ints ? small_ints({counts[e], K}, seed + e) : at::randn({counts[e], K}, gen(seed + e)));
    for (int64_t j = 0; j < counts[e]; ++j) rows.push_back(e * Mmax + j);
    p.off.push_back(p.off.back() + counts[e]);
  }
  p.rows = at::tensor(rows, at::kLong);
  return p;
}
}  // namespace

// The Hopper grouped GEMM (CUTLASS, alpha in its epilogue, real rows only) gives the bytes of
// the definition on exactly summable operands — with experts of 0, 1, 7 and 300 rows — and
// stays within one bf16 ulp of the batched path on random operands.
TEST(GpuScaledBmm, GroupedGemmEqualsTheDefinition) {
  FP4QAT_REQUIRE_GPU();
#ifndef FP4QAT_WITH_CUTLASS
  GTEST_SKIP() << "built without CUTLASS (no grouped GEMM)";
#else
  if (at::cuda::getCurrentDeviceProperties()->major != 9) GTEST_SKIP() << "not an sm_90 device";
  const std::vector<int64_t> counts = {7, 0, 1, 300, 64, 0, 129};
  for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t> >{{96, 128}, {1536, 2048}, {200, 48}}) {
    SCOPED_TRACE(::testing::Message() << "N " << N << " K " << K);
    const Padded p = padded(counts, K, 11, /*ints=*/true);
    const int64_t E = static_cast<int64_t>(counts.size());
    const at::Tensor w = small_ints({E, N, K}, 12), alpha = at::rand({E}, gen(13)).mul_(1e-3).add_(1e-5);
    const at::Tensor want = fp4qat::gemm::scaled_bmm(p.x, w, alpha, at::kBFloat16, p.rows);  // CPU reference
    const at::Tensor got = fp4qat::gemm::grouped_scaled_mm(p.x.to(at::kBFloat16).cuda(), w.to(at::kBFloat16).cuda(),
                                                           alpha.cuda(), p.off, at::kBFloat16);
    ASSERT_TRUE(got.defined()) << "the grouped GEMM refused a supported problem";
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(bytes_equal(got, want));
  }
  // Random operands: against the batched GEMM + fused epilogue (another accumulation order).
  const Padded p = padded(counts, 256, 21, /*ints=*/false);
  const int64_t E = static_cast<int64_t>(counts.size());
  const at::Tensor x = p.x.to(at::kBFloat16).cuda(), w = at::randn({E, 192, 256}, gen(22)).to(at::kBFloat16).cuda();
  const at::Tensor alpha = at::rand({E}, gen(23)).add_(0.25).cuda();
  const at::Tensor got = fp4qat::gemm::grouped_scaled_mm(x, w, alpha, p.off, at::kBFloat16);
  ASSERT_TRUE(got.defined());
  const at::Tensor ref = fp4qat::gemm::scaled_bmm(x, w, alpha, at::kBFloat16, p.rows.cuda()).cpu().to(at::kFloat);
  const at::Tensor bad = (got.cpu().to(at::kFloat) - ref).abs() > ref.abs() * (1.0 / 128) + 1e-3 * ref.abs().max();
  EXPECT_EQ(bad.sum().item<int64_t>(), 0);
  // Switched off, it declines (and the NVFP4 functions use the batched path).
  fp4qat::gemm::set_grouped_gemm(false);
  EXPECT_FALSE(fp4qat::gemm::grouped_scaled_mm(x, w, alpha, p.off, at::kBFloat16).defined());
  fp4qat::gemm::set_grouped_gemm(true);
#endif
}

// Equal row counts run the CUTLASS batched GEMM (kernels/gemm_sm90/batched_gemm.h), with each
// compiled tile: the bytes of the definition on exactly summable operands (alphas with full fp32
// mantissas, so scaling a rounded product or rounding twice would differ) for x as the
// [E, M, K] batch and as its [E * M, K] rows, M not a multiple of the tile, K below the tile's
// K; the same bytes as the grouped GEMM; within one bf16 ulp of the batched cuBLAS path on random
// operands. Switched off (-1), the grouped GEMM runs instead.
TEST(GpuScaledBmm, BatchedGemmEqualsTheDefinition) {
  FP4QAT_REQUIRE_GPU();
#ifndef FP4QAT_WITH_CUTLASS
  GTEST_SKIP() << "built without CUTLASS (no batched GEMM)";
#else
  if (at::cuda::getCurrentDeviceProperties()->major != 9) GTEST_SKIP() << "not an sm_90 device";
  struct Case {
    int64_t E, M, N, K;
  };
  for (int tile : {0, 1}) {
    fp4qat::gemm::set_batched_gemm_tile(tile);
    for (const Case c : {Case{1, 1, 16, 16}, Case{3, 37, 96, 128}, Case{5, 300, 200, 48}, Case{4, 256, 1536, 2048}}) {
      SCOPED_TRACE(::testing::Message() << "tile " << tile << ", " << c.E << "x" << c.M << "x" << c.N << "x" << c.K);
      const at::Tensor x = small_ints({c.E, c.M, c.K}, 31), w = small_ints({c.E, c.N, c.K}, 32);
      const at::Tensor alpha = at::rand({c.E}, gen(33)).mul_(1e-3).add_(1e-5);  // full fp32 mantissas
      std::vector<int64_t> off = {0};
      for (int64_t e = 0; e < c.E; ++e) off.push_back(off.back() + c.M);
      const at::Tensor want = fp4qat::gemm::scaled_bmm(x, w, alpha, at::kBFloat16).reshape({c.E * c.M, c.N});
      const at::Tensor xg = x.to(at::kBFloat16).cuda(), wg = w.to(at::kBFloat16).cuda(), ag = alpha.cuda();
      for (bool rows_layout : {false, true}) {
        const at::Tensor got = fp4qat::gemm::grouped_scaled_mm(rows_layout ? xg.reshape({c.E * c.M, c.K}) : xg, wg, ag,
                                                               off, at::kBFloat16);
        ASSERT_TRUE(got.defined()) << "the batched GEMM refused a supported problem";
        EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), "batched");
        ASSERT_EQ(got.sizes(), want.sizes());
        EXPECT_TRUE(bytes_equal(got, want)) << (rows_layout ? "x as rows" : "x as the batch");
      }
      // Counts that are not all equal (2, 1, 3 rows: the total of 2 each) take the grouped GEMM.
      if (c.E >= 3 && c.M >= 6) {
        const at::Tensor xs = xg[0].narrow(0, 0, 6);  // [6, K]
        const at::Tensor g3 =
            fp4qat::gemm::grouped_scaled_mm(xs, wg.narrow(0, 0, 3), ag.narrow(0, 0, 3), {0, 2, 3, 6}, at::kBFloat16);
        ASSERT_TRUE(g3.defined());
        EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), "grouped");
      }
      fp4qat::gemm::set_batched_gemm_tile(-1);
      const at::Tensor grouped = fp4qat::gemm::grouped_scaled_mm(xg, wg, ag, off, at::kBFloat16);
      EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), "grouped");
      fp4qat::gemm::set_batched_gemm_tile(tile);
      ASSERT_TRUE(grouped.defined());
      EXPECT_TRUE(bytes_equal(grouped, want)) << "the grouped GEMM";
    }
    // Random operands: against the batched cuBLAS GEMM + fused epilogue (another accumulation order).
    const int64_t E = 6, M = 160, N = 192, K = 256;
    const at::Tensor x = at::randn({E, M, K}, gen(34)).to(at::kBFloat16).cuda();
    const at::Tensor w = at::randn({E, N, K}, gen(35)).to(at::kBFloat16).cuda();
    const at::Tensor alpha = at::rand({E}, gen(36)).add_(0.25).cuda();
    std::vector<int64_t> off = {0};
    for (int64_t e = 0; e < E; ++e) off.push_back(off.back() + M);
    const at::Tensor got = fp4qat::gemm::grouped_scaled_mm(x, w, alpha, off, at::kBFloat16);
    ASSERT_TRUE(got.defined());
    EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), "batched");
    const at::Tensor ref =
        fp4qat::gemm::scaled_bmm(x, w, alpha, at::kBFloat16).reshape({E * M, N}).cpu().to(at::kFloat);
    const at::Tensor bad = (got.cpu().to(at::kFloat) - ref).abs() > ref.abs() * (1.0 / 128) + 1e-3 * ref.abs().max();
    EXPECT_EQ(bad.sum().item<int64_t>(), 0) << "tile " << tile;
  }
  fp4qat::gemm::set_batched_gemm_tile(0);
  EXPECT_THROW(fp4qat::gemm::set_batched_gemm_tile(2), fp4qat::Error);
#endif
}

// The grouped GEMM with one alpha per row (row-scaled activations: kernels/gemm_sm90/
// grouped_gemm_rows.cu) gives the bytes of its definition — the CPU's scaled_mm_rows on each
// expert's row range — on exactly summable operands with alphas of full fp32 mantissas (so a
// per-expert alpha, a rounded product or a second rounding would differ), with experts of 0, 1,
// 7 and 300 rows (rows whose first row is not 16-byte aligned in alpha), for several N and K;
// equal counts take the batched form of the same epilogue (batched_gemm_rows.cu), same bytes as
// the grouped one; within one bf16 ulp of the per-expert cuBLAS
// path on random operands; declined when switched off; wrong shapes refused.
TEST(GpuScaledBmm, GroupedGemmWithRowAlphaEqualsTheDefinition) {
  FP4QAT_REQUIRE_GPU();
#ifndef FP4QAT_WITH_CUTLASS
  GTEST_SKIP() << "built without CUTLASS (no grouped GEMM)";
#else
  if (at::cuda::getCurrentDeviceProperties()->major != 9) GTEST_SKIP() << "not an sm_90 device";
  for (const auto& counts : std::vector<std::vector<int64_t> >{{7, 0, 1, 300, 64, 0, 129}, {32, 32, 32}}) {
    const int64_t E = static_cast<int64_t>(counts.size());
    std::vector<int64_t> off = {0};
    for (int64_t c : counts) off.push_back(off.back() + c);
    const int64_t T = off.back();
    for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t> >{{96, 128}, {1536, 2048}, {200, 48}}) {
      SCOPED_TRACE(::testing::Message() << "E " << E << " N " << N << " K " << K);
      const at::Tensor x = small_ints({T, K}, 41), w = small_ints({E, N, K}, 42);
      const at::Tensor alpha = at::rand({T}, gen(43)).mul_(1e-3).add_(1e-5);  // [T], full fp32 mantissas
      at::Tensor want = at::empty({T, N}, at::kBFloat16);
      for (int64_t e = 0; e < E; ++e)
        if (counts[e])
          want.narrow(0, off[e], counts[e])
              .copy_(fp4qat::gemm::scaled_mm_rows(x.narrow(0, off[e], counts[e]), w[e],
                                                  alpha.narrow(0, off[e], counts[e]), at::kBFloat16));
      const at::Tensor got = fp4qat::gemm::grouped_scaled_mm_rows(
          x.to(at::kBFloat16).cuda(), w.to(at::kBFloat16).cuda(), alpha.cuda(), off, at::kBFloat16);
      ASSERT_TRUE(got.defined()) << "the per-row grouped GEMM refused a supported problem";
      const bool equal = std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
      EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), equal ? "batched_rows" : "grouped_rows");
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(bytes_equal(got, want));
      if (equal) {  // the grouped form of the same problem: the same bytes
        fp4qat::gemm::set_batched_gemm_tile(-1);
        const at::Tensor grouped = fp4qat::gemm::grouped_scaled_mm_rows(
            x.to(at::kBFloat16).cuda(), w.to(at::kBFloat16).cuda(), alpha.cuda(), off, at::kBFloat16);
        EXPECT_STREQ(fp4qat::gemm::last_grouped_kernel(), "grouped_rows");
        fp4qat::gemm::set_batched_gemm_tile(0);
        ASSERT_TRUE(grouped.defined());
        EXPECT_TRUE(bytes_equal(grouped, want)) << "the grouped form";
      }
    }
  }
  // Random operands: against scaled_mm_rows on the GPU per expert (cuBLAS, another accumulation order).
  const std::vector<int64_t> counts = {50, 0, 3, 200};
  const std::vector<int64_t> off = {0, 50, 50, 53, 253};
  const at::Tensor x = at::randn({253, 256}, gen(44)).to(at::kBFloat16).cuda();
  const at::Tensor w = at::randn({4, 192, 256}, gen(45)).to(at::kBFloat16).cuda();
  const at::Tensor alpha = at::rand({253}, gen(46)).add_(0.25).cuda();
  const at::Tensor got = fp4qat::gemm::grouped_scaled_mm_rows(x, w, alpha, off, at::kBFloat16);
  ASSERT_TRUE(got.defined());
  for (int64_t e = 0; e < 4; ++e) {
    if (!counts[e]) continue;
    const at::Tensor ref = fp4qat::gemm::scaled_mm_rows(x.narrow(0, off[e], counts[e]), w[e],
                                                        alpha.narrow(0, off[e], counts[e]), at::kBFloat16)
                               .cpu()
                               .to(at::kFloat);
    const at::Tensor g = got.narrow(0, off[e], counts[e]).cpu().to(at::kFloat);
    const at::Tensor bad = (g - ref).abs() > ref.abs() * (1.0 / 128) + 1e-3 * ref.abs().max();
    EXPECT_EQ(bad.sum().item<int64_t>(), 0) << "expert " << e;
  }
  EXPECT_THROW(fp4qat::gemm::grouped_scaled_mm_rows(x, w, alpha.narrow(0, 0, 252), off, at::kBFloat16), fp4qat::Error);
  EXPECT_THROW(fp4qat::gemm::grouped_scaled_mm_rows(x, w, alpha, {0, 50, 50, 53, 250}, at::kBFloat16), fp4qat::Error);
  fp4qat::gemm::set_grouped_gemm(false);
  EXPECT_FALSE(fp4qat::gemm::grouped_scaled_mm_rows(x, w, alpha, off, at::kBFloat16).defined());
  fp4qat::gemm::set_grouped_gemm(true);
#endif
}
