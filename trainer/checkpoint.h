// trainer/checkpoint.h — checkpoints: `<out_dir>/checkpoints/step-<N>/` holding model.safetensors
// (fp32 masters under the model's parameter names), optim.safetensors (`<name>.exp_avg`,
// `<name>.exp_avg_sq`), state.json (step and resolved config) and config.yaml; published
// atomically with the `latest` symlink (io/publish.h). Always in the single-process layout (every
// expert), so a run resumes under any expert-parallel degree.
#pragma once
#include <cstdint>
#include <map>
#include <vector>
#include <string>

#include "model/qwen3_moe.h"
#include "trainer/adamw.h"
#include "trainer/config.h"

namespace fp4qat::train {

std::string checkpoint_root(const config::Config& cfg);  // <train.out_dir>/checkpoints

// The activation state the flashinfer_static profile's forwards depend on (qat/policy.h): the
// static amax of each quantized parameter, and the amax observed since the last export (the next
// export's static value; float32 [] or [E] flattened, the max over ranks). Kept in state.json as
// float32 bit patterns ("static_input_amax", "static_window_amax") so that a resumed run
// quantizes, and exports, with the same values.
struct ActivationState {
  std::map<std::string, float> static_amax;
  std::map<std::string, std::vector<float>> window;
  bool empty() const { return static_amax.empty() && window.empty(); }
};

// Writes step `step`'s checkpoint; returns its folder.
std::string save_checkpoint(const config::Config& cfg, const model::Params& params, const AdamWState& st, int64_t step,
                            const ActivationState& act = {});

// Loads the newest complete checkpoint (the largest step-<N>, whatever `latest` says) into `model` and `st` (an expert-parallel rank takes its shard);
// returns its step. Throws naming the folder when there is none or it does not fit the model.
// act (if given) receives state.json's activation state (empty when it has none).
int64_t load_checkpoint(const config::Config& cfg, model::Qwen3Moe& model, AdamWState& st,
                        ActivationState* act = nullptr);

}  // namespace fp4qat::train
