// tests/autograd/linear_util.h — one nvfp4_linear call with its gradients, for the CPU and GPU
// autograd tests (the per-expert side of expect_grouped_equals_per_expert among others).
#pragma once
#include <optional>

#include "autograd/nvfp4_linear.h"
#include "tests/common/test_util.h"

namespace fp4qat::test {

// nvfp4_linear on copies of x0 [T, K] and w0 [N, K], backward with upstream gradient g [T, N].
inline LinearGrads run_nvfp4_linear(const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& g,
                                    const autograd::NVFP4LinearOptions& opt,
                                    const std::optional<at::Tensor>& amax = std::nullopt) {
  at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  at::Tensor y = autograd::nvfp4_linear(x, w, opt, amax);
  y.backward(g);
  return {y.detach(), x.grad(), w.grad()};
}

}  // namespace fp4qat::test
