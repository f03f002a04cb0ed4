// trainer/train.cpp — see train.h.
#include "trainer/train.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
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

at::Device pick_device(const std::string& s) {
  if (s == "cpu") return at::kCPU;
  if (s == "cuda") {
    FP4QAT_CHECK(at::hasCUDA(), "train.device is cuda but no CUDA device is available");
    return at::Device(at::kCUDA, 0);
  }
  return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
}

struct OptimState {
  std::vector<at::Tensor> m, v;
};

std::string ckpt_root(const config::Config& c) { return c.train.out_dir + "/checkpoints"; }

void save_checkpoint(const config::Config& cfg, const model::Qwen3Moe& model, const OptimState& st, int64_t step,
                     std::string* path_out) {
  const std::string root = ckpt_root(cfg);
  fs::make_dirs(cfg.train.out_dir);
  if (!fs::is_dir(root)) fs::make_dir(root);
  const std::string dir = root + "/step-" + std::to_string(step);
  const std::string tmp = fs::temp_name_beside(dir);
  fs::make_dir(tmp);
  try {
    model::Params ps, os;
    for (size_t i = 0; i < model.params().size(); ++i) {
      const auto& [name, p] = model.params()[i];
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
    const at::Tensor src = mr.view(pname);
    FP4QAT_CHECK(src.sizes() == p.sizes(), dir, ": parameter '", pname, "' has shape ", src.sizes(), ", the model ", p.sizes());
    p.copy_(src);
    st.m[i].copy_(orr.view(pname + ".exp_avg"));
    st.v[i].copy_(orr.view(pname + ".exp_avg_sq"));
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
        break;
      }
      seq.push_back(next);
    }
    right += ok;
  }
  return static_cast<double>(right) / static_cast<double>(std::max<int64_t>(n, 1));
}

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
  std::unique_ptr<dist::ProcessGroup> own_pg;
  dist::ProcessGroup* pg = opt.process_group;
  if (!pg) {
    own_pg = dist::from_environment();
    pg = own_pg.get();
  }
  const at::Device dev = pick_device(cfg.train.device);
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
  std::unique_ptr<Exporter> exporter;
  if (qat_policy && exporting) exporter = std::make_unique<Exporter>(cfg, model, *qat_policy);
  OptimState st;
  for (const auto& [n, p] : model.params()) {
    st.m.push_back(at::zeros_like(p.detach()));
    st.v.push_back(at::zeros_like(p.detach()));
  }
  int64_t step = 0;
  if (opt.resume) step = load_checkpoint(cfg, model, st);
  model.to(dev);
  if (qat_policy && cfg.qat.format != "none" && cfg.qat.train == "quantized_only") {  // expert-only fine-tuning: freeze the rest
    torch::NoGradGuard ng;
    for (auto& [n, p] : model.params())
      if (!qat_policy->quantized(n)) p.requires_grad_(false);
  }
  for (auto& t : st.m) t = t.to(dev);
  for (auto& t : st.v) t = t.to(dev);

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
  Result res;
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
      loss.backward();
      loss_sum += ce_v / cfg.train.grad_accum;
      aux_sum += aux.item<double>() / cfg.train.grad_accum;
      if (micro == 0)
        for (const auto& l : fw.expert_load) {
          const at::Tensor lc = l.to(at::kCPU).to(at::kDouble).contiguous();
          load.emplace_back(lc.data_ptr<double>(), lc.data_ptr<double>() + lc.numel());
        }
    }
    // Gradients averaged over ranks, then global-norm clipping and AdamW (decoupled weight decay
    // on matrices), in fp32.
    double grad_norm = 0;
    {
      torch::NoGradGuard ng;
      std::vector<at::Tensor> grads;
      for (auto& [n, p] : model.params())
        if (p.grad().defined()) grads.push_back(p.grad());
      pg->all_reduce_mean(grads);
      std::vector<at::Tensor> sq;
      for (auto& [n, p] : model.params())
        if (p.grad().defined()) sq.push_back(p.grad().to(at::kFloat).pow(2).sum());
      grad_norm = std::sqrt(at::stack(sq).sum().item<double>());
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
                static_cast<double>(cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum) / secs, load};
    if (exporter && exporter->due(step)) {  // publish this step's weights for the rollout side
      const auto te = std::chrono::steady_clock::now();
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
      if (cfg.exports.probe_mismatch && !probed.empty() && !dir.empty()) {
        const at::Tensor probe = get_batch(1, 0).narrow(0, 0, std::min<int64_t>(4, cfg.train.batch_size)).to(dev);
        rollout::Loaded served = rollout::load(dir + "/" + probed, dev);
        const at::Tensor lr_ = rollout::token_logprobs(*served.model, *served.policy, probe, dt);
        const at::Tensor lt = rollout::token_logprobs(model, policy, probe, dt);
        const at::Tensor d = (lt - lr_).abs();
        log.mismatch_mean = d.mean().item<double>();
        log.mismatch_max = d.max().item<double>();
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
      if (pg->is_main()) save_checkpoint(cfg, model, st, step, &res.last_checkpoint);
      pg->barrier();
    }
    if (stop_now) break;
  }
  if (exporter && pg->is_main()) exporter->wait();  // the last export is published before run() returns
  res.final_step = step;
  if (!opt.quiet && tty) std::printf("\n");
  if (step == cfg.train.steps && pg->is_main()) {  // the finished model as a Hugging Face folder (BF16)
    const std::string hf = cfg.train.out_dir + "/hf";
    if (fs::exists(hf)) fs::remove_tree(hf);
    model::save_hf_folder(model, hf);
    res.hf_dir = hf;
  }
  if (pg->is_main()) write_loss_svg(cfg.train.out_dir + "/loss.svg", res.steps, res.evals);
  return res;
}

}  // namespace fp4qat::train
