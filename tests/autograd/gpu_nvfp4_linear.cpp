// tests/autograd/gpu_nvfp4_linear.cpp — (label gpu) the NVFP4 autograd functions on CUDA:
// forward within fp32 accumulation-order noise of the CPU (exact operands, so at most one bf16
// rounding step apart); high_precision grads equal a plain Linear's on the GPU exactly;
// dequantized grads equal GEMMs on the dequantized operands; grouped (padded batched path, and the
// per-expert loop it falls back to under heavy routing imbalance) equals a loop of single calls.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/nvfp4_linear.h"
#include "tests/autograd/linear_util.h"
#include "tests/common/test_util.h"

using fp4qat::Blocks;
using fp4qat::autograd::Backward;
using fp4qat::test::bytes_equal;
using fp4qat::test::close_bf16;
using fp4qat::test::randn_cuda;

TEST(GpuNVFP4Linear, ForwardMatchesCpuAndGradsMatchDefinitions) {
  FP4QAT_REQUIRE_GPU();
  for (auto blocks : {Blocks::k1D, Blocks::k2D})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      const at::Tensor x0 = randn_cuda({300, 256}, 1), w0 = randn_cuda({192, 256}, 2) * 0.05,
                       g = randn_cuda({300, 192}, 3);
      const fp4qat::autograd::NVFP4LinearOptions opt{blocks, mode};
      at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      at::Tensor y = fp4qat::autograd::nvfp4_linear(x, w, opt);
      y.backward(g);
      EXPECT_TRUE(close_bf16(y, fp4qat::autograd::nvfp4_linear(x0.cpu(), w0.cpu(), opt)));
      at::Tensor xs, ws;
      if (mode == Backward::kHighPrecision) {
        xs = x0;
        ws = w0;
        at::Tensor xr = x0.clone().requires_grad_(true), wr = w0.clone().requires_grad_(true);
        at::linear(xr, wr).backward(g);
        EXPECT_TRUE(bytes_equal(x.grad(), xr.grad()));
        EXPECT_TRUE(bytes_equal(w.grad(), wr.grad()));
      } else {
        xs = fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(x0, Blocks::k1D), at::kBFloat16);
        ws = fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(w0, blocks), at::kBFloat16);
      }
      EXPECT_TRUE(bytes_equal(x.grad(), g.mm(ws)));
      EXPECT_TRUE(bytes_equal(w.grad(), xs.t().mm(g).t()));
    }
}

namespace {
// nvfp4_grouped_linear on CUDA vs a loop of single-expert nvfp4_linear calls on CUDA, every mode,
// weight block mode and dtype: forward within fp32 accumulation-order noise (the same exact
// operands, batched vs per-expert GEMMs); grads equal both the loop's and the GEMMs of their
// definition (high_precision: the original operands; dequantized: the operands rebuilt from a
// per-expert quantization, i.e. what the saved padded packed x must decode to); an expert without
// tokens gets dW = 0.
void expect_grouped_equals_loop(const std::vector<int64_t>& cv, uint64_t seed) {
  const int64_t E = static_cast<int64_t>(cv.size()), K = 128, N = 96;
  int64_t T = 0;
  for (int64_t c : cv) T += c;
  const at::Tensor counts = at::tensor(cv, at::kLong);
  for (auto dt : {at::kBFloat16, at::kHalf, at::kFloat})
    for (auto blocks : {Blocks::k1D, Blocks::k2D})
      for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
        SCOPED_TRACE(::testing::Message()
                     << dt << " " << fp4qat::to_string(blocks) << " " << fp4qat::autograd::to_string(mode));
        const at::Tensor x0 = randn_cuda({T, K}, seed).to(dt), w0 = (randn_cuda({E, N, K}, seed + 1) * 0.05).to(dt),
                         g = randn_cuda({T, N}, seed + 2).to(dt);
        const fp4qat::autograd::NVFP4LinearOptions opt{blocks, mode};
        at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
        at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, opt);
        y.backward(g);
        ASSERT_EQ(y.scalar_type(), dt);
        ASSERT_EQ(x.grad().scalar_type(), dt);
        ASSERT_EQ(w.grad().scalar_type(), dt);
        fp4qat::test::expect_grouped_equals_per_expert(
            y, x.grad(), w.grad(), cv,
            [&](int64_t e, int64_t r, int64_t n) {
              const at::Tensor x0e = x0.narrow(0, r, n), ge = g.narrow(0, r, n);
              fp4qat::test::LinearGrads s = fp4qat::test::run_nvfp4_linear(x0e, w0[e], ge, opt);
              s.g = ge, s.xs = x0e, s.ws = w0[e];
              if (mode == Backward::kDequantized) {
                s.xs = fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(x0e, Blocks::k1D), dt);
                s.ws = fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(w0[e], blocks), dt);
              }
              return s;
            },
            fp4qat::test::Agree::kCloseBf16);
      }
}
}  // namespace

TEST(GpuNVFP4GroupedLinear, PaddedEqualsLoopOfSingleExpertCalls) {
  FP4QAT_REQUIRE_GPU();
  // Experts with 0 and 1 tokens; E * Mmax = 600 <= 2 * 288 + 128: the padded batched path.
  const std::vector<int64_t> cv = {64, 0, 1, 90, 33, 100};
  ASSERT_TRUE(fp4qat::autograd::nvfp4_grouped_linear_pads(at::tensor(cv, at::kLong)));
  expect_grouped_equals_loop(cv, 4);
}

TEST(GpuNVFP4GroupedLinear, UniformRoutingNeedsNoPaddingRowsAndEqualsLoop) {
  FP4QAT_REQUIRE_GPU();
  // Every expert has the same count: x is used as the [E, M, K] batch directly (no pad copies).
  const std::vector<int64_t> cv = {48, 48, 48, 48};
  ASSERT_TRUE(fp4qat::autograd::nvfp4_grouped_linear_pads(at::tensor(cv, at::kLong)));
  expect_grouped_equals_loop(cv, 5);
}

TEST(GpuNVFP4GroupedLinear, ImbalancedRoutingEqualsLoop) {
  FP4QAT_REQUIRE_GPU();
  // One expert takes nearly all tokens: E * Mmax = 2000 > 2 * 408 + 128, so no padded batch:
  // bf16 high_precision on Hopper runs in place (row-range quantization, grouped GEMMs), the
  // other cases loop over experts.
  const std::vector<int64_t> cv = {0, 1, 2, 400, 5};
  ASSERT_FALSE(fp4qat::autograd::nvfp4_grouped_linear_pads(at::tensor(cv, at::kLong)));
  expect_grouped_equals_loop(cv, 7);
}

TEST(GpuNVFP4GroupedLinear, ZeroPaddingRowsKeepPerExpertQuantization) {
  FP4QAT_REQUIRE_GPU();
  // What the padded path relies on: one 3-D quantization of [E, Mmax, K] with zero rows after
  // each expert's rows gives the real rows the bytes (and S_dec) of quantizing each slice alone.
  const std::vector<int64_t> cv = {5, 0, 1, 17};
  const int64_t E = 4, Mmax = 17, K = 64;
  const at::Tensor x = randn_cuda({23, K}, 10);
  at::Tensor x_pad = at::zeros({E, Mmax, K}, x.options());
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    x_pad[e].narrow(0, 0, cv[e]).copy_(x.narrow(0, r, cv[e]));
    r += cv[e];
  }
  const fp4qat::NVFP4Operand q = fp4qat::nvfp4_quantize_and_fake(x_pad, Blocks::k1D);
  r = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = cv[e];
    EXPECT_EQ(q.packed.codes[e].narrow(0, n, Mmax - n).count_nonzero().item<int64_t>(), 0) << "expert " << e;
    EXPECT_EQ(q.values[e].narrow(0, n, Mmax - n).count_nonzero().item<int64_t>(), 0) << "expert " << e;
    if (n == 0) {
      EXPECT_EQ(q.packed.s_dec[e].item<float>(), 1.0f) << "amax 0 gives S_dec 1";
      continue;
    }
    const fp4qat::NVFP4Operand qe = fp4qat::nvfp4_quantize_and_fake(x.narrow(0, r, n), Blocks::k1D);
    EXPECT_TRUE(bytes_equal(q.packed.codes[e].narrow(0, 0, n), qe.packed.codes)) << "expert " << e;
    EXPECT_TRUE(bytes_equal(q.packed.scales[e].narrow(0, 0, n), qe.packed.scales)) << "expert " << e;
    EXPECT_TRUE(bytes_equal(q.packed.s_dec[e], qe.packed.s_dec)) << "expert " << e;
    EXPECT_TRUE(bytes_equal(q.values[e].narrow(0, 0, n), qe.values)) << "expert " << e;
    r += n;
  }
}
