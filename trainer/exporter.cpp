// trainer/exporter.cpp — see exporter.h.
#include "trainer/exporter.h"

#include <torch/torch.h>

#include "kernels/common/check.h"
#include "qat/export.h"
#include "qat/fsutil.h"
#include "qat/json.h"

namespace fp4qat::train {

Exporter::Exporter(const config::Config& cfg, const model::Qwen3Moe& model, qatp::QatPolicy& policy)
    : cfg_(cfg), model_(model), policy_(policy) {}

bool Exporter::due(int64_t step) const {
  const int64_t every = cfg_.exports.interval(cfg_.qat.format);
  return every > 0 && (step % every == 0 || step == cfg_.train.steps);
}

std::vector<float> Exporter::input_amax(const std::string& param, int64_t parts, int64_t n_modules) {
  const at::Tensor& a = amax_.at(param);  // [] or [E]
  const at::Tensor flat = a.reshape({-1}).contiguous();
  std::vector<float> out;
  for (int64_t m = 0; m < n_modules; ++m) out.push_back(flat[flat.numel() == 1 ? 0 : m / parts].item<float>());
  return out;
}

std::string Exporter::publish(int64_t step) {
  torch::NoGradGuard ng;
  // Merge the window's observations: experts without tokens keep the previous value; never seen:
  // the largest value of the same parameter (its layer's other experts).
  for (auto& [param, seen] : policy_.take_input_amax()) {
    at::Tensor now = seen.to(at::kCPU);
    auto it = amax_.find(param);
    if (it != amax_.end()) now = at::where(now > 0, now, it->second);
    amax_[param] = at::where(now > 0, now, now.max());
  }
  const std::string name = "step-" + std::to_string(step);
  std::vector<qat::ExportFormat> formats;
  for (const auto& f : cfg_.exports.formats) formats.push_back(qat::parse_export_format(f));
  const std::vector<model::HfGroup> groups = model_.hf_groups();
  for (const auto& g : groups)
    if (policy_.quantized(g.param))
      FP4QAT_CHECK(amax_.count(g.param), "export of step ", step, ": no activation was observed for '", g.param,
                   "' (it needs a training forward before an NVFP4 input_scale exists)");
  qat::publish(root(), name, cfg_.exports.keep, "step-", [&](const std::string& tmp) {
    json::Value fmts = json::Value::array();
    for (const auto f : formats) {
      const std::string dir = tmp + "/" + qat::to_string(f);
      fs::make_dir(dir);
      qat::ExportOptions opt;
      opt.format = f;
      opt.blocks = policy_.weight_blocks();
      opt.config_json = model::hf_config_json(model_.config());
      opt.producer_version = std::string("fp4qat ") + FP4QAT_VERSION;
      qat::HfFolderWriter w(dir, opt);
      for (const auto& g : groups) {
        if (policy_.quantized(g.param)) {
          std::vector<std::string> modules;
          for (const auto& n : g.names) modules.push_back(n.substr(0, n.size() - 7));  // drop ".weight"
          const int64_t n = static_cast<int64_t>(modules.size());
          w.add_quantized(modules, g.parts, g.tensor, policy_.shared_weight_amax(g.param),
                          f == qat::ExportFormat::kNVFP4 ? input_amax(g.param, g.parts, n) : std::vector<float>{});
        } else if (g.tensor.dim() == 3) {
          const int64_t R = g.tensor.size(1) / g.parts;
          for (int64_t e = 0; e < g.tensor.size(0); ++e)
            for (int64_t p = 0; p < g.parts; ++p)
              w.add_plain(g.names[e * g.parts + p], g.tensor[e].narrow(0, p * R, R));
        } else {
          w.add_plain(g.names[0], g.tensor);
        }
      }
      w.finish();
      fmts.push_back(qat::to_string(f));
    }
    json::Value quantized = json::Value::array();
    for (const auto& p : policy_.quantized_params()) quantized.push_back(p);
    const json::Value info = json::Value::object({{"step", step},
                                                  {"formats", fmts},
                                                  {"weight_blocks", to_string(policy_.weight_blocks())},
                                                  {"trained_in", cfg_.qat.format == "none" ? "bf16" : cfg_.qat.format},
                                                  {"quantized_parameters", quantized},
                                                  {"producer", std::string("fp4qat ") + FP4QAT_VERSION}});
    fs::write_text_atomic(tmp + "/export.json", info.dump(2) + "\n");
    fs::write_text_atomic(tmp + "/recipe.yaml", config::dump(cfg_));
  });
  return root() + "/" + name;
}

}  // namespace fp4qat::train
