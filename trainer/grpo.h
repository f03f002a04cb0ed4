// trainer/grpo.h — the GRPO objective (issue 22) on the response tokens of rollout samples:
// group-normalised advantages, the clipped surrogate with separate low / high clip (DAPO),
// token-mean aggregation, and the correction for the sampler / learner mismatch (the sampler
// being the served NVFP4 policy, the learner the trainer's): truncated importance sampling or
// masking. Pure functions of tensors; the RL loop calls them.
//
// Per response token t (all inputs [N], the tokens of a micro-batch flattened):
//   r_t   = exp(logp_t - old_t)                      the policy ratio; old = the learner's log-prob
//                                                    when the samples were drawn (detached). Pass the
//                                                    sampler's log-probs as `old` to take the ratio
//                                                    against the sampler itself.
//   m_t   = exp(old_t - sampler_t)                   the learner / sampler mismatch ratio (detached)
//   w_t   = tis:  min(m_t, C)                        truncated importance sampling (default, C = 2)
//           mask: 1 if lo <= m_t <= hi else 0        tokens outside the band drop out
//           none: 1
//   l_t   = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) * w_t  (+ beta * k3(ref, logp))
//   loss  = sum_t l_t / N                            token-mean
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace fp4qat::grpo {

enum class Correction { kTis, kMask, kNone };
Correction parse_correction(const std::string& s);  // "tis" | "mask" | "none"; throws naming the value

struct Options {
  double clip_low = 0.2, clip_high = 0.28;  // eps_low, eps_high (DAPO's clip-higher)
  Correction correction = Correction::kTis;
  double tis_cap = 2.0;                    // C
  double mask_low = 0.5, mask_high = 2.0;  // the band of m_t kept by kMask
  double kl_coef = 0.0;                    // beta: k3 KL to a frozen reference; 0 = off
};

// Advantages of samples from their rewards: r minus the mean of its group, divided by the group's
// (unbiased) standard deviation + eps when `divide_by_std`. A group of one sample has mean 0 and
// standard deviation 1 (its reward is its advantage), as verl does.
std::vector<double> group_advantages(const std::vector<double>& rewards, const std::vector<std::string>& groups,
                                     bool divide_by_std, double eps = 1e-6);

struct Result {
  at::Tensor loss;                // [] token-mean loss (differentiable through logp)
  double clip_fraction = 0;       // tokens whose clipped term is the active one
  double mismatch_abs_mean = 0;   // mean |old - sampler|: sampler / learner |delta log p|
  double mismatch_kl = 0;         // k3 estimate of KL(sampler || learner) on the sampler's tokens
  double corrected_fraction = 0;  // tokens truncated (tis: m_t > C) or masked out (mask)
};

// logp [N] (requires grad), old, sampler, adv [N]; ref [N] or undefined (needed when kl_coef > 0).
Result loss(const at::Tensor& logp, const at::Tensor& old, const at::Tensor& sampler, const at::Tensor& adv,
            const Options& opt, const at::Tensor& ref = at::Tensor());

}  // namespace fp4qat::grpo
