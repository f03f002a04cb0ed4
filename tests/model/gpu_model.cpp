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
      if (cv[e] == 0) EXPECT_EQ(gpu.dw[e].abs().sum().item<float>(), 0.0f) << "expert " << e << " got no tokens";
    // Frozen experts (the weight needs no gradient): the same dX, and no weight gradient.
    at::Tensor x = x0.cuda().requires_grad_(true);
    plain.grouped("experts", x, w0.cuda(), counts).backward(g.cuda());
    EXPECT_TRUE(fp4qat::test::bytes_equal(x.grad().cpu().to(at::kFloat), gpu.dx));
  }
}
