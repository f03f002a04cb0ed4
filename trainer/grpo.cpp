// trainer/grpo.cpp — see grpo.h.
#include "trainer/grpo.h"

#include <cmath>
#include <map>

#include "kernels/common/check.h"

namespace fp4qat::grpo {

Correction parse_correction(const std::string& s) {
  if (s == "tis") return Correction::kTis;
  if (s == "mask") return Correction::kMask;
  if (s == "none") return Correction::kNone;
  FP4QAT_FAIL("unknown mismatch correction '", s, "' (expected tis, mask or none)");
}

std::vector<double> group_advantages(const std::vector<double>& rewards, const std::vector<std::string>& groups,
                                     bool divide_by_std, double eps) {
  FP4QAT_CHECK(rewards.size() == groups.size(), "group_advantages: ", rewards.size(), " rewards for ", groups.size(),
               " group ids");
  std::map<std::string, std::vector<double>> by;
  for (size_t i = 0; i < rewards.size(); ++i) {
    FP4QAT_CHECK(std::isfinite(rewards[i]), "group_advantages: reward ", i, " is not finite");
    by[groups[i]].push_back(rewards[i]);
  }
  std::map<std::string, std::pair<double, double>> stat;  // group -> (mean, std)
  for (const auto& [g, r] : by) {
    if (r.size() == 1) {
      stat[g] = {0.0, 1.0};
      continue;
    }
    double mean = 0;
    for (double x : r) mean += x;
    mean /= static_cast<double>(r.size());
    double var = 0;
    for (double x : r) var += (x - mean) * (x - mean);
    stat[g] = {mean, std::sqrt(var / static_cast<double>(r.size() - 1))};
  }
  std::vector<double> out(rewards.size());
  for (size_t i = 0; i < rewards.size(); ++i) {
    const auto [mean, sd] = stat.at(groups[i]);
    out[i] = divide_by_std ? (rewards[i] - mean) / (sd + eps) : rewards[i] - mean;
  }
  return out;
}

Result loss(const at::Tensor& logp, const at::Tensor& old_in, const at::Tensor& sampler_in, const at::Tensor& adv_in,
            const Options& opt, const at::Tensor& ref_in) {
  FP4QAT_CHECK(logp.dim() == 1 && old_in.sizes() == logp.sizes() && sampler_in.sizes() == logp.sizes() &&
                   adv_in.sizes() == logp.sizes() && logp.numel() > 0,
               "grpo::loss: logp, old, sampler and adv must be [N] alike, got ", logp.sizes(), ", ", old_in.sizes(),
               ", ", sampler_in.sizes(), ", ", adv_in.sizes());
  FP4QAT_CHECK(opt.clip_low > 0 && opt.clip_low < 1 && opt.clip_high > 0, "grpo::loss: clip range must satisfy 0 < ",
               "clip_low < 1 and clip_high > 0");
  FP4QAT_CHECK(opt.kl_coef == 0 || (ref_in.defined() && ref_in.sizes() == logp.sizes()),
               "grpo::loss: kl_coef > 0 needs the reference log-probs [N]");
  const auto f = logp.options().dtype(at::kFloat);
  const at::Tensor lp = logp.to(at::kFloat);
  const at::Tensor old = old_in.detach().to(f), sampler = sampler_in.detach().to(f), adv = adv_in.detach().to(f);
  const double n = static_cast<double>(logp.numel());

  const at::Tensor r = at::exp(lp - old);
  const at::Tensor unclipped = r * adv, clipped = at::clamp(r, 1.0 - opt.clip_low, 1.0 + opt.clip_high) * adv;
  const at::Tensor surrogate = at::minimum(unclipped, clipped);
  const at::Tensor d = old - sampler;  // log m_t
  const at::Tensor m = at::exp(d);
  at::Tensor w, corrected;
  switch (opt.correction) {
    case Correction::kTis:
      w = at::clamp_max(m, opt.tis_cap);
      corrected = m > opt.tis_cap;
      break;
    case Correction::kMask:
      corrected = (m < opt.mask_low) | (m > opt.mask_high);
      w = at::logical_not(corrected).to(at::kFloat);
      break;
    case Correction::kNone:
      w = at::ones_like(m);
      corrected = at::zeros_like(m, m.options().dtype(at::kBool));
      break;
  }
  at::Tensor per_token = -surrogate * w;
  if (opt.kl_coef > 0) {
    const at::Tensor dr = ref_in.detach().to(f) - lp;  // k3(ref || learner) = e^dr - dr - 1
    per_token = per_token + opt.kl_coef * (at::exp(dr) - dr - 1.0);
  }
  Result out;
  out.loss = per_token.sum() / n;
  // The clipped term is the active one where it is strictly smaller than the unclipped one.
  out.clip_fraction = (clipped < unclipped).to(at::kDouble).mean().item<double>();
  out.mismatch_abs_mean = d.abs().to(at::kDouble).mean().item<double>();
  out.mismatch_kl = (at::exp(d) - d - 1.0).to(at::kDouble).mean().item<double>();
  out.corrected_fraction = corrected.to(at::kDouble).mean().item<double>();
  return out;
}

}  // namespace fp4qat::grpo
