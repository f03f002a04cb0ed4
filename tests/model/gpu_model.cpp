// tests/model/gpu_model.cpp — (label gpu) the model's BF16 expert GEMMs on CUDA
// (model::LinearPolicy::grouped): equal row counts run one batched GEMM each way (at::bmm), other
// counts at::_grouped_mm; both against a float32 per-expert reference, forward and gradients.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "tests/common/test_util.h"
#include "model/qwen3_moe.h"

namespace {

struct Grads {
  at::Tensor y, dx, dw;
};

Grads run(const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& f, const at::Tensor& x0,
          const at::Tensor& w0, const at::Tensor& g) {
  at::Tensor x = x0.detach().clone().requires_grad_(true), w = w0.detach().clone().requires_grad_(true);
  at::Tensor y = f(x, w);
  y.backward(g);
  return {y.detach().cpu().to(at::kFloat), x.grad().cpu().to(at::kFloat), w.grad().cpu().to(at::kFloat)};
}

// bf16 results against the float32 reference: within a few bf16 ulps of the largest magnitude.
void expect_near(const at::Tensor& got, const at::Tensor& want, const char* what) {
  const float tol = 2e-2f * std::max(1.0f, want.abs().max().item<float>());
  EXPECT_LE((got - want).abs().max().item<float>(), tol) << what;
}

}  // namespace

TEST(GpuModel, BF16ExpertGemmsMatchReference) {
  FP4QAT_REQUIRE_GPU();
  const int64_t E = 6, K = 64, N = 96;
  for (const std::vector<int64_t>& cv : {std::vector<int64_t>{32, 32, 32, 32, 32, 32},   // equal: at::bmm
                                         std::vector<int64_t>{40, 0, 1, 64, 32, 55}}) {  // at::_grouped_mm
    int64_t T = 0;
    for (int64_t c : cv) T += c;
    SCOPED_TRACE(::testing::Message() << "counts " << at::IntArrayRef(cv));
    const at::Tensor counts = at::tensor(cv, at::kLong);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    const at::Tensor x0 = at::randn({T, K}, gen).to(at::kBFloat16),
                     w0 = (at::randn({E, N, K}, gen) * 0.1).to(at::kBFloat16);
    const at::Tensor g = at::randn({T, N}, gen).to(at::kBFloat16);
    fp4qat::model::LinearPolicy plain;
    const Grads gpu =
        run([&](const at::Tensor& x, const at::Tensor& w) { return plain.grouped("experts", x, w, counts); }, x0.cuda(),
            w0.cuda(), g.cuda());
    // float32 reference: one linear per expert on the same bf16 values.
    const Grads ref = run(
        [&](const at::Tensor& x, const at::Tensor& w) {
          std::vector<at::Tensor> ys;
          int64_t r = 0;
          for (int64_t e = 0; e < E; ++e) {
            ys.push_back(at::linear(x.narrow(0, r, cv[e]), w[e]));
            r += cv[e];
          }
          return at::cat(ys, 0);
        },
        x0.to(at::kFloat), w0.to(at::kFloat), g.to(at::kFloat));
    ASSERT_EQ(gpu.y.sizes(), ref.y.sizes());
    expect_near(gpu.y, ref.y, "y");
    expect_near(gpu.dx, ref.dx, "dx");
    expect_near(gpu.dw, ref.dw, "dw");
    for (int64_t e = 0; e < E; ++e)
      if (cv[e] == 0) {
        EXPECT_EQ(gpu.dw[e].abs().sum().item<float>(), 0.0f) << "expert " << e << " got no tokens";
      }
    // Frozen experts (the weight needs no gradient): the same dX, and no weight gradient.
    at::Tensor x = x0.cuda().requires_grad_(true);
    plain.grouped("experts", x, w0.cuda(), counts).backward(g.cuda());
    EXPECT_TRUE(fp4qat::test::bytes_equal(x.grad().cpu().to(at::kFloat), gpu.dx));
  }
}

// The MoE layer's dispatch and combine are permutations and a sum over the k slots in slot order
// (model/qwen3_moe.cpp), never an atomic accumulation: with k = 8 (Qwen3-30B-A3B's top-8) the
// logits and every gradient are the same bits in every run on CUDA. (With index_add, a token's
// k >= 3 expert outputs were added in a run-dependent order: the trainer and the rollout side
// disagreed by |dlogp| ~ 2e-3 on the same weights.)
TEST(GpuModel, MoeForwardAndGradientsAreTheSameBitsEveryRun) {
  FP4QAT_REQUIRE_GPU();
  fp4qat::model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.moe_intermediate_size = 32;
  c.num_experts = 16;
  c.num_experts_per_tok = 8;
  fp4qat::model::Qwen3Moe m(c, 11);
  m.to(at::Device(at::kCUDA));
  for (const auto& [name, t] : m.params()) t.requires_grad_(true);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor ids = at::randint(0, c.vocab_size, {8, 96}, gen).cuda();
  fp4qat::model::LinearPolicy plain;
  std::vector<at::Tensor> first;  // logits, then each parameter's gradient
  for (int run = 0; run < 3; ++run) {
    for (const auto& [name, t] : m.params())
      if (t.grad().defined()) t.mutable_grad() = at::Tensor();
    const auto out = m.forward(ids, at::kBFloat16, plain);
    (out.logits.to(at::kFloat).logsumexp(-1).mean() + out.aux_loss).backward();
    std::vector<at::Tensor> got = {out.logits.detach().cpu()};
    for (const auto& [name, t] : m.params()) {
      ASSERT_TRUE(t.grad().defined()) << name;
      got.push_back(t.grad().cpu());
    }
    if (run == 0) {
      first = got;
      continue;
    }
    EXPECT_TRUE(fp4qat::test::bytes_equal(got[0], first[0])) << "logits, run " << run;
    for (size_t i = 1; i < got.size(); ++i)
      EXPECT_TRUE(fp4qat::test::bytes_equal(got[i], first[i])) << m.params()[i - 1].first << " grad, run " << run;
  }
}

// Grouped-query attention on CUDA reads each KV head for its query heads in place (enable_gqa);
// on the CPU K and V are repeated. In fp32 the two agree to accumulation order, in the full
// forward, with packed documents (a mask) and in KV-cache decoding, and the gradients too.
TEST(GpuModel, GroupedQueryAttentionMatchesTheCpu) {
  FP4QAT_REQUIRE_GPU();
  fp4qat::model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.moe_intermediate_size = 32;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  fp4qat::model::Qwen3Moe cpu(c, 3), gpu(c, 3);
  gpu.to(at::Device(at::kCUDA));
  for (auto* m : {&cpu, &gpu})
    for (const auto& [name, t] : m->params()) t.requires_grad_(true);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const at::Tensor ids = at::randint(0, c.vocab_size, {2, 24}, gen);
  fp4qat::model::LinearPolicy plain;
  const auto a = cpu.forward(ids, at::kFloat, plain);
  const auto b = gpu.forward(ids.cuda(), at::kFloat, plain);
  EXPECT_TRUE(at::allclose(b.logits.cpu(), a.logits, 1e-4, 1e-4)) << (b.logits.cpu() - a.logits).abs().max();
  a.logits.pow(2).mean().backward();
  b.logits.pow(2).mean().backward();
  for (size_t i = 0; i < cpu.params().size(); ++i) {
    const at::Tensor ga = cpu.params()[i].second.grad(), gb = gpu.params()[i].second.grad().cpu();
    EXPECT_TRUE(at::allclose(gb, ga, 1e-4, 1e-5)) << cpu.params()[i].first << " " << (gb - ga).abs().max();
  }
  torch::NoGradGuard ng;
  fp4qat::model::Packing pk{at::cat({at::arange(12), at::arange(12)}).repeat({2, 1}),
                            at::cat({at::zeros({12}), at::ones({12})}).to(at::kLong).repeat({2, 1})};
  const at::Tensor pa = cpu.forward(ids, at::kFloat, plain, nullptr, &pk).logits;
  fp4qat::model::Packing pkg{pk.positions.cuda(), pk.segments.cuda()};
  const at::Tensor pb = gpu.forward(ids.cuda(), at::kFloat, plain, nullptr, &pkg).logits.cpu();
  EXPECT_TRUE(at::allclose(pb, pa, 1e-4, 1e-4)) << (pb - pa).abs().max();
  fp4qat::model::KVCache ca, cb;
  cpu.forward(ids.narrow(1, 0, 20), at::kFloat, plain, &ca);
  gpu.forward(ids.narrow(1, 0, 20).cuda(), at::kFloat, plain, &cb);
  const at::Tensor da = cpu.forward(ids.narrow(1, 20, 1), at::kFloat, plain, &ca).logits;
  const at::Tensor db = gpu.forward(ids.narrow(1, 20, 1).cuda(), at::kFloat, plain, &cb).logits.cpu();
  EXPECT_TRUE(at::allclose(db, da, 1e-4, 1e-4)) << (db - da).abs().max();
}

// model::rms_norm on CUDA (ATen's fused RMSNorm kernel, then the weight) against the CPU's
// composite (the reference arithmetic): the same formula in another reduction order, so within an
// ulp or two of bf16, forward and gradients; the same bits every run; and a row normalised alone
// (a decode step) the same bits as in a batch (a training forward), which the sampler / learner
// agreement of the RL loop rests on.
TEST(GpuModel, FusedRmsNormMatchesTheCpuAndIsBatchInvariant) {
  FP4QAT_REQUIRE_GPU();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (const int64_t D : {64, 128, 512, 2048}) {
    SCOPED_TRACE(::testing::Message() << "D " << D);
    const at::Tensor x0 = (at::randn({3, 37, D}, gen) * 3.0).to(at::kBFloat16);
    const at::Tensor w0 = 1.0 + 0.1 * at::randn({D}, gen);
    const at::Tensor g = at::randn({3, 37, D}, gen).to(at::kBFloat16);
    auto f = [](const at::Tensor& x, const at::Tensor& w) { return fp4qat::model::rms_norm(x, w, 1e-6); };
    const Grads cpu = run(f, x0, w0, g);
    const Grads gpu = run(f, x0.cuda(), w0.cuda(), g.cuda());
    const at::Tensor rel = (gpu.y - cpu.y).abs() / (cpu.y.abs() + 1e-6);
    EXPECT_LE(rel.max().item<float>(), 1.0f / 32) << "forward: more than two bf16 ulps apart";
    expect_near(gpu.dx, cpu.dx, "dx");
    expect_near(gpu.dw, cpu.dw, "dw");
    const Grads again = run(f, x0.cuda(), w0.cuda(), g.cuda());
    EXPECT_TRUE(fp4qat::test::bytes_equal(again.y, gpu.y));
    EXPECT_TRUE(fp4qat::test::bytes_equal(again.dx, gpu.dx));
    EXPECT_TRUE(fp4qat::test::bytes_equal(again.dw, gpu.dw));
    torch::NoGradGuard ng;
    const at::Tensor xg = x0.cuda(), wg = w0.cuda();
    const at::Tensor all = f(xg, wg);
    for (const int64_t b : {0, 2})
      for (const int64_t t : {0, 5, 36})
        EXPECT_TRUE(fp4qat::test::bytes_equal(f(xg[b][t].reshape({1, 1, D}).clone(), wg).reshape({D}).cpu(),
                                              all[b][t].cpu()))
            << "row " << b << "," << t << " alone differs from the batch's";
  }
}
