// tests/autograd/gpu_nvfp4_linear.cpp — (label gpu) the NVFP4 autograd functions on CUDA:
// forward within fp32 accumulation-order noise of the CPU (exact operands, so at most one bf16
// rounding step apart); high_precision grads equal a plain Linear's on the GPU exactly;
// dequantized grads equal GEMMs on the dequantized operands; grouped equals a loop.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/nvfp4_linear.h"
#include "tests/common/test_util.h"

using fp4qat::Blocks;
using fp4qat::autograd::Backward;
using fp4qat::test::bytes_equal;

namespace {
at::Tensor randn_cuda(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed)).to(at::kBFloat16).cuda();
}
// |a - b| <= 2^-7 |b| + 1e-3 max|b|: one bf16 ulp, or cancellation noise near zero, the effect of
// another fp32 accumulation order.
::testing::AssertionResult close_bf16(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor af = a.cpu().to(at::kFloat), bf = b.cpu().to(at::kFloat);
  const at::Tensor bad = (af - bf).abs() > bf.abs() * (1.0 / 128) + 1e-3 * bf.abs().max();
  if (!bad.any().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad.sum().item<int64_t>() << " elements differ by more than one bf16 ulp";
}
}  // namespace

TEST(GpuNVFP4Linear, ForwardMatchesCpuAndGradsMatchDefinitions) {
  FP4QAT_REQUIRE_GPU();
  for (auto blocks : {Blocks::k1D, Blocks::k2D})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
      const at::Tensor x0 = randn_cuda({300, 256}, 1), w0 = randn_cuda({192, 256}, 2) * 0.05, g = randn_cuda({300, 192}, 3);
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

TEST(GpuNVFP4GroupedLinear, EqualsLoopOnGpu) {
  FP4QAT_REQUIRE_GPU();
  const std::vector<int64_t> cv = {64, 0, 1, 190, 33};
  const at::Tensor counts = at::tensor(cv, at::kLong);
  const at::Tensor x0 = randn_cuda({288, 128}, 4), w0 = randn_cuda({5, 96, 128}, 5) * 0.05, g = randn_cuda({288, 96}, 6);
  for (auto mode : {Backward::kHighPrecision, Backward::kDequantized}) {
    const fp4qat::autograd::NVFP4LinearOptions opt{Blocks::k2D, mode};
    at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, opt);
    y.backward(g);
    int64_t r = 0;
    for (int64_t e = 0; e < 5; ++e) {
      if (cv[e] == 0) {
        EXPECT_EQ(w.grad()[e].abs().sum().item<float>(), 0.0f) << "expert " << e << " got no tokens";
        continue;
      }
      at::Tensor xe = x0.narrow(0, r, cv[e]).clone().requires_grad_(true), we = w0[e].clone().requires_grad_(true);
      at::Tensor ye = fp4qat::autograd::nvfp4_linear(xe, we, opt);
      ye.backward(g.narrow(0, r, cv[e]));
      // One grouped GEMM vs per-expert GEMMs: the same exact operands, another accumulation order.
      EXPECT_TRUE(close_bf16(y.detach().narrow(0, r, cv[e]), ye.detach())) << e;
      EXPECT_TRUE(close_bf16(x.grad().narrow(0, r, cv[e]), xe.grad())) << e;
      EXPECT_TRUE(close_bf16(w.grad()[e], we.grad())) << e;
      r += cv[e];
    }
  }
}
