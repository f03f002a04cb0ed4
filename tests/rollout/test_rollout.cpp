// tests/rollout/test_rollout.cpp — rollout/serving.h and the per-step mismatch: an export read
// back from disk and run as the rollout side runs it gives the trainer's log-probs when the
// experts were trained with NVFP4 QAT (mismatch at accumulation-order level: exactly zero on the
// CPU), and clearly different ones when training ran in BF16 and exported NVFP4; a BF16 export
// gives the BF16 model's logits exactly; MXFP8 exports run; bad folders are refused by name.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <fstream>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "tests/common/test_util.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"
#include "trainer/rewards.h"
#include "trainer/rollouts.h"
#include "rollout/sampler.h"
#include "rollout/serving.h"
#include "trainer/train.h"

using namespace fp4qat;

namespace {

config::Config small_run(const std::string& out) {
  config::Config c = test::small_moe_run(out);
  c.qat.format = fp4qat::qat::Format::kNVFP4;
  c.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kMXFP8, fp4qat::qat::Format::kBF16};
  return c;
}

// One NVFP4 QAT step of small_run, exported in every format into `out`/exports (no probe).
void one_exported_step(const std::string& out) {
  config::Config c = small_run(out);
  c.train.steps = 1;
  c.exports.probe_mismatch = false;
  train::Options o;
  o.quiet = true;
  train::run(c, o);
}

}  // namespace

TEST(Rollout, QatMismatchIsAccumulationOrderLevelAndBF16TrainingIsNot) {
  test::TempDir d;
  train::Options o;
  o.quiet = true;
  // A pretrained (peaked) model first: BF16-style training, no exports.
  config::Config pre = small_run(d.file("pre"));
  pre.qat.format = fp4qat::qat::Format::kBF16;
  pre.exports.every = 0;
  pre.train.steps = 60;
  pre.optim.lr = 1e-2;
  train::run(pre, o);
  // Expert-only NVFP4 QAT from it, and BF16 fine-tuning from it that exports NVFP4.
  config::Config qat = small_run(d.file("qat"));
  qat.train.init_from = d.file("pre/hf");
  qat.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
  const auto rq = train::run(qat, o);
  config::Config bf = small_run(d.file("bf16"));
  bf.train.init_from = d.file("pre/hf");
  bf.qat.format = fp4qat::qat::Format::kBF16;
  bf.exports.every = 1;
  const auto rb = train::run(bf, o);
  ASSERT_EQ(rq.steps.size(), 3u);
  ASSERT_EQ(rb.steps.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_FALSE(std::isnan(rq.steps[i].mismatch_mean));
    EXPECT_LE(rq.steps[i].mismatch_mean, 1e-3) << "step " << i + 1;
    EXPECT_GT(rb.steps[i].mismatch_mean, 2e-3) << "step " << i + 1;  // above the QAT bound
    EXPECT_GT(rb.steps[i].mismatch_mean, 50 * rq.steps[i].mismatch_mean + 1e-6);
    EXPECT_GE(rb.steps[i].mismatch_max, rb.steps[i].mismatch_mean);
  }
  // MXFP8 QAT against its MXFP8 export: the same.
  config::Config mx = small_run(d.file("mx"));
  mx.train.init_from = d.file("pre/hf");
  mx.qat.format = fp4qat::qat::Format::kMXFP8;
  mx.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
  mx.exports.formats = {fp4qat::qat::Format::kMXFP8};
  const auto rm = train::run(mx, o);
  for (const auto& s : rm.steps) EXPECT_LE(s.mismatch_mean, 1e-3) << "mxfp8 step " << s.step;
  // The mismatch is logged per step.
  std::ifstream f(d.file("qat/metrics.jsonl"));
  std::string line;
  int logged = 0;
  while (std::getline(f, line)) logged += line.find("\"mismatch_mean\"") != std::string::npos;
  EXPECT_EQ(logged, 3);
}

TEST(Rollout, BF16ExportGivesTheModelsLogitsAndMXFP8Runs) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  const at::Tensor ids = at::randint(0, 13, {2, 9}, at::kLong);
  rollout::Loaded bf = rollout::load(d.file("run/exports/latest/bf16"), at::kCPU);
  EXPECT_EQ(bf.format, qat::Format::kBF16);
  EXPECT_EQ(bf.policy->quantized_count(), 0u);
  const model::Qwen3Moe ref = model::load_hf_folder(d.file("run/exports/latest/bf16"));
  model::LinearPolicy plain;
  EXPECT_TRUE(test::bytes_equal(rollout::token_logprobs(*bf.model, *bf.policy, ids, at::kFloat),
                                rollout::token_logprobs(ref, plain, ids, at::kFloat)));
  rollout::Loaded mx = rollout::load(d.file("run/exports/latest/mxfp8"), at::kCPU);
  EXPECT_EQ(mx.format, qat::Format::kMXFP8);
  EXPECT_EQ(mx.policy->quantized_count(), 4u);  // 2 layers x (gate_up, down)
  const at::Tensor lm = rollout::token_logprobs(*mx.model, *mx.policy, ids, at::kFloat);
  const at::Tensor lb = rollout::token_logprobs(*bf.model, *bf.policy, ids, at::kFloat);
  EXPECT_TRUE(at::isfinite(lm).all().item<bool>());
  EXPECT_FALSE(at::equal(lm, lb));
  EXPECT_LT((lm - lb).abs().mean().item<double>(), 0.1);
  // A folder with an unknown quantization method is refused, naming the file.
  const std::string cfgp = d.file("run/exports/latest/nvfp4/config.json");
  std::string text = fs::read_text(cfgp);
  text.replace(text.find("\"modelopt\""), 10, "\"awq_xyz\"");
  fs::write_text_atomic(cfgp, text);
  try {
    rollout::load(d.file("run/exports/latest/nvfp4"), at::kCPU);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("awq_xyz"), std::string::npos) << e.what();
  }
}

TEST(CliEval, SequencesAndSummaryFromAnExport) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  const std::string dir = d.file("run/exports/latest/nvfp4");
  fs::write_text_atomic(d.file("seqs.jsonl"), "{\"tokens\": [1, 2, 10, 3, 11, 5]}\n\n{\"tokens\": [4, 4]}\n");
  const auto r =
      test::run_fp4qat({"eval", "--model", dir, "--sequences", d.file("seqs.jsonl"), "--out", d.file("lp.jsonl"),
                        "--device", "cpu", "--synthetic-batches", "1", "--exact-match", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"val_loss\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"format\":\"nvfp4\""), std::string::npos) << r.out;
  const std::string lp = fs::read_text(d.file("lp.jsonl"));
  const json::Value first = json::parse(lp.substr(0, lp.find('\n')), "lp.jsonl");
  rollout::Loaded m = rollout::load(dir, at::kCPU);
  const at::Tensor want = rollout::token_logprobs(
      *m.model, *m.policy, at::tensor(std::vector<int64_t>{1, 2, 10, 3, 11, 5}).unsqueeze(0), at::kFloat);
  const auto& got = first.at("logprobs").as_array();
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(static_cast<float>(got[i].as_double()), want[0][i].item<float>()) << i;
  // A token outside the vocabulary names the file and line.
  fs::write_text_atomic(d.file("bad.jsonl"), "{\"tokens\": [1, 2]}\n{\"tokens\": [1, 999]}\n");
  const auto b = test::run_fp4qat({"eval", "--model", dir, "--sequences", d.file("bad.jsonl"), "--device", "cpu"});
  EXPECT_EQ(b.exit_code, 1);
  EXPECT_NE(b.err.find("bad.jsonl:2"), std::string::npos) << b.err;
  const auto m2 = test::run_fp4qat({"eval", "--model", d.file("nope"), "--device", "cpu"});
  EXPECT_EQ(m2.exit_code, 1);
  EXPECT_NE(m2.err.find("nope"), std::string::npos) << m2.err;
}

// eval --serving / --reference-serving (issue 21): the same export served by another engine's
// arithmetic. An export of the default profile against itself: |dlogp| 0; against itself under the
// marlin or per-token profile: > 0 and equal to what rollout::load with that profile computes; the
// profile named in the summary; bad names and non-NVFP4 folders refused.
TEST(CliEval, ServingProfileOverride) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  const std::string dir = d.file("run/exports/latest/nvfp4");
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"eval", "--model", dir, "--reference", dir, "--device", "cpu", "--synthetic-batches",
                                  "2", "--exact-match", "0"};
    a.insert(a.end(), extra.begin(), extra.end());
    const auto r = test::run_fp4qat(a);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out.substr(0, r.out.find('\n')), "eval output");
  };
  EXPECT_EQ(eval({}).at("mean_abs_dlogp").as_double(), 0.0);
  EXPECT_EQ(eval({"--reference-serving", "fp4qat"}).at("mean_abs_dlogp").as_double(), 0.0);
  for (const char* profile : {"marlin", "flashinfer_per_token", "flashinfer_static"}) {
    SCOPED_TRACE(profile);
    const json::Value v = eval({"--reference-serving", profile});
    EXPECT_GT(v.at("mean_abs_dlogp").as_double(), 0.0);
    EXPECT_EQ(v.at("reference_serving").as_string(), profile);
    const json::Value w = eval({"--serving", profile, "--reference-serving", profile});
    EXPECT_EQ(w.at("mean_abs_dlogp").as_double(), 0.0);
    EXPECT_EQ(w.at("serving").as_string(), profile);
  }
  // The override is what load() serves: marlin computes W4A16 with Marlin's weights.
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 2, 10, 3, 11, 5}).unsqueeze(0);
  rollout::Loaded a = rollout::load(dir, at::kCPU), b = rollout::load(dir, at::kCPU, "marlin");
  EXPECT_FALSE(at::equal(rollout::token_logprobs(*a.model, *a.policy, ids, at::kFloat),
                         rollout::token_logprobs(*b.model, *b.policy, ids, at::kFloat)));
  // flashinfer_static on an export whose recipe has row-scaled activations: served with the engine's
  // max6 static scale (what the engine would compute), not refused.
  config::Config rows = small_run(d.file("rows"));
  rows.qat.activation_scale = qat::ActivationScale::kRow;
  rows.exports.every = 1;
  rows.train.steps = 1;
  train::Options q;
  q.quiet = true;
  train::run(rows, q);
  rollout::Loaded st = rollout::load(d.file("rows/exports/latest/nvfp4"), at::kCPU, "flashinfer_static"),
                  pt = rollout::load(d.file("rows/exports/latest/nvfp4"), at::kCPU);
  EXPECT_FALSE(at::equal(rollout::token_logprobs(*st.model, *st.policy, ids, at::kFloat),
                         rollout::token_logprobs(*pt.model, *pt.policy, ids, at::kFloat)));
  const auto bad = test::run_fp4qat({"eval", "--model", dir, "--serving", "trtllm", "--device", "cpu"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("trtllm"), std::string::npos) << bad.err;
  const auto bf = test::run_fp4qat(
      {"eval", "--model", d.file("run/exports/latest/bf16"), "--serving", "marlin", "--device", "cpu"});
  EXPECT_EQ(bf.exit_code, 1);
  EXPECT_NE(bf.err.find("applies to NVFP4"), std::string::npos) << bf.err;
  const auto noref = test::run_fp4qat({"eval", "--model", dir, "--reference-serving", "marlin", "--device", "cpu"});
  EXPECT_EQ(noref.exit_code, 1);
  EXPECT_NE(noref.err.find("--reference-serving needs --reference"), std::string::npos) << noref.err;
}

TEST(KVCache, IncrementalDecodingEqualsTheFullForward) {
  model::ModelConfig mc = small_run("unused").model;
  mc.mlp_only_layers = {1};  // one dense layer too
  mc.num_hidden_layers = 3;
  model::Qwen3Moe m(mc, 11);
  model::LinearPolicy plain;
  torch::NoGradGuard ng;
  const at::Tensor ids = at::randint(0, 32, {2, 12}, at::kLong);
  const at::Tensor full = m.forward(ids, at::kFloat, plain).logits;  // [2, 12, V]
  model::KVCache cache;
  std::vector<at::Tensor> parts = {m.forward(ids.narrow(1, 0, 5), at::kFloat, plain, &cache).logits};
  parts.push_back(m.forward(ids.narrow(1, 5, 3), at::kFloat, plain, &cache).logits);  // several tokens after a prefix
  for (int64_t t = 8; t < 12; ++t) parts.push_back(m.forward(ids.narrow(1, t, 1), at::kFloat, plain, &cache).logits);
  EXPECT_EQ(cache.pos, 12);
  const at::Tensor inc = at::cat(parts, 1);
  EXPECT_TRUE(at::allclose(inc, full, 1e-5, 1e-5)) << (inc - full).abs().max().item<float>();
  // and a cache of another prefix gives other logits: the comparison above can fail
  model::KVCache other;
  m.forward(at::randint(0, 32, {2, 5}, at::kLong), at::kFloat, plain, &other);
  const at::Tensor wrong = m.forward(ids.narrow(1, 5, 3), at::kFloat, plain, &other).logits;
  EXPECT_FALSE(at::allclose(wrong, full.narrow(1, 5, 3), 1e-5, 1e-5));
}

// rollout::pick draws from the tempered, nucleus-truncated distribution: frequencies within 4
// standard errors of the probabilities, never a token outside the top-p prefix, greedy at
// temperature 0; a row's draw depends only on its logits and its own generator.
TEST(Sampler, PickDrawsFromTheNucleusWithItsProbabilities) {
  const std::vector<double> p = {0.4, 0.3, 0.15, 0.1, 0.05};
  std::vector<double> lg;
  for (double x : p) lg.push_back(std::log(x));
  const at::Tensor logits = at::tensor(lg, at::kDouble).to(at::kFloat).unsqueeze(0);  // [1, 5]
  auto draw = [&](double temperature, double top_p, int n, uint64_t seed) {
    std::vector<int> count(5, 0);
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (int i = 0; i < n; ++i) ++count[rollout::pick(logits, temperature, top_p, {&g})[0].item<int64_t>()];
    return count;
  };
  const int n = 20000;
  const auto all = draw(1.0, 1.0, n, 1);
  for (int t = 0; t < 5; ++t)
    EXPECT_NEAR(all[t] / double(n), p[t], 4 * std::sqrt(p[t] * (1 - p[t]) / n)) << "token " << t;
  const auto nucleus = draw(1.0, 0.6, n, 2);  // 0.4 + 0.3 reach 0.6: tokens 0 and 1 only
  EXPECT_EQ(nucleus[2] + nucleus[3] + nucleus[4], 0);
  EXPECT_NEAR(nucleus[0] / double(n), 0.4 / 0.7, 4 * std::sqrt(0.57 * 0.43 / n));
  const auto cold = draw(1e-40, 1.0, 100, 3);  // greedy in effect
  EXPECT_EQ(cold[0], 100);
  at::Generator g0 = at::make_generator<at::CPUGeneratorImpl>(4);
  EXPECT_EQ(rollout::pick(logits, 0.0, 1.0, {&g0})[0].item<int64_t>(), 0);
  // Rows: each row's draw is its own (the same as drawn alone with the same generator state).
  const at::Tensor rows = at::randn({3, 5}, at::make_generator<at::CPUGeneratorImpl>(5));
  std::vector<at::Generator> ga, gb;
  for (int r = 0; r < 3; ++r) {
    ga.push_back(at::make_generator<at::CPUGeneratorImpl>(10 + r));
    gb.push_back(at::make_generator<at::CPUGeneratorImpl>(10 + r));
  }
  for (int k = 0; k < 20; ++k) {
    const at::Tensor batch = rollout::pick(rows, 1.3, 0.9, {&ga[0], &ga[1], &ga[2]});
    for (int r = 0; r < 3; ++r)
      EXPECT_EQ(batch[r].item<int64_t>(), rollout::pick(rows.narrow(0, r, 1), 1.3, 0.9, {&gb[r]})[0].item<int64_t>());
  }
}

// rollout::sample_batch: rows of several prompts decoded together give each row what it gets
// decoded alone (same generator seed), where the serving profile keeps rows apart (marlin: bf16
// activations; static scales), finished rows leaving the batch early, with routing recorded.
TEST(Sampler, BatchedRowsEqualEachRowDecodedAlone) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  for (const std::string serving : {"marlin", "flashinfer_static"}) {
    SCOPED_TRACE(serving);
    rollout::Loaded m = rollout::load(d.file("run/exports/latest/nvfp4"), at::kCPU, serving);
    const std::vector<std::vector<int64_t>> prompts = {{1, 2, 10, 3}, {4, 10, 5, 11}, {7, 7, 10, 2}};
    const std::vector<int64_t> of = {0, 0, 1, 2, 2, 2};
    rollout::SampleOptions so;
    so.max_new_tokens = 6;
    so.temperature = 1.5;
    so.routed = true;
    auto gens = [&] {
      std::vector<at::Generator> g;
      for (size_t r = 0; r < of.size(); ++r) g.push_back(at::make_generator<at::CPUGeneratorImpl>(100 + r));
      return g;
    };
    auto alone = [&] {
      std::vector<rollout::Response> out;
      std::vector<at::Generator> g = gens();
      for (size_t r = 0; r < of.size(); ++r) out.push_back(rollout::sample(m, prompts[of[r]], so, g[r], at::kCPU, at::kFloat));
      return out;
    };
    // The stop token: one that a row samples early, so that rows finish at different steps.
    so.eos = alone()[0].tokens[1];
    const std::vector<rollout::Response> ref = alone();
    std::vector<at::Generator> g = gens();
    const std::vector<rollout::Response> got = rollout::sample_batch(m, prompts, of, g, so, at::kCPU, at::kFloat);
    ASSERT_EQ(got.size(), of.size());
    size_t shortest = 99, longest = 0;
    for (size_t r = 0; r < of.size(); ++r) {
      SCOPED_TRACE(r);
      EXPECT_EQ(got[r].tokens, ref[r].tokens);
      ASSERT_EQ(got[r].logprobs.size(), ref[r].logprobs.size());
      for (size_t j = 0; j < ref[r].logprobs.size(); ++j) EXPECT_NEAR(got[r].logprobs[j], ref[r].logprobs[j], 1e-5);
      EXPECT_EQ(got[r].routed, ref[r].routed);
      EXPECT_EQ(got[r].routed.size(), got[r].tokens.size() * static_cast<size_t>(model::moe_layer_count(m.model->config()) * m.model->config().num_experts_per_tok));
      shortest = std::min(shortest, ref[r].tokens.size());
      longest = std::max(longest, ref[r].tokens.size());
    }
    EXPECT_LE(shortest, 2u);
    EXPECT_GT(longest, shortest);  // rows left the batch at different steps
  }
  rollout::Loaded m = rollout::load(d.file("run/exports/latest/nvfp4"), at::kCPU);
  std::vector<at::Generator> g(2, at::make_generator<at::CPUGeneratorImpl>(1));
  EXPECT_THROW(rollout::sample_batch(m, {{1, 2}, {1, 2, 3}}, {0, 1}, g, {}, at::kCPU, at::kFloat), fp4qat::Error);
  EXPECT_THROW(rollout::sample_batch(m, {{1, 2}}, {0, 1}, g, {}, at::kCPU, at::kFloat), fp4qat::Error);
}

TEST(CliGenerate, GreedyMatchesArgmaxOfTheFullForwardAndSamplingIsSeeded) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  const std::string dir = d.file("run/exports/latest/bf16");
  fs::write_text_atomic(d.file("p.jsonl"), "{\"tokens\": [1, 2, 10, 3]}\n");
  const auto g = test::run_fp4qat(
      {"generate", "--model", dir, "--prompts", d.file("p.jsonl"), "--max-new-tokens", "5", "--device", "cpu"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const json::Value line = json::parse(g.out.substr(0, g.out.find('\n')), "generate output");
  // Greedy with the KV cache == argmax of full forwards over the growing sequence.
  rollout::Loaded m = rollout::load(dir, at::kCPU);
  std::vector<int64_t> seq = {1, 2, 10, 3};
  const auto& toks = line.at("response").as_array();
  ASSERT_EQ(toks.size(), 5u);
  torch::NoGradGuard ng;
  for (const auto& t : toks) {
    const at::Tensor logits = m.model->forward(at::tensor(seq).unsqueeze(0), at::kFloat, *m.policy).logits[0][-1];
    EXPECT_EQ(t.as_int(), logits.argmax().item<int64_t>());
    seq.push_back(t.as_int());
  }
  auto sample = [&](const std::string& seed) {
    const auto r = test::run_fp4qat({"generate", "--model", d.file("run/exports/latest/nvfp4"), "--prompts",
                                     d.file("p.jsonl"), "--max-new-tokens", "8", "--temperature", "1.5", "--top-p",
                                     "0.95", "--seed", seed, "--device", "cpu"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  EXPECT_EQ(sample("7"), sample("7"));
  EXPECT_NE(sample("7"), sample("8"));
  // Rollout records (trainer/rollouts.h): G responses per prompt as one group, scored by a named
  // reward; the file reads back as training data; unscored records are refused by the reader.
  fs::write_text_atomic(d.file("p2.jsonl"), "{\"tokens\": [1, 2, 10, 3, 11]}\n{\"tokens\": [4, 10, 5, 11]}\n");
  const auto rr = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p2.jsonl"), "--max-new-tokens",
                                    "4", "--temperature", "1", "--samples", "3", "--reward", "addition", "--seed", "3",
                                    "--device", "cpu", "--out", d.file("roll.jsonl")});
  ASSERT_EQ(rr.exit_code, 0) << rr.err;
  rollouts::Limits lim;
  lim.vocab = m.model->config().vocab_size;
  const auto got = rollouts::read_file(d.file("roll.jsonl"), lim);
  ASSERT_EQ(got.size(), 6u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].group, std::to_string(i / 3));
    EXPECT_EQ(got[i].response.size(), got[i].logprobs.size());
    EXPECT_EQ(got[i].reward, rewards::addition(got[i].prompt, got[i].response));
  }
  const auto unscored = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p2.jsonl"),
                                          "--max-new-tokens", "2", "--device", "cpu", "--out", d.file("u.jsonl")});
  ASSERT_EQ(unscored.exit_code, 0) << unscored.err;
  EXPECT_THROW(rollouts::read_file(d.file("u.jsonl"), lim), fp4qat::Error);
  EXPECT_EQ(
      test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p2.jsonl"), "--reward", "bleu"}).exit_code, 1);
  const auto bad = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p.jsonl"), "--top-p", "0"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--top-p"), std::string::npos) << bad.err;
  // Extreme but valid sampling parameters (issue 23): a temperature of 1e-40 and a top-p of 1e-300
  // are greedy in effect, not a torch error.
  auto response = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"generate", "--model", dir,    "--prompts", d.file("p.jsonl"), "--max-new-tokens",
                                  "5",        "--device", "cpu", "--seed",    "5"};
    a.insert(a.end(), extra.begin(), extra.end());
    const auto r = test::run_fp4qat(a);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out.substr(0, r.out.find('\n')), "generate output").at("response").dump();
  };
  const std::string greedy = line.at("response").dump();
  EXPECT_EQ(response({"--temperature", "1e-40"}), greedy);
  EXPECT_EQ(response({"--temperature", "1.5", "--top-p", "1e-300"}), greedy);
  const auto inf = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p.jsonl"), "--temperature", "inf"});
  EXPECT_EQ(inf.exit_code, 1);
  EXPECT_NE(inf.err.find("--temperature"), std::string::npos) << inf.err;
}

TEST(CliGenerate, OutputReplacesTheFileWholeOrNotAtAllAndLengthsAreChecked) {
  test::TempDir d;
  one_exported_step(d.file("run"));
  const std::string dir = d.file("run/exports/latest/bf16"), out = d.file("out.jsonl");
  const int64_t max_pos = rollout::load(dir, at::kCPU).model->config().max_position_embeddings;
  fs::write_text_atomic(out, "old\n");
  // A prompt that, with 4 new tokens, would pass max_position_embeddings: refused naming its line,
  // before anything is written; the earlier output stays as it was, no temporary file is left.
  std::string longp = "{\"tokens\": [";
  for (int64_t i = 0; i < max_pos - 2; ++i) longp += (i ? ", " : "") + std::string("1");
  fs::write_text_atomic(d.file("p.jsonl"), "{\"tokens\": [1, 2]}\n" + longp + "]}\n");
  auto r = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p.jsonl"), "--max-new-tokens", "4",
                             "--device", "cpu", "--out", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("p.jsonl:2: " + std::to_string(max_pos - 2) + " tokens, more than"), std::string::npos) << r.err;
  EXPECT_EQ(test::read_bytes(out), "old\n");
  EXPECT_EQ(fs::list_dir(d.path()).size(), 3u);  // run/, out.jsonl, p.jsonl
  // With 3 new tokens it fits exactly; the file is replaced by the whole output.
  r = test::run_fp4qat({"generate", "--model", dir, "--prompts", d.file("p.jsonl"), "--max-new-tokens", "3", "--device",
                        "cpu", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string got = test::read_bytes(out);
  EXPECT_EQ(std::count(got.begin(), got.end(), '\n'), 2) << got;
  EXPECT_EQ(fs::list_dir(d.path()).size(), 3u);
  // Killed mid-run: the output path holds the earlier file or the whole new one, never a part.
  fs::write_text_atomic(out, "old\n");
  std::string many;
  for (int i = 0; i < 400; ++i) many += "{\"tokens\": [1, 2, 3]}\n";
  fs::write_text_atomic(d.file("many.jsonl"), many);
  const pid_t pid = test::spawn_fp4qat({"generate", "--model", dir, "--prompts", d.file("many.jsonl"),
                                        "--max-new-tokens", "64", "--device", "cpu", "--out", out},
                                       {}, d.file("gen.out"), d.file("gen.err"));
  ::usleep(1500 * 1000);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string now = test::read_bytes(out);
  EXPECT_TRUE(now == "old\n" || std::count(now.begin(), now.end(), '\n') == 400)
      << "a partial output (" << std::count(now.begin(), now.end(), '\n') << " lines) at " << out;
}
