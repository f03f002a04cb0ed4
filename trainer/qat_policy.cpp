// trainer/qat_policy.cpp — see qat_policy.h.
#include "trainer/qat_policy.h"

#include "kernels/common/check.h"
#include "qat/gated_pairs.h"

namespace fp4qat::qatp {

bool glob_match(const std::string& p, const std::string& t) {
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (pi < p.size() && p[pi] == t[ti]) {
      ++pi;
      ++ti;
    } else if (star != std::string::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

namespace {
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
int64_t layer_of(const std::string& name) {  // "model.layers.<i>." -> i, else -1
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return -1;
  return std::stoll(name.substr(pre.size()));
}
}  // namespace

NVFP4Policy::NVFP4Policy(const config::QatConfig& cfg, const model::Qwen3Moe& model) : model_(model) {
  FP4QAT_CHECK(cfg.format == "nvfp4", "qat.format '", cfg.format, "': only nvfp4 training is supported");
  opt_.weight_blocks = parse_blocks(cfg.weight_blocks);
  opt_.backward = autograd::parse_backward(cfg.backward);
  const int64_t L = model.config().num_hidden_layers;
  std::vector<int> hits(cfg.modules.size(), 0);
  for (const auto& [pname, t] : model.params()) {
    if (t.dim() < 2 || pname == "model.embed_tokens.weight") continue;
    // Hugging Face module names this parameter stands for.
    std::vector<std::string> modules;
    if (ends_with(pname, "experts.gate_up_proj")) {
      const std::string base = pname.substr(0, pname.size() - std::string("gate_up_proj").size());
      modules = {base + "0.gate_proj", base + "0.up_proj"};
    } else if (ends_with(pname, "experts.down_proj")) {
      modules = {pname.substr(0, pname.size() - std::string("down_proj").size()) + "0.down_proj"};
    } else if (ends_with(pname, ".weight")) {
      modules = {pname.substr(0, pname.size() - 7)};
    } else {
      continue;
    }
    std::vector<bool> match(modules.size(), false);
    for (size_t m = 0; m < modules.size(); ++m)
      for (size_t i = 0; i < cfg.modules.size(); ++i)
        if (glob_match(cfg.modules[i], modules[m])) {
          match[m] = true;
          ++hits[i];
        }
    const int64_t layer = layer_of(pname);
    const bool kept = layer >= 0 && (layer < cfg.keep_first_n || layer >= L - cfg.keep_last_n);
    if (modules.size() == 2)
      FP4QAT_CHECK(match[0] == match[1], "qat.modules: '", modules[0], "' and '", modules[1],
                   "' are a gated pair; quantizing only one member of a pair is an error");
    if (match[0] && !kept) params_.insert(pname);
  }
  for (size_t i = 0; i < cfg.modules.size(); ++i)
    FP4QAT_CHECK(hits[i] > 0, "qat.modules: pattern '", cfg.modules[i], "' matches no module of this model");
  for (const auto& p : params_)
    if (auto partner = qat::gated_partner(p))
      FP4QAT_CHECK(params_.count(partner->partner) > 0, "qat.modules: '", p, "' is quantized but its gated partner '",
                   partner->partner, "' is not; quantizing only one member of a pair is an error");
  FP4QAT_CHECK(!params_.empty(), "qat: no module left to quantize (patterns and keep_first_n / keep_last_n)");
}

at::Tensor NVFP4Policy::linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) {
  if (!quantized(name)) return LinearPolicy::linear(name, x, w);
  const at::Tensor wc = w.to(x.scalar_type());
  std::optional<at::Tensor> amax;
  if (auto partner = qat::gated_partner(name)) {  // a dense gate/up pair shares one amax
    const at::Tensor other = model_.param(partner->partner).detach().to(x.scalar_type());
    amax = at::maximum(global_amax(wc.detach()), global_amax(other));
  }
  return autograd::nvfp4_linear(x, wc, opt_, amax);
}

at::Tensor NVFP4Policy::grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                                const at::Tensor& counts) {
  if (!quantized(name)) return LinearPolicy::grouped(name, x, w, counts);
  return autograd::nvfp4_grouped_linear(x.contiguous(), w.to(x.scalar_type()), counts, opt_);
}

}  // namespace fp4qat::qatp
