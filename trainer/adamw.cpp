// trainer/adamw.cpp — see adamw.h.
#include "trainer/adamw.h"

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

#include <algorithm>
#include <cmath>

namespace fp4qat::train {

AdamWState adamw_init(const std::vector<std::pair<std::string, at::Tensor>>& params,
                      const std::function<bool(const std::string&)>& trains) {
  AdamWState st;
  for (const auto& [n, p] : params) {
    const bool t = !trains || trains(n);
    st.m.push_back(t ? at::zeros_like(p.detach()) : at::Tensor());
    st.v.push_back(t ? at::zeros_like(p.detach()) : at::Tensor());
  }
  return st;
}

void adamw_update(std::vector<std::pair<std::string, at::Tensor>>& params, AdamWState& st, const config::OptimConfig& o,
                  double lr, double grad_scale, int64_t step) {
  const double b1 = o.beta1, b2 = o.beta2, t = static_cast<double>(step);
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  // CUDA parameters: one fused pass (kernels/optim/adamw_ref.h: the same update, each operation
  // rounded to float32, bit-equal to its CPU reference) instead of ten tensor-op passes, and for
  // all of them together in a few launches (64 parameters a launch; one a parameter before, which
  // the small models' launch-bound steps paid for).
  optim::AdamWScalars s;
  s.grad_scale = static_cast<float>(grad_scale);
  s.beta1 = static_cast<float>(b1);
  s.one_minus_beta1 = static_cast<float>(1.0 - b1);
  s.beta2 = static_cast<float>(b2);
  s.one_minus_beta2 = static_cast<float>(1.0 - b2);
  s.bc2 = static_cast<float>(bc2);
  s.eps = static_cast<float>(o.eps);
  s.step = static_cast<float>(-lr / bc1);
  std::vector<at::Tensor> fp, fg, fm, fv;  // the fused pass's parameters (one device: the first's)
  std::vector<float> fdecay;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor& p = params[i].second;
    if (!p.grad().defined()) continue;
    FP4QAT_CHECK(st.m[i].defined(), "adamw_update: '", params[i].first, "' has a gradient but no moments (frozen at set-up)");
    const at::Tensor& grad = p.grad();
    if (p.is_cuda() && p.scalar_type() == at::kFloat && grad.scalar_type() == at::kFloat && p.is_contiguous() &&
        grad.is_contiguous() && st.m[i].is_contiguous() && st.v[i].is_contiguous() &&
        (fp.empty() || p.device() == fp.front().device())) {
      fp.push_back(p);
      fg.push_back(grad);
      fm.push_back(st.m[i]);
      fv.push_back(st.v[i]);
      fdecay.push_back(p.dim() >= 2 && o.weight_decay > 0 ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f);
      continue;
    }
    const at::Tensor g = grad.to(at::kFloat) * grad_scale;
    st.m[i].mul_(b1).add_(g, 1.0 - b1);
    st.v[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    if (p.dim() >= 2 && o.weight_decay > 0) p.mul_(1.0 - lr * o.weight_decay);
    const at::Tensor denom = (st.v[i] / bc2).sqrt_().add_(o.eps);
    p.addcdiv_(st.m[i], denom, -lr / bc1);
  }
  if (!fp.empty()) cuda::adamw_step_many(fp, fg, fm, fv, fdecay, s);
}

double clip_scale(const config::OptimConfig& o, double grad_norm) {
  return (o.grad_clip > 0 && grad_norm > o.grad_clip) ? o.grad_clip / (grad_norm + 1e-6) : 1.0;
}

double learning_rate(const config::OptimConfig& o, int64_t step, int64_t total) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  const double span = std::max<int64_t>(1, total - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  const double min_lr = o.lr * o.min_lr_ratio;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * t));
}

}  // namespace fp4qat::train
