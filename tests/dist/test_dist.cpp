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
  std::vector<std::string> a = {"train",
                                "--recipe",
                                std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml",
                                "--set",
                                "train.steps=3",
                                "--set",
                                "train.batch_size=4",
                                "--set",
                                "train.seq_len=32",
                                "--set",
                                "train.eval_every=0",
                                "--set",
                                "train.checkpoint_every=1",
                                "--set",
                                "train.device=cpu",
                                "--set",
                                "optim.warmup_steps=1",
                                "--set",
                                "qat.format=nvfp4",
                                "--set",
                                "export.formats=[nvfp4, bf16]",
                                "--set",
                                "parallel.timeout_s=60",
                                "--set",
                                "train.grad_accum=" + std::to_string(grad_accum),
                                "--set",
                                "train.out_dir=" + out};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
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
