// model/hf_folder.h — a Qwen3-MoE model to and from a Hugging Face folder (the model's adapter
// at its edge: Hugging Face names end to end).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/qwen3_moe.h"

namespace fp4qat::model {

// Hugging Face folders: config.json + model.safetensors or sharded model-*.safetensors with
// model.safetensors.index.json.
Qwen3Moe load_hf_folder(const std::string& dir);
// A model of shape `cfg` (read from `dir`/config.json), randomly initialised, for a loader to
// fill; an impossible shape fails naming that config.json.
Qwen3Moe model_of_folder(const std::string& dir, const ModelConfig& cfg);
// Writes BF16 shards, index.json and config.json into a new folder `dir` (built beside it and
// renamed into place; refuses an existing `dir`).
void save_hf_folder(const Qwen3Moe& model, const std::string& dir, int64_t max_shard_bytes = 2ll << 30);

}  // namespace fp4qat::model
