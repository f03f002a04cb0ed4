// trainer/train.h — the training loop: FP32 master weights, bf16 (or fp32) compute, AdamW with
// decoupled weight decay, linear warmup + cosine decay, global-norm clipping (trainer/adamw.h),
// gradient accumulation, periodic eval (val loss + exact-match accuracy), JSONL metrics, atomic
// checkpoints (trainer/checkpoint.h) and bit-identical resume. train.cpp's Trainer names the
// steps: setup, train_step (forward + backward of the micro-batches), optimizer_step, export_step
// (per-step export and mismatch probe), log_step, eval_step, checkpoint, finish. Plots:
// scripts/plot <out_dir> renders metrics.jsonl.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "trainer/adamw.h"  // learning_rate
#include "trainer/config.h"
#include "dist/process_group.h"
#include "model/qwen3_moe.h"

namespace fp4qat::train {

struct StepLog {
  int64_t step = 0;  // 1-based: the optimizer steps done
  double loss = 0, aux_loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  std::vector<std::vector<double>> expert_load;  // per MoE layer, per expert
  // Seconds the training loop spent on this step's export (0: none): staging it, and waiting for
  // the previous one if that was still being written (and for this one when the probe runs).
  double export_s = 0;
  // Per-token |log p_trainer - log p_export| on the probe batch after this step's export (NaN: none).
  double mismatch_mean = std::nan(""), mismatch_max = std::nan("");
  // objective grpo (NaN otherwise), over the step's rollout samples (every rank's): mean reward and
  // response length; over their response tokens: the fraction where the clipped term is active,
  // the sampler / learner mismatch on the same tokens (mean |log p_learner - log p_sampler| and
  // the k3 estimate of KL(sampler || learner)), the fraction truncated (tis) or masked (mask) by
  // the correction, and the k3 KL(reference || learner) to the initial weights (rl.kl_coef > 0).
  double reward_mean = std::nan(""), response_length_mean = std::nan(""), clip_fraction = std::nan("");
  double sampler_mismatch_mean = std::nan(""), sampler_kl = std::nan(""), corrected_fraction = std::nan("");
  double kl_ref = std::nan("");
  // The RL loop's split of an iteration, on this rank: seconds loading the export it samples from,
  // sampling (response tokens / second of it: sample_tokens_per_s), scoring, at the step that
  // begins the iteration (0: none); train_s, every step: the step's forward, backward and update
  // (export_s is the export's).
  double load_s = 0, sample_s = 0, score_s = 0, sample_tokens_per_s = 0, train_s = 0;
  // On a GPU: the most memory the caching allocator has handed out since the run began, GiB
  // (torch.cuda.max_memory_allocated's number); NaN on the CPU.
  double peak_memory_gib = std::nan("");
};

struct EvalLog {
  int64_t step = 0;
  double val_loss = 0, exact_match = 0;
};

// A fresh run (no resume) into an out_dir that holds an earlier run's outputs (metrics.jsonl,
// checkpoints/, exports/): kAllow writes over them (the library's default, for tests and tools),
// kRefuse stops before anything is written (`fp4qat train`), kOverwrite removes them first
// (`fp4qat train --overwrite`).
enum class ExistingRun { kAllow, kRefuse, kOverwrite };

struct Options {
  bool resume = false;      // continue from the newest complete checkpoint in <out_dir>/checkpoints
  ExistingRun existing = ExistingRun::kAllow;
  int64_t stop_after = -1;  // stop (and checkpoint) after this many steps in this call; -1: run to the end
  bool quiet = false;       // no progress output
  // A Kineto timeline (trainer/timeline.h) of steps trace_first..trace_last (1-based, inclusive;
  // an RL iteration's sampling, loading and export included, evaluation and checkpoints not):
  // the Chrome trace at trace_path, its summary at trace_path + ".txt" and on stdout. With several
  // ranks, each writes its own (".rank<R>" before the extension). Empty: no timeline.
  std::string trace_path;
  int64_t trace_first = 4, trace_last = 6;
  model::LinearPolicy* policy = nullptr;        // null: plain linears
  dist::ProcessGroup* process_group = nullptr;  // null: from the environment (single process)
  // Test hook: (1-based step being computed, parameter, weight) for every weight a quantized
  // forward hands to the quantizer (see QatPolicy::weight_observer).
  std::function<void(int64_t step, const std::string& param, const at::Tensor& w)> weight_observer;
};

struct Result {
  std::vector<StepLog> steps;
  std::vector<EvalLog> evals;
  int64_t final_step = 0;
  std::string last_checkpoint;
  std::string hf_dir;                   // <out_dir>/hf when the run reached train.steps
  std::vector<std::string> exports;     // folders published by this call, oldest first
  bool exports_have_tokenizer = false;  // the exports carry the source model's tokenizer (Exporter)
  int stopped_by_signal = 0;            // SIGINT / SIGTERM that stopped the run early (checkpointed), or 0
};

Result run(const config::Config& cfg, const Options& opt);

// Greedy exact-match accuracy on `n` validation problems.
double exact_match(const model::Qwen3Moe& m, const config::Config& cfg, int64_t n, at::ScalarType dt,
                   model::LinearPolicy& policy, const at::Device& dev);

// Set by SIGINT/SIGTERM: the loop finishes the step, checkpoints and returns.
void install_signal_handlers();

}  // namespace fp4qat::train
