// tests/dist/test_dist.cpp — multi-process training over gloo on the CPU: 2 processes of
// build/fp4qat (spawned with RANK, WORLD_SIZE, MASTER_ADDR/PORT, no shell, with a timeout)
// against the equivalent 1-process run (grad_accum 2: the same global batch, dist/process_group.h).
//   * data parallel (dp=2): metrics, checkpoints and every export byte-identical;
//   * expert parallel (ep=2, fp32 with post-training-quantized exports): losses within fp32
//     reduction-order tolerance, the same routing; the checkpoint and
//     the export hold every expert in the single-process layout, and the NVFP4 export is the
//     one `fp4qat convert` makes of the run's BF16 export (the same quantization rules);
//   * resume on 2 expert-parallel processes (re-sharding a full checkpoint) is bit-identical;
//   * objective sft on a packed dataset folder (dp=2): metrics and checkpoints byte-identical (the
//     masked mean's denominator counts the targets of every rank's micro-batches);
//   * the RL loop (`fp4qat rl`) on 2 data-parallel processes: each rank samples its share of the
//     prompts, and the samples, metrics, checkpoints and exports are the 1-process run's, bytewise;
//   * GRPO with routing replay on 2 expert-parallel processes: the experts are the records' (not the
//     router's), as in one process;
//   * bad launches fail with a message naming the variable or key, and never hang.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "io/hf_folder.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tests/dist/dist_util.h"
#include "tests/trainer/dataset_writer.h"
#include "dist/grad_reducer.h"
#include "dist/process_group.h"
#include "dist/topology.h"

using fp4qat::test::TempDir;
namespace fs = fp4qat::fs;
namespace json = fp4qat::json;
using fp4qat::test::read_bytes;
using fp4qat::test::run_ranks;

namespace {

std::vector<std::string> recipe(const std::string& out, int64_t grad_accum,
                                const std::vector<std::string>& extra = {}) {
  return fp4qat::test::recipe_args(
      "train", "default.yaml",
      {"train.steps=3", "train.batch_size=4", "train.seq_len=32", "train.eval_every=0", "train.checkpoint_every=1",
       "train.device=cpu", "optim.warmup_steps=1", "qat.format=nvfp4", "export.formats=[nvfp4, bf16]",
       "parallel.timeout_s=60", "train.grad_accum=" + std::to_string(grad_accum), "train.out_dir=" + out},
      extra);
}

// The step lines of metrics.jsonl.
std::vector<json::Value> step_lines(const std::string& out) {
  std::vector<json::Value> v;
  std::istringstream in(read_bytes(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) {
      json::Value j = json::parse(line, "metrics.jsonl");
      if (j.find("loss")) v.push_back(j);
    }
  return v;
}

void expect_same_files(const std::string& a, const std::string& b, const std::vector<std::string>& skip = {}) {
  const auto fa = fs::list_dir(a), fb = fs::list_dir(b);
  EXPECT_EQ(fa, fb) << a << " vs " << b;
  for (const auto& f : fa) {
    if (std::find(skip.begin(), skip.end(), f) != skip.end()) continue;
    if (fs::is_dir(a + "/" + f)) {
      expect_same_files(a + "/" + f, b + "/" + f, skip);
      continue;
    }
    EXPECT_TRUE(read_bytes(a + "/" + f) == read_bytes(b + "/" + f))
        << a << "/" << f << " differs from " << b << "/" << f;
  }
}

// name -> (dtype, shape) of every tensor of a Hugging Face folder.
std::map<std::string, std::string> layout(const std::string& dir) {
  std::map<std::string, std::string> out;
  const fp4qat::hf::FolderReader files(dir);
  for (const auto& [name, file] : files.where()) {
    fp4qat::st::Reader r(dir + "/" + file);
    const at::Tensor t = r.view(name);
    std::ostringstream s;
    s << t.scalar_type() << t.sizes();
    out[name] = s.str();
  }
  return out;
}

// One run of 1 process (grad_accum 2) per variant, shared by the tests of this file.
const std::string& one_process_run(const std::string& variant, const std::vector<std::string>& extra = {}) {
  static TempDir* d = new TempDir();  // kept for the whole test program
  static std::map<std::string, std::string> outs;
  if (!outs.count(variant)) {
    const std::string out = d->file(variant);
    const auto r = fp4qat::test::run_fp4qat(recipe(out, 2, extra));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    outs[variant] = out;
  }
  return outs[variant];
}

// Expert parallelism is compared in fp32 with post-training-quantized exports: under NVFP4 QAT
// the activations' global scale is the per-expert amax of the rows in one GEMM, and an expert
// of an expert-parallel run sees both ranks' rows at once (as a larger micro-batch would).
const std::vector<std::string> kPtq = {"--set", "qat.format=none", "--set", "export.every=1"};

}  // namespace

TEST(Dist, DataParallelOverGlooEqualsOneProcessBytewise) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  const std::string one = one_process_run("qat");
  TempDir d;
  const std::string two = d.file("dp");
  const auto rs = run_ranks(2, recipe(two, 1, {"--set", "parallel.dp=2"}), 180);
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << r.err;

  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k :
         {"step", "loss", "aux_loss", "grad_norm", "lr", "expert_load", "mismatch_mean", "mismatch_max"}) {
      ASSERT_TRUE(a[i].find(k) && b[i].find(k)) << k;
      EXPECT_EQ(a[i].find(k)->dump(), b[i].find(k)->dump()) << "step " << i + 1 << " " << k;
    }
  for (int s = 1; s <= 3; ++s) {
    const std::string step = "step-" + std::to_string(s);
    expect_same_files(one + "/checkpoints/" + step, two + "/checkpoints/" + step, {"state.json", "config.yaml"});
    // recipe.yaml embeds train.grad_accum and parallel.dp, which differ by construction.
    expect_same_files(one + "/exports/" + step, two + "/exports/" + step, {"recipe.yaml"});
  }
  expect_same_files(one + "/hf", two + "/hf");
}

// Activation checkpointing under data parallelism: the gradient all-reduce's hooks fire from the
// layers' recomputation in backward, and the run equals the 1-process run without checkpointing,
// bytewise (metrics and checkpoints).
TEST(Dist, ActivationCheckpointingDataParallelEqualsOneProcessBytewise) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  const std::string one = one_process_run("qat");
  TempDir d;
  const std::string two = d.file("dp-ckpt");
  const auto rs =
      run_ranks(2, recipe(two, 1, {"--set", "parallel.dp=2", "--set", "train.activation_checkpointing=true"}), 180);
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : {"loss", "aux_loss", "grad_norm", "expert_load"})
      EXPECT_EQ(a[i].find(k)->dump(), b[i].find(k)->dump()) << "step " << i + 1 << " " << k;
  for (int s = 1; s <= 3; ++s)
    expect_same_files(one + "/checkpoints/step-" + std::to_string(s), two + "/checkpoints/step-" + std::to_string(s),
                      {"state.json", "config.yaml"});
}

TEST(Dist, SftDataParallelEqualsOneProcessBytewise) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  TempDir d;
  fp4qat::test::write_dataset(d.file("ds"), fp4qat::test::make_docs(80, 64), 64);
  const std::vector<std::string> sft = {"--set", "objective=sft",         "--set", "data.kind=tokens",
                                        "--set", "data.path=" + d.file("ds"), "--set", "data.packing=true",
                                        "--set", "data.val_fraction=0",   "--set", "qat.format=none",
                                        "--set", "export.every=0"};
  const std::string one = d.file("one"), two = d.file("dp");
  const auto r1 = fp4qat::test::run_fp4qat(recipe(one, 2, sft));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  std::vector<std::string> dp = sft;
  dp.insert(dp.end(), {"--set", "parallel.dp=2"});
  const auto rs = run_ranks(2, recipe(two, 1, dp), 180);
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : {"loss", "aux_loss", "grad_norm"})
      EXPECT_EQ(a[i].find(k)->dump(), b[i].find(k)->dump()) << "step " << i + 1 << " " << k;
  for (int s = 1; s <= 3; ++s) {
    const std::string step = "step-" + std::to_string(s);
    expect_same_files(one + "/checkpoints/" + step, two + "/checkpoints/" + step, {"state.json", "config.yaml"});
  }
}

TEST(Dist, ExpertParallelOverGlooMatchesOneProcess) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  const std::string one = one_process_run("ptq", kPtq);
  TempDir d;
  const std::string two = d.file("ep");
  auto extra = kPtq;
  extra.insert(extra.end(), {"--set", "parallel.ep=2"});
  const auto rs = run_ranks(2, recipe(two, 1, extra), 180);
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << r.err;

  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i].find("loss")->as_double(), lb = b[i].find("loss")->as_double();
    EXPECT_NEAR(la, lb, 1e-5 * std::abs(la)) << "step " << i + 1;
    const double ga = a[i].find("grad_norm")->as_double(), gb = b[i].find("grad_norm")->as_double();
    EXPECT_NEAR(ga, gb, 1e-5 * std::abs(ga)) << "step " << i + 1;
    EXPECT_EQ(a[i].find("expert_load")->dump(), b[i].find("expert_load")->dump()) << "routing of step " << i + 1;
  }
  // The checkpoint and the exports are in the single-process layout: every expert, one index.
  {
    fp4qat::st::Reader ra(one + "/checkpoints/step-3/model.safetensors"),
        rb(two + "/checkpoints/step-3/model.safetensors");
    EXPECT_EQ(ra.tensors().size(), rb.tensors().size());
    for (const auto& ti : ra.tensors()) {
      const std::string& n = ti.name;
      ASSERT_TRUE(rb.contains(n)) << n;
      EXPECT_EQ(ra.view(n).sizes(), rb.view(n).sizes()) << n;
    }
  }
  for (const char* f : {"nvfp4", "bf16"}) {
    const std::string ea = one + "/exports/step-3/" + f, eb = two + "/exports/step-3/" + f;
    EXPECT_EQ(layout(ea), layout(eb)) << f;
    EXPECT_EQ(fs::list_dir(ea), fs::list_dir(eb)) << f;
    EXPECT_EQ(read_bytes(ea + "/config.json"), read_bytes(eb + "/config.json")) << f;
  }
  // The NVFP4 export is exactly the single-process quantization of the same weights: `convert`
  // of the run's BF16 export reproduces every tensor (input_scale comes from activations).
  const std::string conv = d.file("conv");
  const auto c =
      fp4qat::test::run_fp4qat({"convert", "--in", two + "/exports/step-3/bf16", "--out", conv, "--format", "nvfp4"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const auto wa = fp4qat::hf::FolderReader(two + "/exports/step-3/nvfp4").where(),
             wb = fp4qat::hf::FolderReader(conv).where();
  ASSERT_EQ(wa.size(), wb.size());
  int compared = 0;
  for (const auto& [name, file] : wa) {
    if (name.find("input_scale") != std::string::npos) continue;
    ASSERT_TRUE(wb.count(name)) << name;
    fp4qat::st::Reader ra(two + "/exports/step-3/nvfp4/" + file), rb(conv + "/" + wb.at(name));
    EXPECT_TRUE(fp4qat::test::bytes_equal(ra.view(name), rb.view(name))) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

TEST(Dist, ResumeOnTwoExpertParallelProcessesIsBitIdentical) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  TempDir d;
  const std::string full = d.file("full"), resumed = d.file("resumed");
  const std::vector<std::string> ep = {"--set", "parallel.ep=2"};
  for (const auto& r : run_ranks(2, recipe(full, 1, ep), 180)) ASSERT_EQ(r.exit_code, 0) << r.err;
  // The resumed run starts from the uninterrupted run's step-2 checkpoint.
  fs::make_dirs(resumed + "/checkpoints/step-2");
  for (const auto& f : fs::list_dir(full + "/checkpoints/step-2"))
    fs::copy_file(full + "/checkpoints/step-2/" + f, resumed + "/checkpoints/step-2/" + f);
  fs::write_text_atomic(resumed + "/checkpoints/latest", "step-2\n");
  auto args = recipe(resumed, 1, ep);
  args.push_back("--resume");
  for (const auto& r : run_ranks(2, args, 180)) ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* f : {"model.safetensors", "optim.safetensors"})
    EXPECT_TRUE(read_bytes(full + "/checkpoints/step-3/" + f) == read_bytes(resumed + "/checkpoints/step-3/" + f)) << f;
  const auto a = step_lines(full), b = step_lines(resumed);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[2].find("loss")->dump(), b[0].find("loss")->dump());
  EXPECT_EQ(a[2].find("grad_norm")->dump(), b[0].find("grad_norm")->dump());
}

namespace {

// The tiny model of recipes/default.yaml briefly pretrained (once per test program), so that the
// rewards of a group's samples differ and GRPO steps change the weights.
const std::string& pretrained() {
  static TempDir* d = new TempDir();
  static std::string hf;
  if (hf.empty()) {
    const auto r = fp4qat::test::run_fp4qat(
        {"train", "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml", "--set", "train.steps=150",
         "--set", "train.batch_size=8", "--set", "train.seq_len=32", "--set", "train.eval_every=0", "--set",
         "train.checkpoint_every=0", "--set", "train.device=cpu", "--set", "train.out_dir=" + d->file("pre")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    hf = d->file("pre/hf");
  }
  return hf;
}

// The RL loop of recipes/rl-tiny.yaml, small: 2 iterations of 4 prompts x 3 samples from the
// pretrained model, fp32, one sequence per sampler forward (a sample's bits do not depend on its
// batch), a global batch of the iteration's 4 groups (batch_size 2 x grad_accum x ranks).
std::vector<std::string> rl_recipe(const std::string& out, int64_t grad_accum, const std::vector<std::string>& extra = {}) {
  return fp4qat::test::recipe_args(
      "rl", "rl-tiny.yaml",
      {"rl.iterations=2", "rl.prompts=4", "rl.samples=3", "rl.max_new_tokens=4", "rl.sample_batch=1",
       "train.batch_size=2", "train.device=cpu", "train.dtype=fp32", "train.checkpoint_every=1", "export.keep=10",
       "optim.lr=1e-3", "parallel.timeout_s=60", "train.grad_accum=" + std::to_string(grad_accum),
       "train.init_from=" + pretrained(), "train.out_dir=" + out},
      extra);
}

// Every record line of a rollout folder's *.jsonl files, sorted.
std::vector<std::string> records(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& f : fs::list_dir(dir)) {
    if (f.size() < 6 || f.substr(f.size() - 6) != ".jsonl") continue;
    std::istringstream in(read_bytes(dir + "/" + f));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(line);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(Dist, RlLoopDataParallelSamplesEachRanksShareAndTrainsAsOneProcess) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  TempDir d;
  const std::string one = d.file("one"), two = d.file("dp");
  const auto r1 = fp4qat::test::run_fp4qat(rl_recipe(one, 2));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  for (const auto& r : run_ranks(2, rl_recipe(two, 1, {"--set", "parallel.dp=2"}), 240))
    ASSERT_EQ(r.exit_code, 0) << r.err;
  // Each rank sampled its share (prompts r, r + 2): the same records as one process sampling all.
  for (int k = 0; k < 2; ++k) {
    SCOPED_TRACE("iteration " + std::to_string(k));
    const std::string a = one + "/rollouts/iter-" + std::to_string(k), b = two + "/rollouts/iter-" + std::to_string(k);
    EXPECT_EQ(records(a).size(), 12u);
    EXPECT_EQ(records(a), records(b));
    for (int r = 0; r < 2; ++r) {
      std::istringstream in(read_bytes(b + "/rank-" + std::to_string(r) + ".jsonl"));
      int lines = 0;
      for (std::string line; std::getline(in, line); ++lines) {
        const int64_t g = std::stoll(json::parse(line, "record").at("group").as_string());
        EXPECT_EQ(g % 2, r) << line;
      }
      EXPECT_EQ(lines, 6) << "rank " << r;
    }
  }
  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  std::set<std::string> rewards;
  for (size_t i = 0; i < a.size(); ++i) {
    for (const char* k : {"loss", "grad_norm", "aux_loss", "expert_load", "reward_mean", "response_length_mean",
                          "clip_fraction", "sampler_mismatch_mean", "sampler_kl", "corrected_fraction"}) {
      ASSERT_TRUE(a[i].find(k) && b[i].find(k)) << k;
      EXPECT_EQ(a[i].find(k)->dump(), b[i].find(k)->dump()) << "step " << i + 1 << " " << k;
    }
    EXPECT_NE(a[i].find("loss")->as_double(), 0.0) << "step " << i + 1 << ": no advantage to train on";
  }
  for (int s = 0; s <= 2; ++s)
    expect_same_files(one + "/exports/step-" + std::to_string(s), two + "/exports/step-" + std::to_string(s),
                      {"recipe.yaml"});
  for (int s = 1; s <= 2; ++s)
    expect_same_files(one + "/checkpoints/step-" + std::to_string(s), two + "/checkpoints/step-" + std::to_string(s),
                      {"state.json", "config.yaml"});
  // (Expert-only: the frozen weights are the first shard, linked from export to export; the
  // experts the second.)
  const std::string w0 = read_bytes(one + "/exports/step-0/nvfp4/model-00002-of-00002.safetensors"),
                    w2 = read_bytes(one + "/exports/step-2/nvfp4/model-00002-of-00002.safetensors");
  EXPECT_FALSE(w0.empty());
  EXPECT_NE(w0, w2);  // the steps trained
}

// The loop on 2 expert-parallel ranks (each holding half of every layer's experts, each sampling
// its share from the full export): the first iteration's samples (from the step-0 export) are the
// 1-process run's bytewise; the updates match within fp32 reduction order (an expert's rows from
// both ranks in one GEMM), and the next iteration's responses are the same tokens.
TEST(Dist, RlLoopExpertParallelMatchesOneProcess) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  TempDir d;
  const std::string one = d.file("one"), two = d.file("ep");
  const auto r1 = fp4qat::test::run_fp4qat(rl_recipe(one, 2));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  for (const auto& r : run_ranks(2, rl_recipe(two, 1, {"--set", "parallel.ep=2"}), 240))
    ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(records(one + "/rollouts/iter-0"), records(two + "/rollouts/iter-0"));
  auto responses = [](const std::vector<std::string>& lines) {
    std::vector<std::string> out;
    for (const auto& l : lines) {
      const json::Value v = json::parse(l, "record");
      out.push_back(v.at("group").as_string() + ":" + v.at("response").dump());
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(responses(records(one + "/rollouts/iter-1")), responses(records(two + "/rollouts/iter-1")));
  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i].find("loss")->as_double(), lb = b[i].find("loss")->as_double();
    EXPECT_NEAR(la, lb, 1e-5 * std::abs(la) + 1e-7) << "step " << i + 1;
    EXPECT_EQ(a[i].find("reward_mean")->dump(), b[i].find("reward_mean")->dump()) << "step " << i + 1;
    EXPECT_EQ(a[i].find("expert_load")->dump(), b[i].find("expert_load")->dump()) << "step " << i + 1;
  }
}

TEST(Dist, RouterReplayUnderExpertParallelismUsesTheRecordsExperts) {
  if (!fp4qat::test::have_gloo()) GTEST_SKIP() << "this build has no gloo backend";
  TempDir d;
  // Records with their experts, then every expert id moved to the next expert (mod E): routing the
  // trainer's router would never choose, so that replay shows in the expert load.
  fs::write_text_atomic(d.file("p.jsonl"),
                        "{\"tokens\": [1, 2, 10, 3, 11]}\n{\"tokens\": [4, 10, 5, 11]}\n"
                        "{\"tokens\": [7, 7, 10, 2, 11]}\n{\"tokens\": [9, 10, 9, 8, 11]}\n");
  const auto g = fp4qat::test::run_fp4qat({"generate", "--model", pretrained(), "--prompts", d.file("p.jsonl"),
                                           "--samples", "3", "--reward", "addition", "--routed-experts",
                                           "--temperature", "1", "--max-new-tokens", "4", "--seed", "2", "--device",
                                           "cpu", "--out", d.file("roll.jsonl")});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const int64_t E = json::parse(read_bytes(pretrained() + "/config.json"), "config.json").at("num_experts").as_int();
  std::string shifted;
  {
    std::istringstream in(read_bytes(d.file("roll.jsonl")));
    for (std::string line; std::getline(in, line);) {
      json::Value v = json::parse(line, "record");
      json::Value re = v.at("routed_experts");
      for (auto& tok : re.as_array_mut())
        for (auto& layer : tok.as_array_mut())
          for (auto& e : layer.as_array_mut()) e = json::Value((e.as_int() + 1) % E);
      v.set("routed_experts", re);
      shifted += v.dump() + "\n";
    }
  }
  fs::write_text_atomic(d.file("shifted.jsonl"), shifted);
  auto grpo = [&](const std::string& out, int64_t grad_accum, const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"train", "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml"};
    for (const std::string kv :
         {"objective=grpo", "data.kind=rollouts", "train.steps=2", "train.batch_size=1", "train.eval_every=0",
          "train.checkpoint_every=0", "train.device=cpu", "train.dtype=fp32", "optim.warmup_steps=0",
          "qat.format=none", "export.every=0", "parallel.timeout_s=60"})
      a.insert(a.end(), {"--set", kv});
    a.insert(a.end(), {"--set", "data.path=" + d.file("shifted.jsonl"), "--set", "train.init_from=" + pretrained(),
                       "--set", "train.grad_accum=" + std::to_string(grad_accum), "--set", "train.out_dir=" + out});
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const std::vector<std::string> replay = {"--set", "rl.router_replay=true"};
  const auto r1 = fp4qat::test::run_fp4qat(grpo(d.file("one"), 2, replay));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  const auto r0 = fp4qat::test::run_fp4qat(grpo(d.file("own"), 2, {}));
  ASSERT_EQ(r0.exit_code, 0) << r0.err;
  auto ep = replay;
  ep.insert(ep.end(), {"--set", "parallel.ep=2"});
  for (const auto& r : run_ranks(2, grpo(d.file("ep"), 1, ep), 240)) ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto a = step_lines(d.file("one")), b = step_lines(d.file("ep")), own = step_lines(d.file("own"));
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  ASSERT_EQ(own.size(), 2u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].find("expert_load")->dump(), b[i].find("expert_load")->dump()) << "routing of step " << i + 1;
    EXPECT_NE(a[i].find("expert_load")->dump(), own[i].find("expert_load")->dump())
        << "step " << i + 1 << ": the replayed experts are not the router's";
    const double la = a[i].find("loss")->as_double(), lb = b[i].find("loss")->as_double();
    EXPECT_NEAR(la, lb, 1e-5 * std::abs(la) + 1e-7) << "step " << i + 1;
    const double ga = a[i].find("grad_norm")->as_double(), gb = b[i].find("grad_norm")->as_double();
    EXPECT_NEAR(ga, gb, 1e-5 * std::abs(ga)) << "step " << i + 1;
  }
}

TEST(Dist, BadLaunchesFailNamingTheCause) {
  TempDir d;
  const auto args = recipe(d.file("bad"), 1);
  {  // WORLD_SIZE without RANK
    const auto r = fp4qat::test::run_fp4qat_env(
        args, {{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}}, 60);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("RANK"), std::string::npos) << r.err;
  }
  {  // a bad MASTER_PORT
    const auto r = fp4qat::test::run_fp4qat_env(
        args, {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "http"}}, 60);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("MASTER_PORT"), std::string::npos) << r.err;
  }
  {  // dp x ep != world size: refused before any rendezvous
    auto a = args;
    a.insert(a.end(), {"--set", "parallel.dp=2", "--set", "parallel.ep=2"});
    const auto r = fp4qat::test::run_fp4qat_env(
        a, {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}}, 60);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("parallel.dp x parallel.ep"), std::string::npos) << r.err;
  }
  {  // experts not divisible by ep
    auto a = args;
    a.insert(a.end(), {"--set", "parallel.ep=3"});
    const auto r = fp4qat::test::run_fp4qat_env(a, {}, 60);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("parallel.ep"), std::string::npos) << r.err;
  }
  if (fp4qat::test::have_gloo()) {  // a peer that never comes: an error after parallel.timeout_s, not a hang
    auto a = args;
    a.insert(a.end(), {"--set", "parallel.timeout_s=3"});
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = fp4qat::test::run_fp4qat_env(a,
                                                {{"WORLD_SIZE", "2"},
                                                 {"RANK", "0"},
                                                 {"MASTER_ADDR", "127.0.0.1"},
                                                 {"MASTER_PORT", std::to_string(fp4qat::test::free_port())}},
                                                60);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.exit_code, -1) << "killed by the test's timeout: the rendezvous hung";
    EXPECT_NE(r.err.find("rendezvous"), std::string::npos) << r.err;
    EXPECT_LT(secs, 40);
  }
}

namespace {

// A one-rank group that records when each all-reduce is started and sums nothing (one rank).
class RecordingGroup final : public fp4qat::dist::ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void barrier() override {}
  std::function<void()> all_reduce_start(at::Tensor& t, fp4qat::dist::ReduceOp) override {
    started.push_back(t.numel());
    return [] {};
  }
  std::vector<int64_t> started;  // numel of each started bucket, in order
};

}  // namespace

// The gradient all-reduce overlaps backward: buckets start from the parameters' hooks as their
// gradients are accumulated (in bucket order), during the last micro-batch's backward only, and
// the averaged gradients are those of a reduce() without overlap.
TEST(GradReducer, BucketsStartDuringBackwardInOrder) {
  at::manual_seed(0);
  at::Tensor a = at::randn({64, 32}).requires_grad_(true), b = at::randn({32, 16}).requires_grad_(true);
  at::Tensor c = at::randn({16}).requires_grad_(true);
  const at::Tensor x = at::randn({8, 64});
  auto loss = [&] { return (at::matmul(at::matmul(x, a), b) + c).pow(2).sum(); };
  RecordingGroup g;
  // Buckets of ~1 parameter: 3 buckets, in reverse parameter order (c, b, a).
  fp4qat::dist::GradReducer r({{a, &g, 2.0}, {b, &g, 2.0}, {c, &g, 2.0}}, 1);
  ASSERT_EQ(r.buckets(), 3u);
  loss().backward();  // an earlier micro-batch: not armed, nothing starts
  EXPECT_TRUE(g.started.empty());
  r.arm();
  loss().backward();
  EXPECT_EQ(r.started_during_backward(), 3u);
  EXPECT_EQ(g.started, (std::vector<int64_t>{16, 32 * 16, 64 * 32}));
  const at::Tensor ga = a.grad().clone(), gb = b.grad().clone(), gc = c.grad().clone();
  r.reduce();
  EXPECT_EQ(g.started.size(), 3u);  // nothing started twice
  EXPECT_TRUE(at::equal(a.grad(), ga / 2.0));
  EXPECT_TRUE(at::equal(b.grad(), gb / 2.0));
  EXPECT_TRUE(at::equal(c.grad(), gc / 2.0));
  // Without arming, reduce() starts everything itself, with the same result.
  for (auto* p : {&a, &b, &c}) p->mutable_grad() = at::Tensor();
  loss().backward();
  const at::Tensor ga2 = a.grad().clone();
  r.reduce();
  EXPECT_EQ(r.started_during_backward(), 0u);
  EXPECT_EQ(g.started.size(), 6u);
  EXPECT_TRUE(at::equal(a.grad(), ga2 / 2.0));
}
