// trainer/checkpoint.cpp — see checkpoint.h.
#include "trainer/checkpoint.h"

#include <torch/torch.h>

#include <cstring>

#include "io/fs.h"
#include "io/json.h"
#include "io/publish.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"

namespace fp4qat::train {

std::string checkpoint_root(const config::Config& c) { return c.train.out_dir + "/checkpoints"; }

namespace {
int64_t float_bits(float a) {
  uint32_t b;
  std::memcpy(&b, &a, sizeof b);
  return static_cast<int64_t>(b);
}
float bits_float(const json::Value& v, const std::string& where) {
  const int64_t bits = v.as_int(where);
  FP4QAT_CHECK(bits >= 0 && bits <= 0xFFFFFFFFll, where, ": ", bits, " is not a float32 bit pattern");
  const uint32_t b = static_cast<uint32_t>(bits);
  float a;
  std::memcpy(&a, &b, sizeof a);
  return a;
}
}  // namespace

std::string save_checkpoint(const config::Config& cfg, const model::Params& params, const AdamWState& st,
                            int64_t step, const ActivationState& act) {
  const std::string root = checkpoint_root(cfg);
  fs::make_dirs(cfg.train.out_dir);
  const std::string folder = "step-" + std::to_string(step);
  io::publish(root, folder, /*keep=*/0, "step-", [&](const std::string& tmp) {
    model::Params ps, os;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& [name, p] = params[i];
      ps.emplace_back(name, p.detach());
      if (!st.m[i].defined()) continue;  // frozen: no moments
      os.emplace_back(name + ".exp_avg", st.m[i]);
      os.emplace_back(name + ".exp_avg_sq", st.v[i]);
    }
    st::write_file(tmp + "/model.safetensors", ps);
    st::write_file(tmp + "/optim.safetensors", os);
    json::Value state = json::Value::object({{"step", step}, {"config", config::dump(cfg)}});
    if (!act.static_amax.empty()) {
      json::Value sa = json::Value::object();
      for (const auto& [p, a] : act.static_amax)
        sa.set(p, json::Value::object({{"amax", static_cast<double>(a)}, {"bits", float_bits(a)}}));
      state.set("static_input_amax", sa);
    }
    if (!act.window.empty()) {
      json::Value w = json::Value::object();
      for (const auto& [p, v] : act.window) {
        json::Value bits = json::Value::array();
        for (float a : v) bits.push_back(float_bits(a));
        w.set(p, bits);
      }
      state.set("static_window_amax", w);
    }
    fs::write_text_atomic(tmp + "/state.json", state.dump(2) + "\n");
    fs::write_text_atomic(tmp + "/config.yaml", config::dump(cfg));
  });
  return root + "/" + folder;
}

int64_t load_checkpoint(const config::Config& cfg, model::Qwen3Moe& model, AdamWState& st,
                        ActivationState* act) {
  const std::string root = checkpoint_root(cfg);
  // The newest complete checkpoint: every step-<N> folder is complete (published by rename), so
  // the largest N — also when `latest` is missing or older (a kill between the rename and the
  // symlink); `latest` alone for a folder without numbered checkpoints.
  const auto all = io::numbered_folders(root, "step-");
  const std::string name = all.empty() ? io::latest(root) : all.back().second;
  FP4QAT_CHECK(!name.empty(), "--resume: no checkpoint in ", root, " (no step-<N> folder and no ", root, "/latest)");
  const std::string dir = root + "/" + name;
  const json::Value state = json::parse(fs::read_text(dir + "/state.json"), dir + "/state.json");
  const int64_t step = state.at("step", dir + "/state.json").as_int(dir + "/state.json: step");
  if (act) {
    *act = ActivationState{};
    const std::string where = dir + "/state.json";
    if (const json::Value* sa = state.find("static_input_amax"))
      for (const auto& [p, v] : sa->as_object(where + ": static_input_amax"))
        act->static_amax[p] = bits_float(v.at("bits", where + ": static_input_amax." + p), where + ": " + p);
    if (const json::Value* w = state.find("static_window_amax"))
      for (const auto& [p, v] : w->as_object(where + ": static_window_amax"))
        for (const auto& b : v.as_array(where + ": static_window_amax." + p))
          act->window[p].push_back(bits_float(b, where + ": static_window_amax." + p));
  }
  st::Reader mr(dir + "/model.safetensors"), orr(dir + "/optim.safetensors");
  torch::NoGradGuard ng;
  int zero_moments = 0;
  for (size_t i = 0; i < model.params().size(); ++i) {
    auto& [pname, p] = model.params()[i];
    // A checkpoint holds every expert; an expert-parallel rank takes its own (re-sharding).
    auto mine = [&](const at::Tensor& t) {
      return model.sharded() && model::Qwen3Moe::is_expert_param(pname) && t.dim() == 3
                 ? t.narrow(0, model.expert_offset(), model.local_experts())
                 : t;
    };
    const at::Tensor src = mine(mr.view(pname));
    FP4QAT_CHECK(src.sizes() == p.sizes(), dir, ": parameter '", pname, "' has shape ", src.sizes(), ", the model ",
                 p.sizes());
    p.copy_(src);
    // Moments: none for a parameter frozen now (a checkpoint of an earlier version, or of a run
    // that trained it, may hold them: not needed); zeros for one that was frozen when the
    // checkpoint was written (none saved: its moments were zero) and trains now.
    if (!st.m[i].defined()) continue;
    if (!orr.contains(pname + ".exp_avg") && !orr.contains(pname + ".exp_avg_sq")) {
      ++zero_moments;
      continue;
    }
    st.m[i].copy_(mine(orr.view(pname + ".exp_avg")));
    st.v[i].copy_(mine(orr.view(pname + ".exp_avg_sq")));
  }
  if (zero_moments > 0)
    std::fprintf(stderr,
                 "fp4qat: --resume: %d parameter(s) have no AdamW moments in %s/optim.safetensors (frozen when it "
                 "was written); they start from zero moments\n",
                 zero_moments, dir.c_str());
  return step;
}

}  // namespace fp4qat::train
