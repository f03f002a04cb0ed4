// tests/trainer/test_data.cpp — trainer/data.h: the synthetic corpus is deterministic and
// well-formed; token files round-trip, batches are deterministic and stay inside their split,
// malformed files are refused naming the file; a run on a token file learns its pattern; rollout
// samples (trainer/rollouts.h) round-trip and bad ones are refused naming file:line.
#include <gtest/gtest.h>

#include "kernels/common/check.h"
#include "tests/common/test_util.h"
#include "io/fs.h"
#include "trainer/data.h"
#include "trainer/rewards.h"
#include "trainer/rollouts.h"
#include "trainer/train.h"

using fp4qat::test::TempDir;
namespace data = fp4qat::data;

TEST(SyntheticCorpus, DeterministicAndCorrect) {
  data::SyntheticCorpus c(7);
  const data::Problem p = c.problem(0, 42);
  EXPECT_EQ(c.problem(0, 42).prompt, p.prompt);
  const std::string text = data::SyntheticCorpus::render(p.prompt) + data::SyntheticCorpus::render(p.answer);
  const auto plus = text.find('+'), eq = text.find('=');
  ASSERT_NE(plus, std::string::npos);
  ASSERT_NE(eq, std::string::npos);
  const long a = std::stol(text.substr(0, plus)), b = std::stol(text.substr(plus + 1, eq - plus - 1));
  EXPECT_EQ(std::stol(text.substr(eq + 1, text.size() - eq - 2)), a + b) << text;
  EXPECT_TRUE(at::equal(c.batch(0, 3, 4, 16), c.batch(0, 3, 4, 16)));
  EXPECT_FALSE(at::equal(c.batch(0, 3, 4, 16), c.batch(0, 4, 4, 16)));
  EXPECT_FALSE(at::equal(c.batch(0, 3, 4, 16), c.batch(1, 3, 4, 16)));  // val differs from train
}

TEST(TokenFile, RoundTripAndSplits) {
  TempDir d;
  std::vector<int64_t> toks(1000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<int64_t>(i);
  for (int width : {2, 4}) {
    const std::string p = d.file("t" + std::to_string(width) + ".bin");
    data::TokenFile::write(p, toks, width);
    data::TokenFile f(p, 0.1, 5);
    EXPECT_EQ(f.size(), 1000);
    EXPECT_EQ(f.max_token(), 999);
    const at::Tensor tr = f.batch(0, 9, 8, 15), va = f.batch(1, 9, 8, 15);
    EXPECT_TRUE(at::equal(tr, f.batch(0, 9, 8, 15)));
    // windows are consecutive tokens, train windows inside [0, 900), val inside [900, 1000)
    EXPECT_TRUE(at::equal(tr.select(1, 15) - tr.select(1, 0), at::full({8}, 15, at::kLong)));
    EXPECT_LT(tr.max().item<int64_t>(), 900);
    EXPECT_GE(va.min().item<int64_t>(), 900);
  }
}

TEST(TokenFile, RejectsMalformedFiles) {
  TempDir d;
  auto expect_bad = [&](const std::string& bytes, const std::string& needle) {
    const std::string p = d.file("bad.bin");
    fp4qat::test::write_bytes(p, bytes);
    try {
      data::TokenFile f(p, 0.1, 1);
      FAIL() << "accepted a bad token file";
    } catch (const fp4qat::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.bin"), std::string::npos) << e.what();
    }
  };
  data::TokenFile::write(d.file("ok.bin"), {1, 2, 3}, 2);
  const std::string ok = fp4qat::test::read_bytes(d.file("ok.bin"));
  expect_bad("short", "header");
  expect_bad("NOTATOKF" + ok.substr(8), "magic");
  std::string w3 = ok;
  w3[8] = 3;
  expect_bad(w3, "2 or 4");
  expect_bad(ok.substr(0, ok.size() - 1), "data bytes");
  EXPECT_THROW(data::TokenFile(d.file("missing.bin"), 0.1, 1), fp4qat::Error);
}

TEST(TokenFile, TrainingLearnsAPattern) {
  TempDir d;
  std::vector<int64_t> toks;
  for (int i = 0; i < 20000; ++i) toks.push_back((i * 7) % 13);  // a deterministic cycle
  data::TokenFile::write(d.file("t.bin"), toks, 2);
  fp4qat::config::Config c;
  c.model.hidden_size = 64;
  c.model.head_dim = 16;
  c.model.moe_intermediate_size = 32;
  c.model.num_experts = 4;
  c.model.vocab_size = 16;
  c.data.kind = "tokens";
  c.data.path = d.file("t.bin");
  c.train.steps = 30;
  c.train.batch_size = 8;
  c.train.seq_len = 32;
  c.train.dtype = "fp32";
  c.train.device = "cpu";
  c.train.eval_every = 30;
  c.train.out_dir = d.file("run");
  fp4qat::train::Options o;
  o.quiet = true;
  const auto r = fp4qat::train::run(c, o);
  ASSERT_EQ(r.evals.size(), 1u);
  EXPECT_LT(r.evals[0].val_loss, 1.0) << "the cycle is predictable after a few tokens";
  EXPECT_GT(r.steps.front().loss, 2.0);
}

// Rollout samples (trainer/rollouts.h, issue 22): a record with every field round-trips
// (to_json_line -> read_file), a folder's files are read in name order, and each kind of bad
// record is refused naming file:line: a truncated line, an unknown key, token / expert ids out
// of range, log-prob and advantage counts not matching the response, NaN / positive log-probs,
// non-finite rewards, empty responses, too long samples, inconsistent routed-expert layouts.
TEST(Rollouts, RecordsRoundTripAndBadOnesAreRefusedNamingFileAndLine) {
  namespace ro = fp4qat::rollouts;
  namespace fs = fp4qat::fs;
  TempDir d;
  ro::Limits lim;
  lim.vocab = 16;
  lim.max_tokens = 12;
  lim.num_experts = 4;
  ro::Sample a;
  a.prompt = {1, 2, 10};
  a.response = {3, 12};
  a.logprobs = {-0.25f, -1.5f};
  a.reward = 1.0;
  a.group = "7";
  a.advantages = {0.5f, -0.5f};
  a.routed = {0, 1, 2, 3, 3, 2, 1, 0};  // [2 tokens, 2 layers, top 2]
  ro::Sample b = a;
  b.routed.clear();
  b.advantages.clear();
  b.reward = -0.5;
  b.group = "g8";
  fs::make_dirs(d.file("r"));
  fs::write_text_atomic(d.file("r/b.jsonl"), ro::to_json_line(b) + "\n\n");
  fs::write_text_atomic(d.file("r/a.jsonl"), ro::to_json_line(a, 2, 2) + "\n" + ro::to_json_line(b) + "\n");
  fs::write_text_atomic(d.file("r/notes.txt"), "not a rollout file\n");
  const auto all = ro::read_folder(d.file("r"), lim);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].prompt, a.prompt);
  EXPECT_EQ(all[0].response, a.response);
  EXPECT_EQ(all[0].logprobs, a.logprobs);
  EXPECT_EQ(all[0].advantages, a.advantages);
  EXPECT_EQ(all[0].routed, a.routed);
  EXPECT_EQ(all[0].group, "7");
  EXPECT_EQ(all[0].where, d.file("r/a.jsonl") + ":1");
  EXPECT_EQ(all[1].reward, -0.5);
  EXPECT_EQ(all[2].where, d.file("r/b.jsonl") + ":1");  // b.jsonl after a.jsonl
  // An integer group id reads as its decimal text.
  fs::write_text_atomic(d.file("int.jsonl"), R"({"prompt":[1],"response":[2],"logprobs":[-1],"reward":0,"group":3})"
                                             "\n");
  EXPECT_EQ(ro::read_file(d.file("int.jsonl"), lim)[0].group, "3");

  const std::string good = R"("prompt":[1,2],"response":[3,4],"logprobs":[-0.5,-0.25],"reward":1,"group":1)";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{" + good.substr(0, 40), "invalid JSON"},  // truncated
      {"{" + good + R"(,"advantage":[1,2]})", "unknown key 'advantage'"},
      {R"({"prompt":[1,16],"response":[3],"logprobs":[-1],"reward":0,"group":1})", "token 16 is outside"},
      {R"({"prompt":[1],"response":[3,4],"logprobs":[-1],"reward":0,"group":1})", "1 logprobs for 2 response"},
      {R"({"prompt":[1],"response":[3],"logprobs":[0.5],"reward":0,"group":1})", "is positive"},
      {R"({"prompt":[1],"response":[3],"logprobs":[NaN],"reward":0,"group":1})", "invalid JSON"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":1e999,"group":1})", "number overflow"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":"1","group":1})", "reward must be a finite"},
      {R"({"prompt":[1],"response":[],"logprobs":[],"reward":0,"group":1})", "response is empty"},
      {R"({"prompt":[1,2,3,4,5,6,7,8,9,10],"response":[1,2,3],"logprobs":[-1,-1,-1],"reward":0,"group":1})",
       "more than the model's 12"},
      {"{" + good + R"(,"advantages":[1]})", "1 advantages for 2 response"},
      {"{" + good + R"(,"routed_experts":[[[0,4]],[[1,2]]]})", "routed expert 4"},
      {"{" + good + R"(,"routed_experts":[[[0,1]],[[1,2],[0,1]]]})", "has 2 layers, expected 1"},
      {"{" + good + R"(,"routed_experts":[[[0,1]]]})", "1 entries for 2 response"},
      {R"({"prompt":[1],"response":[3],"logprobs":[-1],"reward":0})", "group"},
  };
  for (const auto& [line, needle] : bad) {
    const std::string f = d.file("bad.jsonl");
    fs::write_text_atomic(f, "{" + good + "}\n" + line + "\n");
    try {
      ro::read_file(f, lim);
      ADD_FAILURE() << "accepted: " << line;
    } catch (const fp4qat::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(f + ":2"), std::string::npos) << m;
      EXPECT_NE(m.find(needle), std::string::npos) << "should say '" << needle << "': " << m;
    }
  }
  EXPECT_THROW(ro::read_folder(d.file("none"), lim), fp4qat::Error);
}

// Rewards (trainer/rewards.h): the addition task's exact match and format term, by name.
TEST(Rewards, AdditionTask) {
  namespace rw = fp4qat::rewards;
  const std::vector<int64_t> prompt = {1, 2, data::kPlus, 3, 0, data::kEquals};  // 12+30=
  EXPECT_EQ(rw::addition_exact(prompt, {4, 2, data::kSep}), 1.0);
  EXPECT_EQ(rw::addition_exact(prompt, {4, 2, data::kSep, 7, 7}), 1.0);  // after ';' nothing counts
  EXPECT_EQ(rw::addition_exact(prompt, {4, 2}), 0.0);                    // no ';'
  EXPECT_EQ(rw::addition_exact(prompt, {4, 3, data::kSep}), 0.0);
  EXPECT_NEAR(rw::addition(prompt, {4, 2, data::kSep}), 1.1, 1e-12);
  EXPECT_NEAR(rw::addition(prompt, {4, 3, data::kSep}), 0.1, 1e-12);  // wrong but well-formed
  EXPECT_EQ(rw::addition(prompt, {data::kPlus, data::kSep}), 0.0);
  EXPECT_EQ(rw::addition(prompt, {data::kSep}), 0.0);  // no digits
  EXPECT_EQ(rw::by_name("addition"), &rw::addition);
  EXPECT_THROW(rw::by_name("bleu"), fp4qat::Error);
  EXPECT_THROW(rw::addition({1, data::kEquals}, {1}), fp4qat::Error);  // not "a+b="
  // The corpus's own problems score 1.1 with their answers.
  const data::SyntheticCorpus c(3);
  for (uint64_t i = 0; i < 50; ++i) {
    const data::Problem p = c.problem(1, i);
    EXPECT_NEAR(rw::addition(p.prompt, p.answer), 1.1, 1e-12) << i;
  }
}
