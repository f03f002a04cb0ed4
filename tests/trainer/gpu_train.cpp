// tests/trainer/gpu_train.cpp — (label gpu) the trainer on CUDA against its own per-step NVFP4
// export run as the rollout side runs it (the mismatch probe): the same policy, |dlogp| exactly 0
// at every step, for top-k 2, 4 and 8 (each token's expert outputs summed in slot order on both
// sides, model/qwen3_moe.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <string>

#include "io/json.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "tests/trainer/probe_util.h"
#include "kernels/cuda_api.h"
#include "kernels/optim/adamw_ref.h"
#include "trainer/adamw.h"
#include "trainer/train.h"

using namespace fp4qat;

TEST(GpuTrain, ExportProbeIsExactlyZeroForEveryTopK) {
  FP4QAT_REQUIRE_GPU();
  for (const int64_t k : {2, 4, 8}) {
    SCOPED_TRACE(::testing::Message() << "top-" << k);
    test::TempDir d;
    config::Config c = test::small_moe_run(d.file("run"));
    c.model.num_experts = 16;
    c.model.num_experts_per_tok = k;
    c.train.device = "cuda";
    c.train.dtype = "bf16";
    c.train.batch_size = 8;
    c.train.seq_len = 64;
    c.qat.format = qat::Format::kNVFP4;
    c.exports.formats = {qat::Format::kNVFP4, qat::Format::kBF16};
    c.exports.probe_mismatch = true;
    train::Options o;
    o.quiet = true;
    train::run(c, o);
    EXPECT_EQ(test::expect_zero_probe_mismatch(d.file("run/metrics.jsonl")), c.train.steps);
  }
}

// train.activation_checkpointing on the GPU (bf16, NVFP4 expert QAT, top-8 of 16 experts, both
// backward modes): the forward without a graph and the recomputed one in backward are the same
// arithmetic, so losses, gradient norms and weights equal the run without checkpointing, bit for
// bit; and the run's peak memory is lower.
TEST(GpuTrain, ActivationCheckpointingChangesNoBitAndLowersPeakMemory) {
  FP4QAT_REQUIRE_GPU();
  for (const auto backward : {autograd::Backward::kHighPrecision, autograd::Backward::kDequantized}) {
    SCOPED_TRACE(static_cast<int>(backward));
    test::TempDir d;
    config::Config a = test::small_moe_run(d.file("a"));
    a.model.num_experts = 16;
    a.model.num_experts_per_tok = 8;
    a.model.num_hidden_layers = 4;
    a.model.hidden_size = 256;
    a.model.moe_intermediate_size = 128;
    a.train.device = "cuda";
    a.train.dtype = "bf16";
    a.train.batch_size = 8;
    a.train.seq_len = 256;
    a.train.grad_accum = 2;
    a.qat.format = qat::Format::kNVFP4;
    a.qat.backward = backward;
    a.exports.every = 0;
    train::Options o;
    o.quiet = true;
    const auto ra = train::run(a, o);
    config::Config b = a;
    b.train.out_dir = d.file("b");
    b.train.activation_checkpointing = true;
    const auto rb = train::run(b, o);
    ASSERT_EQ(ra.steps.size(), rb.steps.size());
    for (size_t i = 0; i < ra.steps.size(); ++i) {
      EXPECT_EQ(rb.steps[i].loss, ra.steps[i].loss) << "step " << i + 1;
      EXPECT_EQ(rb.steps[i].grad_norm, ra.steps[i].grad_norm) << "step " << i + 1;
    }
    st::Reader wa(d.file("a/checkpoints/step-3/model.safetensors")), wb(d.file("b/checkpoints/step-3/model.safetensors"));
    for (const auto& t : wa.tensors()) EXPECT_TRUE(test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
    EXPECT_GT(ra.steps.back().peak_memory_gib, 0.0);
    EXPECT_LT(rb.steps.back().peak_memory_gib, ra.steps.back().peak_memory_gib);
    std::printf("peak memory: %.4f GiB without, %.4f GiB with activation checkpointing\n",
                ra.steps.back().peak_memory_gib, rb.steps.back().peak_memory_gib);
  }
}

// The fused AdamW kernel (kernels/optim/adamw.cu) against its CPU reference, bit for bit: the
// 4-wide path, the scalar tail (an odd length) and the scalar path (a view one element in, not
// 16-byte aligned); then adamw_update on CUDA parameters (which takes the kernel) against the
// reference with the same constants, weight decay on the matrix only.
TEST(GpuTrain, FusedAdamWEqualsItsCpuReferenceBitForBit) {
  FP4QAT_REQUIRE_GPU();
  optim::AdamWScalars s;
  s.grad_scale = 0.73f;
  s.decay = 1.0f - 3e-4f * 0.1f;
  s.bc2 = 1.0f - std::pow(0.95f, 3.0f);
  s.step = -3e-4f / (1.0f - std::pow(0.9f, 3.0f));
  for (const int64_t n : {int64_t(1000003), int64_t(4096)}) {
    for (const int64_t offset : {0, 1}) {
      SCOPED_TRACE(::testing::Message() << "n " << n << " offset " << offset);
      auto gen = [&](double scale) { return (at::randn({n + offset}) * scale).contiguous(); };
      at::Tensor p = gen(0.02), g = gen(1e-3), m = gen(1e-4), v = gen(1e-7).abs();
      at::Tensor pr = p.narrow(0, offset, n).clone(), mr = m.narrow(0, offset, n).clone(),
                 vr = v.narrow(0, offset, n).clone();
      const at::Tensor gr = g.narrow(0, offset, n).contiguous();
      optim::adamw_step_ref(pr.data_ptr<float>(), gr.data_ptr<float>(), mr.data_ptr<float>(), vr.data_ptr<float>(), n,
                            s);
      at::Tensor pc = p.cuda(), gc = g.cuda(), mc = m.cuda(), vc = v.cuda();
      at::Tensor pv = pc.narrow(0, offset, n), mv = mc.narrow(0, offset, n), vv = vc.narrow(0, offset, n);
      const at::Tensor gv = gc.narrow(0, offset, n);
      cuda::adamw_step(pv, gv, mv, vv, s);
      EXPECT_TRUE(test::bytes_equal(pv.cpu(), pr));
      EXPECT_TRUE(test::bytes_equal(mv.cpu(), mr));
      EXPECT_TRUE(test::bytes_equal(vv.cpu(), vr));
    }
  }
  // Through the optimizer: a matrix (decayed) and a vector (not), step 3.
  config::OptimConfig o;
  o.weight_decay = 0.1;
  const double lr = 3e-4;
  std::vector<std::pair<std::string, at::Tensor>> params = {{"w", at::randn({64, 48}).cuda()},
                                                            {"b", at::randn({48}).cuda()}};
  for (auto& [n, t] : params) t.mutable_grad() = at::randn_like(t) * 1e-2;
  train::AdamWState st = train::adamw_init(params);
  for (size_t i = 0; i < params.size(); ++i) {
    st.m[i].normal_(0, 1e-3);
    st.v[i].uniform_(0, 1e-5);
  }
  std::vector<at::Tensor> want_p, want_m, want_v;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor p = params[i].second.detach().cpu().clone(), m = st.m[i].cpu().clone(), v = st.v[i].cpu().clone();
    const at::Tensor g = params[i].second.grad().cpu().contiguous();
    optim::AdamWScalars r;
    r.grad_scale = 0.5f;
    r.beta1 = static_cast<float>(o.beta1);
    r.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
    r.beta2 = static_cast<float>(o.beta2);
    r.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
    r.decay = params[i].second.dim() >= 2 ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f;
    r.bc2 = static_cast<float>(1.0 - std::pow(o.beta2, 3.0));
    r.eps = static_cast<float>(o.eps);
    r.step = static_cast<float>(-lr / (1.0 - std::pow(o.beta1, 3.0)));
    optim::adamw_step_ref(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(),
                          p.numel(), r);
    want_p.push_back(p);
    want_m.push_back(m);
    want_v.push_back(v);
  }
  train::adamw_update(params, st, o, lr, 0.5, 3);
  for (size_t i = 0; i < params.size(); ++i) {
    SCOPED_TRACE(params[i].first);
    EXPECT_TRUE(test::bytes_equal(params[i].second.detach().cpu(), want_p[i]));
    EXPECT_TRUE(test::bytes_equal(st.m[i].cpu(), want_m[i]));
    EXPECT_TRUE(test::bytes_equal(st.v[i].cpu(), want_v[i]));
  }
}

// The optimizer's multi-parameter launches (kernels/optim/adamw.cu adamw_many: 64 parameters a
// launch, a block a 16,384-element chunk) against the CPU reference, bit for bit: 150 parameters
// (three launches), lengths that end inside a chunk, span several or are shorter than a float4,
// matrices (decayed) and vectors (not), and parameters that are 4-byte-offset views (the scalar
// path of a segment next to aligned ones in the same launch).
TEST(GpuTrain, MultiParameterAdamWEqualsItsCpuReferenceBitForBit) {
  FP4QAT_REQUIRE_GPU();
  config::OptimConfig o;
  o.weight_decay = 0.1;
  const double lr = 1e-3;
  const int64_t step = 7;
  std::vector<std::pair<std::string, at::Tensor>> params;
  std::vector<at::Tensor> keep;  // the storage of the offset views
  for (int i = 0; i < 150; ++i) {
    const int64_t n = std::vector<int64_t>{1, 3, 5, 4096, 16384, 16385, 40001, 129}[static_cast<size_t>(i) % 8];
    at::Tensor t;
    if (i % 5 == 3) {  // a contiguous view one element into its storage: not 16-byte aligned
      keep.push_back(at::randn({n + 1}).cuda());
      t = keep.back().narrow(0, 1, n);
    } else if (i % 2 == 0 && n % 3 == 0) {
      t = at::randn({3, n / 3}).cuda();
    } else {
      t = at::randn({n}).cuda();
    }
    t.mutable_grad() = (at::randn_like(t) * 1e-2).contiguous();
    params.push_back({"p" + std::to_string(i), t});
  }
  train::AdamWState st = train::adamw_init(params);
  std::vector<at::Tensor> want_p, want_m, want_v;
  for (size_t i = 0; i < params.size(); ++i) {
    st.m[i].normal_(0, 1e-3);
    st.v[i].uniform_(0, 1e-5);
    at::Tensor p = params[i].second.detach().cpu().clone(), m = st.m[i].cpu().clone(), v = st.v[i].cpu().clone();
    const at::Tensor g = params[i].second.grad().cpu().contiguous();
    optim::AdamWScalars r;
    r.grad_scale = 0.25f;
    r.beta1 = static_cast<float>(o.beta1);
    r.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
    r.beta2 = static_cast<float>(o.beta2);
    r.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
    r.decay = params[i].second.dim() >= 2 ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f;
    r.bc2 = static_cast<float>(1.0 - std::pow(o.beta2, static_cast<double>(step)));
    r.eps = static_cast<float>(o.eps);
    r.step = static_cast<float>(-lr / (1.0 - std::pow(o.beta1, static_cast<double>(step))));
    optim::adamw_step_ref(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(),
                          p.numel(), r);
    want_p.push_back(p);
    want_m.push_back(m);
    want_v.push_back(v);
  }
  train::adamw_update(params, st, o, lr, 0.25, step);
  for (size_t i = 0; i < params.size(); ++i) {
    SCOPED_TRACE(params[i].first);
    ASSERT_TRUE(test::bytes_equal(params[i].second.detach().cpu(), want_p[i]));
    ASSERT_TRUE(test::bytes_equal(st.m[i].cpu(), want_m[i]));
    ASSERT_TRUE(test::bytes_equal(st.v[i].cpu(), want_v[i]));
  }
}
