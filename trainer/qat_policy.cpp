// trainer/qat_policy.cpp — see qat_policy.h.
#include "trainer/qat_policy.h"

#include <torch/torch.h>

#include "autograd/mxfp8_linear.h"
#include "kernels/common/check.h"
#include "qat/gated_pairs.h"
#include "qat/patterns.h"

namespace fp4qat::qatp {


QatPolicy::QatPolicy(const config::QatConfig& cfg, const model::Qwen3Moe& model, bool quantize_forward)
    : model_(model), quantize_forward_(quantize_forward) {
  FP4QAT_CHECK(!quantize_forward || cfg.format == "nvfp4" || cfg.format == "mxfp8", "qat.format '", cfg.format,
               "': expected nvfp4 or mxfp8");
  mxfp8_ = cfg.format == "mxfp8";
  cache_weights_ = cfg.cache_weights;
  opt_.weight_blocks = parse_blocks(cfg.weight_blocks);
  opt_.backward = autograd::parse_backward(cfg.backward);
  const int64_t L = model.config().num_hidden_layers;
  std::vector<int> hits(cfg.modules.size(), 0);
  for (const auto& g : model.hf_groups()) {
    if (g.tensor.dim() < 2 || g.param == "model.embed_tokens.weight") continue;
    // The Hugging Face modules this parameter stands for; a stacked expert tensor is selected as
    // a whole (every expert, both members of a pair) or not at all.
    std::vector<bool> match(g.names.size(), false);
    for (size_t m = 0; m < g.names.size(); ++m) {
      const std::string module = g.names[m].substr(0, g.names[m].size() - 7);  // drop ".weight"
      for (size_t i = 0; i < cfg.modules.size(); ++i)
        if (qat::glob_match(cfg.modules[i], module)) {
          match[m] = true;
          ++hits[i];
        }
    }
    for (size_t m = 1; m < g.names.size(); ++m)
      FP4QAT_CHECK(match[m] == match[0], "qat.modules: '", g.names[0], "' and '", g.names[m],
                   "' are ", g.parts == 2 ? "a gated pair" : "experts of one stacked tensor",
                   "; the patterns must select all of them or none (quantizing only one member of a pair is an error)");
    const int64_t layer = qat::layer_of(g.param);
    const bool kept = layer >= 0 && (layer < cfg.keep_first_n || layer >= L - cfg.keep_last_n);
    if (match[0] && !kept) params_.insert(g.param);
  }
  for (size_t i = 0; i < cfg.modules.size(); ++i)
    FP4QAT_CHECK(hits[i] > 0, "qat.modules: pattern '", cfg.modules[i], "' matches no module of this model");
  for (const auto& p : params_)
    if (auto partner = qat::gated_partner(p))
      FP4QAT_CHECK(params_.count(partner->partner) > 0, "qat.modules: '", p, "' is quantized but its gated partner '",
                   partner->partner, "' is not; quantizing only one member of a pair is an error");
  FP4QAT_CHECK(!params_.empty(), "qat: no module left to quantize (patterns and keep_first_n / keep_last_n)");
}

at::Tensor QatPolicy::compute_copy(const at::Tensor& master, at::ScalarType dtype) {
  return master.to(at::kBFloat16).to(dtype);
}

std::optional<at::Tensor> QatPolicy::shared_weight_amax(const std::string& param) const {
  auto partner = qat::gated_partner(param);
  if (!partner || !quantized(param)) return std::nullopt;
  torch::NoGradGuard ng;
  return at::maximum(global_amax(compute_copy(model_.param(param).detach(), at::kBFloat16)),
                     global_amax(compute_copy(model_.param(partner->partner).detach(), at::kBFloat16)));
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
  if (auto pr = qat::gated_partner(param); pr && w.dim() == 2) partner = model_.param(pr->partner);
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
  c.q = nvfp4_quantize_and_fake(compute_copy(w.detach(), at::kBFloat16), opt_.weight_blocks, shared_weight_amax(param));
  return &cache_.emplace(param, std::move(c)).first->second.q;
}

void QatPolicy::observe(const std::string& name, const at::Tensor& amax) {
  auto it = input_amax_.find(name);
  if (it == input_amax_.end()) input_amax_.emplace(name, amax);
  else it->second = at::maximum(it->second, amax);
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
  if (const NVFP4Operand* q = weight_quantization(name, w)) return autograd::nvfp4_linear(x, wc, opt_, std::nullopt, q);
  return autograd::nvfp4_linear(x, wc, opt_, shared_weight_amax(name));
}

at::Tensor QatPolicy::grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                              const at::Tensor& counts) {
  if (!quantized(name)) return LinearPolicy::grouped(name, x, w, counts);
  if (at::GradMode::is_enabled() || observe_without_grad) {  // per-expert activation amax: x [T, K] rows sorted by expert
    torch::NoGradGuard ng;
    const int64_t E = w.size(0), T = x.size(0);
    at::Tensor amax = at::zeros({E}, x.options().dtype(at::kFloat));
    if (T > 0) {
      const at::Tensor rows = x.detach().abs().amax(1).to(at::kFloat);                             // [T]
      const at::Tensor ids = at::repeat_interleave(at::arange(E, x.options().dtype(at::kLong)), counts.to(x.device()),
                                                   /*dim=*/0, /*output_size=*/T);  // [T] expert of each row
      amax.scatter_reduce_(0, ids, rows, "amax", /*include_self=*/true);
    }
    observe(name, amax);
  }
  if (!quantize_forward_) return LinearPolicy::grouped(name, x, w, counts);
  const at::Tensor wc = compute_copy(w, x.scalar_type());
  if (weight_observer) weight_observer(name, wc.detach());
  if (mxfp8_) return autograd::mxfp8_grouped_linear(x.contiguous(), wc, counts, opt_.backward);
  return autograd::nvfp4_grouped_linear(x.contiguous(), wc, counts, opt_, std::nullopt, weight_quantization(name, w));
}

}  // namespace fp4qat::qatp
