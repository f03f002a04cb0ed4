// trainer/rollouts.h — rollout samples as training data (issue 22): the JSONL record a rollout
// engine (or `fp4qat generate`) writes and an RL recipe trains on, and its strict reader.
//
// One JSON object a line:
//   "prompt":   [int, ...]     prompt token ids (>= 1), each in [0, vocab)
//   "response": [int, ...]     sampled token ids (>= 1), each in [0, vocab)
//   "logprobs": [float, ...]   the sampler's log-prob of each response token (one per token,
//                              finite, <= 0): the denominator of the learner/sampler ratio
//   "reward":   float          the sample's scalar reward (finite)
//   "group":    int | string   samples of one prompt share it (GRPO normalises within a group)
//   "advantages": [float, ...] optional: one per response token (finite); given, they are used
//                              as they are instead of group-normalised rewards
//   "routed_experts": [[[int, ...] x top_k] x moe_layers] x response length — optional: the
//                              experts the sampler routed each response token to in each MoE
//                              layer (SGLang's `return_routed_experts` layout), each in
//                              [0, num_experts); the same moe_layers and top_k in every record
// Unknown keys are refused (a misspelt optional key would silently be ignored otherwise).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fp4qat::rollouts {

struct Sample {
  std::vector<int64_t> prompt, response;
  std::vector<float> logprobs;  // [response.size()]
  double reward = 0;
  std::string group;              // the group id as text (an int is written in decimal)
  std::vector<float> advantages;  // empty, or [response.size()]
  std::vector<int32_t> routed;    // empty, or [response.size(), moe_layers, top_k] flattened
  std::string where;              // file:line, for messages
};

struct Limits {
  int64_t vocab = 0;        // token ids in [0, vocab)
  int64_t max_tokens = 0;   // prompt + response at most this (the model's max_position_embeddings)
  int64_t num_experts = 0;  // routed expert ids in [0, num_experts)
  int64_t moe_layers = 0;   // routed_experts' second dimension, when given
  int64_t top_k = 0;        // its third
};

// The samples of one JSONL file, in order. Any defect (a truncated or malformed line, a missing
// or unknown key, a token or expert id out of range, a log-prob or advantage count that does not
// match the response, a NaN / infinite / positive log-prob, a non-finite reward, an empty prompt
// or response, a sample longer than max_tokens) throws fp4qat::Error naming file:line, before any
// sample is returned.
std::vector<Sample> read_file(const std::string& path, const Limits& lim);

// Every `*.jsonl` file of folder `dir`, in name order, concatenated; a folder without one is an
// error naming it.
std::vector<Sample> read_folder(const std::string& dir, const Limits& lim);

// One record as a JSON line (without the newline): what read_file reads back, field for field.
// Without `with_reward` the record has no "reward" (samples not yet scored: read_file refuses them).
std::string to_json_line(const Sample& s, int64_t moe_layers = 0, int64_t top_k = 0, bool with_reward = true);

}  // namespace fp4qat::rollouts
