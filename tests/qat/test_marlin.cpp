// tests/qat/test_marlin.cpp — qat/marlin.h, the weight side of the `marlin` serving profile: the
// scale factor and the flushed blocks on every E4M3 value (the rule tests/engines checks against
// vLLM's own marlin_utils_fp4.py), the Marlin operand, and the QAT forward under the profile
// computing with the flushed weights (cached and uncached) while the export keeps the recipe's bytes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "kernels/common/formats.h"
#include "kernels/quantize.h"
#include "model/qwen3_moe.h"
#include "qat/marlin.h"
#include "qat/policy.h"
#include "tests/common/test_util.h"

using namespace fp4qat;

namespace {
// Every non-negative finite E4M3 byte (0x00 .. 0x7E) as a float8_e4m3fn tensor [127].
at::Tensor all_e4m3() { return at::arange(0, 127, at::kInt).to(at::kByte).view(at::kFloat8_e4m3fn); }
}  // namespace

TEST(Marlin, ScaleFactorIsTheLargestPowerOfTwoKeepingTheMaxWithin448) {
  const at::Tensor all = all_e4m3();
  for (int64_t b = 1; b < 127; ++b) {  // each E4M3 value as the tensor's largest scale
    const float mx = fmt::e4m3_to_float(static_cast<uint8_t>(b));
    const at::Tensor s = at::where(all.view(at::kByte) <= b, all.view(at::kByte), at::zeros({}, at::kByte))
                             .view(at::kFloat8_e4m3fn);
    const double sf = qat::marlin_scale_factor(s);
    SCOPED_TRACE(::testing::Message() << "max " << mx);
    EXPECT_EQ(std::exp2(std::round(std::log2(sf))), sf);  // a power of two
    EXPECT_GE(sf, 1.0);
    EXPECT_LE(mx * sf, 448.0);
    if (sf > 1 || mx * 2 <= 448) {
      EXPECT_GT(mx * sf * 2, 448.0);  // the largest one (1 when max > 224)
    }
  }
  EXPECT_EQ(qat::marlin_scale_factor(at::zeros({4, 8}, at::kByte).view(at::kFloat8_e4m3fn)), 1.0);  // no scale
}

TEST(Marlin, BlocksWithScaleBelowTwoToTheMinusSixAreFlushed) {
  const at::Tensor all = all_e4m3();
  for (const double sf : {1.0, 2.0, 8.0, 1024.0}) {
    const at::Tensor kept = qat::marlin_kept_blocks(all, sf);
    for (int64_t b = 0; b < 127; ++b) {
      const double v = fmt::e4m3_to_float(static_cast<uint8_t>(b)) * sf;
      // vLLM: half(sb * sf) * 2^7 < 2 -> 0 (E4M3 and its multiples by sf are exact in half here).
      EXPECT_EQ(kept[b].item<bool>(), v == 0 || v * 128 >= 2) << "byte " << b << " sf " << sf;
    }
  }
  // With sf = 1 exactly E4M3's subnormals (bytes 1..7) go.
  EXPECT_EQ(qat::marlin_kept_blocks(all, 1.0).logical_not().sum().item<int64_t>(), 7);
  EXPECT_THROW(qat::marlin_kept_blocks(all, 3.0), Error);
}

TEST(Marlin, OperandZeroesFlushedBlocksAndRoundsTheGlobalScaleToBf16) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  // [2, 8, 64]: per-expert amax; blocks scaled down by up to 2^-14 so that some scales are subnormal.
  const at::Tensor w = (at::randn({2, 8, 4, 16}, gen) * at::exp2(-20 * at::rand({2, 8, 4, 1}, gen)))
                           .reshape({2, 8, 64})
                           .to(at::kBFloat16);
  const NVFP4Operand q = nvfp4_quantize_and_fake(w, Blocks::k1D);
  const double sf = qat::marlin_scale_factor(q.packed.scales);
  EXPECT_EQ(sf, 1.0);  // per-expert amax: the largest scale of each expert is 448
  const at::Tensor kept = qat::marlin_kept_blocks(q.packed.scales, sf);  // [2, 8, 4]
  const int64_t flushed = kept.logical_not().sum().item<int64_t>();
  ASSERT_GT(flushed, 0) << "the test needs subnormal block scales";
  ASSERT_LT(flushed, kept.numel());
  const NVFP4Operand m = qat::marlin_operand(q, sf);
  const at::Tensor kv = kept.unsqueeze(-1).expand({2, 8, 4, 16}).reshape({2, 8, 64});
  EXPECT_TRUE(test::bytes_equal(m.values, at::where(kv, q.values, at::zeros({}, q.values.options()))));
  EXPECT_TRUE(test::bytes_equal(m.packed.codes, q.packed.codes));
  EXPECT_TRUE(test::bytes_equal(m.packed.scales.view(at::kByte),
                                at::where(kept, q.packed.scales.view(at::kByte), at::zeros({}, at::kByte))));
  for (int64_t e = 0; e < 2; ++e) {
    const float s = q.packed.s_dec[e].item<float>(), got = m.packed.s_dec[e].item<float>();
    EXPECT_EQ(got, c10::BFloat16(s).operator float()) << "expert " << e;
  }
  // The dequantized backward reads the packed operand: it decodes to the forward's values (a
  // flushed block's negative codes decode to -0 there: equal as numbers).
  const at::Tensor deq =
      nvfp4_dequantize({m.packed.codes, m.packed.scales, at::ones({2}), Blocks::k1D}, at::kBFloat16);
  EXPECT_TRUE(at::equal(deq.to(at::kFloat), m.values.to(at::kFloat)));
  EXPECT_FALSE(at::equal(deq.to(at::kFloat), q.values.to(at::kFloat)));
}

// The QAT forward under the marlin profile computes with Marlin's weights: an input that reaches only
// a flushed block's columns gives exactly 0, where the plain W4A16 forward does not; cached and
// uncached quantization agree; the cached quantization the export writes keeps the recipe's bytes.
TEST(Marlin, QatForwardUsesTheFlushedWeightsAndTheExportKeepsTheRecipes) {
  model::ModelConfig mc;
  mc.hidden_size = 64;
  mc.num_hidden_layers = 1;
  mc.head_dim = 16;
  mc.moe_intermediate_size = 32;
  mc.num_experts = 2;
  mc.vocab_size = 16;
  model::Qwen3Moe model(mc, 1);
  const std::string p = "model.layers.0.mlp.experts.gate_up_proj";
  {
    torch::NoGradGuard ng;
    at::Tensor w = model.param(p);  // [2, 64, 64]: columns 16..31 1e-5 of the rest: block scales
    // at most 448e-5, below 2^-6 (flushed by Marlin) and mostly above 2^-10 (kept by the recipe)
    w.narrow(2, 16, 16).mul_(1e-5);
  }
  qat::Recipe r;
  r.format = qat::Format::kNVFP4;
  r.serving = qat::Serving::kMarlin;
  qat::Recipe plain = r;
  plain.serving = qat::Serving::kFp4qat;
  plain.activations = qat::Activations::kBF16;  // W4A16 without the Marlin weights
  const at::Tensor w = model.param(p);
  const at::Tensor x = at::zeros({6, 64}, at::kBFloat16);
  x.narrow(1, 16, 16).fill_(1.0);
  const at::Tensor counts = at::tensor(std::vector<int64_t>{3, 3}, at::kLong);
  torch::NoGradGuard ng;
  for (const bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "cached" : "uncached");
    r.cache_weights = plain.cache_weights = cache;
    qat::QatPolicy pm(r, model), pp(plain, model);
    const at::Tensor ym = pm.grouped(p, x, w, counts), yp = pp.grouped(p, x, w, counts);
    EXPECT_EQ(ym.abs().max().item<float>(), 0.0f) << "Marlin flushes those blocks";
    EXPECT_GT(yp.abs().max().item<float>(), 0.0f) << "the recipe's own weights keep them";
    if (cache) {  // what the export writes: the recipe's quantization, not Marlin's
      const NVFP4Operand* q = pm.weight_quantization(p, w);
      ASSERT_NE(q, nullptr);
      const NVFP4Operand ref = nvfp4_quantize_and_fake(w.to(at::kBFloat16), Blocks::k1D);
      EXPECT_TRUE(test::bytes_equal(q->packed.scales.view(at::kByte), ref.packed.scales.view(at::kByte)));
      EXPECT_TRUE(test::bytes_equal(q->packed.s_dec, ref.packed.s_dec));
    }
  }
}
