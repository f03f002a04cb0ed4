// tests/autograd/test_mxfp8_linear.cpp — autograd/mxfp8_linear.h on the CPU (qat.md with MXFP8
// operands): forward equals "quantize both operands with the reference, dequantize, fp32 GEMM,
// cast" exactly; high_precision grads equal a plain Linear's exactly; dequantized grads equal GEMMs
// on the dequantized operands exactly; grouped equals a loop of single-expert calls (zero- and
// one-token experts included); the two modes differ; a bad K is rejected naming K.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "autograd/mxfp8_linear.h"
#include "kernels/common/check.h"
#include "tests/common/test_util.h"

using fp4qat::autograd::Backward;
using fp4qat::test::bytes_equal;
using fp4qat::test::error_of;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dt = at::kBFloat16) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed)).to(dt);
}

at::Tensor dequantized(const at::Tensor& t, at::ScalarType dt) {
  return fp4qat::mxfp8_dequantize(fp4qat::mxfp8_quantize(t), dt);
}

// Reference forward: MXFP8 quantize both with the reference, dequantize to fp32, fp32 GEMM, cast.
at::Tensor reference_forward(const at::Tensor& x2, const at::Tensor& w) {
  return at::mm(dequantized(x2, at::kFloat), dequantized(w, at::kFloat).t()).to(x2.scalar_type());
}

using Grads = fp4qat::test::LinearGrads;

Grads run_linear(const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& g, Backward mode) {
  at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  at::Tensor y = fp4qat::autograd::mxfp8_linear(x, w, mode);
  y.backward(g);
  return {y.detach(), x.grad(), w.grad()};
}

}  // namespace

TEST(MXFP8Linear, ForwardEqualsReferenceExactly) {
  for (auto dt : {at::kBFloat16, at::kFloat, at::kHalf})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      const at::Tensor x = randn({37, 96}, 1, dt), w = randn({48, 96}, 2, dt) * 0.1;
      const at::Tensor y = fp4qat::autograd::mxfp8_linear(x, w, mode);
      EXPECT_EQ(y.scalar_type(), dt);
      EXPECT_TRUE(bytes_equal(y, reference_forward(x, w))) << dt << " " << fp4qat::autograd::to_string(mode);
      // and it is the quantized product, not the plain one
      EXPECT_FALSE(at::equal(y, at::linear(x.to(at::kFloat), w.to(at::kFloat)).to(dt)));
    }
}

TEST(MXFP8Linear, DequantizedOperandsAreExactInBf16) {
  // What the CUDA forward relies on: e4m3 * 2^k survives bf16, so bf16 operands give the fp32 ones.
  const at::Tensor x = randn({16, 64}, 3, at::kFloat) * 100;
  EXPECT_TRUE(bytes_equal(dequantized(x, at::kBFloat16).to(at::kFloat), dequantized(x, at::kFloat)));
}

TEST(MXFP8Linear, LeadingDimensionsAreFlattened) {
  const at::Tensor x = randn({2, 5, 32}, 3), w = randn({16, 32}, 4);
  const at::Tensor y3 = fp4qat::autograd::mxfp8_linear(x, w, Backward::kDequantized);
  EXPECT_EQ(y3.sizes(), (std::vector<int64_t>{2, 5, 16}));
  EXPECT_TRUE(bytes_equal(y3.reshape({10, 16}),
                          fp4qat::autograd::mxfp8_linear(x.reshape({10, 32}), w, Backward::kDequantized)));
  // and the gradient comes back in x's shape
  at::Tensor xr = x.clone().requires_grad_(true);
  fp4qat::autograd::mxfp8_linear(xr, w, Backward::kDequantized).sum().backward();
  EXPECT_EQ(xr.grad().sizes(), x.sizes());
}

TEST(MXFP8Linear, HighPrecisionGradsEqualPlainLinear) {
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    const at::Tensor x0 = randn({29, 96}, 5, dt), w0 = randn({40, 96}, 6, dt), g = randn({29, 40}, 7, dt);
    const Grads q = run_linear(x0, w0, g, Backward::kHighPrecision);
    at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::linear(x, w).backward(g);
    EXPECT_TRUE(bytes_equal(q.dx, x.grad())) << dt;
    EXPECT_TRUE(bytes_equal(q.dw, w.grad())) << dt;
  }
}

TEST(MXFP8Linear, DequantizedGradsUseTheDequantizedOperands) {
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    const at::Tensor x0 = randn({33, 64}, 8, dt), w0 = randn({24, 64}, 9, dt), g = randn({33, 24}, 10, dt);
    const Grads q = run_linear(x0, w0, g, Backward::kDequantized);
    const at::Tensor xdq = dequantized(x0, dt), wdq = dequantized(w0, dt);
    EXPECT_TRUE(bytes_equal(q.dx, g.mm(wdq))) << dt;
    EXPECT_TRUE(bytes_equal(q.dw, xdq.t().mm(g).t())) << dt;
    // Same forward in both modes; different gradients (a mode switch that does nothing fails).
    const Grads h = run_linear(x0, w0, g, Backward::kHighPrecision);
    EXPECT_TRUE(bytes_equal(q.y, h.y)) << dt;
    EXPECT_FALSE(at::equal(q.dx, h.dx)) << dt;
    EXPECT_FALSE(at::equal(q.dw, h.dw)) << dt;
  }
}

TEST(MXFP8GroupedLinear, EqualsLoopOfSingleExpertCalls) {
  const std::vector<int64_t> counts_v = {5, 0, 1, 17, 0, 3};  // zero- and one-token experts
  const int64_t E = 6, T = 26, K = 64, N = 32;
  const at::Tensor counts = at::tensor(counts_v, at::kLong);
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      SCOPED_TRACE(::testing::Message() << dt << " " << fp4qat::autograd::to_string(mode));
      const at::Tensor x0 = randn({T, K}, 20, dt), w0 = randn({E, N, K}, 21, dt) * 0.1, g = randn({T, N}, 22, dt);
      at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      at::Tensor y = fp4qat::autograd::mxfp8_grouped_linear(x, w, counts, mode);
      y.backward(g);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{T, N}));
      fp4qat::test::expect_grouped_equals_per_expert(
          y, x.grad(), w.grad(), counts_v, [&](int64_t e, int64_t r, int64_t n) {
            return run_linear(x0.narrow(0, r, n), w0[e], g.narrow(0, r, n), mode);
          });
    }
}

TEST(MXFP8GroupedLinear, ModesGiveDifferentGradients) {
  const at::Tensor counts = at::tensor(std::vector<int64_t>{7, 0, 9}, at::kLong);
  const at::Tensor x0 = randn({16, 64}, 30), w0 = randn({3, 24, 64}, 31), g = randn({16, 24}, 32);
  at::Tensor grads[2][2], ys[2];
  int i = 0;
  for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
    at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::Tensor y = fp4qat::autograd::mxfp8_grouped_linear(x, w, counts, mode);
    y.backward(g);
    ys[i] = y.detach();
    grads[i][0] = x.grad();
    grads[i][1] = w.grad();
    ++i;
  }
  EXPECT_TRUE(bytes_equal(ys[0], ys[1]));
  EXPECT_FALSE(at::equal(grads[0][0], grads[1][0]));
  EXPECT_FALSE(at::equal(grads[0][1], grads[1][1]));
}

TEST(MXFP8Linear, BadArguments) {
  // K = 48 passes NVFP4's 16 but not MXFP8's 32: the message names K.
  const std::string msg = error_of([] {
    fp4qat::autograd::mxfp8_linear(randn({4, 48}, 1), randn({8, 48}, 2), Backward::kHighPrecision);
  });
  EXPECT_NE(msg.find("K = 48"), std::string::npos) << msg;
  const std::string gmsg = error_of([] {
    fp4qat::autograd::mxfp8_grouped_linear(randn({4, 80}, 1), randn({2, 8, 80}, 2),
                                           at::tensor(std::vector<int64_t>{1, 3}, at::kLong), Backward::kDequantized);
  });
  EXPECT_NE(gmsg.find("K = 80"), std::string::npos) << gmsg;
  const auto hp = Backward::kHighPrecision;
  EXPECT_THROW(fp4qat::autograd::mxfp8_linear(randn({4, 32}, 1), randn({8, 64}, 2), hp), fp4qat::Error);  // K mismatch
  EXPECT_THROW(fp4qat::autograd::mxfp8_linear(randn({4, 32}, 1), randn({8, 32}, 2, at::kFloat), hp),
               fp4qat::Error);  // dtypes differ
  EXPECT_THROW(fp4qat::autograd::mxfp8_linear(randn({4, 32}, 1, at::kDouble), randn({8, 32}, 2, at::kDouble), hp),
               fp4qat::Error);                                                                               // float64
  EXPECT_THROW(fp4qat::autograd::mxfp8_linear(randn({4, 32}, 1), randn({2, 8, 32}, 2), hp), fp4qat::Error);  // 3-D w
  EXPECT_THROW(fp4qat::autograd::mxfp8_grouped_linear(randn({4, 32}, 1), randn({8, 32}, 2),
                                                      at::tensor(std::vector<int64_t>{4}, at::kLong), hp),
               fp4qat::Error);  // 2-D w
  EXPECT_THROW(fp4qat::autograd::mxfp8_grouped_linear(randn({4, 32}, 1), randn({2, 8, 32}, 2),
                                                      at::tensor(std::vector<int64_t>{1, 2}, at::kLong), hp),
               fp4qat::Error);  // counts sum to 3, not 4
  EXPECT_THROW(fp4qat::autograd::mxfp8_grouped_linear(randn({4, 32}, 1), randn({2, 8, 32}, 2),
                                                      at::tensor(std::vector<int32_t>{1, 3}, at::kInt), hp),
               fp4qat::Error);  // counts not int64
  EXPECT_THROW(fp4qat::autograd::mxfp8_grouped_linear(randn({2, 2, 32}, 1), randn({2, 8, 32}, 2),
                                                      at::tensor(std::vector<int64_t>{2, 2}, at::kLong), hp),
               fp4qat::Error);  // x not [T, K]
}
