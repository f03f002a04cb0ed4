// tests/autograd/gpu_mxfp8_linear.cpp — (label gpu) the MXFP8 autograd functions on CUDA against
// the CPU reference: forward within fp32 accumulation-order noise (exact operands, so at most one
// bf16 rounding step apart), grads likewise, for both backward modes; single linear and grouped
// (at::_grouped_mm for bf16, the per-expert loop for float32), experts with 0 and 1 tokens.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/mxfp8_linear.h"
#include "tests/common/test_util.h"

using fp4qat::autograd::Backward;
using fp4qat::test::bytes_equal;
using fp4qat::test::close_bf16;

namespace {
at::Tensor randn_cpu(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dt) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed)).to(dt);
}

struct Result {
  at::Tensor y, dx, dw;
};

// Runs `f(x, w)` forward and backward with `g` on copies of x0, w0 (on their device).
template <typename F>
Result run(F&& f, const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& g) {
  at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  at::Tensor y = f(x, w);
  y.backward(g);
  return {y.detach(), x.grad(), w.grad()};
}

void expect_close(const Result& gpu, const Result& cpu) {
  EXPECT_TRUE(close_bf16(gpu.y, cpu.y)) << "forward";
  EXPECT_TRUE(close_bf16(gpu.dx, cpu.dx)) << "dX";
  EXPECT_TRUE(close_bf16(gpu.dw, cpu.dw)) << "dW";
}
}  // namespace

TEST(GpuMXFP8Linear, MatchesCpu) {
  FP4QAT_REQUIRE_GPU();
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      SCOPED_TRACE(::testing::Message() << dt << " " << fp4qat::autograd::to_string(mode));
      const at::Tensor x0 = randn_cpu({300, 256}, 1, dt), w0 = randn_cpu({192, 256}, 2, dt) * 0.05,
                       g = randn_cpu({300, 192}, 3, dt);
      const auto f = [mode](const at::Tensor& x, const at::Tensor& w) {
        return fp4qat::autograd::mxfp8_linear(x, w, mode);
      };
      const Result gpu = run(f, x0.cuda(), w0.cuda(), g.cuda());
      expect_close(gpu, run(f, x0, w0, g));
      if (mode == Backward::kHighPrecision && dt == at::kBFloat16) {
        // the same GEMM calls as torch's own linear backward, on the same device
        const Result plain = run([](const at::Tensor& x, const at::Tensor& w) { return at::linear(x, w); }, x0.cuda(),
                                 w0.cuda(), g.cuda());
        EXPECT_TRUE(bytes_equal(gpu.dx, plain.dx));
        EXPECT_TRUE(bytes_equal(gpu.dw, plain.dw));
      }
    }
}

TEST(GpuMXFP8GroupedLinear, MatchesCpu) {
  FP4QAT_REQUIRE_GPU();
  // Experts with 0 and 1 tokens; bf16 runs at::_grouped_mm, float32 the per-expert loop.
  const std::vector<int64_t> cv = {64, 0, 1, 90, 33, 0, 100};
  const int64_t E = static_cast<int64_t>(cv.size()), K = 128, N = 96;
  int64_t T = 0;
  for (int64_t c : cv) T += c;
  const at::Tensor counts = at::tensor(cv, at::kLong);
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      SCOPED_TRACE(::testing::Message() << dt << " " << fp4qat::autograd::to_string(mode));
      const at::Tensor x0 = randn_cpu({T, K}, 4, dt), w0 = randn_cpu({E, N, K}, 5, dt) * 0.05,
                       g = randn_cpu({T, N}, 6, dt);
      const auto f = [&](const at::Tensor& x, const at::Tensor& w) {
        return fp4qat::autograd::mxfp8_grouped_linear(x, w, counts, mode);
      };
      const Result gpu = run(f, x0.cuda(), w0.cuda(), g.cuda());
      ASSERT_EQ(gpu.y.scalar_type(), dt);
      expect_close(gpu, run(f, x0, w0, g));
      int64_t r = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = cv[e];
        if (n == 0) {
          EXPECT_EQ(gpu.dw[e].abs().sum().item<float>(), 0.0f) << "expert " << e << " got no tokens";
          continue;
        }
        // and a loop of single-expert calls on the GPU
        const Result s =
            run([mode](const at::Tensor& x, const at::Tensor& w) { return fp4qat::autograd::mxfp8_linear(x, w, mode); },
                x0.cuda().narrow(0, r, n), w0.cuda()[e], g.cuda().narrow(0, r, n));
        EXPECT_TRUE(close_bf16(gpu.y.narrow(0, r, n), s.y)) << "expert " << e;
        EXPECT_TRUE(close_bf16(gpu.dx.narrow(0, r, n), s.dx)) << "expert " << e;
        EXPECT_TRUE(close_bf16(gpu.dw[e], s.dw)) << "expert " << e;
        r += n;
      }
    }
}
