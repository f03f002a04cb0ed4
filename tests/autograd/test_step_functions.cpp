// tests/autograd/test_step_functions.cpp — the training step's small autograd functions:
// autograd::target_logprobs on the CPU against the composite log_softmax(float32).gather, forward
// and gradient, bit for bit (its CUDA kernels: tests/kernels/gpu_cross_entropy.cpp);
// autograd::compute_cast against Tensor::to; autograd::permute_rows against index_select.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/compute_cast.h"
#include "autograd/logprobs.h"
#include "autograd/permute_rows.h"

using namespace fp4qat;

namespace {

struct LogprobRun {
  at::Tensor out, grad;
};

// out = f(logits, targets) and the logits' gradient of sum(out * w).
template <class F>
LogprobRun logprob_run(F f, const at::Tensor& logits0, const at::Tensor& targets, const at::Tensor& w) {
  at::Tensor logits = logits0.detach().clone().requires_grad_(true);
  const at::Tensor out = f(logits, targets);
  (out * w).sum().backward();
  return {out.detach(), logits.grad()};
}

at::Tensor composite(const at::Tensor& logits, const at::Tensor& targets) {
  return at::log_softmax(logits.to(at::kFloat), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.contiguous().view(at::kByte), b.contiguous().view(at::kByte));
}

}  // namespace

// On the CPU target_logprobs is the composite: its bytes forward and backward, float32 and bf16
// logits, [B, T, V] in, [B, T] out.
TEST(TargetLogprobs, OnTheCpuIsTheCompositeForwardAndBackward) {
  at::manual_seed(7);
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(::testing::Message() << dt);
    const at::Tensor logits = (at::randn({2, 5, 37}) * 4).to(dt);
    const at::Tensor targets = at::randint(0, 37, {2, 5}, at::kLong);
    const at::Tensor w = at::randn({2, 5});
    const LogprobRun ref = logprob_run(composite, logits, targets, w);
    const LogprobRun got = logprob_run(autograd::target_logprobs, logits, targets, w);
    EXPECT_EQ(got.out.sizes(), (at::IntArrayRef{2, 5}));
    EXPECT_EQ(got.grad.scalar_type(), dt);
    EXPECT_TRUE(same_bytes(got.out, ref.out));
    EXPECT_TRUE(same_bytes(got.grad, ref.grad));
  }
}

TEST(TargetLogprobs, RefusesTargetsOfTheWrongShapeOrType) {
  const at::Tensor logits = at::randn({4, 9});
  EXPECT_THROW(autograd::target_logprobs(logits, at::zeros({5}, at::kLong)), std::exception);
  EXPECT_THROW(autograd::target_logprobs(logits, at::zeros({4}, at::kInt)), std::exception);
}

// The compute copy: master.to(dtype) forward; the gradient cast back to the master's dtype (the
// same bytes as autograd through Tensor::to); master itself when the dtypes agree; no graph
// without grad.
TEST(ComputeCast, EqualsToForwardAndBackward) {
  at::manual_seed(3);
  const at::Tensor m0 = at::randn({6, 10});
  const at::Tensor g = at::randn({6, 10}).to(at::kBFloat16);
  at::Tensor a = m0.clone().requires_grad_(true), b = m0.clone().requires_grad_(true);
  const at::Tensor ya = autograd::compute_cast(a, at::kBFloat16), yb = b.to(at::kBFloat16);
  EXPECT_TRUE(same_bytes(ya.detach(), yb.detach()));
  ya.backward(g);
  yb.backward(g);
  EXPECT_TRUE(same_bytes(a.grad(), b.grad()));
  EXPECT_TRUE(a.grad().is_contiguous());
  // a bf16 copy widened back for an fp32 GEMM (the CPU's QAT compute copy), its gradient narrowed
  at::Tensor c = m0.clone().requires_grad_(true), d = m0.clone().requires_grad_(true);
  const at::Tensor gf = at::randn({6, 10});
  autograd::compute_cast(autograd::compute_cast(c, at::kBFloat16), at::kFloat).backward(gf);
  d.to(at::kBFloat16).to(at::kFloat).backward(gf);
  EXPECT_TRUE(same_bytes(c.grad(), d.grad()));
  EXPECT_TRUE(autograd::compute_cast(a, at::kFloat).is_same(a));
  {
    torch::NoGradGuard ng;
    EXPECT_FALSE(autograd::compute_cast(a, at::kBFloat16).requires_grad());
  }
}

// A permutation's rows and their gradient: index_select's values forward and backward (its
// backward scatters into zeros; ours gathers by the inverse), for a bf16 [R, H] and a float [R].
TEST(PermuteRows, EqualsIndexSelectForwardAndBackward) {
  at::manual_seed(9);
  const at::Tensor perm = at::randperm(23, at::kLong);
  const at::Tensor inv = autograd::inverse_permutation(perm);
  EXPECT_TRUE(at::equal(perm.index_select(0, inv), at::arange(23, at::kLong)));
  for (const auto& x0 : {at::randn({23, 6}).to(at::kBFloat16), at::randn({23})}) {
    const at::Tensor g = at::randn(x0.sizes()).to(x0.scalar_type());
    at::Tensor a = x0.clone().requires_grad_(true), b = x0.clone().requires_grad_(true);
    const at::Tensor ya = autograd::permute_rows(a, perm, inv), yb = b.index_select(0, perm);
    EXPECT_TRUE(same_bytes(ya.detach(), yb.detach()));
    ya.backward(g);
    yb.backward(g);
    EXPECT_TRUE(same_bytes(a.grad(), b.grad()));
  }
  EXPECT_THROW(autograd::permute_rows(at::zeros({4, 2}), at::arange(3, at::kLong), at::arange(4, at::kLong)),
               std::exception);
}

// The MoE dispatch's rows (each token k times, permuted by expert) without the repeated copy: the
// bytes of permute_rows over the expanded copy, forward and backward (the k slots' gradients summed
// by the same reduction), for k in {1, 2, 3, 8}, bf16 [N, H] and float [N].
TEST(PermuteRows, ReplicatedRowsEqualTheExpandedCopyPermuted) {
  at::manual_seed(10);
  for (const int64_t k : {1, 2, 3, 8}) {
    const int64_t N = 13;
    const at::Tensor perm = at::randperm(N * k, at::kLong);
    const at::Tensor inv = autograd::inverse_permutation(perm);
    for (const auto& x0 : {at::randn({N, 6}).to(at::kBFloat16), at::randn({N})}) {
      SCOPED_TRACE(::testing::Message() << "k " << k << " " << x0.sizes());
      std::vector<int64_t> rep = {N * k};
      for (int64_t d = 1; d < x0.dim(); ++d) rep.push_back(x0.size(d));
      const at::Tensor g = at::randn(rep).to(x0.scalar_type());
      at::Tensor a = x0.clone().requires_grad_(true), b = x0.clone().requires_grad_(true);
      std::vector<int64_t> ex = {N, k};
      for (int64_t d = 1; d < x0.dim(); ++d) ex.push_back(x0.size(d));
      const at::Tensor ya = autograd::replicate_rows(a, k, perm, inv);
      const at::Tensor yb = autograd::permute_rows(b.unsqueeze(1).expand(ex).reshape(rep), perm, inv);
      EXPECT_TRUE(same_bytes(ya.detach(), yb.detach()));
      ya.backward(g);
      yb.backward(g);
      EXPECT_TRUE(same_bytes(a.grad(), b.grad()));
    }
  }
  EXPECT_THROW(autograd::replicate_rows(at::zeros({4, 2}), 2, at::arange(7, at::kLong), at::arange(7, at::kLong)),
               std::exception);
}
