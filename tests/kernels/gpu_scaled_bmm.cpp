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
          SCOPED_TRACE(::testing::Message() << s.B << "x" << s.M << "x" << s.N << "x" << s.K << " " << dt << " -> " << out
                                            << (gather ? " gathered" : ""));
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
  EXPECT_THROW(fp4qat::gemm::scaled_bmm(a, at::zeros({2, 8, 32}, a.options()), at::ones({3}, alpha.options()),
                                        at::kBFloat16),
               fp4qat::Error);
  EXPECT_THROW(fp4qat::gemm::scaled_bmm(a, at::zeros({2, 8, 32}, a.options()), alpha.cpu(), at::kBFloat16), fp4qat::Error);
}
