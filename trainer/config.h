// trainer/config.h — typed configuration of a run: model shape, optimizer, training loop, data,
// QAT. Values resolve as: defaults < model config file (`model_config:`) < recipe file <
// `--set a.b=v` overrides. Unknown keys, wrong types and out-of-range values are rejected with
// the key path (and file) in the message. dump() writes the resolved config as YAML, which every
// checkpoint and export embeds.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "qat/export.h"
#include "qat/recipe.h"
#include "trainer/grpo.h"

namespace fp4qat::config {

struct OptimConfig {
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 20;
  double weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;  // global-norm clipping; 0 disables
};

struct TrainConfig {
  int64_t steps = 200;
  int64_t batch_size = 16;
  int64_t seq_len = 64;
  int64_t grad_accum = 1;
  int64_t eval_every = 50;
  int64_t eval_batches = 4;
  int64_t log_every = 10;
  int64_t checkpoint_every = 100;
  uint64_t seed = 1234;
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // compute dtype: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32; masters are fp32
  std::string out_dir = "runs/default";
  std::string init_from;  // a checkpoint or Hugging Face folder to start from
  // Keep only each decoder layer's input in the forward and run the layer again in backward
  // (model::Qwen3Moe::set_activation_checkpointing): activation memory of one layer instead of
  // all, for one more forward of compute; losses and gradients unchanged, bit for bit.
  bool activation_checkpointing = false;
  // At train.steps: the last checkpoint and the finished model as <out_dir>/hf/. false: neither
  // (a benchmark's or a throw-away run's; a run stopped early still checkpoints).
  bool final_checkpoint = true;
};

struct DataConfig {
  std::string kind = "synthetic";  // synthetic | tokens | rollouts
  // kind tokens: a flat token file (random windows of the stream) or a prepared dataset folder
  // (scripts/prepare_data, docs/data-format.md: documents with a loss mask; trainer/data.h
  // Dataset); kind rollouts: a JSONL file of rollout records (trainer/rollouts.h)
  // or a folder whose *.jsonl files are read in name order. With rollouts, train.batch_size counts
  // groups (every sample of a group lands in the same micro-batch), train.seq_len is unused (a
  // micro-batch is as long as its longest prompt + response) and there is no validation split.
  std::string path;
  double val_fraction = 0.05;  // the last fraction of the tokens (token file) or documents (dataset folder)
  // Dataset folder: pack several documents into each row (attention and positions restart at
  // each document, model::Packing), else one document per row, cut to train.seq_len + 1 tokens
  // and padded.
  bool packing = false;
  int64_t max_operand = 99;  // synthetic: operands of the addition problems in [0, max_operand]
};

// Per-step export for the rollout side (<train.out_dir>/exports/step-<N>/<format>/). The
// quantized modules are the ones the qat section selects (qat/selection.h), also when
// training runs in BF16 (qat.format: none) — that is post-training quantization of each step.
struct ExportConfig {
  int64_t every = -1;  // optimizer steps between exports; 0: off; -1: 1 when qat.format != none, else off
  int64_t keep = 3;    // newest exports kept
  std::vector<qat::Format> formats = {qat::Format::kNVFP4};  // any of nvfp4 | mxfp8 | bf16, written in one publish
  qat::Engine engine = qat::Engine::kSglang;  // vllm | sglang: the layout where they differ (MXFP8 scale names)
  // After each export, load the (first quantized) export back from disk, run it as the rollout
  // side would (rollout/serving.h) on a fixed probe batch and log the per-token log-prob
  // difference to the trainer's own forward (mismatch_mean / mismatch_max). The probe waits for
  // the export to be on disk; without it exports are written in the background.
  bool probe_mismatch = true;
  // Push to a running engine (io/http.h; a build with libcurl): after each export is published
  // (`latest` moved), the background writer POSTs push_body to push_url with Content-Type
  // application/json. In push_body, {path} stands for the absolute path of the export's folder of
  // the first listed format (<out_dir>/exports/step-<N>/<formats[0]>), JSON-escaped for use inside
  // a JSON string, and {step} for the step number. The defaults fit SGLang's
  // /update_weights_from_disk. A connection error, a timeout or a non-2xx answer is a warning and
  // training goes on (the export stays published), or with push_required an error that stops the
  // run. Each push is a metrics.jsonl line: step, push_s, push_status [, push_error].
  std::string push_url;  // "" off; http://... or https://...
  std::string push_body = R"({"model_path": "{path}", "flush_cache": true})";
  double push_timeout_s = 60;  // the whole exchange; the engine answers after loading the weights
  bool push_required = false;
  int64_t interval(const qat::Recipe& r) const { return every >= 0 ? every : (r.quantizes() ? 1 : 0); }
  // The request body for the export at `path` (its first format's folder, absolute) of `step`.
  std::string push_request(const std::string& path, int64_t step) const;
};

// Multi-process training (dist/process_group.h): dp x ep must equal WORLD_SIZE. Every rank reads its
// own batches, so the global batch is train.batch_size x train.grad_accum x WORLD_SIZE.
struct ParallelConfig {
  int64_t dp = -1;          // data-parallel replicas; -1: WORLD_SIZE / ep
  int64_t ep = 1;           // expert-parallel ranks per replica (model.num_experts divisible by it)
  double bucket_mb = 25;    // gradient all-reduce bucket size (MiB)
  int64_t timeout_s = 300;  // rendezvous and collective timeout (a missing or dead peer is an error)
};

// The policy-gradient objective (`objective: grpo`, YAML section `rl`), trainer/grpo.h: per
// response token, the clipped surrogate (DAPO's separate low / high clip) weighted by the
// sampler / learner mismatch correction, token-mean over a micro-batch, plus kl_coef x k3 KL to
// the frozen initial weights. The names follow verl (clip_ratio_low / _high,
// norm_adv_by_std_in_grpo, tis_imp_ratio_cap, kl_loss_coef with low_var_kl = k3).
struct RlConfig {
  grpo::Options loss;             // clip_low 0.2, clip_high 0.28, correction tis (cap 2) | mask | none, kl_coef 0
  bool adv_std_normalize = true;  // group advantages (r - mean) / std, else r - mean
  // Routing replay (R3): each MoE layer routes the response tokens to the experts the sampler chose
  // (the samples' routed_experts), with the router's own scores there as gate weights.
  bool router_replay = false;
  // The loop (`fp4qat rl`, data.kind synthetic): per iteration, `prompts` problems of the synthetic
  // addition task (train split, iteration k takes problems k*prompts ..), `samples` responses each
  // (one GRPO group a prompt) sampled from the newest export's `sample_format` folder read from
  // disk (rollout/sampler.h: the rollout side's forward, a KV cache, temperature / top-p, a
  // generator seeded by (seed, iteration, prompt, sample)), scored by the named reward
  // (trainer/rewards.h), written to <out_dir>/rollouts/iter-<k>/ and trained on for
  // `updates_per_rollout` optimizer steps; then the export the next iteration samples from.
  // iterations 0: no loop (objective grpo trains on data.kind rollouts files).
  int64_t iterations = 0;
  int64_t prompts = 16, samples = 4, max_new_tokens = 8, updates_per_rollout = 1;
  // The most sequences one sampler forward runs: a rank's (prompt, sample) rows go in batches of
  // prompts of one length (rollout::sample_batch), up to this many rows; 1: one at a time.
  int64_t sample_batch = 64;
  double temperature = 1.0, top_p = 1.0;
  std::string reward = "addition";
  qat::Format sample_format = qat::Format::kNVFP4;
  // The serving profile the sampler runs the NVFP4 export with ("": the one the export records;
  // qat::Serving's names, as `fp4qat eval --serving`): e.g. a BF16 learner's post-training
  // quantized exports served as a Hopper engine (marlin) or an SM100 engine (flashinfer_static) would.
  std::string sample_serving;
  uint64_t seed = 0;
  bool loop() const { return iterations > 0; }
};

struct Config {
  std::string model_config;  // path of a model YAML (configs/), relative to the recipe
  // lm: next-token cross-entropy on data (synthetic | tokens; on a dataset folder every target
  // inside a document counts); sft: the cross-entropy of the loss-masked targets of a dataset
  // folder only (data.kind: tokens), their mean over the step's global batch (every micro-batch
  // and rank); grpo: the GRPO objective on rollout samples (data.kind: rollouts), settings in `rl`.
  std::string objective = "lm";
  model::ModelConfig model;
  OptimConfig optim;
  TrainConfig train;
  DataConfig data;
  qat::Recipe qat;       // YAML section `qat`
  ExportConfig exports;  // YAML section `export`
  ParallelConfig parallel;
  RlConfig rl;  // YAML section `rl` (objective: grpo)
};

// Applies a YAML document (the text of `source`, for messages) on top of cfg.
void apply_yaml_text(Config& cfg, const std::string& text, const std::string& source);
// `fp4qat rl`: the loop's derived settings — train.steps = rl.iterations x rl.updates_per_rollout
// and export.every = rl.updates_per_rollout (an export after every iteration, the next one's
// sampler); refuses a config that is not a loop (objective grpo, data.kind synthetic, rl.iterations > 0).
void derive_rl_loop(Config& cfg);
// Loads a recipe file: its `model_config:` file first (resolved against the recipe's folder),
// then the recipe's own keys.
void apply_recipe_file(Config& cfg, const std::string& path);
// One `--set a.b=v` override (v parsed as a YAML scalar or flow sequence). `--set
// model_config=FILE` applies that model shape file there (relative to the working directory).
void apply_set(Config& cfg, const std::string& assignment);
// Cross-field checks (e.g. heads divide, top-k <= experts); throws naming the keys.
void validate(const Config& cfg);
// The resolved config as YAML (every key, in schema order).
std::string dump(const Config& cfg);

}  // namespace fp4qat::config
