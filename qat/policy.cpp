// qat/policy.cpp — see policy.h.
#include "qat/policy.h"

#include <torch/torch.h>

#include <cmath>

#include "autograd/mxfp8_linear.h"
#include "io/names.h"
#include "kernels/common/check.h"
#include "qat/gated_pairs.h"
#include "qat/marlin.h"
#include "qat/patterns.h"
#include "qat/selection.h"

namespace fp4qat::qat {

QatPolicy::QatPolicy(const Recipe& recipe, const model::Qwen3Moe& model, bool quantize_forward)
    : model_(model), quantize_forward_(quantize_forward) {
  FP4QAT_CHECK(!quantize_forward || recipe.quantizes(), "qat.format '", to_string(recipe.format),
               "': expected nvfp4 or mxfp8");
  mxfp8_ = recipe.format == Format::kMXFP8;
  cache_weights_ = recipe.cache_weights;
  marlin_ = recipe.format == Format::kNVFP4 && recipe.serving == Serving::kMarlin;
  static_ = recipe.format == Format::kNVFP4 && recipe.static_activations();
  recipe.validate();
  opt_.weight_blocks = recipe.weight_blocks;
  opt_.backward = recipe.backward;
  opt_.rules = recipe.nvfp4_rules();
  // The Hugging Face modules each parameter stands for; a stacked expert tensor is selected as a
  // whole (every expert, both members of a pair) or not at all.
  std::vector<ModuleUnit> units;
  std::map<std::string, std::string> param_of;  // module -> parameter
  for (const auto& g : model.hf_groups()) {
    if (g.tensor.dim() < 2 || g.param == "model.embed_tokens.weight") continue;
    ModuleUnit u;
    u.what = g.parts == 2 ? "a gated pair" : (g.names.size() > 1 ? "experts of one stacked tensor" : "one module");
    for (const auto& n : g.names) {
      u.modules.push_back(names::module_of(n));
      param_of[u.modules.back()] = g.param;
    }
    units.push_back(std::move(u));
  }
  for (const auto& m : select_modules(recipe.selection, units, model.config().num_hidden_layers))
    params_.insert(param_of.at(m));
}

std::optional<at::Tensor> QatPolicy::shared_weight_amax(const std::string& param) const {
  auto partner = gated_partner(param);
  if (!partner || !quantized(param)) return std::nullopt;
  torch::NoGradGuard ng;
  return gated_pair_amax(compute_copy(model_.param(param).detach()),
                         compute_copy(model_.param(partner->partner).detach()));
}

namespace {
// The same weight: the same memory viewed the same way (a parameter and its detached alias
// qualify; both share one version counter). The cache keeps the tensor it saw alive, so its
// memory cannot be reused by another tensor while the entry exists.
bool same_weight(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() && b.defined() && a.data_ptr() == b.data_ptr() && a.device() == b.device() &&
         a.sizes() == b.sizes() && a.strides() == b.strides() && a.scalar_type() == b.scalar_type();
}
}  // namespace

const NVFP4Operand* QatPolicy::weight_quantization(const std::string& param, const at::Tensor& w) {
  if (!cache_weights_ || mxfp8_ || !quantize_forward_ || !quantized(param)) return nullptr;
  at::Tensor partner;
  if (auto pr = gated_partner(param); pr && w.dim() == 2) partner = model_.param(pr->partner);
  auto it = cache_.find(param);
  if (it != cache_.end()) {
    const CachedWeight& c = it->second;
    const bool same_partner = partner.defined()
                                  ? same_weight(c.partner, partner) && c.partner_version == partner._version()
                                  : !c.partner.defined();
    if (same_weight(c.w, w) && c.w_version == w._version() && same_partner) return &c.q;
    cache_.erase(it);  // stale: free it before quantizing anew
  }
  torch::NoGradGuard ng;
  CachedWeight c;
  c.w = w;
  c.w_version = w._version();
  if (partner.defined()) {
    c.partner = partner;
    c.partner_version = partner._version();
  }
  c.q = nvfp4_quantize_and_fake(compute_copy(w.detach(), at::kBFloat16), opt_.weight_blocks, shared_weight_amax(param),
                                opt_.rules.weights);
  return &cache_.emplace(param, std::move(c)).first->second.q;
}

NVFP4Operand QatPolicy::marlin_forward_operand(const std::string& param, const at::Tensor& w) {
  torch::NoGradGuard ng;
  if (const NVFP4Operand* q = weight_quantization(param, w)) {
    CachedWeight& c = cache_.at(param);
    if (!c.marlin) c.marlin = marlin_operand(*q, marlin_scale_factor(q->packed.scales));
    return *c.marlin;
  }
  const NVFP4Operand q = nvfp4_quantize_and_fake(compute_copy(w.detach(), at::kBFloat16), opt_.weight_blocks,
                                                 shared_weight_amax(param), opt_.rules.weights);
  return marlin_operand(q, marlin_scale_factor(q.packed.scales));
}

void QatPolicy::set_static_input_amax(const std::string& param, float amax) {
  FP4QAT_CHECK(static_, "set_static_input_amax('", param, "'): the recipe's serving profile is not flashinfer_static");
  FP4QAT_CHECK(quantized(param), "set_static_input_amax: '", param, "' is not a quantized parameter");
  FP4QAT_CHECK(std::isfinite(amax) && amax > 0, "set_static_input_amax('", param, "'): amax ", amax,
               " is not a finite positive number");
  static_amax_[param] = StaticAmax{amax, at::Tensor()};
}

std::optional<float> QatPolicy::static_input_amax(const std::string& param) const {
  auto it = static_amax_.find(param);
  return it == static_amax_.end() ? std::nullopt : std::optional<float>(it->second.value);
}

std::map<std::string, float> QatPolicy::static_input_amaxes() const {
  std::map<std::string, float> out;
  for (const auto& [p, a] : static_amax_) out[p] = a.value;
  return out;
}

autograd::NVFP4LinearOptions QatPolicy::forward_options(const std::string& param, const at::Device& dev) {
  if (!static_) return opt_;
  auto it = static_amax_.find(param);
  FP4QAT_CHECK(it != static_amax_.end(), "qat.serving flashinfer_static: no static activation amax for '", param,
               "' (the trainer calibrates one before the first step; set_static_input_amax)");
  StaticAmax& a = it->second;
  if (!a.device.defined() || a.device.device() != dev) a.device = at::full({}, a.value, at::TensorOptions(dev).dtype(at::kFloat));
  autograd::NVFP4LinearOptions o = opt_;
  o.activation_amax = a.device;
  return o;
}

void QatPolicy::observe(const std::string& name, const at::Tensor& amax) {
  auto it = input_amax_.find(name);
  if (it == input_amax_.end())
    input_amax_.emplace(name, amax);
  else
    it->second = at::maximum(it->second, amax);
}

std::map<std::string, at::Tensor> QatPolicy::take_input_amax() {
  std::map<std::string, at::Tensor> out;
  out.swap(input_amax_);
  return out;
}

at::Tensor QatPolicy::linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) {
  if (!quantized(name)) return LinearPolicy::linear(name, x, w);
  if (at::GradMode::is_enabled() || observe_without_grad) {
    torch::NoGradGuard ng;
    observe(name, x.detach().abs().max().to(at::kFloat));
  }
  if (!quantize_forward_) return LinearPolicy::linear(name, x, w);
  const at::Tensor wc = compute_copy(w, x.scalar_type());
  if (weight_observer) weight_observer(name, wc.detach());
  if (mxfp8_) return autograd::mxfp8_linear(x, wc, opt_.backward);
  if (marlin_) {
    const NVFP4Operand q = marlin_forward_operand(name, w);
    return autograd::nvfp4_linear(x, wc, opt_, std::nullopt, &q);
  }
  const autograd::NVFP4LinearOptions o = forward_options(name, x.device());
  if (const NVFP4Operand* q = weight_quantization(name, w)) return autograd::nvfp4_linear(x, wc, o, std::nullopt, q);
  return autograd::nvfp4_linear(x, wc, o, shared_weight_amax(name));
}

at::Tensor QatPolicy::grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                              const autograd::ExpertRows& rows) {
  const at::Tensor& counts = rows.counts;
  if (!quantized(name)) return LinearPolicy::grouped(name, x, w, rows);
  if (at::GradMode::is_enabled() ||
      observe_without_grad) {  // per-expert activation amax: x [T, K] rows sorted by expert
    torch::NoGradGuard ng;
    const int64_t E = w.size(0), T = x.size(0);
    at::Tensor amax = at::zeros({E}, x.options().dtype(at::kFloat));
    if (T > 0) {
      // Each row's max |x| (one reduction), then each expert's over its rows, from 0 (a segmented
      // max at the experts' row offsets: no atomics on E addresses, as a scatter of T rows was).
      const at::Tensor row_amax = at::linalg_vector_norm(x.detach(), INFINITY, {1}, false, at::kFloat);  // [T]
      const at::Tensor ends = rows.ends_on(x.device());
      const at::Tensor offsets = at::cat({at::zeros({1}, ends.options()), ends}).to(at::kLong);  // [E + 1]
      amax = at::segment_reduce(row_amax, "max", std::nullopt, std::nullopt, offsets, 0, /*unsafe=*/true, 0.0);
    }
    observe(name, amax);
  }
  if (!quantize_forward_) return LinearPolicy::grouped(name, x, w, rows);
  const at::Tensor wc = compute_copy(w, x.scalar_type());
  if (weight_observer) weight_observer(name, wc.detach());
  if (mxfp8_) return autograd::mxfp8_grouped_linear(x.contiguous(), wc, counts, opt_.backward);
  if (marlin_) {
    const NVFP4Operand q = marlin_forward_operand(name, w);
    return autograd::nvfp4_grouped_linear(x.contiguous(), wc, counts, opt_, std::nullopt, &q);
  }
  return autograd::nvfp4_grouped_linear(x.contiguous(), wc, counts, forward_options(name, x.device()), std::nullopt,
                                        weight_quantization(name, w));
}

}  // namespace fp4qat::qat
