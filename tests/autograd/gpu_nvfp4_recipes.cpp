// tests/autograd/gpu_nvfp4_recipes.cpp — (label gpu) the 2026 recipes (Four Over Six, row-scaled
// activations, W4A16) and the flashinfer_static profile's static activation amax (below the inputs'
// max: saturating blocks) through the NVFP4 autograd functions on CUDA: the per-row scaled GEMM
// (gemm::scaled_mm_rows) equals the CPU's bytes on exactly summable operands; the forward is within
// fp32 accumulation-order noise of the CPU; the gradients equal their definitions on the GPU; grouped
// (in place, one grouped GEMM) is within accumulation-order noise of a loop of single-expert calls.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/cuda/CUDAContext.h>

#include "autograd/nvfp4_linear.h"
#include "kernels/bench_hooks.h"
#include "kernels/gemm/scaled_bmm.h"
#include "tests/autograd/linear_util.h"
#include "tests/common/test_util.h"

using fp4qat::Blocks;
using fp4qat::NVFP4Rule;
using fp4qat::autograd::Backward;
using fp4qat::autograd::NVFP4LinearOptions;
using fp4qat::test::bytes_equal;
using fp4qat::test::close_bf16;
using fp4qat::test::randn_cuda;

namespace {

std::vector<std::pair<const char*, NVFP4LinearOptions>> recipes(Blocks blocks, Backward mode) {
  auto o = [&](NVFP4Rule w, NVFP4Rule a, bool act) {
    NVFP4LinearOptions r{blocks, mode};
    r.rules.weights = w;
    r.rules.activations = a;
    r.rules.w4a16 = !act;
    return r;
  };
  const NVFP4Rule four{true, 256.0f, false, false}, rows{false, 256.0f, false, true},
      four_rows{true, 256.0f, false, true};
  NVFP4LinearOptions stat = o({}, {}, true);
  stat.activation_amax = at::full({}, 1.5f, at::TensorOptions(at::kCUDA).dtype(at::kFloat));
  return {{"4over6 all", o(four, four, true)},
          {"row-scaled", o({}, rows, true)},
          {"4over6 + row-scaled", o(four, four_rows, true)},
          {"W4A16", o({}, {}, false)},
          {"static activation amax 1.5", stat}};
}

// The options with the static activation amax (if any) on the CPU, and that amax for nvfp4_quantize.
NVFP4LinearOptions on_cpu(NVFP4LinearOptions o) {
  if (o.activation_amax.defined()) o.activation_amax = o.activation_amax.cpu();
  return o;
}
std::optional<at::Tensor> act_amax(const NVFP4LinearOptions& o, const at::Tensor& x) {
  if (!o.activation_amax.defined()) return std::nullopt;
  return o.activation_amax.to(x.device());
}

}  // namespace

TEST(GpuNVFP4Recipes, ScaledMmRowsEqualsCpu) {
  FP4QAT_REQUIRE_GPU();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  // Small integers: every partial sum is exact in fp32, so any accumulation order gives the same.
  const at::Tensor a = at::randint(-8, 9, {77, 96}, gen).to(at::kBFloat16);
  const at::Tensor w = at::randint(-8, 9, {40, 96}, gen).to(at::kBFloat16);
  const at::Tensor alpha = at::rand({77}, gen) * 1e-3;
  for (auto out : {at::kBFloat16, at::kFloat}) {
    const at::Tensor want = fp4qat::gemm::scaled_mm_rows(a, w, alpha, out);
    EXPECT_TRUE(bytes_equal(fp4qat::gemm::scaled_mm_rows(a.cuda(), w.cuda(), alpha.cuda(), out), want)) << out;
  }
}

TEST(GpuNVFP4Recipes, ForwardMatchesCpuAndGradsMatchDefinitions) {
  FP4QAT_REQUIRE_GPU();
  for (auto blocks : {Blocks::k1D, Blocks::k2D})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
      for (const auto& [name, opt] : recipes(blocks, mode)) {
        SCOPED_TRACE(::testing::Message()
                     << name << " " << fp4qat::to_string(blocks) << " " << fp4qat::autograd::to_string(mode));
        const at::Tensor x0 = randn_cuda({300, 256}, 1), w0 = randn_cuda({192, 256}, 2) * 0.05,
                         g = randn_cuda({300, 192}, 3);
        at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
        at::Tensor y = fp4qat::autograd::nvfp4_linear(x, w, opt);
        y.backward(g);
        EXPECT_TRUE(close_bf16(y, fp4qat::autograd::nvfp4_linear(x0.cpu(), w0.cpu(), on_cpu(opt))));
        at::Tensor xs = x0, ws = w0;
        if (mode == Backward::kDequantized) {
          ws = fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(w0, blocks, std::nullopt, opt.rules.weights),
                                        at::kBFloat16);
          if (!opt.rules.w4a16)
            xs = fp4qat::nvfp4_dequantize(
                fp4qat::nvfp4_quantize(x0, Blocks::k1D, act_amax(opt, x0), opt.rules.activations), at::kBFloat16);
        }
        EXPECT_TRUE(bytes_equal(x.grad(), g.mm(ws)));
        EXPECT_TRUE(bytes_equal(w.grad(), xs.t().mm(g).t()));
      }
}

// The grouped function on CUDA runs every recipe in place (kernels/gemm/scaled_bmm.h: the grouped
// GEMM with alpha per expert, or per row for row-scaled activations; at::_grouped_mm backward):
// the kernel that ran is the expected one, and forward and gradients are within fp32
// accumulation-order noise of a loop of single-expert calls and of their definitions (dequantized:
// the operands rebuilt from each expert's own quantization under the recipe's rules); an expert
// without tokens gets dW = 0. Unequal and equal counts.
TEST(GpuNVFP4Recipes, GroupedEqualsLoopOfSingleExpertCalls) {
  FP4QAT_REQUIRE_GPU();
  const int64_t K = 128, N = 64;
  for (const auto& counts_v : std::vector<std::vector<int64_t>>{{40, 0, 1, 170, 0, 33}, {64, 64, 64}})
    for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
      for (const auto& [name, opt] : recipes(Blocks::k2D, mode)) {
        const int64_t E = static_cast<int64_t>(counts_v.size());
        int64_t T = 0;
        for (int64_t c : counts_v) T += c;
        SCOPED_TRACE(::testing::Message() << name << " " << fp4qat::autograd::to_string(mode) << " E " << E);
        const at::Tensor counts = at::tensor(counts_v, at::kLong);
        const at::Tensor x0 = randn_cuda({T, K}, 10), w0 = randn_cuda({E, N, K}, 11) * 0.1, g = randn_cuda({T, N}, 12);
        at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
        at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, opt);
#ifdef FP4QAT_WITH_CUTLASS
        if (at::cuda::getCurrentDeviceProperties()->major == 9) {
          const std::string ran = fp4qat::gemm::last_grouped_kernel();
          if (opt.rules.activations.row_scaled && !opt.rules.w4a16)
            EXPECT_TRUE(ran == "grouped_rows" || ran == "batched_rows") << ran;
          else
            EXPECT_TRUE(ran == "grouped" || ran == "batched") << ran;
        }
#endif
        y.backward(g);
        fp4qat::test::expect_grouped_equals_per_expert(
            y, x.grad(), w.grad(), counts_v,
            [&](int64_t e, int64_t r, int64_t n) {
              const at::Tensor x0e = x0.narrow(0, r, n), ge = g.narrow(0, r, n);
              fp4qat::test::LinearGrads s = fp4qat::test::run_nvfp4_linear(x0e, w0[e], ge, opt);
              s.g = ge, s.xs = x0e, s.ws = w0[e];
              if (mode == Backward::kDequantized) {
                s.ws = fp4qat::nvfp4_dequantize(
                    fp4qat::nvfp4_quantize(w0[e], Blocks::k2D, std::nullopt, opt.rules.weights), at::kBFloat16);
                if (!opt.rules.w4a16)
                  s.xs = fp4qat::nvfp4_dequantize(
                      fp4qat::nvfp4_quantize(x0e, Blocks::k1D, act_amax(opt, x0e), opt.rules.activations),
                      at::kBFloat16);
              }
              return s;
            },
            fp4qat::test::Agree::kCloseBf16);
      }
}
