// trainer/qat_policy.h — the quantization "converter" kept apart from the model: a
// model::LinearPolicy that routes the linears matched by the recipe's `qat:` section through the
// NVFP4 autograd functions (autograd/nvfp4_linear.h) and leaves the rest in the compute dtype.
// Patterns are globs on Hugging Face module names (`*` matches any characters, dots included),
// e.g. `model.layers.*.mlp.experts.*`. A pattern that matches nothing is an error, and so is
// quantizing one member of a gated pair (gate_proj/up_proj) without the other; the members of a
// pair share one amax (stacked experts keep gate and up rows in one tensor, so their per-expert
// amax is shared by construction).
#pragma once
#include <set>
#include <string>

#include "autograd/nvfp4_linear.h"
#include "trainer/config.h"
#include "trainer/model.h"

namespace fp4qat::qatp {

bool glob_match(const std::string& pattern, const std::string& text);

class NVFP4Policy : public model::LinearPolicy {
 public:
  NVFP4Policy(const config::QatConfig& cfg, const model::Qwen3Moe& model);
  at::Tensor linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) override;
  at::Tensor grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                     const at::Tensor& counts) override;
  bool quantized(const std::string& param_name) const { return params_.count(param_name) > 0; }
  const std::set<std::string>& quantized_params() const { return params_; }

 private:
  const model::Qwen3Moe& model_;
  autograd::NVFP4LinearOptions opt_;
  std::set<std::string> params_;  // parameter names (model-internal) that run in NVFP4
};

}  // namespace fp4qat::qatp
