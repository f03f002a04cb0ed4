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
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "rollout/sampler.h"

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

// The record of a sampled response (rollout/sampler.h) to `prompt` in group `group` (reward unset).
Sample sample_of(std::vector<int64_t> prompt, rollout::Response r, std::string group);

// One record as a JSON line (without the newline): what read_file reads back, field for field.
// Without `with_reward` the record has no "reward" (samples not yet scored: read_file refuses them).
std::string to_json_line(const Sample& s, int64_t moe_layers = 0, int64_t top_k = 0, bool with_reward = true);

// ---- training batches (data.kind: rollouts) ---------------------------------------------------
// A micro-batch of whole groups. Sample i is the sequence prompt + response; its response token j
// sits at ids[i, P_i + j] and is predicted at target position t = P_i + j - 1.
struct Batch {
  at::Tensor ids;         // int64 [B, T + 1]: prompt + response of each sample, right-padded with 0
  at::Tensor mask;        // bool [B, T]: the target positions that are response tokens
  at::Tensor real;        // bool [B, T]: the input positions that hold a token of the sample (not padding)
  at::Tensor sampler;     // float32 [N]: the sampler's log-prob of each response token (mask's row-major order)
  at::Tensor adv;         // float32 [N]: its advantage
  // Routing replay (R3), when the samples carry routed experts: response token j's experts at its
  // input position P + j (j < R - 1: the last response token is never an input), replay true there.
  at::Tensor routed;      // int64 [B, T, moe_layers, k], or undefined
  at::Tensor replay;      // bool [B, T], or undefined
  double reward_sum = 0;  // over the B samples
  int64_t samples = 0;    // B
  int64_t tokens = 0;     // N: response tokens
};

class Dataset {
 public:
  // A group is the samples of one file with the same "group" id (ids are file-local: `fp4qat
  // generate` numbers its prompts from 0 in every file), in order of first appearance. A sample's
  // advantage on each token: its own "advantages" when the record has them, else its reward
  // normalised within its whole group (grpo::group_advantages: minus the group mean, divided by
  // the group's std when adv_std_normalize).
  // moe_layers, top_k: the layout of the samples' routed experts (Limits), for Batch::routed.
  Dataset(std::vector<Sample> samples, bool adv_std_normalize, uint64_t seed, int64_t moe_layers = 0,
          int64_t top_k = 0);
  bool has_routing() const { return has_routing_; }  // some sample carries routed experts
  int64_t groups() const { return static_cast<int64_t>(groups_.size()); }
  int64_t samples() const { return static_cast<int64_t>(samples_.size()); }
  // Micro-batch `index`: groups_per_batch whole groups. Draw k = index * groups_per_batch + j
  // takes position k mod G of epoch k / G's permutation of the groups (seeded by (seed, epoch)),
  // so any batch can be regenerated from its index (resume needs no data state) and every group
  // is used once per epoch. groups_per_batch must be in [1, groups()].
  Batch batch(uint64_t index, int64_t groups_per_batch) const;

 private:
  std::vector<size_t> permutation(uint64_t epoch) const;
  std::vector<Sample> samples_;
  std::vector<std::vector<size_t>> groups_;  // sample indices of each group
  std::vector<std::vector<float>> adv_;      // per sample: [response length]
  uint64_t seed_;
  int64_t moe_layers_ = 0, top_k_ = 0;
  bool has_routing_ = false;
};

}  // namespace fp4qat::rollouts
