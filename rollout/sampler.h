// rollout/sampler.h — sampling responses from a loaded export (rollout/serving.h) as a rollout
// engine does: the prompt in one forward, then one token per forward with a KV cache; greedy
// (temperature 0) or temperature + top-p sampling with the caller's seeded generator. Used by
// `fp4qat generate` and by the RL loop (`fp4qat rl`).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "rollout/serving.h"

namespace fp4qat::rollout {

struct SampleOptions {
  int64_t max_new_tokens = 32;
  double temperature = 0;  // 0: greedy
  double top_p = 1.0;      // nucleus mass (0, 1]
  int64_t eos = -1;        // stop at this token id (-1: none)
  bool routed = false;     // record each response token's experts in every MoE layer (routing replay)
};

// Next token of each row from logits [B, V] (float32, on any device; the arithmetic stays there):
// greedy, or temperature + top-p sampling. In float64 with each row's largest logit subtracted
// before dividing by the temperature, so that any temperature > 0 (1e-40 included: then greedy
// in effect) gives finite probabilities, and each row's most likely token always kept, so that
// any top_p > 0 (1e-300 included) leaves a token to draw. Row b draws one uniform u in [0, 1)
// from its own generator *gens[b] (on the CPU, so a sample is the same on any device up to the
// logits) and takes the first kept token (in descending probability) whose cumulative share of
// the kept mass exceeds u. Returns int64 [B] on the logits' device.
at::Tensor pick(const at::Tensor& logits, double temperature, double top_p, const std::vector<at::Generator*>& gens);

// One response to a prompt (what a rollout record carries of it: trainer/rollouts.h Sample).
struct Response {
  std::vector<int64_t> tokens;
  std::vector<float> logprobs;  // the model's log-prob of each token (temperature 1, no top-p)
  std::vector<int32_t> routed;  // opt.routed: [tokens][moe layers][top k] expert ids, flattened
};

// Responses to several prompts of one length at once, as an engine batches the requests (and the
// n samples of a request) it runs together: the prompts' forward once ([P, T] with a KV cache),
// each prompt's cache repeated for the rows that continue it, then one forward per step over the
// rows still running ([B, 1]); a finished row leaves the batch (after one more forward for its
// last token's experts with opt.routed). Row r continues prompts[of[r]] with generator gens[r];
// the result is one Response per row, in row order. Each row's tokens depend on the batch only
// where the arithmetic mixes rows: a profile whose activation amax is the batch's (fp4qat's
// dynamic per-tensor scale), or the GEMM's blocking; per-row and static scales keep rows apart.
std::vector<Response> sample_batch(const Loaded& m, const std::vector<std::vector<int64_t>>& prompts,
                                   const std::vector<int64_t>& of, std::vector<at::Generator>& gens,
                                   const SampleOptions& opt, const at::Device& dev, at::ScalarType dt);

// One response to `prompt` (token ids, with room for max_new_tokens within the model's positions):
// response ids, the model's log-prob of each (temperature 1, no top-p: what an RL trainer compares
// against), and with opt.routed the experts of each response token (the last token run as an
// input once more for its routing). sample_batch with one row.
Response sample(const Loaded& m, const std::vector<int64_t>& prompt, const SampleOptions& opt,
                        at::Generator& gen, const at::Device& dev, at::ScalarType dt);

}  // namespace fp4qat::rollout
