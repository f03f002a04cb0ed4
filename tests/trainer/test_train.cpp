// tests/trainer/test_train.cpp — the training loop on the CPU: the loss falls; a run stopped and
// resumed from its checkpoint has a loss trajectory and final weights bit-identical to an
// uninterrupted run; the CLI resolves and dumps the config and rejects bad keys.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/publish.h"
#include "io/safetensors.h"
#include "model/qwen3_moe.h"
#include "tests/common/test_util.h"
#include "tests/trainer/resume_util.h"
#include "kernels/optim/adamw_ref.h"
#include "trainer/adamw.h"
#include "trainer/grpo.h"
#include "trainer/timeline.h"
#include "trainer/train.h"

using fp4qat::test::TempDir;
namespace cfg = fp4qat::config;

namespace {
// The shared small MoE (fp4qat::test::small_moe_run) with a 16-token vocabulary, 8 x 32 tokens a
// step, fp32 compute and 3 warm-up steps. Every test sets train.steps.
cfg::Config small(const std::string& out) {
  cfg::Config c = fp4qat::test::small_moe_run(out);
  c.model.vocab_size = 16;
  c.train.batch_size = 8;
  c.train.seq_len = 32;
  c.train.dtype = "fp32";
  c.optim.warmup_steps = 3;
  return c;
}
}  // namespace

TEST(Train, LossFalls) {
  TempDir d;
  cfg::Config c = small(d.file("run"));
  c.train.steps = 40;
  fp4qat::train::Options o;
  o.quiet = true;
  const auto r = fp4qat::train::run(c, o);
  ASSERT_EQ(r.steps.size(), 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += r.steps[i].loss;
    last += r.steps[35 + i].loss;
  }
  EXPECT_LT(last, 0.8 * first) << "first " << first / 5 << " last " << last / 5;
  EXPECT_TRUE(fp4qat::fs::exists(d.file("run/metrics.jsonl")));
  EXPECT_TRUE(fp4qat::fs::exists(d.file("run/checkpoints/step-40/model.safetensors")));
}

// --trace (Options::trace_path): a Kineto timeline of the chosen steps, as a Chrome trace and a
// summary naming the operators that ran; train.final_checkpoint false leaves no checkpoint and no
// hf/ folder at the end.
TEST(Train, TraceRecordsTheChosenStepsAndFinalCheckpointCanBeOff) {
  TempDir d;
  cfg::Config c = small(d.file("run"));
  c.train.steps = 3;
  c.train.final_checkpoint = false;
  fp4qat::train::Options o;
  o.quiet = true;
  o.trace_path = d.file("trace.json");
  o.trace_first = 2;
  o.trace_last = 9;  // cut to train.steps
  const auto r = fp4qat::train::run(c, o);
  ASSERT_EQ(r.steps.size(), 3u);
  const std::string trace = fp4qat::fs::read_text(d.file("trace.json"));
  EXPECT_NE(trace.find("traceEvents"), std::string::npos);
  EXPECT_NE(trace.find("aten::"), std::string::npos);
  const std::string text = fp4qat::fs::read_text(d.file("trace.json.txt"));
  EXPECT_NE(text.find("steps 2-3 of"), std::string::npos) << text;
  EXPECT_NE(text.find("aten::mm"), std::string::npos) << text;
  const size_t self = text.find("host self time by op");  // where the host's time goes, op by op
  ASSERT_NE(self, std::string::npos) << text;
  EXPECT_NE(text.find("aten::", self), std::string::npos) << text;
  EXPECT_NE(text.find("us per step in outermost ops"), std::string::npos) << text;
  EXPECT_FALSE(fp4qat::fs::exists(d.file("run/checkpoints/step-3")));
  EXPECT_FALSE(fp4qat::fs::exists(d.file("run/hf")));
  EXPECT_TRUE(r.last_checkpoint.empty());
}

TEST(Train, TimelineKindsOfGpuActivities) {
  using fp4qat::train::Timeline;
  EXPECT_EQ(Timeline::kind_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT"), "gemm");
  EXPECT_EQ(Timeline::kind_of("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<"), "gemm");
  EXPECT_EQ(Timeline::kind_of("void fp4qat::cuda_kernels::(anonymous namespace)::nvfp4_park"), "quantize");
  EXPECT_EQ(Timeline::kind_of("void fp4qat::cuda_kernels::(anonymous namespace)::swiglu_backward_pieces<true>"),
            "elementwise");
  EXPECT_EQ(Timeline::kind_of("void fp4qat::cuda_kernels::(anonymous namespace)::ce_forward_rows<true>"), "reduce");
  EXPECT_EQ(Timeline::kind_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits"), "attention");
  EXPECT_EQ(Timeline::kind_of("Memcpy HtoD (Pageable -> Device)"), "copy");
  EXPECT_EQ(Timeline::kind_of("Memset (Device)"), "memset");
  EXPECT_EQ(Timeline::kind_of("ncclDevKernel_AllReduce_Sum_f32_RING_LL"), "nccl");
  EXPECT_EQ(Timeline::kind_of("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float"), "reduce");
  EXPECT_EQ(Timeline::kind_of("void at::native::vectorized_elementwise_kernel<4, at::native::silu"), "elementwise");
  EXPECT_EQ(Timeline::kind_of("fp4qat::cuda_kernels::(anonymous namespace)::adamw_vec4(float4*"), "optimizer");
  EXPECT_EQ(Timeline::kind_of("something_else"), "other");
}

// The summary's memory line: the peak of the recorded allocations and the op whose allocation
// reached it. Three tensors of 8 MiB live at once (the third allocated by a multiplication) peak
// at 24 MiB above the start, then two are freed.
TEST(Train, TimelineNamesWhereMemoryPeaks) {
  fp4qat::train::Timeline tl(at::Device(at::kCPU));
  {
    const at::Tensor a = at::ones({1 << 21});  // 8 MiB of float
    const at::Tensor b = at::full({1 << 21}, 3.0f);
    const at::Tensor c = at::mul(a, b);
    EXPECT_EQ(c[5].item<float>(), 3.0f);
  }
  const at::Tensor small = at::zeros({16});
  const std::string text = tl.stop(1, "a test");
  const size_t line = text.find("memory allocated:");
  ASSERT_NE(line, std::string::npos) << text;
  const std::string mem = text.substr(line, text.find('\n', line) - line);
  EXPECT_NE(mem.find("peak 0.02 GiB"), std::string::npos) << mem;  // 24 MiB
  EXPECT_NE(mem.find("of 8.0 MiB in"), std::string::npos) << mem;
  EXPECT_NE(mem.find("aten::mul"), std::string::npos) << mem;
  EXPECT_NE(mem.find("0.00 GiB at its end"), std::string::npos) << mem;
}

// The fused AdamW's arithmetic (kernels/optim/adamw_ref.h, the GPU kernel's CPU reference) is the
// optimizer's update: against the CPU's tensor-op sequence (trainer/adamw.cpp) within float32
// rounding, with weight decay on the matrix, clipping and bias correction; a wrong constant
// (no bias correction of v) is far outside it.
TEST(Train, FusedAdamWReferenceIsTheOptimizersUpdate) {
  fp4qat::config::OptimConfig o;
  o.weight_decay = 0.1;
  const double lr = 1e-3, clip = 0.8;
  const int64_t t = 2;
  std::vector<std::pair<std::string, at::Tensor>> params = {{"w", at::randn({32, 16}) * 0.02}, {"b", at::randn({16})}};
  for (auto& [n, p] : params) p.mutable_grad() = at::randn_like(p) * 1e-2;
  fp4qat::train::AdamWState st = fp4qat::train::adamw_init(params);
  for (size_t i = 0; i < params.size(); ++i) {
    st.m[i].normal_(0, 1e-3);
    st.v[i].uniform_(0, 1e-5);
  }
  std::vector<at::Tensor> p0, m0, v0;
  for (size_t i = 0; i < params.size(); ++i) {
    p0.push_back(params[i].second.clone());
    m0.push_back(st.m[i].clone());
    v0.push_back(st.v[i].clone());
  }
  fp4qat::train::adamw_update(params, st, o, lr, clip, t);
  for (const bool wrong : {false, true}) {
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor p = p0[i].clone(), m = m0[i].clone(), v = v0[i].clone();
      const at::Tensor g = params[i].second.grad().contiguous();
      fp4qat::optim::AdamWScalars s;
      s.grad_scale = static_cast<float>(clip);
      s.beta1 = static_cast<float>(o.beta1);
      s.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
      s.beta2 = static_cast<float>(o.beta2);
      s.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
      s.decay = p.dim() >= 2 ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f;
      s.bc2 = wrong ? 1.0f : static_cast<float>(1.0 - std::pow(o.beta2, t));
      s.eps = static_cast<float>(o.eps);
      s.step = static_cast<float>(-lr / (1.0 - std::pow(o.beta1, t)));
      fp4qat::optim::adamw_step_ref(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(),
                                    v.data_ptr<float>(), p.numel(), s);
      // (float32 rounding, within 1e-6 of each quantity's scale: p ~ 1e-2, m ~ 1e-3, v ~ 1e-5)
      const bool close = at::allclose(p, params[i].second, 1e-6, 1e-8) && at::allclose(m, st.m[i], 1e-6, 1e-9) &&
                         at::allclose(v, st.v[i], 1e-6, 1e-11);
      EXPECT_EQ(close, !wrong) << params[i].first << (wrong ? " (wrong bias correction)" : "") << " max |dp| "
                               << (p - params[i].second).abs().max().item<double>() << " |dm| "
                               << (m - st.m[i]).abs().max().item<double>() << " |dv| "
                               << (v - st.v[i]).abs().max().item<double>();
    }
  }
}

TEST(Train, ResumeIsBitIdentical) {
  TempDir d;
  fp4qat::train::Options o;
  o.quiet = true;
  cfg::Config a = small(d.file("a"));
  a.train.steps = 8;
  a.train.grad_accum = 2;
  const auto ra = fp4qat::train::run(a, o);

  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  const auto rb = fp4qat::test::run_stopped_and_resumed(b, o, 3);
  ASSERT_EQ(rb.size(), ra.steps.size());
  for (size_t i = 0; i < ra.steps.size(); ++i) {
    EXPECT_EQ(rb[i].loss, ra.steps[i].loss) << "step " << i + 1;  // exact, not approximate
    EXPECT_EQ(rb[i].grad_norm, ra.steps[i].grad_norm) << "step " << i + 1;
  }
  fp4qat::st::Reader wa(d.file("a/checkpoints/step-8/model.safetensors")),
      wb(d.file("b/checkpoints/step-8/model.safetensors"));
  for (const auto& t : wa.tensors()) EXPECT_TRUE(fp4qat::test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
}

// train.activation_checkpointing: each decoder layer run again in backward gives the losses,
// gradient norms and weights of the run without it, bit for bit (NVFP4 expert QAT in both backward
// modes, a dense layer, gradient accumulation, packed documents' masks aside); and the recomputed
// forward is really the one used (a policy that counts its calls sees each layer twice).
TEST(Train, ActivationCheckpointingChangesNoBit) {
  for (const auto backward : {fp4qat::autograd::Backward::kHighPrecision, fp4qat::autograd::Backward::kDequantized}) {
    SCOPED_TRACE(static_cast<int>(backward));
    TempDir d;
    fp4qat::train::Options o;
    o.quiet = true;
    cfg::Config a = fp4qat::test::small_moe_run(d.file("a"));
    a.model.num_hidden_layers = 3;
    a.model.mlp_only_layers = {1};
    a.train.grad_accum = 2;
    a.train.dtype = "fp32";
    a.qat.format = fp4qat::qat::Format::kNVFP4;
    a.qat.backward = backward;
    a.exports.every = 0;  // only training forwards reach the observer
    int64_t calls_a = 0, calls_b = 0;
    o.weight_observer = [&](int64_t, const std::string&, const at::Tensor&) { ++calls_a; };
    const auto ra = fp4qat::train::run(a, o);
    cfg::Config b = a;
    b.train.out_dir = d.file("b");
    b.train.activation_checkpointing = true;
    o.weight_observer = [&](int64_t, const std::string&, const at::Tensor&) { ++calls_b; };
    const auto rb = fp4qat::train::run(b, o);
    ASSERT_EQ(ra.steps.size(), rb.steps.size());
    for (size_t i = 0; i < ra.steps.size(); ++i) {
      EXPECT_EQ(rb.steps[i].loss, ra.steps[i].loss) << "step " << i + 1;
      EXPECT_EQ(rb.steps[i].aux_loss, ra.steps[i].aux_loss) << "step " << i + 1;
      EXPECT_EQ(rb.steps[i].grad_norm, ra.steps[i].grad_norm) << "step " << i + 1;
    }
    EXPECT_EQ(calls_b, 2 * calls_a);  // every quantized linear ran once more, in backward
    EXPECT_GT(calls_a, 0);
    fp4qat::st::Reader wa(d.file("a/checkpoints/step-3/model.safetensors")),
        wb(d.file("b/checkpoints/step-3/model.safetensors"));
    for (const auto& t : wa.tensors()) EXPECT_TRUE(fp4qat::test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
  }
  cfg::Config bad = fp4qat::test::small_moe_run("unused");
  bad.train.activation_checkpointing = true;
  bad.parallel.ep = 2;
  EXPECT_THROW(cfg::validate(bad), fp4qat::Error);
}

// Expert-only fine-tuning (qat.train quantized_only): the frozen weights get no AdamW moments, in
// memory or in optim.safetensors; a checkpoint of an earlier version, which holds (zero) moments for
// them, still resumes bit-identically.
TEST(Train, ExpertOnlyFineTuningKeepsNoMomentsForFrozenWeights) {
  TempDir d;
  fp4qat::train::Options o;
  o.quiet = true;
  cfg::Config a = fp4qat::test::small_moe_run(d.file("a"));
  a.train.steps = 4;
  a.train.dtype = "fp32";
  a.qat.format = fp4qat::qat::Format::kNVFP4;
  a.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
  a.exports.every = 0;
  const auto ra = fp4qat::train::run(a, o);
  fp4qat::st::Reader model(d.file("a/checkpoints/step-4/model.safetensors")),
      optim(d.file("a/checkpoints/step-4/optim.safetensors"));
  int trained = 0, frozen = 0;
  for (const auto& t : model.tensors()) {
    const bool expert = t.name.find("mlp.experts.") != std::string::npos;
    EXPECT_EQ(optim.contains(t.name + ".exp_avg"), expert) << t.name;
    EXPECT_EQ(optim.contains(t.name + ".exp_avg_sq"), expert) << t.name;
    (expert ? trained : frozen)++;
  }
  EXPECT_GT(trained, 0);
  EXPECT_GT(frozen, 0);
  // Stopped at step 2; its optimizer file rewritten as an earlier version wrote it (zero moments
  // for every frozen weight too); resumed to step 4.
  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  fp4qat::train::Options stop = o;
  stop.stop_after = 2;
  fp4qat::train::run(b, stop);
  const std::string of = d.file("b/checkpoints/step-2/optim.safetensors");
  fp4qat::model::Params old;
  {
    fp4qat::st::Reader m2(d.file("b/checkpoints/step-2/model.safetensors")), o2(of);
    for (const auto& t : m2.tensors()) {
      const bool has = o2.contains(t.name + ".exp_avg");
      old.emplace_back(t.name + ".exp_avg", has ? o2.view(t.name + ".exp_avg").clone() : at::zeros_like(m2.view(t.name)));
      old.emplace_back(t.name + ".exp_avg_sq",
                       has ? o2.view(t.name + ".exp_avg_sq").clone() : at::zeros_like(m2.view(t.name)));
    }
  }
  fp4qat::fs::remove_tree(of);
  fp4qat::st::write_file(of, old);
  fp4qat::train::Options resume = o;
  resume.resume = true;
  const auto rb = fp4qat::train::run(b, resume);
  ASSERT_EQ(rb.steps.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(rb.steps[i].loss, ra.steps[i + 2].loss) << "step " << i + 3;
    EXPECT_EQ(rb.steps[i].grad_norm, ra.steps[i + 2].grad_norm) << "step " << i + 3;
  }
  fp4qat::st::Reader wa(d.file("a/checkpoints/step-4/model.safetensors")),
      wb(d.file("b/checkpoints/step-4/model.safetensors"));
  for (const auto& t : wa.tensors()) EXPECT_TRUE(fp4qat::test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
}

TEST(Train, LearningRateSchedule) {
  cfg::OptimConfig o;
  o.lr = 1.0;
  o.warmup_steps = 10;
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(fp4qat::train::learning_rate(o, 0, 110), 0.1);
  EXPECT_DOUBLE_EQ(fp4qat::train::learning_rate(o, 9, 110), 1.0);
  EXPECT_NEAR(fp4qat::train::learning_rate(o, 60, 110), 0.55, 1e-12);
  EXPECT_NEAR(fp4qat::train::learning_rate(o, 110, 110), 0.1, 1e-12);
}

TEST(CliTrain, DumpConfigAndBadKeys) {
  TempDir d;
  fp4qat::test::write_bytes(
      d.file("r.yaml"), "model_config: " + std::string(FP4QAT_SOURCE_DIR) + "/configs/tiny.yaml\ntrain:\n  steps: 7\n");
  auto r = fp4qat::test::run_fp4qat({"train", "--recipe", d.file("r.yaml"), "--set", "optim.lr=0.5", "--dump-config"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  cfg::Config back;
  cfg::apply_yaml_text(back, r.out, "dump");
  EXPECT_EQ(back.train.steps, 7);
  EXPECT_DOUBLE_EQ(back.optim.lr, 0.5);
  r = fp4qat::test::run_fp4qat({"train", "--recipe", d.file("r.yaml"), "--set", "optim.lrr=0.5"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("optim.lrr"), std::string::npos) << r.err;
  r = fp4qat::test::run_fp4qat({"train", "--recipe", d.file("nope.yaml")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nope.yaml"), std::string::npos) << r.err;
  // A shape no machine holds is refused before anything is allocated or written.
  r = fp4qat::test::run_fp4qat({"train", "--recipe", d.file("r.yaml"), "--set",
                                "model_config=" + std::string(FP4QAT_SOURCE_DIR) + "/configs/qwen3-30b-a3b.yaml",
                                "--set", "model.num_experts=131072",  // ~30 trillion parameters
                                "--set", "train.out_dir=" + d.file("huge"), "--set", "train.device=cpu"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("for training (fp32 masters, gradients and AdamW moments"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("model.num_experts"), std::string::npos) << r.err;
  EXPECT_FALSE(fp4qat::fs::exists(d.file("huge")));
  // A shape whose parameters fit but whose micro-batch does not (issue 23: each was OOM-killed in a
  // 4 GiB container): a 2M-token vocabulary's logits, or 20000 rows a micro-batch; refused naming
  // train.batch_size / model.vocab_size, nothing written.
  const int64_t ram = fp4qat::model::host_memory_bytes();
  for (const auto& set : {std::vector<std::string>{"--set", "model.vocab_size=2000000", "--set", "train.batch_size=64",
                                                   "--set", "train.seq_len=512"},
                          std::vector<std::string>{"--set", "train.batch_size=2000000"}}) {
    std::vector<std::string> a = {"train", "--recipe", d.file("r.yaml"), "--set", "train.out_dir=" + d.file("big"),
                                  "--set", "train.device=cpu"};
    a.insert(a.end(), set.begin(), set.end());
    if (ram > (int64_t(1) << 42)) GTEST_SKIP() << "a machine with more than 4 TiB holds these batches";
    r = fp4qat::test::run_fp4qat(a);
    EXPECT_EQ(r.exit_code, 1) << set[1];
    EXPECT_NE(r.err.find("one micro-batch's activations need at least"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("train.batch_size"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("model.vocab_size"), std::string::npos) << r.err;
    EXPECT_FALSE(fp4qat::fs::exists(d.file("big")));
  }
  // The shipped recipes resolve.
  for (std::string rec : {"default.yaml", "moe-100m-gpu.yaml"}) {
    r = fp4qat::test::run_fp4qat(
        {"train", "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/" + rec, "--dump-config"});
    EXPECT_EQ(r.exit_code, 0) << rec << ": " << r.err;
  }
}

namespace {
// A stand-in for one rank of a two-rank group (no communication): checks what the trainer does
// with rank and world size.
class FakeRank : public fp4qat::dist::ProcessGroup {
 public:
  explicit FakeRank(int r) : r_(r) {}
  int rank() const override { return r_; }
  int world_size() const override { return 2; }
  void all_reduce(std::vector<at::Tensor>&, fp4qat::dist::ReduceOp) override { ++reduces; }
  void barrier() override {}
  int reduces = 0;

 private:
  int r_;
};
}  // namespace

TEST(Train, RankAwareShardingAndRankZeroWrites) {
  TempDir d;
  cfg::Config c = small(d.file("r"));
  c.train.steps = 2;
  fp4qat::train::Options o;
  o.quiet = true;
  FakeRank r0(0), r1(1);
  o.process_group = &r0;
  const auto a = fp4qat::train::run(c, o);
  cfg::Config c1 = c;
  c1.train.out_dir = d.file("r1");
  o.process_group = &r1;
  const auto b = fp4qat::train::run(c1, o);
  EXPECT_NE(a.steps[0].loss, b.steps[0].loss) << "ranks must see different shards";
  EXPECT_GE(r0.reduces, 4) << "per step: the logged losses and at least one gradient bucket";
  EXPECT_TRUE(fp4qat::fs::exists(d.file("r/checkpoints/latest")));
  EXPECT_FALSE(fp4qat::fs::exists(d.file("r1/checkpoints"))) << "only rank 0 writes";
}

TEST(Train, ProcessGroupFromEnvironment) {
  ::setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(fp4qat::dist::from_environment(), fp4qat::Error);
  ::setenv("WORLD_SIZE", "1", 1);
  EXPECT_EQ(fp4qat::dist::from_environment()->world_size(), 1);
  ::unsetenv("WORLD_SIZE");
  EXPECT_EQ(fp4qat::dist::from_environment()->rank(), 0);
}

// Issue 23 items 7, 8, 12: a run killed after logging step 5 whose newest complete checkpoint is
// step 3 (here: step-5's checkpoint removed, `latest` left dangling) resumes from step 3, keeps
// every step's metrics line once, removes the temporary folders its killed writes left, and ends
// bit-identical to an uninterrupted run; with `latest` older than a complete checkpoint (a kill
// between the rename and the symlink) it resumes from the newer one.
TEST(Train, ResumeFindsTheNewestCheckpointTruncatesMetricsAndCleansTemporaries) {
  TempDir d;
  fp4qat::train::Options o;
  o.quiet = true;
  cfg::Config a = small(d.file("a"));
  a.train.steps = 8;
  const auto ra = fp4qat::train::run(a, o);

  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  b.train.checkpoint_every = 3;
  fp4qat::train::Options stop = o;
  stop.stop_after = 5;
  ASSERT_EQ(fp4qat::train::run(b, stop).final_step, 5);
  fp4qat::fs::remove_tree(d.file("b/checkpoints/step-5"));
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);
  const std::string tmp_ckpt = d.file("b/checkpoints/.step-5.tmp-" + std::to_string(gone) + "-0");
  fp4qat::fs::make_dirs(tmp_ckpt);
  fp4qat::fs::write_text_atomic(tmp_ckpt + "/model.safetensors", "half");
  fp4qat::train::Options resume = o;
  resume.resume = true;
  const auto rb = fp4qat::train::run(b, resume);
  ASSERT_EQ(rb.steps.size(), 5u);  // steps 4..8
  for (size_t i = 0; i < rb.steps.size(); ++i) EXPECT_EQ(rb.steps[i].loss, ra.steps[3 + i].loss) << "step " << 4 + i;
  EXPECT_FALSE(fp4qat::fs::exists(tmp_ckpt));
  std::vector<int64_t> logged;
  const std::string metrics = fp4qat::fs::read_text(d.file("b/metrics.jsonl"));
  std::istringstream lines(metrics);
  for (std::string l; std::getline(lines, l);)
    if (!l.empty()) logged.push_back(fp4qat::json::parse(l, "metrics.jsonl").at("step").as_int());
  EXPECT_EQ(logged, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8})) << metrics;

  // `latest` behind a complete newer checkpoint: the newer one is resumed.
  cfg::Config c = b;
  c.train.out_dir = d.file("c");
  c.train.checkpoint_every = 1;
  ASSERT_EQ(fp4qat::train::run(c, stop).final_step, 5);
  fp4qat::fs::symlink_atomic("step-4", d.file("c/checkpoints/latest"));
  const auto rc = fp4qat::train::run(c, resume);
  ASSERT_EQ(rc.steps.size(), 3u);  // steps 6..8
  EXPECT_EQ(rc.steps[0].loss, ra.steps[5].loss);
}

TEST(CliTrain, SigintFinishesTheStepAndCheckpoints) {
  TempDir d;
  const std::string out = d.file("run");
  const pid_t pid = fp4qat::test::spawn_fp4qat(
      {"train", "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml", "--set", "train.steps=100000",
       "--set", "train.out_dir=" + out, "--set", "train.eval_every=0"},
      {}, d.file("stdout"), d.file("stderr"));
  // Wait until training has produced metrics, then interrupt.
  for (int i = 0; i < 600 && fp4qat::test::read_bytes(out + "/metrics.jsonl").size() < 10; ++i) ::usleep(100000);
  // Meanwhile a second writer of the same folder is refused, naming the lock and its owner
  // (issue 23 item 3), and leaves the running one's files alone.
  const std::string recipe = std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml";
  const auto second = fp4qat::test::run_fp4qat(
      {"train", "--recipe", recipe, "--set", "train.out_dir=" + out, "--set", "train.steps=2", "--resume"});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.err.find("in use by another writer"), std::string::npos) << second.err;
  EXPECT_NE(second.err.find("pid " + std::to_string(pid)), std::string::npos) << second.err;
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);  // 128 + SIGINT: interrupted, not finished (issue 23 item 13)
  EXPECT_NE(fp4qat::test::read_bytes(d.file("stdout")).find("interrupted by signal 2"), std::string::npos);
  const std::string latest = fp4qat::io::latest(out + "/checkpoints");
  ASSERT_FALSE(latest.empty()) << "an interrupted run must leave a checkpoint";
  const int64_t step = std::stoll(latest.substr(5));
  EXPECT_GT(step, 0);
  EXPECT_LT(step, 100000);
}

// A loss that turns non-finite (a learning rate that blows the weights up by step 3) stops the run
// before that step's update, with exit 1 and the step named, and leaves no checkpoint of it: the
// check reads the step's losses once, after every micro-batch's backward (grad_accum 2 here).
TEST(CliTrain, NonFiniteLossStopsBeforeTheUpdateWithoutACheckpoint) {
  TempDir d;
  const std::string out = d.file("run");
  const auto r = fp4qat::test::run_fp4qat(
      {"train", "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml", "--set", "train.steps=8",
       "--set", "train.grad_accum=2", "--set", "optim.lr=1e10", "--set", "optim.warmup_steps=0", "--set",
       "optim.grad_clip=0", "--set", "train.eval_every=0", "--set", "train.checkpoint_every=1", "--set",
       "export.every=0", "--set", "train.out_dir=" + out});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  const size_t at = r.err.find(": the loss is not finite; stopping without a checkpoint");
  ASSERT_NE(at, std::string::npos) << r.err;
  const size_t s = r.err.rfind("step ", at);
  ASSERT_NE(s, std::string::npos) << r.err;
  const int64_t bad = std::stoll(r.err.substr(s + 5, at - s - 5));
  EXPECT_GE(bad, 2) << r.err;
  const std::string latest = fp4qat::io::latest(out + "/checkpoints");
  ASSERT_FALSE(latest.empty()) << "the steps before the non-finite one were checkpointed";
  EXPECT_EQ(std::stoll(latest.substr(5)), bad - 1);
  EXPECT_FALSE(fp4qat::fs::exists(out + "/checkpoints/step-" + std::to_string(bad)));
  const std::string metrics = fp4qat::test::read_bytes(out + "/metrics.jsonl");
  EXPECT_NE(metrics.find("{\"step\":" + std::to_string(bad - 1) + ","), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("{\"step\":" + std::to_string(bad) + ","), std::string::npos) << "no metrics for the bad step";
}

// The GRPO objective (trainer/grpo.h, issue 22) against its definition, token by token:
// group-normalised advantages; the gradient of the token-mean surrogate is -A r w / N where the
// unclipped term is active and 0 where the clipped one is (DAPO's separate low / high bounds);
// TIS truncates the mismatch weight at C, masking drops tokens outside the band; the logged
// mismatch (mean |delta log p|, k3 KL) and fractions.
TEST(Grpo, AdvantagesLossGradientsAndCorrections) {
  namespace grpo = fp4qat::grpo;
  const auto a = grpo::group_advantages({1, 0, 1, 0, 5, 2}, {"a", "a", "a", "a", "b", "c"}, true, 0.0);
  const double sd = std::sqrt(1.0 / 3.0);  // unbiased std of {1, 0, 1, 0}
  EXPECT_NEAR(a[0], 0.5 / sd, 1e-12);
  EXPECT_NEAR(a[1], -0.5 / sd, 1e-12);
  EXPECT_EQ(a[4], 5.0);  // a group of one: mean 0, std 1
  EXPECT_EQ(grpo::group_advantages({1, 3}, {"g", "g"}, false)[1], 1.0);
  EXPECT_THROW(grpo::group_advantages({1, 2}, {"g"}, true), fp4qat::Error);
  EXPECT_THROW(grpo::parse_correction("clip"), fp4qat::Error);

  // Tokens: r = exp(logp - old) chosen to be inside, above and below the clip range, with
  // positive and negative advantages; m = exp(old - sampler) below and above the TIS cap.
  const std::vector<double> r = {1.0, 1.5, 0.5, 1.5, 0.5, 1.1};
  const std::vector<double> A = {1.0, 1.0, -1.0, -1.0, 1.0, -2.0};
  const std::vector<double> m = {1.0, 1.0, 1.0, 3.0, 0.25, 1.2};
  const int64_t N = 6;
  at::Tensor old = at::randn({N}, at::kDouble) * 0.1;
  at::Tensor logp0 = old + at::log(at::tensor(r, at::kDouble));
  at::Tensor sampler = old - at::log(at::tensor(m, at::kDouble));
  const at::Tensor adv = at::tensor(A, at::kDouble);
  grpo::Options o;  // clip 0.2 / 0.28, TIS with C = 2
  at::Tensor logp = logp0.to(at::kFloat).requires_grad_(true);
  auto res = grpo::loss(logp, old.to(at::kFloat), sampler.to(at::kFloat), adv.to(at::kFloat), o);
  res.loss.backward();
  // Active unclipped term: token 0 (r = 1), token 2 (A < 0, r = 0.5 < 0.8: clipped active -> 0 grad),
  // token 1 (A > 0, r = 1.5 > 1.28: clipped -> 0), token 3 (A < 0, r = 1.5: unclipped smaller ->
  // active), token 4 (A > 0, r = 0.5: unclipped smaller -> active), token 5 (A < 0, r = 1.1 inside).
  const std::vector<bool> active = {true, false, false, true, true, true};
  double want_loss = 0;
  for (int64_t t = 0; t < N; ++t) {
    const double w = std::min(m[t], 2.0);
    const double rc = std::min(std::max(r[t], 0.8), 1.28);
    want_loss += -std::min(r[t] * A[t], rc * A[t]) * w / N;
    const double g = active[t] ? -A[t] * r[t] * w / N : 0.0;
    EXPECT_NEAR(logp.grad()[t].item<double>(), g, 1e-5) << "token " << t;
  }
  EXPECT_NEAR(res.loss.item<double>(), want_loss, 1e-5);
  EXPECT_NEAR(res.clip_fraction, 2.0 / 6.0, 1e-12);
  EXPECT_NEAR(res.corrected_fraction, 1.0 / 6.0, 1e-12);  // m = 3 > C
  double abs_d = 0, k3 = 0;
  for (double x : m) abs_d += std::abs(std::log(x)) / N, k3 += (x - 1.0 - std::log(x)) / N;
  EXPECT_NEAR(res.mismatch_abs_mean, abs_d, 1e-5);
  EXPECT_NEAR(res.mismatch_kl, k3, 1e-5);

  // Masking: tokens with m outside [0.5, 2] (tokens 3 and 4) contribute nothing.
  o.correction = grpo::Correction::kMask;
  at::Tensor lm = logp0.to(at::kFloat).requires_grad_(true);
  auto rm = grpo::loss(lm, old.to(at::kFloat), sampler.to(at::kFloat), adv.to(at::kFloat), o);
  rm.loss.backward();
  EXPECT_EQ(lm.grad()[3].item<float>(), 0.0f);
  EXPECT_EQ(lm.grad()[4].item<float>(), 0.0f);
  EXPECT_NEAR(lm.grad()[0].item<double>(), -A[0] * r[0] / N, 1e-5);
  EXPECT_NEAR(rm.corrected_fraction, 2.0 / 6.0, 1e-12);
  // A KL to a reference adds beta * k3 per token; equal to the learner, it adds 0 and no gradient.
  o.correction = grpo::Correction::kNone;
  o.kl_coef = 0.5;
  at::Tensor lk = logp0.to(at::kFloat).requires_grad_(true);
  const auto base = grpo::loss(lk, old.to(at::kFloat), sampler.to(at::kFloat), adv.to(at::kFloat),
                               grpo::Options{0.2, 0.28, grpo::Correction::kNone});
  const auto with_ref =
      grpo::loss(lk, old.to(at::kFloat), sampler.to(at::kFloat), adv.to(at::kFloat), o, lk.detach().clone());
  EXPECT_NEAR(with_ref.loss.item<double>(), base.loss.item<double>(), 1e-7);
  EXPECT_THROW(grpo::loss(lk, old.to(at::kFloat), sampler.to(at::kFloat), adv.to(at::kFloat), o), fp4qat::Error);
  EXPECT_THROW(grpo::loss(lk, old.to(at::kFloat).narrow(0, 0, 5), sampler.to(at::kFloat), adv.to(at::kFloat), o),
               fp4qat::Error);
}

// Issue 23 item 4: `fp4qat train` into a folder that holds an earlier run is refused without
// --resume or --overwrite (nothing written), replaced with --overwrite; the two flags exclude each
// other.
TEST(CliTrain, AnEarlierRunIsRefusedUnlessOverwritten) {
  TempDir d;
  const std::string out = d.file("run");
  const std::string recipe = std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml";
  auto train = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"train", "--recipe", recipe, "--set", "train.out_dir=" + out, "--set",
                                  "train.steps=2", "--set", "train.eval_every=0", "--set", "model.num_hidden_layers=1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return fp4qat::test::run_fp4qat(a);
  };
  const auto first = train({});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string metrics = fp4qat::test::read_bytes(out + "/metrics.jsonl");
  const auto again = train({"--set", "train.seed=9"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("holds an earlier run"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("--overwrite"), std::string::npos) << again.err;
  EXPECT_EQ(fp4qat::test::read_bytes(out + "/metrics.jsonl"), metrics);  // untouched
  EXPECT_EQ(train({"--resume", "--overwrite"}).exit_code, 1);
  fp4qat::fs::make_dirs(out + "/exports/step-7");  // an earlier run's export
  const auto over = train({"--overwrite", "--set", "train.seed=9"});
  ASSERT_EQ(over.exit_code, 0) << over.err;
  EXPECT_NE(fp4qat::test::read_bytes(out + "/metrics.jsonl"), metrics);
  EXPECT_FALSE(fp4qat::fs::exists(out + "/exports/step-7"));
}

// train.init_from trains the folder's shape and records it (issue 23): config.yaml says the
// folder's num_hidden_layers, not the recipe's, and a recipe shape that contradicts the folder is
// named key by key in a warning.
TEST(CliTrain, InitFromRecordsTheFoldersShapeAndNamesTheIgnoredOne) {
  TempDir d;
  const std::string recipe = std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml";
  auto train = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> a = {"train", "--recipe", recipe, "--set", "train.out_dir=" + out,
                                  "--set", "train.steps=1", "--set", "train.eval_every=0"};
    a.insert(a.end(), extra.begin(), extra.end());
    return fp4qat::test::run_fp4qat(a);
  };
  const auto base = train(d.file("base"), {"--set", "model.num_hidden_layers=1"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  const auto r = train(d.file("ft"), {"--set", "train.init_from=" + d.file("base/hf"), "--set",
                                      "model.num_hidden_layers=3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("the recipe's model shape is ignored"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("num_hidden_layers 3 -> 1"), std::string::npos) << r.err;
  const std::string yaml = fp4qat::test::read_bytes(d.file("ft/config.yaml"));
  EXPECT_NE(yaml.find("num_hidden_layers: 1"), std::string::npos) << yaml;
  EXPECT_EQ(yaml.find("num_hidden_layers: 3"), std::string::npos) << yaml;
  // The recipe's own shape is that of recipes/default.yaml's model_config: it differs from the
  // folder's in num_hidden_layers only, so nothing else is named.
  EXPECT_EQ(r.err.find("hidden_size "), std::string::npos) << r.err;
}

// kill -9 (issue 23, "what survives what"): a run with an NVFP4 export after every step and a
// checkpoint every 2 steps, killed with SIGKILL at several moments. After each kill every
// published checkpoint and export is complete and `latest` names one; then --resume runs on,
// removes what the killed writes left, and keeps one metrics line per step.
TEST(CliTrain, KillNineLeavesCompleteFoldersAndResumeContinues) {
  TempDir d;
  const std::string out = d.file("run");
  const std::string recipe = std::string(FP4QAT_SOURCE_DIR) + "/recipes/default.yaml";
  const std::vector<std::string> common = {"train", "--recipe", recipe, "--set", "train.out_dir=" + out, "--set",
                                           "train.eval_every=0", "--set", "train.checkpoint_every=2", "--set",
                                           "qat.format=nvfp4", "--set", "export.every=1", "--set",
                                           "model.num_hidden_layers=1", "--set", "train.steps=100000"};
  auto complete = [&](const std::string& root, const std::string& file) {
    const std::string latest = fp4qat::io::latest(root);
    ASSERT_FALSE(latest.empty()) << root;
    EXPECT_TRUE(fp4qat::fs::is_dir(root + "/" + latest)) << root << "/latest -> " << latest;
    for (const auto& [n, name] : fp4qat::io::numbered_folders(root, "step-"))
      EXPECT_TRUE(fp4qat::fs::exists(root + "/" + name + "/" + file)) << root << "/" << name << " is incomplete";
  };
  int64_t resumed_from = 0;
  for (int kill = 0; kill < 3; ++kill) {
    std::vector<std::string> args = common;
    if (kill > 0) args.push_back("--resume");
    const pid_t pid = fp4qat::test::spawn_fp4qat(args, {}, d.file("stdout"), d.file("stderr"));
    // Killed a little after its next checkpoint: at different points of the export cycle.
    const std::string want = "step-" + std::to_string(resumed_from + 2 * (kill + 1));
    for (int i = 0; i < 1200 && !fp4qat::fs::exists(out + "/checkpoints/" + want); ++i) ::usleep(50000);
    ::usleep(37000 * (kill + 1));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << fp4qat::test::read_bytes(d.file("stderr"));
    complete(out + "/checkpoints", "model.safetensors");
    complete(out + "/exports", "export.json");
    resumed_from = std::stoll(fp4qat::io::numbered_folders(out + "/checkpoints", "step-").back().second.substr(5));
  }
  // Resume to the end (a few steps past the newest checkpoint).
  std::vector<std::string> args = common;
  args.back() = "train.steps=" + std::to_string(resumed_from + 3);
  args.push_back("--resume");
  const auto r = fp4qat::test::run_fp4qat(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const std::string& root : {out, out + "/checkpoints", out + "/exports"})
    for (const auto& n : fp4qat::fs::list_dir(root)) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << root << "/" << n;
  std::vector<int64_t> steps;
  std::istringstream lines(fp4qat::fs::read_text(out + "/metrics.jsonl"));
  for (std::string l; std::getline(lines, l);) {
    const fp4qat::json::Value v = fp4qat::json::parse(l, "metrics.jsonl");
    if (v.find("loss")) steps.push_back(v.at("step").as_int());
  }
  ASSERT_FALSE(steps.empty());
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], static_cast<int64_t>(i) + 1) << "line " << i;
  EXPECT_EQ(steps.back(), resumed_from + 3);
  // The exports' latest: the final step, or a later one the killed run had published (never back).
  const std::string latest = fp4qat::io::latest(out + "/exports");
  ASSERT_EQ(latest.rfind("step-", 0), 0u) << latest;
  EXPECT_GE(std::stoll(latest.substr(5)), resumed_from + 3);
}
