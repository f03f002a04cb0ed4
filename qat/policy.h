// qat/policy.h — the quantization "converter" kept apart from the model: a
// model::LinearPolicy that routes the linears matched by the recipe's `qat:` section through the
// NVFP4 (or MXFP8) autograd functions (autograd/nvfp4_linear.h, mxfp8_linear.h) and leaves the rest in the compute dtype.
// Patterns are globs on Hugging Face module names (`*` matches any characters, dots included),
// e.g. `model.layers.*.mlp.experts.*`. A pattern that matches nothing is an error, and so is
// quantizing one member of a gated pair (gate_proj/up_proj) without the other; the members of a
// pair share one amax (stacked experts keep gate and up rows in one tensor, so their per-expert
// amax is shared by construction).
//
// The policy also observes, in training forwards (grad mode on), the activation amax entering
// every selected linear (per expert for the grouped experts): the running max since the last
// take_input_amax() becomes the exports' `input_scale`. With quantize_forward = false it only
// observes (BF16 training whose exports are quantized: post-training quantization each step).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "autograd/nvfp4_linear.h"
#include "model/qwen3_moe.h"
#include "qat/recipe.h"

namespace fp4qat::qat {

class QatPolicy : public model::LinearPolicy {
 public:
  QatPolicy(const Recipe& recipe, const model::Qwen3Moe& model, bool quantize_forward = true);
  at::Tensor linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) override;
  at::Tensor grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                     const autograd::ExpertRows& rows) override;

  bool quantized(const std::string& param_name) const { return params_.count(param_name) > 0; }
  const std::set<std::string>& quantized_params() const { return params_; }
  Blocks weight_blocks() const { return opt_.weight_blocks; }
  const autograd::NVFP4LinearOptions& nvfp4_options() const { return opt_; }  // blocks, rules, W4A16

  // The global amax a weight is quantized with when it is not its own: a dense gated pair's
  // max(amax_gate, amax_up) over the compute copies; nullopt otherwise (own / per-expert amax).
  std::optional<at::Tensor> shared_weight_amax(const std::string& param) const;

  // The NVFP4 quantization the forward uses for selected weight `param` (its compute copy, the
  // recipe's blocks, its own or the gated pair's shared amax): with qat.cache_weights, computed
  // once per change of the weight and kept — a change is detected by the version counter of the
  // weight (and of a dense gated partner), which every in-place update (optimizer step, checkpoint
  // load) advances — so the micro-batches of a step, evaluation, the mismatch probe and the
  // export of the step share one quantization. nullptr when caching is off or the format is not
  // nvfp4. `w` is the tensor the model hands to linear()/grouped() for `param`.
  const NVFP4Operand* weight_quantization(const std::string& param, const at::Tensor& w);

  // Running max of the activation amax of every selected parameter (float32 [] or [E], on the
  // model's device) observed since the previous call; cleared by the call.
  std::map<std::string, at::Tensor> take_input_amax();
  // The same observations without clearing them.
  const std::map<std::string, at::Tensor>& observed_input_amax() const { return input_amax_; }
  // Folds an activation amax (float32 [] or [E]) into the running max of `name`: how the
  // trainer hands the max over ranks to the exporting rank's policy (multi-process training).
  void observe(const std::string& name, const at::Tensor& amax);

  // Observe activations also without grad mode (calibration runs forwards under NoGradGuard).
  bool observe_without_grad = false;

  // The flashinfer_static serving profile (qat.serving; qat/recipe.h): the activations entering
  // each selected parameter (all its experts) are quantized with one static amax, set here by the
  // trainer (at set-up from a calibration forward, then at every export from the activations
  // seen since the previous one: qat/export.h static_activation_amax) and written by the exports
  // as every module's input_scale. A quantized forward before any is set is an error naming the
  // parameter. Values are host floats; the forward uses a float32 [] copy on the weight's device.
  bool static_activations() const { return static_; }
  void set_static_input_amax(const std::string& param, float amax);
  std::optional<float> static_input_amax(const std::string& param) const;
  std::map<std::string, float> static_input_amaxes() const;

  // Test hook: sees each weight tensor exactly as a quantized forward hands it to the quantizer.
  std::function<void(const std::string& param, const at::Tensor& w)> weight_observer;

 private:
  const model::Qwen3Moe& model_;
  autograd::NVFP4LinearOptions opt_;
  bool quantize_forward_;
  bool mxfp8_ = false;            // qat.format mxfp8: MXFP8 operands (autograd/mxfp8_linear.h)
  std::set<std::string> params_;  // parameter names (model-internal) selected for quantization
  std::map<std::string, at::Tensor> input_amax_;
  bool cache_weights_ = true;
  bool marlin_ = false;  // qat.serving marlin: the forward computes with Marlin's weights (qat/marlin.h)
  bool static_ = false;  // qat.serving flashinfer_static: one static activation amax per parameter
  struct StaticAmax {
    float value = 0;
    at::Tensor device;  // float32 [] on the device of the last forward
  };
  std::map<std::string, StaticAmax> static_amax_;
  // The forward's options: opt_, with the static activation amax of `param` under the profile.
  autograd::NVFP4LinearOptions forward_options(const std::string& param, const at::Device& dev);
  struct CachedWeight {
    at::Tensor w, partner;  // the tensors it was computed from (kept: their identity is part of the key)
    uint32_t w_version = 0, partner_version = 0;
    NVFP4Operand q;                      // the recipe's quantization: what the export writes
    std::optional<NVFP4Operand> marlin;  // marlin_: q as Marlin computes with it, made on first use
  };
  // marlin_: the weight operand of the forward (from the cached quantization, or quantized now).
  NVFP4Operand marlin_forward_operand(const std::string& param, const at::Tensor& w);
  std::map<std::string, CachedWeight> cache_;
};

}  // namespace fp4qat::qat
