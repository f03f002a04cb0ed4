// tests/autograd/test_nvfp4_linear.cpp — autograd/nvfp4_linear.h on the CPU (qat.md):
// forward equals "quantize both operands with the reference, dequantize, fp32 GEMM, times alpha"
// exactly; high_precision grads equal a plain Linear's exactly; dequantized grads equal GEMMs on
// the dequantized operands exactly; grouped equals a loop of single-expert calls (zero- and
// one-token experts included); the two modes differ; a shared amax is honoured.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/nvfp4_linear.h"
#include "kernels/common/check.h"
#include "tests/autograd/linear_util.h"
#include "tests/common/test_util.h"

using fp4qat::Blocks;
using fp4qat::autograd::Backward;
using fp4qat::autograd::NVFP4LinearOptions;
using fp4qat::test::bytes_equal;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dt = at::kBFloat16) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed)).to(dt);
}

// Reference forward from the quantizer's packed output (an independent route from fake-quant).
at::Tensor reference_forward(const at::Tensor& x2, const at::Tensor& w, Blocks blocks,
                             const std::optional<at::Tensor>& w_amax = std::nullopt) {
  auto qx = fp4qat::nvfp4_quantize(x2, Blocks::k1D);
  auto qw = fp4qat::nvfp4_quantize(w, blocks, w_amax);
  const at::Tensor alpha = qx.s_dec * qw.s_dec;
  qx.s_dec = at::ones_like(qx.s_dec);
  qw.s_dec = at::ones_like(qw.s_dec);
  const at::Tensor a = fp4qat::nvfp4_dequantize(qx, at::kFloat), b = fp4qat::nvfp4_dequantize(qw, at::kFloat);
  return at::mm(a, b.t()).mul_(alpha).to(x2.scalar_type());
}

at::Tensor dequantized(const at::Tensor& t, Blocks blocks, at::ScalarType dt,
                       const std::optional<at::Tensor>& amax = std::nullopt) {
  return fp4qat::nvfp4_dequantize(fp4qat::nvfp4_quantize(t, blocks, amax), dt);
}

using Grads = fp4qat::test::LinearGrads;

using fp4qat::test::run_nvfp4_linear;

}  // namespace

TEST(NVFP4Linear, ForwardEqualsReferenceExactly) {
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
      const at::Tensor x = randn({37, 64}, 1, dt), w = randn({48, 64}, 2, dt) * 0.1;
      const at::Tensor y = fp4qat::autograd::nvfp4_linear(x, w, {blocks, Backward::kHighPrecision});
      EXPECT_TRUE(bytes_equal(y, reference_forward(x, w, blocks))) << dt << " " << fp4qat::to_string(blocks);
      // and it is the quantized product, not the bf16 one
      EXPECT_FALSE(at::equal(y, at::linear(x, w)));
    }
}

TEST(NVFP4Linear, LeadingDimensionsAreFlattened) {
  const at::Tensor x = randn({2, 5, 32}, 3), w = randn({16, 32}, 4);
  const NVFP4LinearOptions opt;
  const at::Tensor y3 = fp4qat::autograd::nvfp4_linear(x, w, opt);
  EXPECT_EQ(y3.sizes(), (std::vector<int64_t>{2, 5, 16}));
  EXPECT_TRUE(bytes_equal(y3.reshape({10, 16}), fp4qat::autograd::nvfp4_linear(x.reshape({10, 32}), w, opt)));
}

TEST(NVFP4Linear, HighPrecisionGradsEqualPlainLinear) {
  for (auto dt : {at::kBFloat16, at::kFloat}) {
    const at::Tensor x0 = randn({29, 96}, 5, dt), w0 = randn({40, 96}, 6, dt), g = randn({29, 40}, 7, dt);
    const Grads q = run_nvfp4_linear(x0, w0, g, {Blocks::k2D, Backward::kHighPrecision});
    at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::linear(x, w).backward(g);
    EXPECT_TRUE(bytes_equal(q.dx, x.grad())) << dt;
    EXPECT_TRUE(bytes_equal(q.dw, w.grad())) << dt;
  }
}

TEST(NVFP4Linear, DequantizedGradsUseTheDequantizedOperands) {
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
      const at::Tensor x0 = randn({33, 64}, 8, dt), w0 = randn({24, 64}, 9, dt), g = randn({33, 24}, 10, dt);
      const Grads q = run_nvfp4_linear(x0, w0, g, {blocks, Backward::kDequantized});
      const at::Tensor xdq = dequantized(x0, Blocks::k1D, dt), wdq = dequantized(w0, blocks, dt);
      EXPECT_TRUE(bytes_equal(q.dx, g.mm(wdq))) << dt;
      EXPECT_TRUE(bytes_equal(q.dw, xdq.t().mm(g).t())) << dt;
      // Same forward in both modes; different gradients (a mode switch that does nothing fails).
      const Grads h = run_nvfp4_linear(x0, w0, g, {blocks, Backward::kHighPrecision});
      EXPECT_TRUE(bytes_equal(q.y, h.y));
      EXPECT_FALSE(at::equal(q.dx, h.dx));
      EXPECT_FALSE(at::equal(q.dw, h.dw));
    }
}

TEST(NVFP4Linear, SharedAmaxOfAGatedPair) {
  const at::Tensor x = randn({8, 32}, 11), gate = randn({16, 32}, 12) * 0.5, up = randn({16, 32}, 13) * 2.0;
  const at::Tensor shared = at::maximum(fp4qat::global_amax(gate), fp4qat::global_amax(up));
  const NVFP4LinearOptions opt{Blocks::k1D, Backward::kDequantized};
  EXPECT_TRUE(bytes_equal(fp4qat::nvfp4_quantize_and_fake(gate, Blocks::k1D, shared).packed.s_dec,
                          fp4qat::nvfp4_quantize_and_fake(up, Blocks::k1D, shared).packed.s_dec));
  const at::Tensor y = fp4qat::autograd::nvfp4_linear(x, gate, opt, shared);
  EXPECT_TRUE(bytes_equal(y, reference_forward(x, gate, Blocks::k1D, shared)));
  EXPECT_FALSE(at::equal(y, fp4qat::autograd::nvfp4_linear(x, gate, opt)));  // gate's own amax is smaller
  // The dequantized backward uses the weight as quantized with the shared amax.
  const at::Tensor g = randn({8, 16}, 14);
  const Grads q = run_nvfp4_linear(x, gate, g, opt, shared);
  EXPECT_TRUE(bytes_equal(q.dx, g.mm(dequantized(gate, Blocks::k1D, at::kBFloat16, shared))));
}

TEST(NVFP4GroupedLinear, EqualsLoopOfSingleExpertCalls) {
  const std::vector<int64_t> counts_v = {5, 0, 1, 17, 0, 3};  // zero- and one-token experts
  const int64_t E = 6, T = 26, K = 64, N = 32;
  const at::Tensor counts = at::tensor(counts_v, at::kLong);
  for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
    for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
      SCOPED_TRACE(::testing::Message() << fp4qat::autograd::to_string(mode) << " " << fp4qat::to_string(blocks));
      const at::Tensor x0 = randn({T, K}, 20), w0 = randn({E, N, K}, 21) * 0.1, g = randn({T, N}, 22);
      const NVFP4LinearOptions opt{blocks, mode};
      at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, opt);
      y.backward(g);
      fp4qat::test::expect_grouped_equals_per_expert(
          y, x.grad(), w.grad(), counts_v, [&](int64_t e, int64_t r, int64_t n) {
            return run_nvfp4_linear(x0.narrow(0, r, n), w0[e], g.narrow(0, r, n), opt);
          });
    }
}

TEST(NVFP4GroupedLinear, PerExpertActivationAmax) {
  // Expert 1's tokens are 1000x larger: with a shared activation amax expert 0 would lose its
  // precision; per-expert amax keeps each slice's own scale.
  const at::Tensor counts = at::tensor(std::vector<int64_t>{4, 4}, at::kLong);
  at::Tensor x = randn({8, 32}, 30);
  x.narrow(0, 4, 4).mul_(1000);
  const at::Tensor w = randn({2, 16, 32}, 31);
  const at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, {});
  EXPECT_TRUE(bytes_equal(y.narrow(0, 0, 4), reference_forward(x.narrow(0, 0, 4), w[0], Blocks::k1D)));
}

TEST(NVFP4GroupedLinear, PaddedPathChoice) {
  // The CUDA path pads when E * max(counts) <= 2 * T + 128 (and T > 0); else it loops.
  const auto pads = [](std::vector<int64_t> c) {
    return fp4qat::autograd::nvfp4_grouped_linear_pads(at::tensor(c, at::kLong));
  };
  EXPECT_TRUE(pads({1024, 1024, 1024, 1024}));  // uniform routing
  EXPECT_TRUE(pads({64, 0, 1, 90, 33, 100}));
  EXPECT_FALSE(pads({0, 1, 2, 400, 5}));  // one expert takes nearly everything
  EXPECT_TRUE(pads({64, 0, 0, 0}));       // 4 * 64 == 2 * 64 + 128: the boundary pads
  EXPECT_FALSE(pads({65, 0, 0, 0}));
  EXPECT_FALSE(pads({0, 0, 0}));  // no tokens
  EXPECT_THROW(pads({3, -1}), fp4qat::Error);
}

TEST(NVFP4GroupedLinear, ZeroPaddingRowsKeepPerExpertQuantization) {
  // What the CUDA padded path relies on: one 3-D quantization of [E, Mmax, K] with zero rows after
  // each expert's rows gives the real rows the bytes (and S_dec) of quantizing each slice alone.
  const std::vector<int64_t> cv = {5, 0, 1, 17};
  const int64_t E = 4, Mmax = 17, K = 64;
  const at::Tensor x = randn({23, K}, 40);
  at::Tensor x_pad = at::zeros({E, Mmax, K}, x.options());
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    x_pad[e].narrow(0, 0, cv[e]).copy_(x.narrow(0, r, cv[e]));
    r += cv[e];
  }
  const fp4qat::NVFP4Tensor q = fp4qat::nvfp4_quantize(x_pad, Blocks::k1D);
  r = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = cv[e];
    EXPECT_EQ(q.codes[e].narrow(0, n, Mmax - n).count_nonzero().item<int64_t>(), 0) << "expert " << e;
    if (n == 0) continue;
    const fp4qat::NVFP4Tensor qe = fp4qat::nvfp4_quantize(x.narrow(0, r, n), Blocks::k1D);
    EXPECT_TRUE(bytes_equal(q.codes[e].narrow(0, 0, n), qe.codes)) << "expert " << e;
    EXPECT_TRUE(bytes_equal(q.scales[e].narrow(0, 0, n), qe.scales)) << "expert " << e;
    EXPECT_TRUE(bytes_equal(q.s_dec[e], qe.s_dec)) << "expert " << e;
    r += n;
  }
}

TEST(NVFP4Linear, BadArguments) {
  const NVFP4LinearOptions opt;
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(randn({4, 32}, 1), randn({8, 48}, 2), opt), fp4qat::Error);
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(randn({4, 32}, 1), randn({8, 32}, 2, at::kFloat), opt), fp4qat::Error);
  EXPECT_THROW(fp4qat::autograd::nvfp4_grouped_linear(randn({4, 32}, 1), randn({2, 8, 32}, 2),
                                                      at::tensor(std::vector<int64_t>{1, 2}, at::kLong), opt),
               fp4qat::Error);  // counts sum to 3, not 4
  EXPECT_THROW(fp4qat::autograd::parse_backward("stochastic"), fp4qat::Error);
}

// A weight quantized before the call (w_quantized) gives the same output and gradients, byte for
// byte, as quantizing it in the call — both functions, both backward modes, own and shared amax;
// a pre-quantized weight of another shape is refused with the function named.
TEST(NVFP4Linear, PrequantizedWeightEqualsQuantizingInTheCall) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
  for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
    for (bool shared : {false, true}) {
      SCOPED_TRACE(::testing::Message() << fp4qat::autograd::to_string(mode) << (shared ? " shared amax" : ""));
      const NVFP4LinearOptions opt{Blocks::k1D, mode};
      const at::Tensor x0 = at::randn({20, 64}, gen), w0 = at::randn({48, 64}, gen) * 0.1, g = at::randn({20, 48}, gen);
      const std::optional<at::Tensor> amax =
          shared ? std::optional<at::Tensor>(fp4qat::global_amax(w0) * 2) : std::nullopt;
      const fp4qat::NVFP4Operand q = fp4qat::nvfp4_quantize_and_fake(w0, Blocks::k1D, amax);
      at::Tensor xa = x0.clone().requires_grad_(true), wa = w0.clone().requires_grad_(true);
      at::Tensor xb = x0.clone().requires_grad_(true), wb = w0.clone().requires_grad_(true);
      const at::Tensor ya = fp4qat::autograd::nvfp4_linear(xa, wa, opt, amax);
      const at::Tensor yb = fp4qat::autograd::nvfp4_linear(xb, wb, opt, std::nullopt, &q);
      ya.backward(g);
      yb.backward(g);
      EXPECT_TRUE(bytes_equal(ya, yb));
      EXPECT_TRUE(bytes_equal(xa.grad(), xb.grad()));
      EXPECT_TRUE(bytes_equal(wa.grad(), wb.grad()));
      // grouped
      const at::Tensor counts = at::tensor(std::vector<int64_t>{7, 0, 13}, at::kLong);
      const at::Tensor w3 = at::randn({3, 48, 64}, gen) * 0.1;
      const fp4qat::NVFP4Operand q3 = fp4qat::nvfp4_quantize_and_fake(w3, Blocks::k1D);
      at::Tensor xc = x0.clone().requires_grad_(true), wc = w3.clone().requires_grad_(true);
      at::Tensor xd = x0.clone().requires_grad_(true), wd = w3.clone().requires_grad_(true);
      const at::Tensor yc = fp4qat::autograd::nvfp4_grouped_linear(xc, wc, counts, opt);
      const at::Tensor yd = fp4qat::autograd::nvfp4_grouped_linear(xd, wd, counts, opt, std::nullopt, &q3);
      yc.backward(g);
      yd.backward(g);
      EXPECT_TRUE(bytes_equal(yc, yd));
      EXPECT_TRUE(bytes_equal(xc.grad(), xd.grad()));
      EXPECT_TRUE(bytes_equal(wc.grad(), wd.grad()));
      try {
        fp4qat::autograd::nvfp4_grouped_linear(x0, w3.narrow(1, 0, 32), counts, opt, std::nullopt, &q3);
        ADD_FAILURE() << "a pre-quantized weight of another shape was accepted";
      } catch (const fp4qat::Error& e) {
        EXPECT_NE(std::string(e.what()).find("nvfp4_grouped_linear"), std::string::npos) << e.what();
      }
    }
}

// ---- The 2026 recipes (issue 20): Four Over Six, row-scaled activations, W4A16 ------------------
namespace {

struct RecipeCase {
  const char* name;
  NVFP4LinearOptions opt;
};

std::vector<RecipeCase> recipe_cases(Blocks blocks, Backward mode) {
  const fp4qat::NVFP4Rule four{true, 256.0f, false, false}, four448mse{true, 448.0f, true, false};
  const fp4qat::NVFP4Rule rows{false, 256.0f, false, true}, four_rows{true, 256.0f, false, true};
  auto o = [&](fp4qat::NVFP4Rule w, fp4qat::NVFP4Rule a, bool act) {
    NVFP4LinearOptions r{blocks, mode};
    r.rules.weights = w;
    r.rules.activations = a;
    r.rules.w4a16 = !act;
    return r;
  };
  // The flashinfer_static profile: one static activation amax, below most rows' max (saturating).
  NVFP4LinearOptions stat = o(four, {}, true);
  stat.activation_amax = at::full({}, 2.0f, at::kFloat);
  return {{"4over6 weights", o(four, {}, true)},
          {"4over6 all (448, mse)", o(four448mse, four448mse, true)},
          {"row-scaled activations", o({}, rows, true)},
          {"4over6 + row-scaled", o(four, four_rows, true)},
          {"W4A16", o({}, {}, false)},
          {"W4A16 4over6 weights", o(four, {}, false)},
          {"static activation amax (4over6 weights)", stat}};
}

// The definition (numerics.md): activations quantized by their rule (S_dec [] or [M]) or left as
// they are (W4A16), weights by theirs; fp32 GEMM of the exact operands; alpha = S_dec_x * S_dec_w
// (per row), one multiply, one rounding. Also returns the operands the dequantized backward uses.
struct Definition {
  at::Tensor y, x_used, w_used;
};
Definition definition(const at::Tensor& x, const at::Tensor& w, const NVFP4LinearOptions& opt) {
  auto qw = fp4qat::nvfp4_quantize(w, opt.weight_blocks, std::nullopt, opt.rules.weights);
  Definition d;
  d.w_used = fp4qat::nvfp4_dequantize(qw, x.scalar_type());
  const at::Tensor s_w = qw.s_dec;
  qw.s_dec = at::ones_like(qw.s_dec);
  const at::Tensor b = fp4qat::nvfp4_dequantize(qw, at::kFloat);
  at::Tensor a, alpha;
  if (!opt.rules.w4a16) {
    const std::optional<at::Tensor> amax =
        opt.activation_amax.defined() ? std::optional<at::Tensor>(opt.activation_amax) : std::nullopt;
    auto qx = fp4qat::nvfp4_quantize(x, Blocks::k1D, amax, opt.rules.activations);
    d.x_used = fp4qat::nvfp4_dequantize(qx, x.scalar_type());
    alpha = qx.s_dec * s_w;
    qx.s_dec = at::ones_like(qx.s_dec);
    a = fp4qat::nvfp4_dequantize(qx, at::kFloat);
  } else {
    d.x_used = x;
    a = x.to(at::kFloat);
    alpha = s_w;
  }
  d.y = at::mm(a, b.t()).mul_(alpha.dim() == 1 ? alpha.unsqueeze(1) : alpha).to(x.scalar_type());
  return d;
}

}  // namespace

TEST(NVFP4Recipes, ForwardAndGradsEqualTheDefinition) {
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (auto blocks : {Blocks::k1D, Blocks::k2D})
      for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
        for (const auto& c : recipe_cases(blocks, mode)) {
          SCOPED_TRACE(::testing::Message() << c.name << " " << dt << " " << fp4qat::to_string(blocks) << " "
                                            << fp4qat::autograd::to_string(mode));
          // Rows of very different magnitudes: a row-scaled recipe differs from a per-tensor one.
          const at::Tensor x0 = randn({21, 64}, 30, dt) * at::exp(randn({21, 1}, 31, at::kFloat) * 3).to(dt);
          const at::Tensor w0 = randn({24, 64}, 32, dt) * 0.1, g = randn({21, 24}, 33, dt);
          const Grads q = run_nvfp4_linear(x0, w0, g, c.opt);
          const Definition d = definition(x0, w0, c.opt);
          EXPECT_TRUE(bytes_equal(q.y, d.y));
          const bool deq = mode == Backward::kDequantized;
          EXPECT_TRUE(bytes_equal(q.dx, g.mm(deq ? d.w_used : w0)));
          EXPECT_TRUE(bytes_equal(q.dw, (deq ? d.x_used : x0).t().mm(g).t()));
          // The recipe is really applied: it differs from the 2024 recipe's forward.
          EXPECT_FALSE(at::equal(q.y, fp4qat::autograd::nvfp4_linear(x0, w0, {blocks, mode})));
          // The rollout's forward on the weights as exported equals the trainer's.
          const auto qw = fp4qat::nvfp4_quantize_and_fake(w0, blocks, std::nullopt, c.opt.rules.weights);
          EXPECT_TRUE(bytes_equal(fp4qat::autograd::nvfp4_linear_forward(x0, qw.values, qw.packed.s_dec, c.opt), q.y));
        }
}

TEST(NVFP4Recipes, GroupedEqualsLoopOfSingleExpertCalls) {
  const std::vector<int64_t> counts_v = {5, 0, 1, 17, 0, 3};
  const int64_t E = 6, T = 26, K = 64, N = 32;
  const at::Tensor counts = at::tensor(counts_v, at::kLong);
  for (auto mode : {Backward::kHighPrecision, Backward::kDequantized})
    for (const auto& c : recipe_cases(Blocks::k2D, mode)) {
      SCOPED_TRACE(::testing::Message() << c.name << " " << fp4qat::autograd::to_string(mode));
      const at::Tensor x0 = randn({T, K}, 40) * at::exp(randn({T, 1}, 41, at::kFloat) * 2).to(at::kBFloat16);
      const at::Tensor w0 = randn({E, N, K}, 42) * 0.1, g = randn({T, N}, 43);
      at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(x, w, counts, c.opt);
      y.backward(g);
      fp4qat::test::expect_grouped_equals_per_expert(
          y, x.grad(), w.grad(), counts_v, [&](int64_t e, int64_t r, int64_t n) {
            return run_nvfp4_linear(x0.narrow(0, r, n), w0[e], g.narrow(0, r, n), c.opt);
          });
      const auto qw = fp4qat::nvfp4_quantize_and_fake(w0, Blocks::k2D, std::nullopt, c.opt.rules.weights);
      EXPECT_TRUE(bytes_equal(fp4qat::autograd::nvfp4_grouped_forward(x0, qw.values, qw.packed.s_dec, counts, c.opt),
                              y.detach()));
    }
}

TEST(NVFP4Recipes, BadOptionsAreRefused) {
  const at::Tensor x = randn({4, 32}, 50), w = randn({8, 32}, 51);
  NVFP4LinearOptions rows_w;
  rows_w.rules.weights.row_scaled = true;
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(x, w, rows_w), fp4qat::Error);
  NVFP4LinearOptions stat_rows;  // a static amax with row-scaled activations, or W4A16, or of two values
  stat_rows.activation_amax = at::full({}, 1.0f);
  stat_rows.rules.activations.row_scaled = true;
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(x, w, stat_rows), fp4qat::Error);
  stat_rows.rules.activations.row_scaled = false;
  stat_rows.rules.w4a16 = true;
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(x, w, stat_rows), fp4qat::Error);
  stat_rows.rules.w4a16 = false;
  stat_rows.activation_amax = at::ones({2});
  EXPECT_THROW(fp4qat::autograd::nvfp4_linear(x, w, stat_rows), fp4qat::Error);
  NVFP4LinearOptions w4a16_rows;
  w4a16_rows.rules.w4a16 = true;
  w4a16_rows.rules.activations.row_scaled = true;
  try {
    fp4qat::autograd::nvfp4_linear(x, w, w4a16_rows);
    ADD_FAILURE() << "W4A16 with row-scaled activations was accepted";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("W4A16"), std::string::npos) << e.what();
  }
}
