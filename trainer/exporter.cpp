// trainer/exporter.cpp — see exporter.h.
#include "trainer/exporter.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <utility>

#include "io/names.h"
#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/hf_folder.h"
#include "io/http.h"
#include "io/json.h"
#include "io/publish.h"
#include "trainer/data.h"

namespace fp4qat::train {

Exporter::Exporter(const config::Config& cfg, const model::Qwen3Moe& model, qat::QatPolicy& policy)
    : cfg_(cfg), model_(model), policy_(policy), source_(cfg.train.init_from) {
  serving_ = hf::serving_files(source_);
  tokenizer_ = hf::has_tokenizer(serving_);
  if (!tokenizer_)
    std::fprintf(
        stderr,
        "fp4qat train: warning: the exports will carry no tokenizer (%s): vLLM loads an empty tokenizer "
        "from such a folder instead of failing; give the engine one (--tokenizer PATH)\n",
        source_.empty()
            ? "no train.init_from: the model starts from random weights"
            : ("train.init_from '" + source_ + "' has no tokenizer.json, tokenizer.model or vocab.json").c_str());
}

namespace {

// POSTs the published export to export.push_url and records the outcome in `done`. A failure
// throws with export.push_required, else is a warning on stderr.
void push(const config::ExportConfig& xc, Exporter::Published& done, const std::string& path) {
  done.pushed = true;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    const http::Response r =
        http::post(xc.push_url, xc.push_request(path, done.step), "application/json", xc.push_timeout_s);
    done.push_status = r.status;
    if (!r.ok()) done.push_error = http::describe_failure(xc.push_url, r);
  } catch (const Error& e) {
    done.push_error = e.what();
  }
  done.push_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (done.push_error.empty()) return;
  FP4QAT_CHECK(!xc.push_required, "export step-", done.step, ": push to the engine failed: ", done.push_error,
               " (export.push_required: true; the export is published at ", path, ")");
  std::fprintf(stderr,
               "fp4qat train: warning: export step-%lld: push to the engine failed: %s (the export is published at "
               "%s; training goes on: export.push_required is false)\n",
               static_cast<long long>(done.step), done.push_error.c_str(), path.c_str());
}

}  // namespace

bool Exporter::due(int64_t step) const {
  const int64_t every = cfg_.exports.interval(cfg_.qat);
  return every > 0 && (step % every == 0 || step == cfg_.train.steps);
}

Exporter::~Exporter() {
  if (inflight_.valid()) inflight_.wait();
  if (pruning_.valid()) pruning_.wait();
}

void Exporter::wait() {
  if (!inflight_.valid()) return;
  std::future<Published> f = std::move(inflight_);
  staged_.clear();
  std::vector<std::shared_ptr<qat::StagedFolder>> written = std::exchange(writing_, {});
  last_dir_.clear();
  last_stable_.clear();
  Published done = f.get();  // (throws: nothing is reused from a failed export)
  last_dir_ = done.dir;
  for (const auto& w : written) last_stable_.push_back(w->stable_shards());
  published_.push_back(std::move(done));
  // Off the caller's path (an RL loop samples from the new export meanwhile): removing an old
  // export's shards takes as long as writing a small one on some file systems.
  if (cfg_.exports.keep > 0)
    pruning_ =
        std::async(std::launch::async, [root = root(), keep = cfg_.exports.keep] { io::prune(root, keep, "step-"); })
            .share();
}

void Exporter::finish() {
  wait();
  if (pruning_.valid()) std::exchange(pruning_, {}).get();
}

std::vector<Exporter::Published> Exporter::take_published() { return std::exchange(published_, {}); }

void Exporter::fence() {
  for (auto& s : staged_) s->fence();
  staged_.clear();  // fenced once; the writer thread keeps its own references
}

std::string Exporter::submit(int64_t step) {
  wait();  // one export in flight at a time
  torch::NoGradGuard ng;
  // Merge the window's observations (on the device, no host synchronisation): experts without
  // tokens keep the previous value; never seen: the largest value of the same parameter (its
  // layer's other experts).
  for (auto& [param, seen] : policy_.take_input_amax()) {
    at::Tensor now = seen.to(at::kFloat);
    auto it = amax_.find(param);
    if (it != amax_.end()) now = at::where(now > 0, now, it->second);
    amax_[param] = at::where(now > 0, now, now.max());
  }
  const std::string name = "step-" + std::to_string(step);
  const std::vector<qat::Format>& formats = cfg_.exports.formats;
  const std::vector<model::HfGroup> groups = model_.hf_groups();
  // Everything the staging reads that the current stream computes, computed before staging starts
  // (the side stream begins after the current stream's work so far).
  std::map<std::string, std::optional<at::Tensor>> shared_amax;
  std::map<std::string, at::Tensor> module_amax;  // float32 [E*P]: the input amax of each module
  for (const auto& g : groups) {
    if (!policy_.quantized(g.param)) continue;
    FP4QAT_CHECK(amax_.count(g.param), "export of step ", step, ": no activation was observed for '", g.param,
                 "' (it needs a training forward before an NVFP4 input_scale exists)");
    shared_amax[g.param] = policy_.shared_weight_amax(g.param);
    const at::Tensor a = amax_.at(g.param).reshape({-1});
    const int64_t n = static_cast<int64_t>(g.names.size());
    if (cfg_.qat.static_activations() && cfg_.qat.quantizes()) {
      // flashinfer_static: every module of the parameter the one static amax the forwards use
      // until the next export (set by the trainer before this export; qat/policy.h).
      const std::optional<float> s = policy_.static_input_amax(g.param);
      FP4QAT_CHECK(s.has_value(), "export of step ", step, ": no static activation amax for '", g.param, "'");
      module_amax[g.param] = at::full({n}, *s, a.options());
    } else {
      module_amax[g.param] = (a.numel() == 1 ? a.expand({n}) : a.repeat_interleave(g.parts)).contiguous();
    }
  }
  std::set<std::string> frozen;  // parameters that never change (requires_grad off)
  for (const auto& [n, p] : model_.params())
    if (!p.requires_grad()) frozen.insert(n);
  std::vector<std::shared_ptr<qat::StagedFolder>> staged;
  for (const auto f : formats) {
    qat::ExportOptions opt;
    opt.format = f;
    opt.engine = cfg_.exports.engine;
    opt.blocks = policy_.weight_blocks();
    if (f == qat::Format::kNVFP4) {  // the recipe's checkpoint rules and serving profile; other formats have none
      opt.rules = cfg_.qat.export_rules();
      opt.serving = qat::to_string(cfg_.qat.serving);
    }
    opt.config_json = model::hf_config_json(model_.config());
    opt.producer_version = std::string("fp4qat ") + FP4QAT_VERSION;
    auto sf = std::make_shared<qat::StagedFolder>(opt, pool_);
    for (const auto& g : groups) {
      if (policy_.quantized(g.param)) {
        std::vector<std::string> modules;
        for (const auto& n : g.names) modules.push_back(names::module_of(n));
        // NVFP4: the quantization the forward of the next step uses (QatPolicy's cache: computed
        // once for both); otherwise quantized here, on the side stream.
        const NVFP4Operand* q = f == qat::Format::kNVFP4 ? policy_.weight_quantization(g.param, g.tensor) : nullptr;
        if (q) {
          const bool dense = q->packed.codes.dim() == 2;
          sf->add_stack(modules, g.parts,
                        {dense ? q->packed.codes.unsqueeze(0) : q->packed.codes,
                         dense ? q->packed.scales.unsqueeze(0) : q->packed.scales, q->packed.s_dec.reshape({-1})},
                        module_amax.at(g.param));
        } else {
          sf->add_quantized(modules, g.parts, g.tensor, shared_amax.at(g.param),
                            f == qat::Format::kNVFP4 ? module_amax.at(g.param) : at::Tensor());
        }
      } else {
        // A frozen parameter (expert-only QAT freezes the rest) never changes: the optimizer's
        // fence need not wait for its copy. (The model's parameter says so; g.tensor is a
        // detached view, which never requires a gradient.)
        const bool stable = frozen.count(g.param) > 0;
        if (g.tensor.dim() == 3) {
          const int64_t R = g.tensor.size(1) / g.parts;
          for (int64_t e = 0; e < g.tensor.size(0); ++e)
            for (int64_t p = 0; p < g.parts; ++p)
              sf->add_plain(g.names[e * g.parts + p], g.tensor[e].narrow(0, p * R, R), stable);
        } else {
          sf->add_plain(g.names[0], g.tensor, stable);
        }
      }
    }
    sf->seal();
    staged.push_back(std::move(sf));
  }
  json::Value fmts = json::Value::array();
  for (const auto f : formats) fmts.push_back(qat::to_string(f));
  json::Value quantized = json::Value::array();
  for (const auto& p : policy_.quantized_params()) quantized.push_back(p);
  json::Value files = json::Value::array();
  for (const auto& f : serving_) files.push_back(f);
  json::Value info_v = json::Value::object(
      {{"step", step},
       {"formats", fmts},
       {"weight_blocks", to_string(policy_.weight_blocks())},
       {"trained_in", qat::to_string(cfg_.qat.format)},
       {"nvfp4_recipe", qat::recipe_record(cfg_.qat.export_rules(), qat::to_string(cfg_.qat.serving))},
       {"quantized_parameters", quantized},
       {"serving_files", files},
       {"engine", qat::to_string(cfg_.exports.engine)},
       {"producer", std::string("fp4qat ") + FP4QAT_VERSION}});
  if (tokenizer_) {
    info_v.set("tokenizer", json::Value::object({{"from", source_}}));
  } else {
    info_v.set("tokenizer", nullptr);
    info_v.set("warnings", json::Value::array({"no tokenizer files: vLLM loads an empty tokenizer from these folders "
                                               "instead of failing; serve with the engine's --tokenizer option"}));
  }
  const std::string info = info_v.dump(2) + "\n";
  const std::string recipe = config::dump(cfg_);
  const std::string root_dir = root();
  const std::string source = source_;
  const std::vector<std::string> serving = serving_;
  const config::ExportConfig xc = cfg_.exports;
  // A prepared dataset's id -> bytes table goes with the weights: eval and generate decode text with it.
  const std::string vocab = cfg_.data.kind == "tokens" && data::Dataset::is_dataset(cfg_.data.path)
                                ? cfg_.data.path + "/vocab.bin"
                                : std::string();
  staged_ = staged;
  writing_ = staged;
  const std::string reuse_root = last_dir_;
  const std::vector<qat::StagedFolder::StableShards> reuse = last_stable_;
  const std::shared_future<void> pruned = std::exchange(pruning_, {});
  inflight_ = std::async(std::launch::async, [=]() {
    if (pruned.valid()) pruned.get();  // the previous export's clean-up first (its error is this export's)
    Published done;
    done.step = step;
    done.dir = root_dir + "/" + name;
    const auto t0 = std::chrono::steady_clock::now();
    io::publish(root_dir, name, /*keep=*/0, "step-", [&](const std::string& tmp) {  // pruned after wait()
      for (size_t i = 0; i < staged.size(); ++i) {
        const std::string dir = tmp + "/" + qat::to_string(formats[i]);
        fs::make_dir(dir);
        const bool prior = !reuse_root.empty() && i < reuse.size();
        staged[i]->write(dir, prior ? reuse_root + "/" + qat::to_string(formats[i]) : std::string(),
                         prior ? reuse[i] : qat::StagedFolder::StableShards{});
        done.linked_frozen = done.linked_frozen || staged[i]->reused_stable_shards();
        hf::copy_files(source, serving, dir);  // tokenizer, chat template, generation defaults
        if (!vocab.empty()) fs::copy_file(vocab, dir + "/vocab.bin");
      }
      fs::write_text_atomic(tmp + "/export.json", info);
      fs::write_text_atomic(tmp + "/recipe.yaml", recipe);
    });
    done.write_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!xc.push_url.empty()) push(xc, done, fs::real_path(done.dir + "/" + qat::to_string(formats[0])));
    return done;
  });
  return root_dir + "/" + name;
}

}  // namespace fp4qat::train
