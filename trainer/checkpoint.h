// trainer/checkpoint.h — checkpoints: `<out_dir>/checkpoints/step-<N>/` holding model.safetensors
// (fp32 masters under the model's parameter names), optim.safetensors (`<name>.exp_avg`,
// `<name>.exp_avg_sq`), state.json (step and resolved config) and config.yaml; published
// atomically with the `latest` symlink (io/publish.h). Always in the single-process layout (every
// expert), so a run resumes under any expert-parallel degree.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "model/qwen3_moe.h"
#include "trainer/adamw.h"
#include "trainer/config.h"

namespace fp4qat::train {

std::string checkpoint_root(const config::Config& cfg);  // <train.out_dir>/checkpoints

// Writes step `step`'s checkpoint; returns its folder. static_amax: the flashinfer_static
// profile's static activation amax per quantized parameter (qat/policy.h), kept in state.json
// ("static_input_amax": {param: {"amax": value, "bits": its float32 bits}}) so that a resumed run
// quantizes with the same values.
std::string save_checkpoint(const config::Config& cfg, const model::Params& params, const AdamWState& st, int64_t step,
                            const std::map<std::string, float>& static_amax = {});

// Loads the newest complete checkpoint (the largest step-<N>, whatever `latest` says) into `model` and `st` (an expert-parallel rank takes its shard);
// returns its step. Throws naming the folder when there is none or it does not fit the model.
// static_amax (if given) receives state.json's static activation amax (empty when it has none).
int64_t load_checkpoint(const config::Config& cfg, model::Qwen3Moe& model, AdamWState& st,
                        std::map<std::string, float>* static_amax = nullptr);

}  // namespace fp4qat::train
