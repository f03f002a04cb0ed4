// autograd/rms_norm.cpp — see rms_norm.h.
#include "autograd/rms_norm.h"

#include <torch/torch.h>

#include <cmath>

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"
#include "kernels/model/rms_norm_ref.h"

namespace fp4qat::autograd {

namespace {

bool fusable(const at::Tensor& x) {
  return x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat) &&
         norm::rows_supported(x.size(-1));
}

// bf16 / float32 x [..., D] on CUDA, contiguous: one kernel forward, one backward. Saved: x and the
// rows' rstd (float32 [rows]), the backward's only inputs besides g.
class FusedRmsNormRowsFn : public torch::autograd::Function<FusedRmsNormRowsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double eps) {
    auto [y, rstd] = cuda::rms_norm_rows_forward(x, eps);
    ctx->save_for_backward({x, rstd});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    return {cuda::rms_norm_rows_backward(x, grads[0].to(x.scalar_type()).contiguous(), saved[1]), at::Tensor()};
  }
};

// The same with the weight's product fused: y = wc * norm(x), wc [D] in x's dtype (D <= 512).
// Saved: x, the rows' rstd, wc.
class FusedWeightedRmsNormRowsFn : public torch::autograd::Function<FusedWeightedRmsNormRowsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& wc,
                            double eps) {
    auto [y, rstd] = cuda::rms_norm_rows_forward(x, eps, wc);
    ctx->save_for_backward({x, rstd, wc});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    auto [dx, dw] =
        cuda::rms_norm_rows_backward_weighted(x, grads[0].to(x.scalar_type()).contiguous(), saved[1], saved[2]);
    return {dx, dw, at::Tensor()};
  }
};

void check_args(const at::Tensor& x, double eps) {
  FP4QAT_CHECK(x.defined() && x.dim() >= 1, "rms_norm_rows: x must be at least 1-D [..., D], got ",
               x.defined() ? x.sizes() : at::IntArrayRef{});
  FP4QAT_CHECK(at::isFloatingType(x.scalar_type()), "rms_norm_rows: x must be floating point, got ", x.scalar_type());
  FP4QAT_CHECK(std::isfinite(eps) && eps >= 0, "rms_norm_rows: eps must be finite and >= 0, got ", eps);
}

}  // namespace

at::Tensor rms_norm_rows(const at::Tensor& x, double eps, const at::Tensor& w) {
  check_args(x, eps);
  FP4QAT_CHECK(w.defined() && w.dim() == 1 && w.size(0) == x.size(-1) && at::isFloatingType(w.scalar_type()),
               "rms_norm_rows: w must be floating point [D = ", x.size(-1), "], got ",
               w.defined() ? w.sizes() : at::IntArrayRef{});
  FP4QAT_CHECK(w.device() == x.device(), "rms_norm_rows: w must be on x's device ", x.device(), ", got ", w.device());
  const at::Tensor wc = w.to(x.scalar_type());
  if (fusable(x) && norm::weighted_rows_supported(x.size(-1)))
    return FusedWeightedRmsNormRowsFn::apply(x.contiguous(), wc.contiguous(), eps);
  return wc * rms_norm_rows(x, eps);
}

at::Tensor rms_norm_rows(const at::Tensor& x, double eps) {
  check_args(x, eps);
  const int64_t D = x.size(-1);
  if (fusable(x)) return FusedRmsNormRowsFn::apply(x.contiguous(), eps);
  if (x.is_cuda()) return std::get<0>(at::_fused_rms_norm(x, {D}, std::nullopt, eps));
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
}

}  // namespace fp4qat::autograd
