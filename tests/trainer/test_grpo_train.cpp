// tests/trainer/test_grpo_train.cpp — `objective: grpo` on `data.kind: rollouts` (issue 22 items 1
// and 2): the `rl` section's parsing and refusals; rollout micro-batches of whole groups with
// their advantages and token alignment; bad rollout files refused naming file:line before
// anything is written; a few GRPO steps on records built from the tiny model raise the log-prob
// of the rewarded responses against the others, with the per-step metrics logged (the first
// step's sampler / learner mismatch is the one built into the records); and a stopped and
// resumed run (NVFP4 QAT, per-step export, KL to the reference) equals the uninterrupted one.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <random>
#include <set>

#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"
#include "model/qwen3_moe.h"
#include "rollout/serving.h"
#include "tests/common/test_util.h"
#include "tests/trainer/resume_util.h"
#include "trainer/config.h"
#include "trainer/rewards.h"
#include "trainer/rollouts.h"
#include "trainer/train.h"

namespace cfg = fp4qat::config;
namespace ro = fp4qat::rollouts;
namespace fs = fp4qat::fs;
using fp4qat::test::TempDir;

namespace {

// The small MoE of the trainer tests (vocab 32, 2 MoE layers of 4 experts, top 2) on rollouts.
cfg::Config grpo_run(const std::string& out, const std::string& data) {
  cfg::Config c = fp4qat::test::small_moe_run(out);
  c.train.dtype = "fp32";
  c.objective = "grpo";
  c.data.kind = "rollouts";
  c.data.path = data;
  c.optim.warmup_steps = 0;
  return c;
}

// Records for `c`'s model at its initial weights: `groups` groups of G responses of `R` random
// tokens to random prompts of 4 tokens; the first half of every group has reward 1, the rest 0;
// the sampler's log-probs are the initial model's own, less `shift` on every third response
// token (a sampler / learner mismatch of known size). Two files, each numbering its groups from
// 0 (group ids are file-local).
std::vector<ro::Sample> make_samples(const cfg::Config& c, int groups, int G, int R, double shift) {
  fp4qat::model::Qwen3Moe m(c.model, c.train.seed);
  fp4qat::model::LinearPolicy plain;
  std::mt19937_64 rng(7);
  std::vector<ro::Sample> out;
  for (int g = 0; g < groups; ++g)
    for (int k = 0; k < G; ++k) {
      ro::Sample s;
      for (int i = 0; i < 4; ++i) s.prompt.push_back(static_cast<int64_t>(rng() % c.model.vocab_size));
      if (k > 0) s.prompt = out.back().prompt;  // one prompt per group
      for (int i = 0; i < R; ++i) s.response.push_back(static_cast<int64_t>(rng() % c.model.vocab_size));
      std::vector<int64_t> ids = s.prompt;
      ids.insert(ids.end(), s.response.begin(), s.response.end());
      const at::Tensor lp = fp4qat::rollout::token_logprobs(m, plain, at::tensor(ids, at::kLong).unsqueeze(0),
                                                            at::kFloat)[0];  // [P + R - 1]
      for (int j = 0; j < R; ++j)
        s.logprobs.push_back(lp[static_cast<int64_t>(s.prompt.size()) - 1 + j].item<float>() -
                             (j % 3 == 0 ? static_cast<float>(shift) : 0.0f));
      s.reward = k < G / 2 ? 1.0 : 0.0;
      s.group = std::to_string(g % (groups / 2));
      out.push_back(s);
    }
  return out;
}

void write_samples(const std::string& dir, const std::vector<ro::Sample>& s) {
  fs::make_dirs(dir);
  std::string a, b;
  for (size_t i = 0; i < s.size(); ++i) (i < s.size() / 2 ? a : b) += ro::to_json_line(s[i]) + "\n";
  fs::write_text_atomic(dir + "/iter-0.jsonl", a);
  fs::write_text_atomic(dir + "/iter-1.jsonl", b);
}

// Mean log-prob of the response tokens of `samples` under `m`.
double mean_logprob(const fp4qat::model::Qwen3Moe& m, const std::vector<ro::Sample>& samples) {
  fp4qat::model::LinearPolicy plain;
  double sum = 0;
  int64_t n = 0;
  for (const auto& s : samples) {
    std::vector<int64_t> ids = s.prompt;
    ids.insert(ids.end(), s.response.begin(), s.response.end());
    const at::Tensor lp =
        fp4qat::rollout::token_logprobs(m, plain, at::tensor(ids, at::kLong).unsqueeze(0), at::kFloat)[0];
    sum += lp.narrow(0, static_cast<int64_t>(s.prompt.size()) - 1, static_cast<int64_t>(s.response.size()))
               .sum()
               .item<double>();
    n += static_cast<int64_t>(s.response.size());
  }
  return sum / static_cast<double>(n);
}

std::vector<fp4qat::json::Value> step_lines(const std::string& metrics) {
  std::vector<fp4qat::json::Value> out;
  const std::string text = fp4qat::test::read_bytes(metrics);
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    const std::string line = text.substr(at, nl - at);
    at = nl == std::string::npos ? text.size() : nl + 1;
    if (!line.empty()) out.push_back(fp4qat::json::parse(line, metrics));
  }
  return out;
}

}  // namespace

TEST(GrpoConfig, RlSectionParsesAndBadKeysAndValuesAreRefused) {
  cfg::Config c;
  EXPECT_EQ(c.objective, "lm");  // today's behaviour by default
  EXPECT_DOUBLE_EQ(c.rl.loss.clip_low, 0.2);
  EXPECT_DOUBLE_EQ(c.rl.loss.clip_high, 0.28);
  EXPECT_EQ(c.rl.loss.correction, fp4qat::grpo::Correction::kTis);
  EXPECT_DOUBLE_EQ(c.rl.loss.tis_cap, 2.0);
  EXPECT_DOUBLE_EQ(c.rl.loss.kl_coef, 0.0);
  EXPECT_TRUE(c.rl.adv_std_normalize);
  cfg::apply_yaml_text(c,
                       "objective: grpo\ndata:\n  kind: rollouts\n  path: r/\ntrain:\n  eval_every: 0\n"
                       "rl:\n  clip_low: 0.1\n  clip_high: 0.4\n  correction: mask\n  mask_low: 0.25\n"
                       "  mask_high: 3\n  kl_coef: 0.01\n  adv_std_normalize: false\n",
                       "r.yaml");
  EXPECT_NO_THROW(cfg::validate(c));
  EXPECT_EQ(c.rl.loss.correction, fp4qat::grpo::Correction::kMask);
  EXPECT_DOUBLE_EQ(c.rl.loss.mask_low, 0.25);
  EXPECT_DOUBLE_EQ(c.rl.loss.kl_coef, 0.01);
  EXPECT_FALSE(c.rl.adv_std_normalize);
  cfg::Config back;  // the dump round-trips the section
  cfg::apply_yaml_text(back, cfg::dump(c), "dump");
  EXPECT_EQ(cfg::dump(back), cfg::dump(c));
  EXPECT_EQ(back.objective, "grpo");

  auto refused = [&](const std::string& set, const std::string& needle) {
    cfg::Config x = c;
    const std::string e = fp4qat::test::error_of([&] {
      cfg::apply_set(x, set);
      cfg::validate(x);
    });
    EXPECT_NE(e.find(needle), std::string::npos) << set << " -> '" << e << "'";
  };
  refused("rl.clip_ratio=0.2", "rl.clip_ratio");
  refused("rl.correction=clip", "rl.correction");
  refused("rl.clip_low=1.5", "rl.clip_low");
  refused("rl.clip_high=0", "rl.clip_high");
  refused("rl.tis_cap=0.5", "rl.tis_cap");
  refused("rl.mask_low=2", "rl.mask_low");
  refused("rl.kl_coef=-1", "rl.kl_coef");
  refused("rl.adv_std_normalize=maybe", "rl.adv_std_normalize");
  refused("objective=ppo", "objective");
  refused("data.kind=synthetic", "objective grpo");  // grpo needs rollouts ...
  refused("objective=lm", "objective lm");           // ... and rollouts need grpo
  refused("train.eval_every=10", "train.eval_every");
  refused("data.path=", "data.path");
  const std::string e = fp4qat::test::error_of([] {
    cfg::Config x;
    cfg::apply_yaml_text(x, "rl:\n  clip_lo: 0.2\n", "bad.yaml");
  });
  EXPECT_NE(e.find("bad.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("rl.clip_lo"), std::string::npos) << e;
}

// Micro-batches hold whole groups (a group: one file's samples of one group id), every group once
// per epoch, the same batch for the same index; each response token sits where the mask says,
// with its sampler log-prob and its advantage (the record's own, or its group-normalised reward).
TEST(RolloutBatches, WholeGroupsAdvantagesAndTokenAlignment) {
  TempDir d;
  auto sample = [](int64_t first, int64_t len, double reward, const std::string& group) {
    ro::Sample s;
    s.prompt = {first, first + 1};
    for (int64_t j = 0; j < len; ++j) {
      s.response.push_back(first + 2 + j);
      s.logprobs.push_back(-0.01f * static_cast<float>(first + j + 1));
    }
    s.reward = reward;
    s.group = group;
    return s;
  };
  // file a: groups "0" (3 samples) and "1" (2, one with its own advantages); file b: group "0" (2).
  std::vector<ro::Sample> fa = {sample(0, 2, 1.0, "0"), sample(10, 3, 0.0, "0"), sample(20, 1, 2.0, "1"),
                                sample(30, 2, 5.0, "1"), sample(40, 4, 3.0, "0")};
  fa[3].advantages = {0.5f, -0.25f};
  std::vector<ro::Sample> fb = {sample(50, 2, 1.0, "0"), sample(60, 3, 3.0, "0")};
  fs::make_dirs(d.file("r"));
  std::string ta, tb;
  for (const auto& s : fa) ta += ro::to_json_line(s) + "\n";
  for (const auto& s : fb) tb += ro::to_json_line(s) + "\n";
  fs::write_text_atomic(d.file("r/a.jsonl"), ta);
  fs::write_text_atomic(d.file("r/b.jsonl"), tb);
  ro::Limits lim;
  lim.vocab = 100;
  ro::Dataset ds(ro::read_folder(d.file("r"), lim), /*adv_std_normalize=*/true, /*seed=*/5);
  ASSERT_EQ(ds.groups(), 3);  // a:0, a:1, b:0 — b's "0" is not a's
  ASSERT_EQ(ds.samples(), 7);
  // The expected advantage of each sample (by the first prompt token), from the definition.
  auto group_adv = [](std::vector<double> r, double x) {
    double mean = 0, var = 0;
    for (double v : r) mean += v / static_cast<double>(r.size());
    for (double v : r) var += (v - mean) * (v - mean) / static_cast<double>(r.size() - 1);
    return (x - mean) / (std::sqrt(var) + 1e-6);
  };
  std::map<int64_t, std::vector<float>> want_adv = {{0, {static_cast<float>(group_adv({1, 0, 3}, 1))}},
                                                    {10, {static_cast<float>(group_adv({1, 0, 3}, 0))}},
                                                    {40, {static_cast<float>(group_adv({1, 0, 3}, 3))}},
                                                    {20, {static_cast<float>(group_adv({2, 5}, 2))}},
                                                    {30, {0.5f, -0.25f}},
                                                    {50, {static_cast<float>(group_adv({1, 3}, 1))}},
                                                    {60, {static_cast<float>(group_adv({1, 3}, 3))}}};
  std::map<int64_t, int> seen;           // first prompt token -> times drawn
  for (uint64_t bi = 0; bi < 3; ++bi) {  // 3 batches of 2 groups: 2 epochs of 3 groups
    const ro::Batch b = ds.batch(bi, 2);
    const ro::Batch again = ds.batch(bi, 2);
    EXPECT_TRUE(fp4qat::test::bytes_equal(again.ids, b.ids));
    const int64_t B = b.ids.size(0), T = b.ids.size(1) - 1;
    ASSERT_EQ(b.mask.sizes(), (std::vector<int64_t>{B, T}));
    ASSERT_EQ(b.sampler.numel(), b.tokens);
    ASSERT_EQ(b.adv.numel(), b.tokens);
    EXPECT_EQ(b.samples, B);
    std::map<std::string, int> in_batch;  // group key -> samples
    int64_t n = 0;
    double reward = 0;
    for (int64_t r = 0; r < B; ++r) {
      const int64_t first = b.ids[r][0].item<int64_t>();
      const ro::Sample& s = first < 50 ? fa[static_cast<size_t>(first / 10)] : fb[static_cast<size_t>(first / 10 - 5)];
      ++seen[first];
      ++in_batch[(first < 50 ? "a" : "b") + s.group];
      reward += s.reward;
      const int64_t P = static_cast<int64_t>(s.prompt.size());
      for (int64_t t = 0; t < T; ++t) {
        const bool resp = t >= P - 1 && t < P - 1 + static_cast<int64_t>(s.response.size());
        ASSERT_EQ(b.mask[r][t].item<bool>(), resp) << "row " << r << " t " << t;
        // an input of the sample (prompt, response but its last), else padding
        EXPECT_EQ(b.real[r][t].item<bool>(), t < P - 1 + static_cast<int64_t>(s.response.size())) << r << " " << t;
        if (!resp) continue;
        const size_t j = static_cast<size_t>(t - (P - 1));
        EXPECT_EQ(b.ids[r][t + 1].item<int64_t>(), s.response[j]);  // the token predicted at t
        EXPECT_EQ(b.sampler[n].item<float>(), s.logprobs[j]);
        const auto& wa = want_adv.at(first);
        EXPECT_NEAR(b.adv[n].item<float>(), wa.size() == 1 ? wa[0] : wa[j], 1e-5) << first;
        ++n;
      }
    }
    EXPECT_EQ(n, b.tokens);
    EXPECT_DOUBLE_EQ(b.reward_sum, reward);
    // whole groups: every sample of each group drawn is in this batch
    const std::map<std::string, int> size = {{"a0", 3}, {"a1", 2}, {"b0", 2}};
    for (const auto& [g, k] : in_batch) EXPECT_EQ(k % size.at(g), 0) << g;
  }
  for (const auto& [first, times] : seen) EXPECT_EQ(times, 2) << "sample " << first << ": once per epoch";
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_THROW(ds.batch(0, 4), fp4qat::Error);  // more groups than there are
}

// Each kind of bad rollout file stops the run before any step, naming file:line, and writes
// nothing (the out_dir is not created); the CLI exits non-zero.
TEST(GrpoTrain, BadRolloutFilesAreRefusedBeforeAnythingIsWritten) {
  TempDir d;
  const std::string good = R"({"prompt":[1,2],"response":[3,4],"logprobs":[-0.5,-0.25],"reward":1,"group":0})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"prompt":[1,32],"response":[3],"logprobs":[-1],"reward":0,"group":0})", "token 32 is outside"},
      {R"({"prompt":[1],"response":[3,4],"logprobs":[-1],"reward":0,"group":0})", "1 logprobs for 2 response"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":NaN,"group":0})", "invalid JSON"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":-1e400,"group":0})", "number overflow"},
      {R"({"prompt":[1],"response":[3],"logprobs":[1e400],"reward":0,"group":0})", "number overflow"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":0,"group":0,"routed_experts":[[[0,4],[1,2]]]})",
       "routed expert 4"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":0,"group":0,"routed_experts":[[[0,1]]]})",
       "has 1 layers, expected 2"},  // the model has 2 MoE layers
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":0,"group":0,"routed_experts":[[[0],[1]]]})",
       "expected top_k = 2"},
      {good.substr(0, 50), "invalid JSON"},  // truncated last line
  };
  fs::make_dirs(d.file("data"));
  fs::write_text_atomic(d.file("data/a.jsonl"), good + "\n" + good + "\n");  // a good file read first
  for (const auto& [line, needle] : bad) {
    fs::write_text_atomic(d.file("data/b.jsonl"), good + "\n" + line + (line == bad.back().first ? "" : "\n"));
    const cfg::Config c = grpo_run(d.file("out"), d.file("data"));
    const std::string e = fp4qat::test::error_of([&] {
      fp4qat::train::Options o;
      o.quiet = true;
      fp4qat::train::run(c, o);
    });
    EXPECT_NE(e.find(d.file("data/b.jsonl") + ":2"), std::string::npos) << line << " -> '" << e << "'";
    EXPECT_NE(e.find(needle), std::string::npos) << "should say '" << needle << "': " << e;
    EXPECT_FALSE(fs::exists(d.file("out"))) << line;
  }
  // The shipped recipe, through the CLI, on the last bad folder: exit 1, file:line, nothing written.
  const std::string recipe = std::string(FP4QAT_SOURCE_DIR) + "/recipes/grpo-rollouts-tiny.yaml";
  auto r = fp4qat::test::run_fp4qat({"train", "--recipe", recipe, "--dump-config"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = fp4qat::test::run_fp4qat({"train", "--recipe", recipe, "--set", "train.init_from=", "--set",
                                "data.path=" + d.file("data"), "--set", "train.out_dir=" + d.file("cli")});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find(d.file("data/b.jsonl") + ":2"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.file("cli")));
}

// A few GRPO steps raise the log-prob of the rewarded responses (positive advantage) against the
// others; the per-step metrics are there and finite, and on the first step (learner = the model
// the records were built from) they are what the records were built with.
TEST(GrpoTrain, RewardedResponsesGainLogProbAndMetricsAreLogged) {
  TempDir d;
  cfg::Config c = grpo_run(d.file("run"), d.file("data"));
  c.train.steps = 6;
  c.train.batch_size = 4;  // groups per micro-batch: 16 samples
  c.optim.lr = 1e-2;
  const int R = 6;
  const double shift = 1.0;  // > ln 2: TIS (cap 2) truncates the shifted tokens
  const auto samples = make_samples(c, 8, 4, R, shift);
  write_samples(d.file("data"), samples);
  fp4qat::train::Options o;
  o.quiet = true;
  const auto res = fp4qat::train::run(c, o);
  ASSERT_EQ(res.steps.size(), 6u);

  const auto lines = step_lines(d.file("run/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 6u);
  for (const auto& l : lines)
    for (const char* k : {"loss", "reward_mean", "response_length_mean", "clip_fraction", "sampler_mismatch_mean",
                          "sampler_kl", "corrected_fraction", "grad_norm"}) {
      ASSERT_NE(l.find(k), nullptr) << k;
      EXPECT_TRUE(std::isfinite(l.find(k)->as_double())) << k;
    }
  const auto& s1 = res.steps[0];
  EXPECT_DOUBLE_EQ(s1.reward_mean, 0.5);  // half of every group rewarded
  EXPECT_DOUBLE_EQ(s1.response_length_mean, R);
  EXPECT_EQ(s1.clip_fraction, 0.0);                          // one update per batch: ratio 1
  const double frac = static_cast<double>((R + 2) / 3) / R;  // tokens j % 3 == 0
  EXPECT_NEAR(s1.sampler_mismatch_mean, frac * shift, 1e-4);
  EXPECT_NEAR(s1.sampler_kl, frac * (std::exp(shift) - shift - 1.0), 1e-4);
  EXPECT_NEAR(s1.corrected_fraction, frac, 1e-12);
  EXPECT_TRUE(std::isnan(s1.kl_ref));  // rl.kl_coef 0: no reference
  EXPECT_GT(res.steps.back().sampler_mismatch_mean, 0.0);

  // The learner after training (its fp32 masters) against the initial model.
  fp4qat::model::Qwen3Moe before(c.model, c.train.seed), after(c.model, c.train.seed);
  {
    torch::NoGradGuard ng;
    fp4qat::st::Reader w(d.file("run/checkpoints/step-6/model.safetensors"));
    for (auto& [n, p] : after.params()) p.copy_(w.view(n));
  }
  std::vector<ro::Sample> good, poor;
  for (const auto& s : samples) (s.reward > 0 ? good : poor).push_back(s);
  const double g0 = mean_logprob(before, good), g1 = mean_logprob(after, good);
  const double p0 = mean_logprob(before, poor), p1 = mean_logprob(after, poor);
  EXPECT_GT(g1, g0) << "rewarded responses: " << g0 << " -> " << g1;
  EXPECT_GT(g1 - p1, g0 - p0 + 0.05) << "rewarded " << g0 << " -> " << g1 << ", others " << p0 << " -> " << p1;
}

// Stopped after 2 steps and resumed: the same losses, metrics, checkpoint and export bytes as the
// uninterrupted run, with NVFP4 QAT of the experts, an export every step (probe on), two
// micro-batches a step and the KL to the reference (the initial weights, also after resume).
TEST(GrpoTrain, ResumeIsBitIdenticalWithQatExportAndKl) {
  TempDir d;
  cfg::Config a = grpo_run(d.file("a"), d.file("data"));
  a.train.steps = 4;
  a.train.batch_size = 2;
  a.train.grad_accum = 2;
  a.optim.lr = 1e-2;
  a.rl.loss.kl_coef = 0.1;
  a.qat.format = fp4qat::qat::Format::kNVFP4;
  a.exports.every = 1;
  a.exports.formats = {fp4qat::qat::Format::kNVFP4};
  write_samples(d.file("data"), make_samples(a, 6, 4, 5, 0.5));
  fp4qat::train::Options o;
  o.quiet = true;
  const auto ra = fp4qat::train::run(a, o);
  ASSERT_EQ(ra.steps.size(), 4u);
  EXPECT_GT(ra.steps.back().kl_ref, 0.0);
  EXPECT_TRUE(std::isfinite(ra.steps.back().mismatch_mean));  // the export probe ran

  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  fp4qat::train::Result rb2;  // the resumed call
  const auto rb = fp4qat::test::run_stopped_and_resumed(b, o, 2, &rb2);
  ASSERT_EQ(rb.size(), ra.steps.size());
  ASSERT_FALSE(rb2.exports.empty());
  for (size_t i = 0; i < ra.steps.size(); ++i) {
    const auto& s = rb[i];
    const auto& w = ra.steps[i];
    EXPECT_EQ(s.loss, w.loss) << "step " << i + 1;  // exact
    EXPECT_EQ(s.grad_norm, w.grad_norm) << "step " << i + 1;
    EXPECT_EQ(s.kl_ref, w.kl_ref) << "step " << i + 1;
    EXPECT_EQ(s.sampler_mismatch_mean, w.sampler_mismatch_mean) << "step " << i + 1;
    EXPECT_EQ(s.reward_mean, w.reward_mean) << "step " << i + 1;
    EXPECT_EQ(s.mismatch_mean, w.mismatch_mean) << "step " << i + 1;
  }
  for (const std::string f : {"checkpoints/step-4/model.safetensors", "checkpoints/step-4/optim.safetensors"})
    EXPECT_EQ(fp4qat::test::read_bytes(d.file("b/" + f)), fp4qat::test::read_bytes(d.file("a/" + f))) << f;
  const std::string ea = ra.exports.back() + "/nvfp4", eb = rb2.exports.back() + "/nvfp4";
  int compared = 0;
  for (const auto& n : fs::list_dir(ea))
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) {
      EXPECT_EQ(fp4qat::test::read_bytes(eb + "/" + n), fp4qat::test::read_bytes(ea + "/" + n)) << n;
      ++compared;
    }
  EXPECT_GT(compared, 0);
}

// Routing replay (R3, issue 22) in the model: replayed tokens go to the given experts, the others
// are routed as usual (checked in the first MoE layer, whose input the replay cannot change); an
// all-false replay mask changes nothing, bit for bit; the router still gets gradients under replay;
// malformed routing is refused.
TEST(RouterReplay, ReplayedTokensGoToTheGivenExpertsAndTheRouterStillLearns) {
  TempDir d;
  const cfg::Config c = grpo_run(d.file("run"), d.file("data"));
  fp4qat::model::Qwen3Moe m(c.model, 5);
  fp4qat::model::LinearPolicy plain;
  const int64_t B = 2, T = 8, E = c.model.num_experts, k = c.model.num_experts_per_tok;
  const int64_t L = fp4qat::model::moe_layer_count(c.model);
  ASSERT_GE(L, 1);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor ids = at::randint(0, c.model.vocab_size, {B, T}, gen);
  const auto own = m.forward(ids, at::kFloat, plain);
  // Replayed experts: k distinct ids per token and layer, other than the router's own choice where possible.
  at::Tensor experts = at::empty({B, T, L, k}, at::kLong);
  for (int64_t i = 0; i < B * T * L; ++i)
    experts.view({-1, k})[i].copy_(at::randperm(E, gen, at::kLong).narrow(0, 0, k));
  const at::Tensor replay = at::rand({B, T}, gen) < 0.5;
  const fp4qat::model::Routing r{experts, replay};
  const auto rep = m.forward(ids, at::kFloat, plain, nullptr, nullptr, &r);
  ASSERT_EQ(rep.routed.size(), static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor want = experts.select(2, l);                        // [B, T, k]
    EXPECT_TRUE(at::equal(rep.routed[l].index({replay}), want.index({replay}))) << "layer " << l;
  }
  EXPECT_TRUE(at::equal(rep.routed[0].index({replay.logical_not()}), own.routed[0].index({replay.logical_not()})));
  EXPECT_FALSE(at::equal(rep.logits, own.logits));
  // Nothing replayed: the forward without routing, bit for bit.
  const fp4qat::model::Routing none{experts, at::zeros({B, T}, at::kBool)};
  const auto off = m.forward(ids, at::kFloat, plain, nullptr, nullptr, &none);
  EXPECT_TRUE(fp4qat::test::bytes_equal(off.logits, own.logits));
  // The router learns under replay: its gradient is there, and not the one without replay.
  const std::string gate = "model.layers.0.mlp.gate.weight";
  auto router_grad = [&](const fp4qat::model::Routing* rt) {
    for (const auto& [n, p] : m.params()) p.mutable_grad() = at::Tensor();
    m.forward(ids, at::kFloat, plain, nullptr, nullptr, rt).logits.logsumexp(-1).mean().backward();
    return m.param(gate).grad().clone();
  };
  for (const auto& [n, p] : m.params()) p.requires_grad_(true);
  const at::Tensor g_rep = router_grad(&r), g_own = router_grad(nullptr);
  EXPECT_GT(g_rep.abs().sum().item<double>(), 0.0);
  EXPECT_FALSE(at::equal(g_rep, g_own));
  // Malformed routing is refused.
  const fp4qat::model::Routing bad_shape{experts.narrow(3, 0, 1), replay};
  EXPECT_THROW(m.forward(ids, at::kFloat, plain, nullptr, nullptr, &bad_shape), fp4qat::Error);
  const fp4qat::model::Routing bad_id{experts + E, replay};
  EXPECT_THROW(m.forward(ids, at::kFloat, plain, nullptr, nullptr, &bad_id), fp4qat::Error);
}

// R3 end to end: `fp4qat generate --routed-experts` on an export records each response token's
// experts; read back as a training batch they sit at the token's input position, where the same
// export's full forward routes each token exactly there (the sampler's choice is the learner's), and
// replaying them leaves the forward unchanged; GRPO with rl.router_replay trains on the records, and
// refuses records without routed experts.
TEST(RouterReplay, GenerateRecordsTheRoutingTheTrainerReplays) {
  TempDir d;
  cfg::Config q = fp4qat::test::small_moe_run(d.file("qat"));
  q.train.steps = 1;
  q.qat.format = fp4qat::qat::Format::kNVFP4;
  q.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kBF16};
  q.exports.probe_mismatch = false;
  fp4qat::train::Options o;
  o.quiet = true;
  fp4qat::train::run(q, o);
  // Sampled from the BF16 export: the KV-cache decoding then equals the full forward up to
  // accumulation order (KVCache test); under NVFP4 each decoding step would quantize a token's
  // activations with its own amax, the full forward with the whole sequence's.
  const std::string nv = d.file("qat/exports/latest/bf16");
  fs::write_text_atomic(d.file("prompts.jsonl"), "{\"tokens\": [1, 2, 10, 3, 11]}\n{\"tokens\": [4, 10, 5, 11]}\n");  // 12+3=, 4+5=
  fs::make_dirs(d.file("data"));
  const auto g = fp4qat::test::run_fp4qat({"generate", "--model", nv, "--prompts", d.file("prompts.jsonl"), "--samples",
                                           "2", "--max-new-tokens", "6", "--temperature", "1", "--seed", "3",
                                           "--reward", "addition", "--routed-experts", "--device", "cpu", "--out",
                                           d.file("data/iter-0.jsonl")});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  fp4qat::rollout::Loaded m = fp4qat::rollout::load(nv, at::kCPU);
  const auto& mc = m.model->config();
  ro::Limits lim;
  lim.vocab = mc.vocab_size;
  lim.max_tokens = mc.max_position_embeddings;
  lim.num_experts = mc.num_experts;
  lim.top_k = mc.num_experts_per_tok;
  lim.moe_layers = fp4qat::model::moe_layer_count(mc);
  const auto samples = ro::read_file(d.file("data/iter-0.jsonl"), lim);
  ASSERT_EQ(samples.size(), 4u);
  for (const auto& s : samples)
    EXPECT_EQ(s.routed.size(), s.response.size() * static_cast<size_t>(lim.moe_layers * lim.top_k));
  const ro::Dataset ds(samples, true, 1, lim.moe_layers, lim.top_k);
  ASSERT_TRUE(ds.has_routing());
  const ro::Batch b = ds.batch(0, 2);
  ASSERT_TRUE(b.routed.defined());
  const int64_t T = b.ids.size(1) - 1;
  const at::Tensor inputs = b.ids.narrow(1, 0, T);
  auto ng = std::make_unique<torch::NoGradGuard>();  // until the training below
  const auto fw = m.model->forward(inputs, at::kFloat, *m.policy);
  const at::Tensor mine = at::stack(fw.routed, 2);  // [B, T, L, k]
  // The sampler's experts are those the export's own full forward picks (sorted: top-k order aside).
  EXPECT_GT(b.replay.sum().item<int64_t>(), 0);
  EXPECT_TRUE(at::equal(std::get<0>(mine.index({b.replay}).sort(-1)), std::get<0>(b.routed.index({b.replay}).sort(-1))));
  const fp4qat::model::Routing r{b.routed, b.replay};
  const auto fr = m.model->forward(inputs, at::kFloat, *m.policy, nullptr, nullptr, &r);
  EXPECT_TRUE(at::equal(at::stack(fr.routed, 2).index({b.replay}), b.routed.index({b.replay})));
  ng.reset();
  // GRPO with replay trains on them, from the same weights (the BF16 export).
  cfg::Config c = grpo_run(d.file("rl"), d.file("data"));
  c.train.init_from = d.file("qat/exports/latest/bf16");
  c.train.steps = 2;
  c.train.batch_size = 2;
  c.rl.router_replay = true;
  const auto res = fp4qat::train::run(c, o);
  ASSERT_EQ(res.steps.size(), 2u);
  EXPECT_TRUE(std::isfinite(res.steps.back().loss));
  // Records without routed experts: refused, naming rl.router_replay.
  std::vector<ro::Sample> plain = samples;
  for (auto& s : plain) s.routed.clear();
  write_samples(d.file("plain"), plain);
  cfg::Config p = grpo_run(d.file("rl2"), d.file("plain"));
  p.train.init_from = c.train.init_from;
  p.rl.router_replay = true;
  try {
    fp4qat::train::run(p, o);
    FAIL() << "router_replay without routed experts was accepted";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rl.router_replay"), std::string::npos) << e.what();
  }
}

// ---- the loop (`fp4qat rl`, issue 22 item 4) ------------------------------------------------
namespace {
// The loop on the small MoE: 3 iterations x 2 updates, 4 prompts x 3 samples of at most 4 tokens,
// expert-only NVFP4 QAT, sampling from the NVFP4 export.
cfg::Config loop_run(const std::string& out) {
  cfg::Config c = fp4qat::test::small_moe_run(out);
  c.train.dtype = "fp32";
  c.objective = "grpo";
  c.optim.warmup_steps = 0;
  c.optim.lr = 1e-3;
  c.qat.format = fp4qat::qat::Format::kNVFP4;
  c.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
  c.exports.keep = 10;
  c.train.batch_size = 2;
  c.rl.iterations = 3;
  c.rl.updates_per_rollout = 2;
  c.rl.prompts = 4;
  c.rl.samples = 3;
  c.rl.max_new_tokens = 4;
  c.rl.seed = 5;
  // One static activation scale per layer: a token's activations quantize the same whether it is
  // decoded alone (the sampler's KV cache) or in the whole sequence (the check below). Under the
  // fp4qat profile the current amax of a one-token decode step differs from the sequence's.
  c.qat.serving = fp4qat::qat::Serving::kStatic;
  cfg::derive_rl_loop(c);
  return c;
}
std::string read_all(const std::string& dir) {  // every rollout file of a folder, in name order
  std::string out;
  for (const auto& f : fs::list_dir(dir))
    if (f.size() > 6 && f.substr(f.size() - 6) == ".jsonl") out += fs::read_text(dir + "/" + f);
  return out;
}
}  // namespace

// One call runs iterations x updates steps; export step-0 exists before the first sample; iteration
// k's samples are in rollouts/iter-<k>/ (prompts x samples records, groups of `samples`, rewards
// of the named function), drawn from export step-<k x updates>: every sampled token's log-prob is
// that export's own (rollout::load + token_logprobs on the sequence, temperature 1); the GRPO
// metrics are logged; a stopped (mid-iteration) and resumed run gives the same samples, losses and
// final weights; the config refuses a loop without synthetic prompts or with inconsistent steps.
TEST(RlLoop, SamplesComeFromTheNewestExportAndResumeIsBitIdentical) {
  TempDir d;
  fp4qat::train::Options o;
  o.quiet = true;
  // A model that has seen the task (language-model steps), so that rewards differ within groups.
  cfg::Config pre = fp4qat::test::small_moe_run(d.file("pre"));
  pre.train.steps = 120;
  pre.optim.lr = 3e-3;
  pre.train.dtype = "fp32";
  fp4qat::train::run(pre, o);
  cfg::Config a = loop_run(d.file("a"));
  a.train.init_from = d.file("pre/hf");
  EXPECT_EQ(a.train.steps, 6);
  EXPECT_EQ(a.exports.every, 2);
  const auto ra = fp4qat::train::run(a, o);
  ASSERT_EQ(ra.steps.size(), 6u);
  EXPECT_TRUE(fs::exists(d.file("a/exports/step-0/nvfp4/config.json")));
  for (const auto& s : ra.steps) {
    EXPECT_TRUE(std::isfinite(s.reward_mean));
    EXPECT_TRUE(std::isfinite(s.sampler_mismatch_mean));
  }
  EXPECT_GT(ra.steps[0].sample_s, 0.0);
  EXPECT_GT(ra.steps[0].load_s, 0.0);
  EXPECT_GT(ra.steps[0].sample_tokens_per_s, 0.0);
  EXPECT_EQ(ra.steps[1].sample_s, 0.0);  // the second update of an iteration samples nothing
  EXPECT_EQ(ra.steps[1].load_s, 0.0);
  for (const auto& s : ra.steps) EXPECT_GT(s.train_s, 0.0);
  EXPECT_GT(ra.steps[1].export_s, 0.0);  // the iteration's last update exports
  EXPECT_EQ(ra.steps[0].export_s, 0.0);
  std::set<double> rewards_seen;
  for (int k = 0; k < 3; ++k) {
    SCOPED_TRACE(k);
    const std::string dir = d.file("a/rollouts/iter-" + std::to_string(k));
    ASSERT_TRUE(fs::exists(dir + "/complete"));
    fp4qat::rollouts::Limits lim{a.model.vocab_size, a.model.max_position_embeddings, a.model.num_experts, 0, 0};
    const auto samples = fp4qat::rollouts::read_folder(dir, lim);
    ASSERT_EQ(samples.size(), 12u);
    fp4qat::rollout::Loaded m =
        fp4qat::rollout::load(d.file("a/exports/step-" + std::to_string(2 * k) + "/nvfp4"), at::kCPU);
    for (const auto& s : samples) {
      EXPECT_EQ(s.reward, fp4qat::rewards::addition(s.prompt, s.response));
      rewards_seen.insert(s.reward);
      std::vector<int64_t> ids = s.prompt;
      ids.insert(ids.end(), s.response.begin(), s.response.end());
      const at::Tensor lp = fp4qat::rollout::token_logprobs(*m.model, *m.policy,
                                                            at::tensor(ids, at::kLong).unsqueeze(0), at::kFloat)[0];
      const int64_t P = static_cast<int64_t>(s.prompt.size());
      for (size_t j = 0; j < s.response.size(); ++j)
        EXPECT_NEAR(s.logprobs[j], lp[P - 1 + static_cast<int64_t>(j)].item<float>(), 1e-5) << s.where;
    }
  }
  EXPECT_GE(rewards_seen.size(), 2u);  // non-zero advantages: the updates train
  {
    fp4qat::st::Reader w0(d.file("pre/checkpoints/step-120/model.safetensors")),
        w6(d.file("a/checkpoints/step-6/model.safetensors"));
    EXPECT_FALSE(at::equal(w0.view("model.layers.0.mlp.experts.down_proj"),
                           w6.view("model.layers.0.mlp.experts.down_proj")));
  }
  // Stopped after 3 steps (mid-iteration 1) and resumed.
  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  const auto rb = fp4qat::test::run_stopped_and_resumed(b, o, 3);
  ASSERT_EQ(rb.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const auto& s = rb[i];
    EXPECT_EQ(s.loss, ra.steps[i].loss) << "step " << i + 1;
    EXPECT_EQ(s.reward_mean, ra.steps[i].reward_mean) << "step " << i + 1;
  }
  for (int k = 0; k < 3; ++k)
    EXPECT_EQ(read_all(d.file("b/rollouts/iter-" + std::to_string(k))),
              read_all(d.file("a/rollouts/iter-" + std::to_string(k))))
        << "iteration " << k;
  fp4qat::st::Reader wa(d.file("a/checkpoints/step-6/model.safetensors")),
      wb(d.file("b/checkpoints/step-6/model.safetensors"));
  for (const auto& t : wa.tensors()) EXPECT_TRUE(fp4qat::test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
  // A fresh run (no --resume) into a folder that holds an earlier loop's samples samples anew.
  {
    cfg::Config c = a;
    c.train.out_dir = d.file("c");
    c.rl.iterations = 1;
    cfg::derive_rl_loop(c);
    fp4qat::train::run(c, o);
    const std::string first = read_all(d.file("c/rollouts/iter-0"));
    c.rl.seed = 77;
    fp4qat::train::run(c, o);
    EXPECT_NE(read_all(d.file("c/rollouts/iter-0")), first);
  }
  // Refusals.
  cfg::Config bad = a;
  bad.train.steps = 5;
  EXPECT_THROW(cfg::validate(bad), fp4qat::Error);
  bad = a;
  bad.data.kind = "rollouts";
  bad.data.path = d.file("x.jsonl");
  EXPECT_THROW(cfg::validate(bad), fp4qat::Error);
  bad = a;
  bad.rl.sample_format = fp4qat::qat::Format::kMXFP8;
  EXPECT_THROW(cfg::validate(bad), fp4qat::Error);
  cfg::Config lm = fp4qat::test::small_moe_run(d.file("lm"));
  EXPECT_THROW(cfg::derive_rl_loop(lm), fp4qat::Error);
}
