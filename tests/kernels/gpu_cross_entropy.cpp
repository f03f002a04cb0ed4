// tests/kernels/gpu_cross_entropy.cpp — (label gpu) the fused cross-entropy kernels
// (kernels/loss/cross_entropy.cu) against their CPU reference (kernels/loss/cross_entropy_ref.h):
// the same lanes, order and combination tree, so they differ only by the device's expf / logf
// (within 2 ulp of the host's): log-sum-exps within 2e-6 relative, gradients within one rounding of
// their dtype and mostly the same bytes; rows of 1, 37 (unaligned bf16 rows: the one-at-a-time
// loads), 2,051 and 50,000 logits; a target outside [0, V) gives NaN.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/cuda_api.h"
#include "kernels/loss/cross_entropy_ref.h"
#include "tests/common/test_util.h"

using namespace fp4qat;

TEST(GpuCrossEntropy, KernelsMatchTheirCpuReference) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(17);
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    for (const auto& [N, V] : std::vector<std::pair<int64_t, int64_t>>{{3, 1}, {5, 37}, {4, 2051}, {8, 50000}}) {
      SCOPED_TRACE(::testing::Message() << dt << " N " << N << " V " << V);
      const at::Tensor x = (at::randn({N, V}) * 6).to(dt);
      at::Tensor t = at::randint(0, V, {N}, at::kLong);
      const at::Tensor g = at::randn({N});
      const bool bf16 = dt == at::kBFloat16;
      at::Tensor lse_r = at::empty({N}), lp_r = at::empty({N}), grad_r = at::empty({N, V}, dt);
      loss::ce_forward_ref(x.data_ptr(), bf16, N, V, t.data_ptr<int64_t>(), lse_r.data_ptr<float>(),
                           lp_r.data_ptr<float>());
      loss::ce_backward_ref(x.data_ptr(), bf16, N, V, t.data_ptr<int64_t>(), lse_r.data_ptr<float>(),
                            g.data_ptr<float>(), grad_r.data_ptr());
      const at::Tensor xd = x.cuda(), td = t.cuda();
      const auto [lse, lp] = cuda::ce_forward(xd, td);
      const at::Tensor grad = cuda::ce_backward(xd, td, lse, g.cuda()).cpu();
      EXPECT_TRUE(at::allclose(lse.cpu(), lse_r, 2e-6, 2e-6)) << (lse.cpu() - lse_r).abs().max();
      EXPECT_TRUE(at::allclose(lp.cpu(), lp_r, 2e-6, 4e-5)) << (lp.cpu() - lp_r).abs().max();
      const at::Tensor a = grad.to(at::kFloat), b = grad_r.to(at::kFloat);
      EXPECT_TRUE(at::allclose(a, b, bf16 ? 8e-3 : 2e-5, 1e-30)) << (a - b).abs().max();
      if (bf16) {  // one-ulp flips only where expf and the host's differ across a rounding boundary
        const double same = at::eq(grad.view(at::kShort), grad_r.view(at::kShort)).to(at::kDouble).mean().item<double>();
        EXPECT_GT(same, 0.99);
      }
    }
  }
  // A target outside [0, V): NaN, never a read outside the row.
  const at::Tensor x = at::randn({2, 40}).to(at::kBFloat16).cuda();
  const auto [lse, lp] = cuda::ce_forward(x, at::tensor({int64_t{40}, int64_t{-1}}).cuda());
  EXPECT_TRUE(at::isnan(lp).all().item<bool>());
  EXPECT_FALSE(at::isnan(lse).any().item<bool>());
  EXPECT_THROW(cuda::ce_forward(x.t(), at::zeros({40}, at::kLong).cuda()), std::exception);
}
