// model/hf_folder.h — a Qwen3-MoE model to and from a Hugging Face folder (the model's adapter
// at its edge: Hugging Face names end to end).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/hf_folder.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/qwen3_moe.h"

namespace fp4qat::model {

// What a folder holds for one tensor of the model: the tensor itself by default; a quantized
// export holds a module's codes and scales in place of its weight (rollout/serving.cpp).
struct ExpectedTensor {
  std::vector<int64_t> shape;      // [] also accepts [1] (engines read a scalar either way)
  std::optional<st::DType> dtype;  // any when unset (a BF16 folder may hold F32 or F16 too)
};
using ExpectedTensors = std::map<std::string, ExpectedTensor>;  // tensor name -> what it must be
// (Hugging Face name, shape of the model's tensor) -> the tensors the folder holds for it.
using HeldAs = std::function<ExpectedTensors(const std::string& name, const std::vector<int64_t>& shape)>;

// The one check of a model folder's tensors against its config.json (`cfg`, read_hf_config),
// made by every reader (load_hf_folder: train.init_from and convert's calibration; the rollout
// side: eval, generate; convert) before the model is allocated or any weight is read, from the
// safetensors headers: every tensor of the model config.json describes present (as `held_as`
// says, default itself) with its shape (and dtype where given), and no other tensor (a 2-layer
// folder under num_hidden_layers: 1 is refused, naming model.layers.1.*; older checkpoints'
// `*.rotary_emb.inv_freq` buffers are allowed). With tie_word_embeddings: true the head is the
// embedding matrix, as in Hugging Face; an `lm_head.weight` beside it is accepted only as an exact
// copy of model.embed_tokens.weight (read and compared) and ignored, otherwise refused: the two
// say different things and one would silently be dropped. Throws fp4qat::Error naming the folder
// (and file) and each offending tensor, the first few of them in one line.
void check_folder_tensors(hf::FolderReader& files, const ModelConfig& cfg, const HeldAs& held_as = {});

// Hugging Face folders: config.json + model.safetensors or sharded model-*.safetensors with
// model.safetensors.index.json. The tensors are checked against config.json first
// (check_folder_tensors), and each weight read is refused if it holds NaN or Inf (st::check_finite).
Qwen3Moe load_hf_folder(const std::string& dir);
// A model of shape `cfg` (read from `dir`/config.json) for a loader that fills every parameter:
// allocated on `dev`, not initialised; an impossible shape fails naming that config.json.
Qwen3Moe model_of_folder(const std::string& dir, const ModelConfig& cfg, const at::Device& dev = at::kCPU);
// Writes BF16 shards, index.json and config.json into a new folder `dir` (built beside it and
// renamed into place; refuses an existing `dir`).
void save_hf_folder(const Qwen3Moe& model, const std::string& dir, int64_t max_shard_bytes = 2ll << 30);

}  // namespace fp4qat::model
