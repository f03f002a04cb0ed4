// trainer/train.cpp — see train.h.
#include "trainer/train.h"

#include <ATen/DeviceAccelerator.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <unistd.h>

#include "kernels/common/check.h"
#include "qat/fsutil.h"
#include "qat/json.h"
#include "qat/safetensors.h"
#include "trainer/data.h"
#include "trainer/exporter.h"
#include "trainer/qat_policy.h"
#include "trainer/rollout.h"

namespace fp4qat::train {

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// cuda:LOCAL_RANK for a CUDA run (cuda:0 in a single process).
at::Device pick_device(const std::string& s, int local_rank) {
  if (s == "cpu" || (s == "auto" && !at::hasCUDA())) return at::kCPU;
  FP4QAT_CHECK(at::hasCUDA(), "train.device is cuda but no CUDA device is available");
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  FP4QAT_CHECK(local_rank < n, "LOCAL_RANK=", local_rank, " but this machine has ", n, " CUDA device(s)");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

struct OptimState {
  std::vector<at::Tensor> m, v;
};

std::string ckpt_root(const config::Config& c) { return c.train.out_dir + "/checkpoints"; }

// params / st in the single-process layout (all experts; see full_state()).
void save_checkpoint(const config::Config& cfg, const model::Params& params, const OptimState& st, int64_t step,
                     std::string* path_out) {
  const std::string root = ckpt_root(cfg);
  fs::make_dirs(cfg.train.out_dir);
  if (!fs::is_dir(root)) fs::make_dir(root);
  const std::string dir = root + "/step-" + std::to_string(step);
  const std::string tmp = fs::temp_name_beside(dir);
  fs::make_dir(tmp);
  try {
    model::Params ps, os;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& [name, p] = params[i];
      ps.emplace_back(name, p.detach());
      os.emplace_back(name + ".exp_avg", st.m[i]);
      os.emplace_back(name + ".exp_avg_sq", st.v[i]);
    }
    st::write_file(tmp + "/model.safetensors", ps);
    st::write_file(tmp + "/optim.safetensors", os);
    json::Value state = json::Value::object({{"step", step}, {"config", config::dump(cfg)}});
    fs::write_text_atomic(tmp + "/state.json", state.dump(2) + "\n");
    fs::write_text_atomic(tmp + "/config.yaml", config::dump(cfg));
    if (fs::exists(dir)) fs::remove_tree(dir);
    fs::rename_atomic(tmp, dir);
  } catch (...) {
    fs::remove_tree(tmp);
    throw;
  }
  fs::write_text_atomic(root + "/latest", "step-" + std::to_string(step) + "\n");
  if (path_out) *path_out = dir;
}

int64_t load_checkpoint(const config::Config& cfg, model::Qwen3Moe& model, OptimState& st) {
  const std::string root = ckpt_root(cfg);
  const std::string latest = root + "/latest";
  FP4QAT_CHECK(fs::exists(latest), "--resume: no checkpoint in ", root, " (", latest, " not found)");
  std::string name = fs::read_text(latest, 4096);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string dir = root + "/" + name;
  const json::Value state = json::parse(fs::read_text(dir + "/state.json"), dir + "/state.json");
  const int64_t step = state.at("step", dir + "/state.json").as_int(dir + "/state.json: step");
  st::Reader mr(dir + "/model.safetensors"), orr(dir + "/optim.safetensors");
  torch::NoGradGuard ng;
  for (size_t i = 0; i < model.params().size(); ++i) {
    auto& [pname, p] = model.params()[i];
    // A checkpoint holds every expert; an expert-parallel rank takes its own (re-sharding).
    auto mine = [&](const at::Tensor& t) {
      return model.sharded() && model::Qwen3Moe::is_expert_param(pname) && t.dim() == 3
                 ? t.narrow(0, model.expert_offset(), model.local_experts())
                 : t;
    };
    const at::Tensor src = mine(mr.view(pname));
    FP4QAT_CHECK(src.sizes() == p.sizes(), dir, ": parameter '", pname, "' has shape ", src.sizes(), ", the model ", p.sizes());
    p.copy_(src);
    st.m[i].copy_(mine(orr.view(pname + ".exp_avg")));
    st.v[i].copy_(mine(orr.view(pname + ".exp_avg_sq")));
  }
  return step;
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

// Loss curve as SVG: train loss per step (line), val loss at evals (dots).
void write_loss_svg(const std::string& path, const std::vector<StepLog>& steps, const std::vector<EvalLog>& evals) {
  if (steps.empty()) return;
  const double W = 640, H = 360, pad = 40;
  double lo = 1e300, hi = -1e300;
  for (const auto& s : steps) lo = std::min(lo, s.loss), hi = std::max(hi, s.loss);
  for (const auto& e : evals) lo = std::min(lo, e.val_loss), hi = std::max(hi, e.val_loss);
  if (hi <= lo) hi = lo + 1;
  const double n = static_cast<double>(steps.back().step);
  auto X = [&](double step) { return pad + (W - 2 * pad) * (n > 1 ? (step - 1) / (n - 1) : 0.5); };
  auto Y = [&](double v) { return H - pad - (H - 2 * pad) * (v - lo) / (hi - lo); };
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"360\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  char buf[96];
  for (const auto& s : steps) {
    std::snprintf(buf, sizeof buf, "%.1f,%.1f ", X(static_cast<double>(s.step)), Y(s.loss));
    svg += buf;
  }
  svg += "\"/>\n";
  for (const auto& e : evals) {
    std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", X(static_cast<double>(e.step)), Y(e.val_loss));
    svg += buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"20\">loss (blue: train, red: val)  %.3f .. %.3f</text>\n", pad, lo, hi);
  svg += buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"%.0f\">step 1 .. %.0f</text>\n</svg>\n", pad, H - 10, n);
  svg += buf;
  fs::write_text_atomic(path, svg);
}

std::pair<at::Tensor, at::Tensor> loss_of(const model::Qwen3Moe& m, const at::Tensor& batch, at::ScalarType dt,
                                          model::LinearPolicy& policy, model::ForwardOutput* out_fw) {
  const int64_t T = batch.size(1) - 1;
  const at::Tensor inputs = batch.narrow(1, 0, T), targets = batch.narrow(1, 1, T);
  model::ForwardOutput fw = m.forward(inputs, dt, policy);
  const at::Tensor ce = at::cross_entropy_loss(fw.logits.to(at::kFloat).reshape({-1, fw.logits.size(-1)}),
                                               targets.reshape({-1}));
  const at::Tensor aux = fw.aux_loss;
  if (out_fw) *out_fw = std::move(fw);
  return {ce, aux};
}

// ---- multi-process helpers (trainer/dist.h) ----------------------------------------------------
// The single-process view of a tensor of the model: an expert shard all-gathered over the
// expert-parallel group (collective over it: every rank of dp replica 0 calls it), else itself.
at::Tensor full_of(const model::Qwen3Moe& model, const dist::Topology& topo, const std::string& name, const at::Tensor& t) {
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

// Max over ranks of the activation amax each rank observed since the last export, handed to the
// exporting policy on rank 0 (expert amax [El] placed at the shard's experts of a zero [E]).
void sync_input_amax(qatp::QatPolicy& train_policy, qatp::QatPolicy* export_policy, const model::Qwen3Moe& model,
                     const dist::Topology& topo) {
  torch::NoGradGuard ng;
  std::map<std::string, at::Tensor> seen = train_policy.take_input_amax();
  const int64_t E = model.config().num_experts, El = model.local_experts();
  for (const auto& name : train_policy.quantized_params()) {  // sorted: the same order on every rank
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
    if (export_policy && (it != seen.end() || t.max().item<float>() > 0)) export_policy->observe(name, v[0]);
  }
}

}  // namespace

void install_signal_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

double learning_rate(const config::OptimConfig& o, int64_t step, int64_t total) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  const double span = std::max<int64_t>(1, total - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  const double min_lr = o.lr * o.min_lr_ratio;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * t));
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
void check_training_memory(const config::ModelConfig& mc, const at::Device& dev, int64_t ep) {
  const model::ParameterCount pc = model::parameter_count(mc);
  const int64_t here = pc.total - pc.experts + pc.experts / std::max<int64_t>(ep, 1);
  const double need = static_cast<double>(here) * 16;
  const int64_t have = dev.is_cuda() ? static_cast<int64_t>(at::accelerator::getMemoryInfo(dev.index()).second)
                                     : model::host_memory_bytes();
  FP4QAT_CHECK(have == 0 || need <= static_cast<double>(have), "model shape: ", here, " parameters on this rank need ",
               model::gib(need), " on ", dev.str(), " for training (fp32 masters, gradients and AdamW moments, 16 bytes ",
               "each, before activations) but it has ", model::gib(static_cast<double>(have)), "; the experts are ",
               model::gib(static_cast<double>(pc.experts) * 16 / std::max<int64_t>(ep, 1)), " of it. Use a smaller ",
               "shape (model.num_experts, model.moe_intermediate_size, model.hidden_size, model.num_hidden_layers) ",
               "or shard the experts over more GPUs (parallel.ep)");
}
}  // namespace

Result run(const config::Config& cfg, const Options& opt) {
  config::validate(cfg);
  const bool synthetic = cfg.data.kind == "synthetic";
  std::unique_ptr<data::TokenFile> tokens;
  if (synthetic) {
    FP4QAT_CHECK(cfg.model.vocab_size >= data::kVocabUsed, "model.vocab_size must be >= ", data::kVocabUsed,
                 " for the synthetic corpus");
  } else {
    tokens = std::make_unique<data::TokenFile>(cfg.data.path, cfg.data.val_fraction, cfg.train.seed);
    const int64_t mt = tokens->max_token();
    FP4QAT_CHECK(mt < cfg.model.vocab_size, cfg.data.path, ": token id ", mt, " is outside model.vocab_size ",
                 cfg.model.vocab_size);
  }
  // Process groups: the injected one, or from the launch environment (gloo on the CPU, NCCL on
  // cuda:LOCAL_RANK); then the dp x ep topology (trainer/dist.h).
  const dist::Env env = opt.process_group ? dist::Env{} : dist::read_env();
  const at::Device dev = pick_device(cfg.train.device, env.local_rank);
  dist::check_topology(opt.process_group ? opt.process_group->world_size() : env.world_size, cfg.parallel.dp,
                       cfg.parallel.ep);
  std::unique_ptr<dist::ProcessGroup> own_pg;
  dist::ProcessGroup* pg = opt.process_group;
  if (!pg) {
    own_pg = dist::from_environment(dev.is_cuda(), std::chrono::seconds(cfg.parallel.timeout_s));
    pg = own_pg.get();
  }
  const std::unique_ptr<dist::Topology> topo = dist::make_topology(*pg, cfg.parallel.dp, cfg.parallel.ep);
  const int W = pg->world_size();
  check_training_memory(cfg.train.init_from.empty() ? cfg.model : model::read_hf_config(cfg.train.init_from), dev,
                        topo->ep_size);
  const at::ScalarType dt = compute_dtype(cfg, dev);
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  model::Qwen3Moe model = cfg.train.init_from.empty() ? model::Qwen3Moe(cfg.model, cfg.train.seed)
                                                       : model::load_hf_folder(cfg.train.init_from);
  // The linears' policy: plain, or NVFP4 for the modules the recipe's qat section matches (and,
  // when exports are on, observing the activations those modules see for input_scale).
  model::LinearPolicy plain;
  std::unique_ptr<qatp::QatPolicy> qat_policy;
  const bool exporting = cfg.exports.interval(cfg.qat.format) > 0;
  if (!opt.policy && (cfg.qat.format != "none" || exporting))
    qat_policy = std::make_unique<qatp::QatPolicy>(cfg.qat, model, cfg.qat.format != "none");
  model::LinearPolicy& policy = opt.policy ? *opt.policy : (qat_policy ? *qat_policy : plain);
  // Expert parallelism: every rank keeps its experts only; rank 0 also keeps a full copy of the
  // model (and a policy over it) that checkpoints, exports and the final Hugging Face folder
  // are written from, after gathering the shards into it.
  std::unique_ptr<model::Qwen3Moe> full_model;
  std::unique_ptr<qatp::QatPolicy> full_policy;
  if (topo->ep_size > 1 && pg->is_main()) {
    full_model = std::make_unique<model::Qwen3Moe>(model);
    torch::NoGradGuard ng;
    for (auto& [n, p] : full_model->params()) p = p.detach().clone();
    if (qat_policy) full_policy = std::make_unique<qatp::QatPolicy>(cfg.qat, *full_model, cfg.qat.format != "none");
  }
  model.shard_experts(*topo->ep);
  std::unique_ptr<Exporter> exporter;
  if (qat_policy && exporting)
    exporter = full_model ? std::make_unique<Exporter>(cfg, *full_model, *full_policy)
                          : std::make_unique<Exporter>(cfg, model, *qat_policy);
  OptimState st;
  for (const auto& [n, p] : model.params()) {
    st.m.push_back(at::zeros_like(p.detach()));
    st.v.push_back(at::zeros_like(p.detach()));
  }
  int64_t step = 0;
  if (opt.resume) step = load_checkpoint(cfg, model, st);
  model.to(dev);
  if (full_model) full_model->to(dev);
  if (qat_policy && cfg.qat.format != "none" && cfg.qat.train == "quantized_only") {  // expert-only fine-tuning: freeze the rest
    torch::NoGradGuard ng;
    for (auto& [n, p] : model.params())
      if (!qat_policy->quantized(n)) p.requires_grad_(false);
  }
  for (auto& t : st.m) t = t.to(dev);
  for (auto& t : st.v) t = t.to(dev);
  // Data-parallel gradient averaging: every rank's loss counts once in the global mean, so a sum
  // is divided by the world size; an expert shard's gradient already sums the losses of its
  // expert-parallel group (through the combine's backward) and is summed over the dp group only.
  Result res;
  std::unique_ptr<dist::GradReducer> reducer;
  if (W > 1) {
    std::vector<dist::GradReducer::Entry> entries;
    for (auto& [n, p] : model.params())
      if (p.requires_grad())
        entries.push_back({p, model.sharded() && model::Qwen3Moe::is_expert_param(n) ? topo->dp : pg, static_cast<double>(W)});
    reducer = std::make_unique<dist::GradReducer>(std::move(entries),
                                                  static_cast<int64_t>(cfg.parallel.bucket_mb * 1024 * 1024));
  }
  // The checkpoint in the single-process layout: gathered into full tensors under expert
  // parallelism (collective on dp replica 0), written by rank 0 after which every rank waits.
  auto checkpoint = [&](int64_t at_step) {
    if (!model.sharded()) {
      if (pg->is_main()) save_checkpoint(cfg, model.params(), st, at_step, &res.last_checkpoint);
    } else if (topo->dp_index == 0) {
      model::Params ps;
      OptimState fs;
      for (size_t i = 0; i < model.params().size(); ++i) {
        const auto& [n, p] = model.params()[i];
        ps.emplace_back(n, full_of(model, *topo, n, p));
        fs.m.push_back(full_of(model, *topo, n, st.m[i]));
        fs.v.push_back(full_of(model, *topo, n, st.v[i]));
      }
      if (pg->is_main()) save_checkpoint(cfg, ps, fs, at_step, &res.last_checkpoint);
    }
    pg->barrier();
  };

  const std::string metrics = cfg.train.out_dir + "/metrics.jsonl";
  if (pg->is_main()) {
    fs::make_dirs(cfg.train.out_dir);
    if (!opt.resume) fs::write_text_atomic(metrics, "");
    fs::write_text_atomic(cfg.train.out_dir + "/config.yaml", config::dump(cfg));
  }
  pg->barrier();

  data::SyntheticCorpus corpus(cfg.train.seed, cfg.data.max_operand);
  auto get_batch = [&](int split, uint64_t index) {
    return synthetic ? corpus.batch(split, index, cfg.train.batch_size, cfg.train.seq_len)
                     : tokens->batch(split, index, cfg.train.batch_size, cfg.train.seq_len);
  };
  const auto& o = cfg.optim;
  int64_t done_here = 0;
  while (step < cfg.train.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    if (qat_policy && opt.weight_observer)
      qat_policy->weight_observer = [&, s = step + 1](const std::string& p, const at::Tensor& w) { opt.weight_observer(s, p, w); };
    const double lr = learning_rate(o, step, cfg.train.steps);
    for (auto& [n, p] : model.params()) p.mutable_grad() = at::Tensor();
    double loss_sum = 0, aux_sum = 0;
    std::vector<std::vector<double>> load;
    for (int64_t micro = 0; micro < cfg.train.grad_accum; ++micro) {
      // Rank-aware sharding: each rank takes its own slice of the deterministic batch stream.
      const uint64_t bi = static_cast<uint64_t>((step * cfg.train.grad_accum + micro) * pg->world_size() + pg->rank());
      const at::Tensor batch = get_batch(0, bi).to(dev);
      model::ForwardOutput fw;
      auto [ce, aux] = loss_of(model, batch, dt, policy, &fw);
      const at::Tensor loss = (ce + aux * cfg.model.router_aux_loss_coef) / static_cast<double>(cfg.train.grad_accum);
      const double ce_v = ce.item<double>();  // one host sync per micro-batch
      FP4QAT_CHECK(std::isfinite(ce_v), "step ", step + 1, ": the loss is not finite; stopping without a checkpoint");
      if (reducer && micro == cfg.train.grad_accum - 1) reducer->arm();  // all-reduce buckets overlap this backward
      loss.backward();
      loss_sum += ce_v / cfg.train.grad_accum;
      aux_sum += aux.item<double>() / cfg.train.grad_accum;
      if (micro == 0)
        for (const auto& l : fw.expert_load) {
          const at::Tensor lc = l.to(at::kCPU).to(at::kDouble).contiguous();
          load.emplace_back(lc.data_ptr<double>(), lc.data_ptr<double>() + lc.numel());
        }
    }
    if (W > 1) {  // the logged losses: means over every rank's batches
      at::Tensor lv = at::tensor({loss_sum, aux_sum}, at::kDouble);
      std::vector<at::Tensor> v{lv};
      pg->all_reduce(v, dist::ReduceOp::kSum);
      loss_sum = v[0][0].item<double>() / W;
      aux_sum = v[0][1].item<double>() / W;
    }
    // Gradients averaged over ranks, then global-norm clipping and AdamW (decoupled weight decay
    // on matrices), in fp32.
    double grad_norm = 0;
    {
      torch::NoGradGuard ng;
      if (reducer) {
        for (auto& [n, p] : model.params())  // an expert shard that got no token this step
          if (p.requires_grad() && !p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        reducer->reduce();
      }
      std::vector<at::Tensor> sq, sq_shard;
      for (auto& [n, p] : model.params())
        if (p.grad().defined())
          (model.sharded() && model::Qwen3Moe::is_expert_param(n) ? sq_shard : sq).push_back(p.grad().to(at::kFloat).pow(2).sum());
      at::Tensor total = at::stack(sq).sum();
      if (!sq_shard.empty()) {  // expert shards: their squares summed over the expert-parallel group
        std::vector<at::Tensor> v{at::stack(sq_shard).sum().reshape({1})};
        topo->ep->all_reduce(v, dist::ReduceOp::kSum);
        total = total + v[0][0];
      }
      grad_norm = std::sqrt(total.item<double>());
      if (exporter) exporter->fence();  // the weights change below: after the export's reads of them
      const double scale = (o.grad_clip > 0 && grad_norm > o.grad_clip) ? o.grad_clip / (grad_norm + 1e-6) : 1.0;
      const double b1 = o.beta1, b2 = o.beta2, t = static_cast<double>(step + 1);
      const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
      for (size_t i = 0; i < model.params().size(); ++i) {
        at::Tensor& p = model.params()[i].second;
        if (!p.grad().defined()) continue;
        const at::Tensor g = p.grad().to(at::kFloat) * scale;
        st.m[i].mul_(b1).add_(g, 1.0 - b1);
        st.v[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
        if (p.dim() >= 2 && o.weight_decay > 0) p.mul_(1.0 - lr * o.weight_decay);
        const at::Tensor denom = (st.v[i] / bc2).sqrt_().add_(o.eps);
        p.addcdiv_(st.m[i], denom, -lr / bc1);
      }
    }
    ++step;
    ++done_here;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    StepLog log{step, loss_sum, aux_sum, lr, grad_norm,
                static_cast<double>(cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum * W) / secs, load};
    if (exporter && exporter->due(step)) {  // publish this step's weights for the rollout side
      const auto te = std::chrono::steady_clock::now();
      if (W > 1) {  // every rank's activation amax, and the expert shards, to rank 0's exporter
        sync_input_amax(*qat_policy, pg->is_main() ? (full_policy ? full_policy.get() : qat_policy.get()) : nullptr,
                        model, *topo);
        sync_full_model(model, full_model.get(), *topo);
      }
      // Train/rollout mismatch: the export read back from disk and run as the rollout side runs it,
      // against the trainer's own forward with the same weights (those of step + 1). The probe
      // needs the folder on disk, so with it the export is waited for; without it the folders
      // are written in the background while training goes on.
      std::string probed;
      for (const auto& f : cfg.exports.formats)
        if (probed.empty() && f != "bf16") probed = f;
      std::string dir;
      if (pg->is_main()) {
        dir = exporter->submit(step);
        if (cfg.exports.probe_mismatch && !probed.empty()) exporter->wait();
      }
      pg->barrier();
      log.export_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      if (!dir.empty()) res.exports.push_back(dir);
      // (An expert-sharded model's forward is collective: every rank runs the trainer's side.)
      if (cfg.exports.probe_mismatch && !probed.empty() && (pg->is_main() || model.sharded())) {
        const at::Tensor probe = get_batch(1, 0).narrow(0, 0, std::min<int64_t>(4, cfg.train.batch_size)).to(dev);
        const at::Tensor lt = rollout::token_logprobs(model, policy, probe, dt);
        if (!dir.empty()) {
          rollout::Loaded served = rollout::load(dir + "/" + probed, dev);
          const at::Tensor lr_ = rollout::token_logprobs(*served.model, *served.policy, probe, dt);
          const at::Tensor d = (lt - lr_).abs();
          log.mismatch_mean = d.mean().item<double>();
          log.mismatch_max = d.max().item<double>();
        }
      }
    }
    res.steps.push_back(log);
    json::Value line = json::Value::object({{"step", step}, {"loss", log.loss}, {"lr", lr}, {"grad_norm", grad_norm},
                                            {"tokens_per_s", log.tokens_per_s}, {"aux_loss", log.aux_loss}});
    if (log.export_s > 0) line.set("export_s", log.export_s);
    if (!std::isnan(log.mismatch_mean)) {
      line.set("mismatch_mean", log.mismatch_mean);
      line.set("mismatch_max", log.mismatch_max);
    }
    json::Value lj = json::Value::array();
    for (const auto& l : load) {
      json::Value row = json::Value::array();
      for (double v : l) row.push_back(v);
      lj.push_back(row);
    }
    line.set("expert_load", lj);
    if (pg->is_main()) append_line(metrics, line.dump());
    if (!opt.quiet && tty) {  // a progress bar on a terminal
      const int w = 30, filled = static_cast<int>(w * step / cfg.train.steps);
      std::printf("\r[%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ", std::string(filled, '#').c_str(),
                  std::string(w - filled, '.').c_str(), (long long)step, (long long)cfg.train.steps, log.loss, lr,
                  log.tokens_per_s);
      std::fflush(stdout);
    }
    if (!opt.quiet && (step % cfg.train.log_every == 0 || step == 1) && (!tty || step == cfg.train.steps))
      std::printf("step %5lld/%lld  loss %.4f  aux %.4f  lr %.2e  |g| %.3f  %.0f tok/s%s\n", (long long)step,
                  (long long)cfg.train.steps, log.loss, log.aux_loss, lr, grad_norm, log.tokens_per_s,
                  log.export_s > 0 ? ("  export " + std::to_string(static_cast<int>(log.export_s * 1000)) + " ms" +
                                      (std::isnan(log.mismatch_mean) ? std::string() : "  |dlogp| " + fmt_g(log.mismatch_mean)))
                                         .c_str()
                                   : "");
    if (cfg.train.eval_every > 0 && (step % cfg.train.eval_every == 0 || step == cfg.train.steps)) {
      torch::NoGradGuard ng;
      double vl = 0;
      for (int64_t b = 0; b < cfg.train.eval_batches; ++b)
        vl += loss_of(model, get_batch(1, static_cast<uint64_t>(b)).to(dev), dt, policy, nullptr).first.item<double>();
      EvalLog ev{step, vl / cfg.train.eval_batches, synthetic ? exact_match(model, cfg, 32, dt, policy, dev) : std::nan("")};
      res.evals.push_back(ev);
      if (pg->is_main())
        append_line(metrics, json::Value::object({{"step", step}, {"val_loss", ev.val_loss}, {"exact_match", ev.exact_match}}).dump());
      if (!opt.quiet) std::printf("eval  step %lld  val_loss %.4f  exact_match %.3f\n", (long long)step, ev.val_loss, ev.exact_match);
    }
    const bool stop_now = g_stop || (opt.stop_after >= 0 && done_here >= opt.stop_after);
    if ((cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0) || step == cfg.train.steps || stop_now) {
      checkpoint(step);
    }
    if (stop_now) break;
  }
  if (exporter && pg->is_main()) exporter->wait();  // the last export is published before run() returns
  res.final_step = step;
  if (!opt.quiet && tty) std::printf("\n");
  if (step == cfg.train.steps) sync_full_model(model, full_model.get(), *topo);
  if (step == cfg.train.steps && pg->is_main()) {  // the finished model as a Hugging Face folder (BF16)
    const std::string hf = cfg.train.out_dir + "/hf";
    if (fs::exists(hf)) fs::remove_tree(hf);
    model::save_hf_folder(full_model ? *full_model : model, hf);
    res.hf_dir = hf;
  }
  pg->barrier();
  if (pg->is_main()) write_loss_svg(cfg.train.out_dir + "/loss.svg", res.steps, res.evals);
  return res;
}

}  // namespace fp4qat::train
