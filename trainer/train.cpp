// trainer/train.cpp — see train.h.
#include "trainer/train.h"

#include <ATen/CPUGeneratorImpl.h>

#include <ATen/DeviceAccelerator.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <tuple>
#include <unistd.h>

#include "kernels/common/check.h"
#include "autograd/logprobs.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/publish.h"
#include "io/run_folder.h"
#include "io/safetensors.h"
#include "io/sha256.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/data.h"
#include "trainer/grpo.h"
#include "trainer/rewards.h"
#include "trainer/rollouts.h"
#include "trainer/timeline.h"
#include "io/hf_folder.h"
#include "trainer/exporter.h"
#include "dist/expert_dispatch.h"
#include "dist/grad_reducer.h"
#include "dist/topology.h"
#include "model/hf_folder.h"
#include "qat/policy.h"
#include "rollout/sampler.h"
#include "rollout/serving.h"

namespace fp4qat::train {

namespace {

volatile std::sig_atomic_t g_stop = 0;  // the signal that asked the run to stop (0: none)
void on_signal(int sig) { g_stop = sig; }

// cuda:LOCAL_RANK for a CUDA run (cuda:0 in a single process).
at::Device pick_device(const std::string& s, int local_rank) {
  if (s == "cpu" || (s == "auto" && !at::hasCUDA())) return at::kCPU;
  FP4QAT_CHECK(at::hasCUDA(), "train.device is cuda but no CUDA device is available");
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  FP4QAT_CHECK(local_rank < n, "LOCAL_RANK=", local_rank, " but this machine has ", n, " CUDA device(s)");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

std::string fmt_g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2e", v);
  return b;
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream f(path, std::ios::app);
  f << line << "\n";
}

at::ScalarType compute_dtype(const config::Config& c, const at::Device& dev) {
  if (c.train.dtype == "auto") return dev.is_cuda() ? at::kBFloat16 : at::kFloat;
  return c.train.dtype == "fp32" ? at::kFloat : at::kBFloat16;
}

// The next-token cross-entropy of logits [B, T, V] at targets [B, T] (float32; mean over the
// tokens, or per token [B * T] with reduction None). On CUDA from autograd::target_logprobs (the fused
// rows: no float32 copy of the logits, which at Qwen3's vocabulary were the step's largest
// tensors); elsewhere at::cross_entropy_loss on the float32 logits (the CPU's numbers as before).
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& targets, at::Reduction::Reduction r) {
  if (logits.is_cuda()) {
    const at::Tensor nll = -autograd::target_logprobs(logits, targets).reshape({-1});
    return r == at::Reduction::Mean ? nll.mean() : nll;
  }
  return at::cross_entropy_loss(logits.to(at::kFloat).reshape({-1, logits.size(-1)}), targets.reshape({-1}), {}, r);
}

std::pair<at::Tensor, at::Tensor> loss_of(const model::Qwen3Moe& m, const at::Tensor& batch, at::ScalarType dt,
                                          model::LinearPolicy& policy, model::ForwardOutput* out_fw) {
  const int64_t T = batch.size(1) - 1;
  const at::Tensor inputs = batch.narrow(1, 0, T), targets = batch.narrow(1, 1, T);
  model::ForwardOutput fw = m.forward(inputs, dt, policy);
  const at::Tensor ce = cross_entropy(fw.logits, targets, at::Reduction::Mean);
  const at::Tensor aux = fw.aux_loss;
  if (out_fw) *out_fw = std::move(fw);
  return {ce, aux};
}

// A batch of a prepared dataset: the sum over its loss-masked targets of the next-token
// cross-entropy (fp32 []) and the aux loss; documents packed in a row do not see each other.
std::pair<at::Tensor, at::Tensor> masked_loss_sum(const model::Qwen3Moe& m, const data::DocBatch& b,
                                                  const at::Device& dev, at::ScalarType dt, model::LinearPolicy& policy,
                                                  model::ForwardOutput* out_fw) {
  const int64_t T = b.ids.size(1) - 1;
  const at::Tensor ids = b.ids.to(dev);  // [B, T + 1]
  const at::Tensor inputs = ids.narrow(1, 0, T), targets = ids.narrow(1, 1, T);
  model::Packing packing;
  if (b.positions.defined()) packing = {b.positions.to(dev), b.segments.to(dev)};
  const at::Tensor real = b.real.to(dev);  // the router's aux loss leaves the padding out
  model::ForwardOutput fw =
      m.forward(inputs, dt, policy, nullptr, b.positions.defined() ? &packing : nullptr, nullptr, &real);
  const at::Tensor ce = cross_entropy(fw.logits, targets, at::Reduction::None);  // [B * T]
  const at::Tensor sum = at::where(b.loss_mask.to(dev).reshape({-1}), ce, at::zeros_like(ce)).sum();
  const at::Tensor aux = fw.aux_loss;
  if (out_fw) *out_fw = std::move(fw);
  return {sum, aux};
}

// ---- multi-process helpers (dist/process_group.h) ----------------------------------------------------
// The single-process view of a tensor of the model: an expert shard all-gathered over the
// expert-parallel group (collective over it: every rank of dp replica 0 calls it), else itself.
at::Tensor full_of(const model::Qwen3Moe& model, const dist::Topology& topo, const std::string& name,
                   const at::Tensor& t) {
  if (!model.sharded() || !model::Qwen3Moe::is_expert_param(name)) return t;
  return topo.ep->all_gather(t.detach().contiguous());
}

// Copies the (gathered) weights into the exporting rank's full model. Collective over the
// expert-parallel group of dp replica 0; `full` is set on rank 0 only.
void sync_full_model(const model::Qwen3Moe& model, model::Qwen3Moe* full, const dist::Topology& topo) {
  if (!model.sharded() || topo.dp_index != 0) return;
  torch::NoGradGuard ng;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& [name, p] = model.params()[i];
    const at::Tensor t = full_of(model, topo, name, p);
    if (full) full->params()[i].second.detach().copy_(t);
  }
}

// Max over ranks of activation amax observations (param -> float32 [] or [El]) for every
// quantized parameter of `policy` (sorted: the same order on every rank), on the CPU: an expert
// amax [El] is placed at the shard's experts of a zero [E]; zeros where no rank saw one. Collective.
std::map<std::string, at::Tensor> amax_over_ranks(const std::map<std::string, at::Tensor>& seen,
                                                  const qat::QatPolicy& policy, const model::Qwen3Moe& model,
                                                  const dist::Topology& topo) {
  torch::NoGradGuard ng;
  const int64_t E = model.config().num_experts, El = model.local_experts();
  std::map<std::string, at::Tensor> out;
  for (const auto& name : policy.quantized_params()) {
    const bool expert = model::Qwen3Moe::is_expert_param(name);
    auto it = seen.find(name);
    at::Tensor t = it != seen.end() ? it->second.to(at::kCPU).to(at::kFloat).clone()
                                    : at::zeros(expert ? std::vector<int64_t>{El} : std::vector<int64_t>{}, at::kFloat);
    if (expert && model.sharded()) {
      at::Tensor f = at::zeros({E}, at::kFloat);
      f.narrow(0, model.expert_offset(), El).copy_(t);
      t = f;
    }
    std::vector<at::Tensor> v{t};
    topo.world->all_reduce(v, dist::ReduceOp::kMax);
    out[name] = v[0];
  }
  return out;
}

// The activation amax each rank observed since the last export, max over ranks, handed to the
// exporting policy on rank 0; returned (every rank) for the flashinfer_static profile.
std::map<std::string, at::Tensor> sync_input_amax(qat::QatPolicy& train_policy, qat::QatPolicy* export_policy,
                                                  const model::Qwen3Moe& model, const dist::Topology& topo) {
  const std::map<std::string, at::Tensor> seen = train_policy.take_input_amax();
  std::map<std::string, at::Tensor> all = amax_over_ranks(seen, train_policy, model, topo);
  for (const auto& [name, t] : all)
    if (export_policy && (seen.count(name) || t.max().item<float>() > 0)) export_policy->observe(name, t);
  return all;
}

}  // namespace

void install_signal_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

double exact_match(const model::Qwen3Moe& m, const config::Config& cfg, int64_t n, at::ScalarType dt,
                   model::LinearPolicy& policy, const at::Device& dev) {
  // An expert-sharded model decodes every answer to its full length: its forwards are collective,
  // so every rank must run the same number of them.
  const bool fixed_length = m.sharded();
  torch::NoGradGuard ng;
  data::SyntheticCorpus corpus(cfg.train.seed, cfg.data.max_operand);
  int64_t right = 0;
  for (int64_t i = 0; i < n; ++i) {
    const data::Problem p = corpus.problem(1, static_cast<uint64_t>(1'000'000 + i));
    std::vector<int64_t> seq = p.prompt;
    bool ok = true;
    for (size_t j = 0; j < p.answer.size(); ++j) {
      const at::Tensor ids = at::tensor(seq, at::kLong).unsqueeze(0).to(dev);
      const int64_t next = m.forward(ids, dt, policy).logits[0][-1].argmax().item<int64_t>();
      if (next != p.answer[j]) {
        ok = false;
        if (!fixed_length) break;
      }
      seq.push_back(next);
    }
    right += ok;
  }
  return static_cast<double>(right) / static_cast<double>(std::max<int64_t>(n, 1));
}

namespace {
// Training keeps, per parameter held on this rank, an fp32 master, its gradient and two AdamW
// moments on the device: 16 bytes before any activation. A shape that cannot fit that is refused
// here, before the model is built, naming the keys to change.
// A lower bound of what one micro-batch of `tokens` tokens keeps for its backward, in bytes:
// per layer and token the attention's inputs and outputs (norm, q/k/v, attention, o_proj, residual),
// the router's fp32 logits and, for each of the k routed slots, the expert MLP's rows (input,
// gate/up, activation, output), in the compute dtype (`elem` bytes); then the logits in the compute
// dtype plus their fp32 copy and gradient for the loss. Attention scores, the optimizer's
// temporaries and the allocator's slack come on top.
double activation_bytes(const model::ModelConfig& mc, int64_t tokens, int64_t elem, bool checkpointing) {
  const double H = static_cast<double>(mc.hidden_size), hd = static_cast<double>(mc.head_dim);
  const double qkv = static_cast<double>(mc.num_attention_heads + 2 * mc.num_key_value_heads) * hd;
  const double attn = (4 * H + qkv + static_cast<double>(mc.num_attention_heads) * hd) * elem;
  double layers = 0, largest = 0;
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
    const bool moe = model::is_moe_layer(mc, l);
    const double I = static_cast<double>(moe ? mc.moe_intermediate_size : mc.intermediate_size);
    const double slots = moe ? static_cast<double>(mc.num_experts_per_tok) : 1.0;
    const double one = attn + slots * (2 * H + 3 * I) * elem + (moe ? 4.0 * static_cast<double>(mc.num_experts) : 0.0);
    layers += one;
    largest = std::max(largest, one);
  }
  // Activation checkpointing keeps each layer's input (H) and one layer's activations at a time.
  if (checkpointing) layers = static_cast<double>(mc.num_hidden_layers) * H * elem + largest;
  const double logits = static_cast<double>(mc.vocab_size) * (static_cast<double>(elem) + 8);
  return static_cast<double>(tokens) * (layers + logits);
}

// Refuses, before anything is allocated, a run whose parameters (fp32 masters, gradients and AdamW
// moments: 16 bytes each; the experts sharded over ep ranks) and one micro-batch's activations
// (activation_bytes of train.batch_size x train.seq_len tokens) cannot fit the device: the GPU's
// memory, or on the CPU the machine's memory or the container's (cgroup) limit, whichever is lower.
void check_training_memory(const model::ModelConfig& mc, const config::TrainConfig& t, const at::Device& dev,
                           at::ScalarType dt, int64_t ep) {
  const model::ParameterCount pc = model::parameter_count(mc);
  const int64_t here = pc.total - pc.experts + pc.experts / std::max<int64_t>(ep, 1);
  const double params = static_cast<double>(here) * 16;
  const double acts = activation_bytes(mc, t.batch_size * t.seq_len, dt == at::kFloat ? 4 : 2, t.activation_checkpointing);
  const int64_t have = dev.is_cuda() ? static_cast<int64_t>(at::accelerator::getMemoryInfo(dev.index()).second)
                                     : model::host_memory_bytes();
  const std::string where = dev.is_cuda() ? dev.str() : "this machine (its memory, or its cgroup limit if lower)";
  FP4QAT_CHECK(have == 0 || params <= static_cast<double>(have), "model shape: ", here,
               " parameters on this rank need ", model::gib(params), " on ", where,
               " for training (fp32 masters, gradients and AdamW moments, 16 bytes ",
               "each, before activations) but it has ", model::gib(static_cast<double>(have)), "; the experts are ",
               model::gib(static_cast<double>(pc.experts) * 16 / std::max<int64_t>(ep, 1)), " of it. Use a smaller ",
               "shape (model.num_experts, model.moe_intermediate_size, model.hidden_size, model.num_hidden_layers) ",
               "or shard the experts over more GPUs (parallel.ep)");
  FP4QAT_CHECK(have == 0 || params + acts <= static_cast<double>(have), "train.batch_size ", t.batch_size,
               " x train.seq_len ", t.seq_len, ": one micro-batch's activations need at least ", model::gib(acts),
               " (of which the logits over model.vocab_size ", mc.vocab_size, ": ",
               model::gib(static_cast<double>(t.batch_size * t.seq_len) * static_cast<double>(mc.vocab_size) *
                          ((dt == at::kFloat ? 4.0 : 2.0) + 8)),
               ") beside the parameters' ", model::gib(params), ", more than the ", model::gib(static_cast<double>(have)),
               " of ", where, ". Use a smaller train.batch_size (with train.grad_accum for the same global batch) ",
               "or train.seq_len");
}

// metrics.jsonl on --resume from checkpoint step `step`: the lines of steps after it (written by
// the run that was killed, and about to be written again) and a torn last line are dropped, so
// that every step appears once.
void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::string kept, line;
  std::istringstream in(fs::read_text(path, size_t(1) << 32));
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      const json::Value v = json::parse(line, path);
      const json::Value* s = v.find("step");
      if (s && s->as_int(path) > step) continue;
    } catch (const Error&) {
      continue;  // a line cut short by the kill
    }
    kept += line + "\n";
  }
  fs::write_text_atomic(path, kept);
}
}  // namespace

// ---- the trainer: set-up, train step, optimizer step, export, eval, checkpoint -----------------
namespace {

class Trainer {
 public:
  Trainer(const config::Config& cfg, const Options& opt) : cfg_(cfg), opt_(opt) {}
  Result run();

 private:
  void setup();
  // Rank 0, before anything is written: out_dir's writer lock (io/run_folder.h), an earlier run's
  // outputs refused or removed (Options::existing), temporary folders of killed writers removed.
  void claim_out_dir();
  // Forward and backward of every micro-batch of optimizer step step_ + 1; fills log_.
  void train_step();
  // Gradients averaged over ranks, global-norm clipping and AdamW; returns the gradient norm.
  double optimizer_step(double lr);
  void export_step();  // publish this step's weights for the rollout side, probe the mismatch
  void log_step();     // metrics.jsonl and the console
  void log_pushes();   // a metrics.jsonl line for each export pushed to the engine since the last call
  void eval_step();
  void checkpoint();
  void finish();
  // qat.serving flashinfer_static (qat/recipe.h): the static activation amax of each quantized
  // parameter from `window` (param -> the amax seen, [] or [E], the same on every rank), set on
  // every policy that forwards with them; parameters the window did not see keep theirs.
  void set_static_amax(const std::map<std::string, at::Tensor>& window);
  // At set-up: the values a resumed checkpoint kept, else a calibration forward (the export
  // probe's tokens, activations observed in the compute dtype, max over ranks).
  void init_static_amax(const ActivationState& resumed);
  // The activation state a checkpoint keeps (flashinfer_static; empty otherwise). Collective.
  ActivationState activation_state();
  // The RL loop (rl.iterations > 0, `fp4qat rl`): the export of step 0 (before any update; the
  // activations of a calibration forward on the probe batch give its input_scale), and iteration
  // k's samples — read back from <out_dir>/rollouts/iter-<k>/ when complete there (a resumed run),
  // else sampled from export step-<k * updates_per_rollout> (each rank its share of the prompts,
  // one file a rank), then made the rollouts_ the next updates train on.
  void initial_export();
  void sample_iteration(int64_t k);
  // objective grpo: the loss of rollout micro-batch `index` (forward of the learner, and of the
  // reference when rl.kl_coef > 0) and the aux loss; adds the step's statistics to `sums`.
  struct RlSums {
    double reward = 0, samples = 0, tokens = 0, clipped = 0, abs_dlogp = 0, kl = 0, corrected = 0, kl_ref = 0;
  };
  std::pair<at::Tensor, at::Tensor> grpo_loss(uint64_t index, model::ForwardOutput* out_fw, RlSums& sums);
  // The RL loop's iteration that began before this step (logged with it; zeros: none).
  struct IterationTimes {
    double load_s = 0, sample_s = 0, score_s = 0;  // seconds: loading the export, sampling, scoring
    int64_t tokens = 0;                            // response tokens this rank sampled
  } times_;
  // The export probe's token ids: the validation batch, or the first rows of rollout batch 0.
  at::Tensor probe_ids() const {
    const at::Tensor ids = rollouts_ ? rollouts_->batch(0, cfg_.train.batch_size).ids : batch(1, 0);
    return ids.narrow(0, 0, std::min<int64_t>(4, ids.size(0)));
  }
  data::DocBatch doc_batch(int split, uint64_t index) const {
    return dataset_->batch(split, index, cfg_.train.batch_size, cfg_.train.seq_len, cfg_.data.packing,
                           cfg_.objective == "sft");
  }
  at::Tensor batch(int split, uint64_t index) const {
    if (dataset_) return doc_batch(dataset_->documents(split) > 0 ? split : 0, index).ids;
    return synthetic_ ? corpus_->batch(split, index, cfg_.train.batch_size, cfg_.train.seq_len)
                      : tokens_->batch(split, index, cfg_.train.batch_size, cfg_.train.seq_len);
  }

  const config::Config& cfg_;
  const Options& opt_;
  bool synthetic_ = true, tty_ = false;
  std::unique_ptr<data::TokenFile> tokens_;
  std::unique_ptr<data::Dataset> dataset_;  // data.kind tokens on a prepared dataset folder
  std::unique_ptr<data::SyntheticCorpus> corpus_;
  std::unique_ptr<rollouts::Dataset> rollouts_;  // data.kind rollouts (objective grpo)
  // objective grpo with rl.kl_coef > 0: the initial weights, frozen, and the policy they run with
  std::unique_ptr<model::Qwen3Moe> ref_model_;
  std::unique_ptr<qat::QatPolicy> ref_qat_;
  model::LinearPolicy* ref_policy_ = nullptr;
  at::Device dev_ = at::kCPU;
  at::ScalarType dt_ = at::kFloat;
  std::unique_ptr<dist::ProcessGroup> own_pg_;
  dist::ProcessGroup* pg_ = nullptr;
  std::unique_ptr<dist::Topology> topo_;
  int W_ = 1;
  std::unique_ptr<model::Qwen3Moe> model_;
  model::LinearPolicy plain_;
  std::unique_ptr<qat::QatPolicy> qat_policy_;
  model::LinearPolicy* policy_ = nullptr;
  // Expert parallelism: every rank keeps its experts only; rank 0 also keeps a full copy of the
  // model (and a policy over it) that checkpoints, exports and the final Hugging Face folder
  // are written from, after gathering the shards into it.
  std::unique_ptr<model::Qwen3Moe> full_model_;
  std::unique_ptr<qat::QatPolicy> full_policy_;
  std::unique_ptr<dist::AllToAllDispatch> dispatch_;
  std::unique_ptr<io::RunLock> lock_;  // out_dir's writer lock (rank 0), held for the run
  std::unique_ptr<Exporter> exporter_;
  AdamWState st_;
  // dev_'s index ("cuda" without one: the current device).
  c10::DeviceIndex cuda_index() const { return dev_.has_index() ? dev_.index() : at::accelerator::getDeviceIndex(); }
  std::unique_ptr<dist::GradReducer> reducer_;
  std::string metrics_;
  int64_t step_ = 0, done_here_ = 0;
  StepLog log_;
  double step_tokens_ = 0;  // tokens the step's forwards ran on (every rank's), for tokens_per_s
  Result res_;
  hf::ShardCache shard_cache_;  // the RL sampler's device copies of unchanged (linked) shards
  std::unique_ptr<Timeline> timeline_;  // --trace: recording from Options::trace_first to trace_last
  // The steps --trace records, cut to train.steps ({0, -1}: none).
  std::pair<int64_t, int64_t> traced_steps() const {
    if (opt_.trace_path.empty()) return {0, -1};
    return {std::min(opt_.trace_first, cfg_.train.steps), std::min(opt_.trace_last, cfg_.train.steps)};
  }
  void trace_begin_or_end(bool begin);  // at the start of a step, or after its export and log
};

void Trainer::claim_out_dir() {
  const std::string& dir = cfg_.train.out_dir;
  lock_ = std::make_unique<io::RunLock>(dir, "fp4qat train");
  if (!lock_->stale_owner().empty() && !opt_.quiet)
    std::fprintf(stderr, "fp4qat train: %s was left by a process that is gone (%s); taking it over\n",
                 lock_->path().c_str(), lock_->stale_owner().c_str());
  const std::vector<std::string> outputs = {"metrics.jsonl", "config.yaml", "checkpoints", "exports", "hf", "rollouts"};
  if (!opt_.resume && opt_.existing != ExistingRun::kAllow) {
    std::string found;
    for (const auto& n : outputs)
      if (fs::exists(dir + "/" + n)) found += (found.empty() ? "" : ", ") + n;
    FP4QAT_CHECK(found.empty() || opt_.existing == ExistingRun::kOverwrite, dir, " holds an earlier run (", found,
                 "): continue it with --resume, replace it with --overwrite, or choose another train.out_dir");
    for (const auto& n : outputs) io::remove_atomic(dir + "/" + n);  // a kill midway leaves no half-deleted export
  }
  // The RL loop's samples are this run's: a fresh run never reads an earlier run's iteration
  // folders back (only --resume continues from them).
  if (!opt_.resume && cfg_.rl.loop()) fs::remove_tree(dir + "/rollouts");
  for (const std::string root : {dir, dir + "/checkpoints", dir + "/exports"})
    for (const auto& n : io::remove_dead_temps(root))
      if (!opt_.quiet) std::fprintf(stderr, "fp4qat train: removed %s/%s (left by a killed writer)\n", root.c_str(), n.c_str());
}

void Trainer::setup() {
  const auto& cfg = cfg_;
  config::validate(cfg);
  synthetic_ = cfg.data.kind == "synthetic";
  FP4QAT_CHECK(cfg.data.kind != "tokens" || fs::exists(cfg.data.path), "data.path '", cfg.data.path,
               "' not found (a token file, or a dataset folder scripts/prepare_data wrote)");
  if (synthetic_) {
    FP4QAT_CHECK(cfg.model.vocab_size >= data::kVocabUsed, "model.vocab_size must be >= ", data::kVocabUsed,
                 " for the synthetic corpus");
  } else if (cfg.data.kind == "rollouts") {
    // Every record is read and checked against the model it trains (ids, lengths, routed experts'
    // layout) here, before anything is written: a bad file stops the run naming file:line.
    const model::ModelConfig mc = cfg.train.init_from.empty() ? cfg.model : model::read_hf_config(cfg.train.init_from);
    rollouts::Limits lim;
    lim.vocab = mc.vocab_size;
    lim.max_tokens = mc.max_position_embeddings;
    lim.num_experts = mc.num_experts;
    lim.top_k = mc.num_experts_per_tok;
    lim.moe_layers = model::moe_layer_count(mc);
    FP4QAT_CHECK(fs::exists(cfg.data.path), "data.path '", cfg.data.path, "' not found (a rollout JSONL file or a ",
                 "folder of them)");
    rollouts_ = std::make_unique<rollouts::Dataset>(
        fs::is_dir(cfg.data.path) ? rollouts::read_folder(cfg.data.path, lim) : rollouts::read_file(cfg.data.path, lim),
        cfg.rl.adv_std_normalize, cfg.train.seed, lim.moe_layers, lim.top_k);
    FP4QAT_CHECK(!cfg.rl.router_replay || rollouts_->has_routing(), "rl.router_replay: the samples in ",
                 cfg.data.path, " carry no routed_experts to replay (fp4qat generate --routed-experts, SGLang's ",
                 "return_routed_experts)");
    FP4QAT_CHECK(cfg.train.batch_size <= rollouts_->groups(), "train.batch_size (", cfg.train.batch_size,
                 " groups per micro-batch with data.kind rollouts) exceeds the ", rollouts_->groups(), " groups in ",
                 cfg.data.path);
    FP4QAT_CHECK(cfg.rl.loss.kl_coef == 0 || cfg.parallel.ep == 1,
                 "rl.kl_coef > 0 with parallel.ep > 1 is not supported yet (the reference model is not sharded)");
  } else if (data::Dataset::is_dataset(cfg.data.path)) {
    dataset_ = std::make_unique<data::Dataset>(cfg.data.path, cfg.data.val_fraction, cfg.train.seed);
    const int64_t model_vocab =
        cfg.train.init_from.empty() ? cfg.model.vocab_size : model::read_hf_config(cfg.train.init_from).vocab_size;
    const std::string model_src =
        cfg.train.init_from.empty() ? std::string("model.vocab_size") : cfg.train.init_from + "/config.json vocab_size";
    FP4QAT_CHECK(dataset_->vocab_size() <= model_vocab, cfg.data.path, "/dataset.json: the dataset's tokenizer has ",
                 dataset_->vocab_size(), " token ids (vocab_size), more than the model's ", model_vocab, " (",
                 model_src, "): it was prepared with another tokenizer than the model's");
    // The tokenizer the dataset was made with (dataset.json's tokenizer.sha256, of tokenizer.json)
    // must be the model's when the model folder carries one.
    const std::string model_tok = cfg.train.init_from + "/tokenizer.json";
    if (!cfg.train.init_from.empty() && fs::exists(model_tok)) {
      const std::string have = sha256::file_hex(model_tok);
      FP4QAT_CHECK(have == dataset_->tokenizer_sha256(), cfg.data.path,
                   "/dataset.json: prepared with the tokenizer whose tokenizer.json has sha256 ",
                   dataset_->tokenizer_sha256(), ", but the model's ", model_tok, " has sha256 ", have,
                   ": prepare the data with the model's tokenizer (scripts/prepare_data --tokenizer ",
                   cfg.train.init_from, ")");
    }
    FP4QAT_CHECK(cfg.train.eval_every == 0 || dataset_->documents(1) > 0, cfg.data.path, ": no validation document ",
                 "(", dataset_->num_documents(), " documents, data.val_fraction ", cfg.data.val_fraction,
                 "); raise data.val_fraction or set train.eval_every: 0");
  } else {
    FP4QAT_CHECK(!fs::is_dir(cfg.data.path), "data.path '", cfg.data.path, "' is a folder without dataset.json ",
                 "(expected a token file or a folder scripts/prepare_data wrote)");
    FP4QAT_CHECK(cfg.objective != "sft" && !cfg.data.packing, cfg.data.path, ": a flat token file has no loss mask ",
                 "or document boundaries; objective sft and data.packing need a prepared dataset folder ",
                 "(scripts/prepare_data)");
    tokens_ = std::make_unique<data::TokenFile>(cfg.data.path, cfg.data.val_fraction, cfg.train.seed);
    const int64_t mt = tokens_->max_token();
    FP4QAT_CHECK(mt < cfg.model.vocab_size, cfg.data.path, ": token id ", mt, " is outside model.vocab_size ",
                 cfg.model.vocab_size);
  }
  // Process groups: the injected one, or from the launch environment (gloo on the CPU, NCCL on
  // cuda:LOCAL_RANK); then the dp x ep topology (dist/process_group.h).
  const dist::Env env = opt_.process_group ? dist::Env{} : dist::read_env();
  dev_ = pick_device(cfg.train.device, env.local_rank);
  dist::check_topology(opt_.process_group ? opt_.process_group->world_size() : env.world_size, cfg.parallel.dp,
                       cfg.parallel.ep);
  pg_ = opt_.process_group;
  if (!pg_) {
    own_pg_ = dist::from_environment(dev_.is_cuda(), std::chrono::seconds(cfg.parallel.timeout_s));
    pg_ = own_pg_.get();
  }
  topo_ = dist::make_topology(*pg_, cfg.parallel.dp, cfg.parallel.ep);
  W_ = pg_->world_size();
  // cfg.model is train.init_from's shape when there is one (run())
  check_training_memory(cfg.model, cfg.train, dev_, compute_dtype(cfg, dev_), topo_->ep_size);
  if (pg_->is_main()) claim_out_dir();  // before anything is written
  pg_->barrier();
  dt_ = compute_dtype(cfg, dev_);
  tty_ = ::isatty(STDOUT_FILENO) != 0;
  model_ = std::make_unique<model::Qwen3Moe>(cfg.train.init_from.empty() ? model::Qwen3Moe(cfg.model, cfg.train.seed)
                                                                         : model::load_hf_folder(cfg.train.init_from));
  model::Qwen3Moe& model = *model_;
  model.set_activation_checkpointing(cfg.train.activation_checkpointing);
  if ((rollouts_ || cfg.rl.loop()) && cfg.rl.loss.kl_coef > 0) {  // the KL reference: the initial weights (also on resume), frozen
    ref_model_ = std::make_unique<model::Qwen3Moe>(model);
    torch::NoGradGuard ng;
    for (auto& [n, p] : ref_model_->params()) p = p.detach().clone();
  }
  // The linears' policy: plain, or NVFP4 for the modules the recipe's qat section matches (and,
  // when exports are on, observing the activations those modules see for input_scale).
  const bool exporting = cfg.exports.interval(cfg.qat) > 0;
  if (!opt_.policy && (cfg.qat.quantizes() || exporting))
    qat_policy_ = std::make_unique<qat::QatPolicy>(cfg.qat, model, cfg.qat.quantizes());
  policy_ = opt_.policy ? opt_.policy : (qat_policy_ ? static_cast<model::LinearPolicy*>(qat_policy_.get()) : &plain_);
  if (ref_model_) {  // the reference runs as the learner does: through the qat section's formats when it quantizes
    if (cfg.qat.quantizes()) ref_qat_ = std::make_unique<qat::QatPolicy>(cfg.qat, *ref_model_, true);
    ref_policy_ = ref_qat_ ? static_cast<model::LinearPolicy*>(ref_qat_.get()) : &plain_;
  }
  if (topo_->ep_size > 1 && pg_->is_main()) {
    full_model_ = std::make_unique<model::Qwen3Moe>(model);
    torch::NoGradGuard ng;
    for (auto& [n, p] : full_model_->params()) p = p.detach().clone();
    if (qat_policy_) full_policy_ = std::make_unique<qat::QatPolicy>(cfg.qat, *full_model_, cfg.qat.quantizes());
  }
  dispatch_ = std::make_unique<dist::AllToAllDispatch>(*topo_->ep);
  model.shard_experts(*dispatch_);
  if (qat_policy_ && exporting)
    exporter_ = full_model_ ? std::make_unique<Exporter>(cfg, *full_model_, *full_policy_)
                            : std::make_unique<Exporter>(cfg, model, *qat_policy_);
  // Expert-only fine-tuning freezes every parameter but the quantized modules (below, once on the
  // device): those get no AdamW moments.
  const bool expert_only = qat_policy_ && cfg.qat.quantizes() && cfg.qat.train == qat::TrainScope::kQuantizedOnly;
  auto trains = [&](const std::string& n) { return !expert_only || qat_policy_->quantized(n); };
  st_ = adamw_init(model.params(), trains);
  ActivationState resumed_act;
  if (opt_.resume) step_ = load_checkpoint(cfg, model, st_, &resumed_act);
  model.to(dev_);
  // peak_memory_gib counts from here (the allocator exists once something is on the device).
  if (dev_.is_cuda()) at::accelerator::resetPeakStats(cuda_index());
  if (full_model_) full_model_->to(dev_);
  if (ref_model_) ref_model_->to(dev_);
  if (expert_only) {  // expert-only fine-tuning: freeze the rest
    torch::NoGradGuard ng;
    for (auto& [n, p] : model.params())
      if (!trains(n)) p.requires_grad_(false);
    if (full_model_)  // rank 0's gathered copy under expert parallelism: what the exporter reads
      for (auto& [n, p] : full_model_->params())
        if (!trains(n)) p.requires_grad_(false);
  }
  for (auto* ms : {&st_.m, &st_.v})
    for (auto& t : *ms)
      if (t.defined()) t = t.to(dev_);
  // Data-parallel gradient averaging: every rank's loss counts once in the global mean, so a sum
  // is divided by the world size; an expert shard's gradient already sums the losses of its
  // expert-parallel group (through the combine's backward) and is summed over the dp group only.
  if (W_ > 1) {
    std::vector<dist::GradReducer::Entry> entries;
    for (auto& [n, p] : model.params())
      if (p.requires_grad())
        entries.push_back(
            {p, model.sharded() && model::Qwen3Moe::is_expert_param(n) ? topo_->dp : pg_, static_cast<double>(W_)});
    reducer_ = std::make_unique<dist::GradReducer>(std::move(entries),
                                                   static_cast<int64_t>(cfg.parallel.bucket_mb * 1024 * 1024));
  }
  metrics_ = cfg.train.out_dir + "/metrics.jsonl";
  if (pg_->is_main()) {
    fs::make_dirs(cfg.train.out_dir);
    if (!opt_.resume)
      fs::write_text_atomic(metrics_, "");
    else
      truncate_metrics(metrics_, step_);
    fs::write_text_atomic(cfg.train.out_dir + "/config.yaml", config::dump(cfg));
  }
  pg_->barrier();
  corpus_ = std::make_unique<data::SyntheticCorpus>(cfg.train.seed, cfg.data.max_operand);
  init_static_amax(resumed_act);
}

void Trainer::initial_export() {
  FP4QAT_CHECK(exporter_, "the RL loop needs exports (export.every ", cfg_.exports.every, ")");
  {
    torch::NoGradGuard ng;
    qat_policy_->observe_without_grad = true;  // the export's input_scale: this forward's activations
    model_->forward(probe_ids().to(dev_), dt_, *policy_);
    qat_policy_->observe_without_grad = false;
  }
  log_ = StepLog{};
  export_step();
  if (pg_->is_main() && !opt_.quiet) std::printf("rl: exported step 0 (the first iteration samples from it)\n");
}

namespace {
// The generator seed of one sample of the loop: (seed, iteration, prompt, sample) mixed by
// splitmix64, so that any sample can be drawn again alone (resume, any number of ranks).
uint64_t sample_seed(uint64_t seed, int64_t k, int64_t prompt, int64_t j) {
  uint64_t z = seed;
  for (uint64_t v : {static_cast<uint64_t>(k), static_cast<uint64_t>(prompt), static_cast<uint64_t>(j)}) {
    z += 0x9E3779B97F4A7C15ull + v;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
  }
  return z;
}
}  // namespace

void Trainer::sample_iteration(int64_t k) {
  const auto& cfg = cfg_;
  const auto& rl = cfg.rl;
  const model::ModelConfig& mc = model_->config();
  const int64_t moe_layers = model::moe_layer_count(mc), top_k = mc.num_experts_per_tok;
  const std::string dir = cfg.train.out_dir + "/rollouts/iter-" + std::to_string(k);
  const std::string complete = dir + "/complete";
  if (!fs::exists(complete)) {
    const int64_t from = k * rl.updates_per_rollout;
    const std::string src =
        cfg.train.out_dir + "/exports/step-" + std::to_string(from) + "/" + qat::to_string(rl.sample_format);
    FP4QAT_CHECK(fs::exists(src + "/config.json"), "rl iteration ", k, ": the export it samples from, ", src,
                 ", is missing (export.keep removed it, or the run that wrote it stopped before publishing it)");
    pg_->barrier();
    if (pg_->is_main()) fs::remove_tree(dir);  // an earlier attempt's partial files
    pg_->barrier();
    using clock = std::chrono::steady_clock;
    auto since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
    auto t = clock::now();
    rollout::Loaded m = rollout::load(src, dev_, rl.sample_serving, &shard_cache_);
    times_.load_s = since(t);
    const rewards::Fn score = rewards::by_name(rl.reward);
    rollout::SampleOptions so;
    so.max_new_tokens = rl.max_new_tokens;
    so.temperature = rl.temperature;
    so.top_p = rl.top_p;
    so.eos = data::kSep;  // the task's answers end with ';'
    so.routed = rl.router_replay;
    // This rank's prompts (i = rank, rank + W, ..), each with its `samples` rows, in batches of
    // prompts of one length (first-seen order) of at most rl.sample_batch rows.
    std::vector<data::Problem> problems;
    std::vector<int64_t> index;  // problems[q] is prompt index[q] of the iteration
    for (int64_t i = pg_->rank(); i < rl.prompts; i += W_) {
      problems.push_back(corpus_->problem(0, static_cast<uint64_t>(k * rl.prompts + i)));
      index.push_back(i);
    }
    std::vector<std::vector<rollouts::Sample>> samples(problems.size());
    std::vector<size_t> lengths;  // the prompt lengths, first-seen order
    for (const auto& p : problems)
      if (std::find(lengths.begin(), lengths.end(), p.prompt.size()) == lengths.end()) lengths.push_back(p.prompt.size());
    t = clock::now();
    for (const size_t len : lengths) {
      std::vector<std::pair<size_t, int64_t>> rows;  // (problem, sample)
      for (size_t q = 0; q < problems.size(); ++q)
        if (problems[q].prompt.size() == len)
          for (int64_t j = 0; j < rl.samples; ++j) rows.emplace_back(q, j);
      for (size_t b0 = 0; b0 < rows.size(); b0 += static_cast<size_t>(rl.sample_batch)) {
        const size_t b1 = std::min(rows.size(), b0 + static_cast<size_t>(rl.sample_batch));
        std::vector<std::vector<int64_t>> prompts;
        std::vector<size_t> prompt_of;  // prompts[x] is problems[prompt_of[x]]'s
        std::vector<int64_t> of;
        std::vector<at::Generator> gens;
        for (size_t r = b0; r < b1; ++r) {
          const auto [q, j] = rows[r];
          if (prompt_of.empty() || prompt_of.back() != q) {
            prompt_of.push_back(q);
            prompts.push_back(problems[q].prompt);
          }
          of.push_back(static_cast<int64_t>(prompts.size()) - 1);
          gens.push_back(at::make_generator<at::CPUGeneratorImpl>(sample_seed(rl.seed, k, index[q], j)));
        }
        std::vector<rollout::Response> got = rollout::sample_batch(m, prompts, of, gens, so, dev_, dt_);
        for (size_t r = b0; r < b1; ++r) {
          const size_t q = rows[r].first;
          times_.tokens += static_cast<int64_t>(got[r - b0].tokens.size());
          samples[q].push_back(rollouts::sample_of(problems[q].prompt, std::move(got[r - b0]), std::to_string(index[q])));
        }
      }
    }
    times_.sample_s = since(t);
    t = clock::now();
    std::string text;
    for (auto& group : samples)
      for (auto& smp : group) {
        smp.reward = score(smp.prompt, smp.response);
        text += rollouts::to_json_line(smp, rl.router_replay ? moe_layers : 0, rl.router_replay ? top_k : 0) + "\n";
      }
    times_.score_s = since(t);
    fs::make_dirs(dir);
    fs::write_text_atomic(dir + "/rank-" + std::to_string(pg_->rank()) + ".jsonl", text);
    pg_->barrier();
    if (pg_->is_main()) fs::write_text_atomic(complete, "");
  }
  pg_->barrier();
  rollouts::Limits lim;
  lim.vocab = mc.vocab_size;
  lim.max_tokens = mc.max_position_embeddings;
  lim.num_experts = mc.num_experts;
  lim.top_k = top_k;
  lim.moe_layers = moe_layers;
  // The iteration's groups in prompt order (group id = prompt index), whatever the rank files'
  // split: the batches, and so the updates, are those of one process sampling everything.
  std::vector<rollouts::Sample> samples = rollouts::read_folder(dir, lim);
  std::vector<std::pair<int64_t, size_t>> order;  // (prompt index, position)
  for (size_t q = 0; q < samples.size(); ++q) {
    const std::string& g = samples[q].group;
    FP4QAT_CHECK(!g.empty() && g.size() < 19 && g.find_first_not_of("0123456789") == std::string::npos, dir,
                 ": sample ", q, " has group '", g, "', not a prompt index of the loop");
    order.emplace_back(std::stoll(g), q);
  }
  std::sort(order.begin(), order.end());
  std::vector<rollouts::Sample> sorted;
  for (const auto& [i, q] : order) sorted.push_back(std::move(samples[q]));
  samples = std::move(sorted);
  rollouts_ = std::make_unique<rollouts::Dataset>(std::move(samples), rl.adv_std_normalize, cfg.train.seed,
                                                  moe_layers, top_k);
}

void Trainer::set_static_amax(const std::map<std::string, at::Tensor>& window) {
  torch::NoGradGuard ng;
  std::vector<std::string> names;
  std::vector<at::Tensor> maxes;
  for (const auto& [n, t] : window)
    if (qat_policy_->quantized(n) && t.numel() > 0) {
      names.push_back(n);
      maxes.push_back(t.max().to(at::kFloat).reshape({1}));
    }
  if (names.empty()) return;
  const at::Tensor m = at::cat(maxes).to(at::kCPU);  // one host synchronisation
  for (size_t i = 0; i < names.size(); ++i) {
    const float seen = m[static_cast<int64_t>(i)].item<float>();
    if (!(seen > 0)) continue;  // not seen in this window: keeps its value
    const float a = qat::static_activation_amax(seen);
    for (qat::QatPolicy* p : {qat_policy_.get(), full_policy_.get(), ref_qat_.get()})
      if (p) p->set_static_input_amax(names[i], a);
  }
}

ActivationState Trainer::activation_state() {
  ActivationState out;
  if (!qat_policy_ || !cfg_.qat.quantizes() || !cfg_.qat.static_activations()) return out;
  out.static_amax = qat_policy_->static_input_amaxes();
  // The window since the last export, max over ranks (an expert shard's at its experts).
  for (const auto& [n, t] : amax_over_ranks(qat_policy_->observed_input_amax(), *qat_policy_, *model_, *topo_)) {
    const at::Tensor c = t.reshape({-1}).contiguous();
    if (c.max().item<float>() > 0) out.window[n].assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  return out;
}

void Trainer::init_static_amax(const ActivationState& resumed_act) {
  const auto& cfg = cfg_;
  if (!qat_policy_ || !cfg.qat.quantizes() || !cfg.qat.static_activations()) return;
  const std::map<std::string, float>& resumed = resumed_act.static_amax;
  // The window the checkpoint kept, into this rank's observations (its expert shard's part).
  for (const auto& [n, v] : resumed_act.window) {
    FP4QAT_CHECK(qat_policy_->quantized(n), "--resume: the checkpoint's static_window_amax names '", n,
                 "', which this recipe does not quantize");
    at::Tensor t = at::tensor(v, at::kFloat);
    if (model::Qwen3Moe::is_expert_param(n) && model_->sharded())
      t = t.narrow(0, model_->expert_offset(), model_->local_experts());
    qat_policy_->observe(n, (t.numel() == 1 && !model::Qwen3Moe::is_expert_param(n) ? t.reshape({}) : t).to(dev_));
  }
  if (!resumed.empty()) {
    for (const auto& [n, a] : resumed) {
      FP4QAT_CHECK(qat_policy_->quantized(n), "--resume: the checkpoint's static_input_amax names '", n,
                   "', which this recipe does not quantize");
      for (qat::QatPolicy* p : {qat_policy_.get(), full_policy_.get(), ref_qat_.get()})
        if (p) p->set_static_input_amax(n, a);
    }
  } else {
    qat::QatPolicy observer(cfg.qat, *model_, /*quantize_forward=*/false);
    observer.observe_without_grad = true;
    {
      torch::NoGradGuard ng;
      const at::Tensor ids = probe_ids().to(dev_);
      model_->forward(ids, dt_, observer);
    }
    set_static_amax(amax_over_ranks(observer.take_input_amax(), *qat_policy_, *model_, *topo_));
  }
  for (const auto& n : qat_policy_->quantized_params())
    FP4QAT_CHECK(qat_policy_->static_input_amax(n).has_value(), "qat.serving flashinfer_static: no activation ",
                 "reached '", n, "' in the calibration forward (", cfg.train.out_dir,
                 "); its static scale is unknown");
}

void Trainer::train_step() {
  const auto& cfg = cfg_;
  model::Qwen3Moe& model = *model_;
  for (auto& [n, p] : model.params()) p.mutable_grad() = at::Tensor();
  double loss_sum = 0, aux_sum = 0;
  RlSums rl;
  step_tokens_ = 0;
  std::vector<std::vector<double>> load;
  // A prepared dataset: the step's micro-batches first, for the number of loss targets of the
  // global batch (every micro-batch of every rank), the denominator of the masked mean. Each rank's
  // loss is scaled by W since the gradient reducer averages over ranks.
  std::vector<data::DocBatch> docs;
  double targets = 0;
  if (dataset_) {
    for (int64_t micro = 0; micro < cfg.train.grad_accum; ++micro) {
      docs.push_back(doc_batch(0, static_cast<uint64_t>((step_ * cfg.train.grad_accum + micro) * W_ + pg_->rank())));
      targets += static_cast<double>(docs.back().loss_tokens);
    }
    if (W_ > 1) {
      std::vector<at::Tensor> v{at::tensor({targets}, at::kDouble)};
      pg_->all_reduce(v, dist::ReduceOp::kSum);
      targets = v[0][0].item<double>();
    }
  }
  // The micro-batches' losses and the first one's expert loads stay on the device until every
  // backward is queued: one host synchronisation a step (a GPU keeps the queue full meanwhile).
  std::vector<at::Tensor> ces, auxes, loads;
  std::vector<double> weights;  // each micro-batch's `weight`
  for (int64_t micro = 0; micro < cfg.train.grad_accum; ++micro) {
    // Rank-aware sharding: each rank takes its own slice of the deterministic batch stream.
    const uint64_t bi = static_cast<uint64_t>((step_ * cfg.train.grad_accum + micro) * pg_->world_size() + pg_->rank());
    model::ForwardOutput fw;
    // ce: the objective's loss (next-token cross-entropy, GRPO's token-mean surrogate, or on a
    // dataset the sum over the masked-in targets), counting `weight` in the step's loss
    at::Tensor ce, aux;
    double weight = 1.0 / static_cast<double>(cfg.train.grad_accum);
    if (rollouts_) {
      std::tie(ce, aux) = grpo_loss(bi, &fw, rl);
    } else if (dataset_) {
      std::tie(ce, aux) = masked_loss_sum(model, docs[static_cast<size_t>(micro)], dev_, dt_, *policy_, &fw);
      weight = static_cast<double>(W_) / std::max(targets, 1.0);
    } else {
      std::tie(ce, aux) = loss_of(model, batch(0, bi).to(dev_), dt_, *policy_, &fw);
    }
    const at::Tensor loss =
        ce * weight + aux * (cfg.model.router_aux_loss_coef / static_cast<double>(cfg.train.grad_accum));
    if (reducer_ && micro == cfg.train.grad_accum - 1) reducer_->arm();  // all-reduce buckets overlap this backward
    fw.logits = at::Tensor();  // what the loss needs of them it holds; the backward frees the rest as it goes
    loss.backward();
    ces.push_back(ce.detach().to(at::kDouble).reshape({1}));
    weights.push_back(weight);
    auxes.push_back(aux.detach().to(at::kDouble).reshape({1}));
    if (micro == 0)
      for (const auto& l : fw.expert_load) loads.push_back(l.detach().to(at::kDouble).reshape({-1}));
  }
  {  // back on the host in one transfer, summed in micro-batch order as before
    std::vector<at::Tensor> all = ces;
    all.insert(all.end(), auxes.begin(), auxes.end());
    all.insert(all.end(), loads.begin(), loads.end());
    const at::Tensor host = at::cat(all).to(at::kCPU).contiguous();
    const double* v = host.data_ptr<double>();
    const size_t n = weights.size();
    for (size_t i = 0; i < n; ++i) {
      loss_sum += v[i] * weights[i];
      aux_sum += v[n + i] / cfg.train.grad_accum;
    }
    size_t at_ = 2 * n;
    for (const auto& l : loads) {
      const auto k = static_cast<size_t>(l.numel());
      load.emplace_back(v + at_, v + at_ + k);
      at_ += k;
    }
  }
  std::vector<double*> rl_sums;  // summed over ranks
  if (rollouts_)
    rl_sums = {&rl.reward, &rl.samples,   &rl.tokens, &rl.clipped,  &rl.abs_dlogp,
               &rl.kl,     &rl.corrected, &rl.kl_ref, &step_tokens_};
  else
    step_tokens_ = static_cast<double>(cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum * W_);
  if (W_ > 1) {  // the logged losses: means over every rank's batches
    std::vector<double> vals = {loss_sum, aux_sum};
    for (double* x : rl_sums) vals.push_back(*x);
    at::Tensor lv = at::tensor(vals, at::kDouble);
    std::vector<at::Tensor> v{lv};
    pg_->all_reduce(v, dist::ReduceOp::kSum);
    loss_sum = v[0][0].item<double>() / W_;
    aux_sum = v[0][1].item<double>() / W_;
    for (size_t i = 0; i < rl_sums.size(); ++i) *rl_sums[i] = v[0][static_cast<int64_t>(i) + 2].item<double>();
  }
  // Before any update: a non-finite loss on any rank (the sum over ranks carries it to all of
  // them) stops every rank, with no checkpoint of weights the step would have made non-finite.
  FP4QAT_CHECK(std::isfinite(loss_sum), "step ", step_ + 1, ": the loss is not finite; stopping without a checkpoint");
  if (rollouts_) {
    log_.reward_mean = rl.reward / rl.samples;
    log_.response_length_mean = rl.tokens / rl.samples;
    log_.clip_fraction = rl.clipped / rl.tokens;
    log_.sampler_mismatch_mean = rl.abs_dlogp / rl.tokens;
    log_.sampler_kl = rl.kl / rl.tokens;
    log_.corrected_fraction = rl.corrected / rl.tokens;
    if (ref_model_) log_.kl_ref = rl.kl_ref / rl.tokens;
  }
  log_.loss = loss_sum;
  log_.aux_loss = aux_sum;
  log_.expert_load = std::move(load);
}

// One micro-batch of whole groups (trainer/rollouts.h). Each rollout micro-batch serves one
// optimizer step, so "old" (the learner when the samples were drawn) is the learner's own
// log-probs before this step's update, detached: the ratio is 1 in value (the gradient is the
// policy gradient; the clip bounds bite only when a batch serves several updates), and the
// correction weighs each token by the learner / sampler ratio (tis: min(m, C); mask: 0 outside
// the band), the sampler's log-probs coming from the records.
std::pair<at::Tensor, at::Tensor> Trainer::grpo_loss(uint64_t index, model::ForwardOutput* out_fw, RlSums& sums) {
  const rollouts::Batch b = rollouts_->batch(index, cfg_.train.batch_size);
  const int64_t T = b.ids.size(1) - 1;
  const at::Tensor ids = b.ids.to(dev_), mask = b.mask.to(dev_);  // [B, T + 1], [B, T]
  const at::Tensor inputs = ids.narrow(1, 0, T), targets = ids.narrow(1, 1, T);
  // R3: the sampler's experts for the response tokens (the reference model replays them too).
  model::Routing routing;
  const bool replay = cfg_.rl.router_replay && b.routed.defined();
  if (replay) routing = {b.routed.to(dev_), b.replay.to(dev_)};
  const at::Tensor real = b.real.to(dev_);  // the router's aux loss leaves the padding out
  model::ForwardOutput fw =
      model_->forward(inputs, dt_, *policy_, nullptr, nullptr, replay ? &routing : nullptr, &real);
  const at::Tensor logp = autograd::target_logprobs(fw.logits, targets).masked_select(mask);  // [N]
  at::Tensor ref;  // [N]: the reference's log-probs (rl.kl_coef > 0)
  if (ref_model_) {
    torch::NoGradGuard ng;
    ref = autograd::target_logprobs(
              ref_model_->forward(inputs, dt_, *ref_policy_, nullptr, nullptr, replay ? &routing : nullptr).logits,
              targets)
              .masked_select(mask);
  }
  const grpo::Result r = grpo::loss(logp, logp.detach(), b.sampler.to(dev_), b.adv.to(dev_), cfg_.rl.loss, ref);
  const double n = static_cast<double>(b.tokens);
  sums.reward += b.reward_sum;
  sums.samples += static_cast<double>(b.samples);
  sums.tokens += n;
  sums.clipped += r.clip_fraction * n;
  sums.abs_dlogp += r.mismatch_abs_mean * n;
  sums.kl += r.mismatch_kl * n;
  sums.corrected += r.corrected_fraction * n;
  if (ref.defined()) {
    const at::Tensor d = ref - logp.detach();  // k3(ref || learner) = e^d - d - 1
    sums.kl_ref += (at::exp(d) - d - 1.0).to(at::kDouble).sum().item<double>();
  }
  step_tokens_ += static_cast<double>(inputs.numel());
  const at::Tensor aux = fw.aux_loss;
  if (out_fw) *out_fw = std::move(fw);
  return {r.loss, aux};
}

double Trainer::optimizer_step(double lr) {
  model::Qwen3Moe& model = *model_;
  torch::NoGradGuard ng;
  if (reducer_) {
    for (auto& [n, p] : model.params())  // an expert shard that got no token this step
      if (p.requires_grad() && !p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    reducer_->reduce();
  }
  std::vector<at::Tensor> sq, sq_shard, grads, grads_shard;
  for (auto& [n, p] : model.params())
    if (p.grad().defined())
      (model.sharded() && model::Qwen3Moe::is_expert_param(n) ? grads_shard : grads).push_back(p.grad());
  // Each gradient's sum of squares: on a GPU its 2-norm squared, all gradients' norms in a few
  // multi-tensor launches (one launch a parameter before: the small models' steps are launch-bound);
  // on the CPU as before (the square, then its sum: the CPU's loss curves stay bit for bit).
  auto sums_of_squares = [](const std::vector<at::Tensor>& gs, std::vector<at::Tensor>& out) {
    if (gs.empty()) return;
    if (gs.front().is_cuda()) {
      out.push_back(at::stack(at::_foreach_norm(gs, 2, at::kFloat)).square().sum());
      return;
    }
    for (const at::Tensor& g : gs) out.push_back(g.to(at::kFloat).pow(2).sum());
  };
  sums_of_squares(grads, sq);
  sums_of_squares(grads_shard, sq_shard);
  // (Expert-only fine-tuning under expert parallelism: every gradient is an expert shard's.)
  at::Tensor total = sq.empty() ? at::zeros({}, at::TensorOptions(dev_).dtype(at::kFloat)) : at::stack(sq).sum();
  if (model.sharded()) {  // expert shards: their squares summed over the expert-parallel group (every rank joins)
    std::vector<at::Tensor> v{sq_shard.empty() ? at::zeros({1}, at::TensorOptions(dev_).dtype(at::kFloat))
                                               : at::stack(sq_shard).sum().reshape({1})};
    topo_->ep->all_reduce(v, dist::ReduceOp::kSum);
    total = total + v[0][0];
  }
  const double grad_norm = std::sqrt(total.item<double>());
  if (exporter_) exporter_->fence();  // the weights change below: after the export's reads of them
  adamw_update(model.params(), st_, cfg_.optim, lr, clip_scale(cfg_.optim, grad_norm), step_ + 1);
  return grad_norm;
}

void Trainer::export_step() {
  const auto& cfg = cfg_;
  model::Qwen3Moe& model = *model_;
  const auto te = std::chrono::steady_clock::now();
  std::map<std::string, at::Tensor> window;  // the activation amax seen since the last export (max over ranks)
  if (W_ > 1) {  // every rank's activation amax, and the expert shards, to rank 0's exporter
    window = sync_input_amax(*qat_policy_,
                             pg_->is_main() ? (full_policy_ ? full_policy_.get() : qat_policy_.get()) : nullptr, model,
                             *topo_);
    sync_full_model(model, full_model_.get(), *topo_);
  } else {
    window = qat_policy_->observed_input_amax();
  }
  // flashinfer_static: this export's input_scale, and the forwards' until the next export.
  if (cfg.qat.static_activations()) set_static_amax(window);
  // Train/rollout mismatch: the export read back from disk and run as the rollout side runs it,
  // against the trainer's own forward with the same weights (those of step + 1). The probe
  // needs the folder on disk, so with it the export is waited for; without it the folders
  // are written in the background while training goes on.
  std::string probed;
  for (const auto f : cfg.exports.formats)
    if (probed.empty() && f != qat::Format::kBF16) probed = qat::to_string(f);
  std::string dir;
  if (pg_->is_main()) {
    dir = exporter_->submit(step_);
    // The loop's next iteration samples from this folder: published before any rank goes on.
    if ((cfg.exports.probe_mismatch && !probed.empty()) || cfg.rl.loop()) exporter_->wait();
  }
  pg_->barrier();
  log_.export_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
  if (!dir.empty()) res_.exports.push_back(dir);
  // (An expert-sharded model's forward is collective: every rank runs the trainer's side.)
  if (cfg.exports.probe_mismatch && !probed.empty() && (pg_->is_main() || model.sharded())) {
    const at::Tensor probe = probe_ids().to(dev_);
    const at::Tensor lt = rollout::token_logprobs(model, *policy_, probe, dt_);
    if (!dir.empty()) {
      rollout::Loaded served = rollout::load(dir + "/" + probed, dev_);
      const at::Tensor lr_ = rollout::token_logprobs(*served.model, *served.policy, probe, dt_);
      const at::Tensor d = (lt - lr_).abs();
      log_.mismatch_mean = d.mean().item<double>();
      log_.mismatch_max = d.max().item<double>();
    }
  }
}

void Trainer::log_step() {
  const auto& cfg = cfg_;
  const StepLog& log = log_;
  json::Value line = json::Value::object({{"step", step_},
                                          {"loss", log.loss},
                                          {"lr", log.lr},
                                          {"grad_norm", log.grad_norm},
                                          {"tokens_per_s", log.tokens_per_s},
                                          {"aux_loss", log.aux_loss}});
  if (log.export_s > 0) line.set("export_s", log.export_s);
  if (log.sample_s > 0) {  // the RL loop's iteration split (this rank's): load, sample, score; then train, export
    line.set("load_s", log.load_s);
    line.set("sample_s", log.sample_s);
    line.set("score_s", log.score_s);
    line.set("sample_tokens_per_s", log.sample_tokens_per_s);
  }
  if (cfg.rl.loop()) line.set("train_s", log.train_s);
  if (!std::isnan(log.peak_memory_gib)) line.set("peak_memory_gib", log.peak_memory_gib);
  if (!std::isnan(log.mismatch_mean)) {
    line.set("mismatch_mean", log.mismatch_mean);
    line.set("mismatch_max", log.mismatch_max);
  }
  if (!std::isnan(log.reward_mean)) {
    line.set("reward_mean", log.reward_mean);
    line.set("response_length_mean", log.response_length_mean);
    line.set("clip_fraction", log.clip_fraction);
    line.set("sampler_mismatch_mean", log.sampler_mismatch_mean);
    line.set("sampler_kl", log.sampler_kl);
    line.set("corrected_fraction", log.corrected_fraction);
    if (!std::isnan(log.kl_ref)) line.set("kl_ref", log.kl_ref);
  }
  json::Value lj = json::Value::array();
  for (const auto& l : log.expert_load) {
    json::Value row = json::Value::array();
    for (double v : l) row.push_back(v);
    lj.push_back(row);
  }
  line.set("expert_load", lj);
  if (pg_->is_main()) append_line(metrics_, line.dump());
  log_pushes();
  if (!opt_.quiet && tty_) {  // a progress bar on a terminal
    const int w = 30, filled = static_cast<int>(w * step_ / cfg.train.steps);
    std::printf("\r[%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ", std::string(filled, '#').c_str(),
                std::string(w - filled, '.').c_str(), (long long)step_, (long long)cfg.train.steps, log.loss, log.lr,
                log.tokens_per_s);
    std::fflush(stdout);
  }
  if (!opt_.quiet && (step_ % cfg.train.log_every == 0 || step_ == 1) && (!tty_ || step_ == cfg.train.steps))
    std::printf("step %5lld/%lld  loss %.4f  aux %.4f  lr %.2e  |g| %.3f  %.0f tok/s%s\n", (long long)step_,
                (long long)cfg.train.steps, log.loss, log.aux_loss, log.lr, log.grad_norm, log.tokens_per_s,
                log.export_s > 0
                    ? ("  export " + std::to_string(static_cast<int>(log.export_s * 1000)) + " ms" +
                       (std::isnan(log.mismatch_mean) ? std::string() : "  |dlogp| " + fmt_g(log.mismatch_mean)))
                          .c_str()
                    : "");
  if (!opt_.quiet && !std::isnan(log.reward_mean) && (step_ % cfg.train.log_every == 0 || step_ == 1) &&
      (!tty_ || step_ == cfg.train.steps))
    std::printf(
        "      reward %.4f  response %.1f tokens  |dlogp| sampler %.2e  kl %.2e  corrected %.3f  clipped %.3f\n",
        log.reward_mean, log.response_length_mean, log.sampler_mismatch_mean, log.sampler_kl, log.corrected_fraction,
        log.clip_fraction);
}

// The push of an export finishes in the background: its line follows the line of the step that
// collected it (the next export's, or the last step's), under the exported step's number.
void Trainer::log_pushes() {
  if (!exporter_ || !pg_->is_main()) return;
  for (const Exporter::Published& p : exporter_->take_published()) {
    if (!p.pushed) continue;
    json::Value line = json::Value::object({{"step", p.step}, {"push_s", p.push_s}, {"push_status", p.push_status}});
    if (!p.push_error.empty()) line.set("push_error", p.push_error);
    append_line(metrics_, line.dump());
  }
}

void Trainer::eval_step() {
  const auto& cfg = cfg_;
  torch::NoGradGuard ng;
  double vl = 0, n = 0;
  for (int64_t b = 0; b < cfg.train.eval_batches; ++b) {
    if (dataset_) {  // the mean over every loss target of the eval batches
      const data::DocBatch db = doc_batch(1, static_cast<uint64_t>(b));
      vl += masked_loss_sum(*model_, db, dev_, dt_, *policy_, nullptr).first.item<double>();
      n += static_cast<double>(db.loss_tokens);
    } else {
      vl += loss_of(*model_, batch(1, static_cast<uint64_t>(b)).to(dev_), dt_, *policy_, nullptr).first.item<double>();
      n += 1;
    }
  }
  EvalLog ev{step_, n > 0 ? vl / n : std::nan(""),
             synthetic_ ? exact_match(*model_, cfg, 32, dt_, *policy_, dev_) : std::nan("")};
  res_.evals.push_back(ev);
  if (pg_->is_main())
    append_line(
        metrics_,
        json::Value::object({{"step", step_}, {"val_loss", ev.val_loss}, {"exact_match", ev.exact_match}}).dump());
  if (!opt_.quiet)
    std::printf("eval  step %lld  val_loss %.4f  exact_match %.3f\n", (long long)step_, ev.val_loss, ev.exact_match);
}

// The checkpoint in the single-process layout: gathered into full tensors under expert
// parallelism (collective on dp replica 0), written by rank 0 after which every rank waits.
void Trainer::checkpoint() {
  const model::Qwen3Moe& model = *model_;
  const ActivationState act = activation_state();  // collective: every rank
  if (!model.sharded()) {
    if (pg_->is_main()) res_.last_checkpoint = save_checkpoint(cfg_, model.params(), st_, step_, act);
  } else if (topo_->dp_index == 0) {
    model::Params ps;
    AdamWState fs;
    for (size_t i = 0; i < model.params().size(); ++i) {
      const auto& [n, p] = model.params()[i];
      ps.emplace_back(n, full_of(model, *topo_, n, p));
      // (A frozen parameter has no moments, on every rank alike: nothing to gather.)
      fs.m.push_back(st_.m[i].defined() ? full_of(model, *topo_, n, st_.m[i]) : at::Tensor());
      fs.v.push_back(st_.v[i].defined() ? full_of(model, *topo_, n, st_.v[i]) : at::Tensor());
    }
    if (pg_->is_main()) res_.last_checkpoint = save_checkpoint(cfg_, ps, fs, step_, act);
  }
  pg_->barrier();
}

void Trainer::finish() {
  const auto& cfg = cfg_;
  if (exporter_ && pg_->is_main()) exporter_->finish();  // the last export is published before run() returns
  log_pushes();
  if (exporter_) res_.exports_have_tokenizer = exporter_->has_tokenizer();
  res_.final_step = step_;
  if (!opt_.quiet && tty_) std::printf("\n");
  if (step_ == cfg.train.steps) sync_full_model(*model_, full_model_.get(), *topo_);
  if (step_ == cfg.train.steps && cfg.train.final_checkpoint && pg_->is_main()) {  // the finished model as a Hugging Face folder (BF16)
    const std::string hf = cfg.train.out_dir + "/hf";
    if (fs::exists(hf)) fs::remove_tree(hf);
    model::save_hf_folder(full_model_ ? *full_model_ : *model_, hf);
    hf::copy_files(cfg.train.init_from, hf::serving_files(cfg.train.init_from), hf);  // tokenizer & co., if any
    if (dataset_) fs::copy_file(dataset_->dir() + "/vocab.bin", hf + "/vocab.bin");   // id -> bytes: eval, generate
    res_.hf_dir = hf;
  }
  pg_->barrier();
}

void Trainer::trace_begin_or_end(bool begin) {
  const auto [first, last] = traced_steps();
  if (begin) {
    if (step_ + 1 == first) timeline_ = std::make_unique<Timeline>(dev_);
    return;
  }
  if (!timeline_ || step_ != last) return;
  std::string path = opt_.trace_path;
  if (W_ > 1) {
    const size_t dot = path.rfind('.'), slash = path.rfind('/');
    const std::string tag = ".rank" + std::to_string(pg_->rank());
    path = dot != std::string::npos && (slash == std::string::npos || dot > slash) ? path.insert(dot, tag) : path + tag;
  }
  const std::string text =
      timeline_->stop(static_cast<int>(last - first + 1),
                      "steps " + std::to_string(first) + "-" + std::to_string(last) + " of " + cfg_.train.out_dir, path);
  timeline_.reset();
  fs::write_text_atomic(path + ".txt", text);
  if (!opt_.quiet && pg_->is_main()) std::printf("%s(trace: %s, summary %s.txt)\n", text.c_str(), path.c_str(), path.c_str());
}

Result Trainer::run() {
  setup();
  const auto& cfg = cfg_;
  if (cfg.rl.loop() && step_ == 0) initial_export();
  while (step_ < cfg.train.steps) {
    trace_begin_or_end(true);
    times_ = IterationTimes{};
    if (cfg.rl.loop() && (step_ % cfg.rl.updates_per_rollout == 0 || !rollouts_))
      sample_iteration(step_ / cfg.rl.updates_per_rollout);
    const auto t0 = std::chrono::steady_clock::now();
    if (qat_policy_ && opt_.weight_observer)
      qat_policy_->weight_observer = [this, s = step_ + 1](const std::string& p, const at::Tensor& w) {
        opt_.weight_observer(s, p, w);
      };
    log_ = StepLog{};
    log_.lr = learning_rate(cfg.optim, step_, cfg.train.steps);
    train_step();
    log_.grad_norm = optimizer_step(log_.lr);
    ++step_;
    ++done_here_;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log_.step = step_;
    log_.tokens_per_s = step_tokens_ / secs;
    log_.train_s = secs;
    if (dev_.is_cuda())
      log_.peak_memory_gib =
          static_cast<double>(at::accelerator::getDeviceStats(cuda_index())
                                  .allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                                  .peak) /
          (1024.0 * 1024.0 * 1024.0);
    log_.load_s = times_.load_s;
    log_.sample_s = times_.sample_s;
    log_.score_s = times_.score_s;
    if (times_.sample_s > 0) log_.sample_tokens_per_s = static_cast<double>(times_.tokens) / times_.sample_s;
    if (exporter_ && exporter_->due(step_)) export_step();
    res_.steps.push_back(log_);
    log_step();
    trace_begin_or_end(false);
    if (cfg.train.eval_every > 0 && (step_ % cfg.train.eval_every == 0 || step_ == cfg.train.steps)) eval_step();
    const bool stop_now = g_stop || (opt_.stop_after >= 0 && done_here_ >= opt_.stop_after);
    if ((cfg.train.checkpoint_every > 0 && step_ % cfg.train.checkpoint_every == 0) ||
        (step_ == cfg.train.steps && cfg.train.final_checkpoint) || stop_now)
      checkpoint();
    if (stop_now) {
      res_.stopped_by_signal = static_cast<int>(g_stop);
      break;
    }
  }
  finish();
  return std::move(res_);
}

}  // namespace

namespace {
// With train.init_from the model's shape is the folder's config.json (issue 23): the run records
// that shape (config.yaml, checkpoints, every export's recipe.yaml) rather than the recipe's, and
// a shape the recipe gave (model_config: / model: / --set model.*) that contradicts the folder is
// reported key by key as ignored. (A recipe that leaves the model section at its defaults is not
// taken to have given one.)
config::Config with_folder_shape(const config::Config& cfg, bool quiet) {
  if (cfg.train.init_from.empty()) return cfg;
  config::Config c = cfg;
  c.model = model::read_hf_config(cfg.train.init_from);
  const std::string given = model::hf_config_json(cfg.model), folder = model::hf_config_json(c.model);
  if (quiet || given == folder || given == model::hf_config_json(model::ModelConfig{})) return c;
  const json::Value g = json::parse(given, "the recipe's model shape"), f = json::parse(folder, "config.json");
  std::string diffs;
  for (const auto& [k, v] : g.as_object()) {
    const json::Value* fv = f.find(k);
    if (fv && fv->dump() == v.dump()) continue;
    diffs += (diffs.empty() ? "" : ", ") + k + " " + v.dump() + " -> " + (fv ? fv->dump() : std::string("(absent)"));
  }
  std::fprintf(stderr,
               "fp4qat train: warning: the recipe's model shape is ignored: train.init_from '%s' has its own "
               "(config.json), which this run trains and records: %s\n",
               cfg.train.init_from.c_str(), diffs.c_str());
  return c;
}
}  // namespace

Result run(const config::Config& cfg, const Options& opt) {
  const config::Config c = with_folder_shape(cfg, opt.quiet);
  return Trainer(c, opt).run();
}

}  // namespace fp4qat::train
