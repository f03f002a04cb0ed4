// tests/kernels/test_4over6_ref.cpp — kernels/nvfp4/quantize_4over6_ref.h against the outputs of
// TransformerEngine's own reference quantizer (tests/data/vectors/te: Four Over Six with M 448
// and 256, MAE and MSE, 1x16 and 16x16; row-scaled global scales with and without 4over6), byte
// for byte, through the reference and through kernels/quantize.h; the standard-rule outputs of the
// same files; and what the vectors are thin on: a tie between the 4 and 6 candidates keeps 6,
// all-zero rows, underflowing blocks, stacked experts, a given (shared) amax, row groups, the
// per-row dequantization, refused rules.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/nvfp4/quantize_4over6_ref.h"
#include "kernels/quantize.h"
#include "tests/common/test_util.h"

using fp4qat::test::bytes_equal;

namespace {

at::Tensor bytes_of(const std::vector<uint8_t>& v, std::vector<int64_t> shape) {
  return at::from_blob(const_cast<uint8_t*>(v.data()), shape, at::kByte).clone();
}

}  // namespace

TEST(TeVectors, FourOverSixAndRowScaledMatchTransformerEngine) {
  const auto files = fp4qat::test::vector_files("te");
  ASSERT_GE(files.size(), 9u) << "expected TransformerEngine's vectors in " << fp4qat::test::vectors_dir() << "/te";
  int variants = 0, standard = 0;
  for (const auto& path : files) {
    fp4qat::st::Reader r(path);
    SCOPED_TRACE(path);
    const at::Tensor x = r.view("input").to(at::kFloat).contiguous();
    const int64_t M = x.size(0), K = x.size(1);
    const float* xp = x.data_ptr<float>();
    const float amax = fp4qat::global_amax(x).item<float>();
    std::vector<std::string> names;
    for (const auto& t : r.tensors())
      if (t.name != "input" && t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0)
        names.push_back(t.name.substr(0, t.name.size() - 7));
    for (const auto& v : names) {
      SCOPED_TRACE(v);
      const at::Tensor ec = r.view(v + ".weight"), es = r.view(v + ".weight_scale"), e2 = r.view(v + ".weight_scale_2");
      if (v == "nvfp4_1d" || v == "nvfp4_2d") {  // the standard rule: kernels/quantize.h
        const auto q = fp4qat::nvfp4_quantize(x, v == "nvfp4_1d" ? fp4qat::Blocks::k1D : fp4qat::Blocks::k2D);
        EXPECT_TRUE(bytes_equal(q.codes, ec));
        EXPECT_TRUE(bytes_equal(q.scales, es));
        EXPECT_TRUE(bytes_equal(q.s_dec, e2));
        ++standard;
        continue;
      }
      const bool rows = v.find("rows") != std::string::npos, four = v.find("4over6") != std::string::npos;
      ASSERT_TRUE(rows || four) << "unknown variant";
      fp4qat::NVFP4Rule o;
      o.four_over_six = four;
      o.e4m3_max = v.find("_448_") != std::string::npos ? 448.0f : 256.0f;
      o.mse = v.find("_mse") != std::string::npos;
      std::vector<uint8_t> codes(M * K / 2), scales(M * K / 16);
      std::vector<float> s_dec(rows ? M : 1);
      if (rows)
        fp4qat::ref::nvfp4_quantize_rows(xp, M, K, o, nullptr, codes.data(), scales.data(), s_dec.data());
      else
        fp4qat::ref::nvfp4_quantize_4over6(xp, M, K, amax, v.find("_2d") != std::string::npos, o, codes.data(),
                                           scales.data(), s_dec.data());
      EXPECT_TRUE(bytes_equal(bytes_of(codes, {M, K / 2}), ec));
      EXPECT_TRUE(bytes_equal(bytes_of(scales, {M, K / 16}), es.view(at::kByte)));
      const at::Tensor s2 = at::from_blob(s_dec.data(), {static_cast<int64_t>(s_dec.size())}, at::kFloat).clone();
      EXPECT_TRUE(bytes_equal(rows ? s2 : s2.reshape({}), e2));
      // The public API (kernels/quantize.h) with the same rule: the same bytes, from the input's
      // own dtype (the vectors' inputs are bf16; widening is exact).
      const fp4qat::Blocks blocks = v.find("_2d") != std::string::npos ? fp4qat::Blocks::k2D : fp4qat::Blocks::k1D;
      fp4qat::NVFP4Rule rule = o;
      rule.row_scaled = rows;
      const auto q = fp4qat::nvfp4_quantize(r.view("input"), blocks, std::nullopt, rule);
      EXPECT_TRUE(bytes_equal(q.codes, ec));
      EXPECT_TRUE(bytes_equal(q.scales, es));
      EXPECT_TRUE(bytes_equal(q.s_dec, e2));
      ++variants;
    }
  }
  EXPECT_GE(variants, 100);  // 9 files x (8 4over6 + 5 row-scaled), 117 today
  EXPECT_GE(standard, 18);
}

TEST(FourOverSix, TieKeepsSixAndTheBetterCandidateWins) {
  // One non-zero element equal to the amax: with M = 256 both candidates reconstruct it exactly
  // (6 * 256 and 4 * 384 both give 1536), errors tie at 0 and the block keeps the max-6 scale.
  std::vector<float> x(16, 0.0f);
  x[3] = 1.0f;
  uint8_t codes[8], scale;
  float s_dec;
  for (bool mse : {false, true}) {
    fp4qat::NVFP4Rule o{true, 256.0f, mse};
    fp4qat::ref::nvfp4_quantize_4over6(x.data(), 1, 16, 1.0f, false, o, codes, &scale, &s_dec);
    EXPECT_EQ(scale, fp4qat::fmt::float_to_e4m3(256.0f)) << "a tie must keep 6";
    EXPECT_EQ(codes[1] >> 4, 7);  // x[3]: 6 (code 7) in the high nibble of byte 1
  }
  // A block whose values sit on the 4-grid: [4, 3, 2, 1.5, 1, ...] * s reconstruct exactly with
  // the max-4 scale (M = 256: sb4 = 384, enc 1) but not with max-6 (sb6 = 256, enc 1.5): 4 wins.
  std::vector<float> y = {4, 3, 2, 1.5f, 1, 0.5f, 0, 4, 3, 2, 1.5f, 1, 0.5f, 0, 4, 3};
  fp4qat::NVFP4Rule o{true, 256.0f, false};
  fp4qat::ref::nvfp4_quantize_4over6(y.data(), 1, 16, 4.0f, false, o, codes, &scale, &s_dec);
  uint8_t sb6, sb4;
  fp4qat::fmt::nvfp4_4over6_scales(4.0f, fp4qat::fmt::nvfp4_4over6_s_enc(4.0f, 256.0f), &sb6, &sb4);
  EXPECT_NE(sb6, sb4);
  EXPECT_EQ(scale, sb4);
}

TEST(RowScaled, AllZeroRowsGetScaleOneAndZeroCodes) {
  std::vector<float> x(3 * 32, 0.0f);
  for (int k = 0; k < 32; ++k) x[64 + k] = 0.25f * (k - 16);  // row 2 non-zero, rows 0 and 1 zero
  std::vector<uint8_t> codes(3 * 16, 0xAB), scales(3 * 2, 0xAB);
  std::vector<float> s_dec(3, -1.0f);
  for (bool four : {false, true}) {
    fp4qat::NVFP4Rule o;
    o.four_over_six = four;
    fp4qat::ref::nvfp4_quantize_rows(x.data(), 3, 32, o, nullptr, codes.data(), scales.data(), s_dec.data());
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(s_dec[r], 1.0f);
      for (int i = 0; i < 16; ++i) EXPECT_EQ(codes[r * 16 + i], 0);
      for (int i = 0; i < 2; ++i) EXPECT_EQ(scales[r * 2 + i], 0);
    }
    EXPECT_NE(s_dec[2], 1.0f);  // a row's own amax: each row is quantized as its own tensor
  }
}

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen);
}

std::vector<fp4qat::NVFP4Rule> all_rules() {
  std::vector<fp4qat::NVFP4Rule> out;
  for (bool rows : {false, true}) {
    if (rows) out.push_back({false, 256.0f, false, true});
    for (float m : {256.0f, 448.0f})
      for (bool mse : {false, true}) out.push_back({true, m, mse, rows});
  }
  return out;
}

}  // namespace

// Stacked experts [E, N, K]: each expert quantized as its own tensor (own amax / S_dec, or own
// rows), for every rule and both block modes where the rule allows them.
TEST(NVFP4Rules, StackedExpertsAreEachTheirOwnTensor) {
  const at::Tensor x = (randn({3, 20, 64}, 5) * at::tensor({1.0f, 30.0f, 0.01f}).view({3, 1, 1})).to(at::kBFloat16);
  for (const auto& rule : all_rules())
    for (auto blocks : {fp4qat::Blocks::k1D, fp4qat::Blocks::k2D}) {
      if (rule.row_scaled && blocks == fp4qat::Blocks::k2D) continue;
      SCOPED_TRACE(fp4qat::describe(rule) + " " + fp4qat::to_string(blocks));
      const auto q = fp4qat::nvfp4_quantize(x, blocks, std::nullopt, rule);
      ASSERT_EQ(q.s_dec.sizes(), rule.row_scaled ? at::IntArrayRef({3, 20}) : at::IntArrayRef({3}));
      for (int64_t e = 0; e < 3; ++e) {
        const auto one = fp4qat::nvfp4_quantize(x[e], blocks, std::nullopt, rule);
        EXPECT_TRUE(bytes_equal(q.codes[e], one.codes));
        EXPECT_TRUE(bytes_equal(q.scales[e], one.scales));
        EXPECT_TRUE(bytes_equal(q.s_dec[e], one.s_dec));
      }
      EXPECT_FALSE(bytes_equal(q.s_dec[0], q.s_dec[1]));
    }
}

// A given amax (gated pairs share max(amax_gate, amax_up)) replaces the tensor's own, in S_enc and
// in Four Over Six's error; the reference with that amax gives the same bytes. Row-scaled: a given
// per-row amax.
TEST(NVFP4Rules, GivenAmaxIsUsedInScaleAndError) {
  const at::Tensor x = randn({33, 48}, 6);
  const float own = fp4qat::global_amax(x).item<float>();
  for (const auto& rule : all_rules()) {
    SCOPED_TRACE(fp4qat::describe(rule));
    if (rule.row_scaled) {
      const at::Tensor a = fp4qat::row_amax(x) * 1.75f;
      const auto q = fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D, a, rule);
      std::vector<uint8_t> codes(33 * 24), scales(33 * 3);
      std::vector<float> s_dec(33);
      fp4qat::ref::nvfp4_quantize_rows(x.data_ptr<float>(), 33, 48, rule, a.data_ptr<float>(), codes.data(),
                                       scales.data(), s_dec.data());
      EXPECT_TRUE(bytes_equal(q.codes, bytes_of(codes, {33, 24})));
      EXPECT_TRUE(bytes_equal(q.scales.view(at::kByte), bytes_of(scales, {33, 3})));
      EXPECT_FALSE(bytes_equal(q.s_dec, fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D, std::nullopt, rule).s_dec));
      continue;
    }
    for (bool two_d : {false, true}) {
      const auto b = two_d ? fp4qat::Blocks::k2D : fp4qat::Blocks::k1D;
      const auto q = fp4qat::nvfp4_quantize(x, b, at::scalar_tensor(own * 1.75f, at::kFloat), rule);
      std::vector<uint8_t> codes(33 * 24), scales(33 * 3);
      float s_dec;
      fp4qat::ref::nvfp4_quantize_4over6(x.data_ptr<float>(), 33, 48, own * 1.75f, two_d, rule, codes.data(),
                                         scales.data(), &s_dec);
      EXPECT_TRUE(bytes_equal(q.codes, bytes_of(codes, {33, 24})));
      EXPECT_TRUE(bytes_equal(q.scales.view(at::kByte), bytes_of(scales, {33, 3})));
      EXPECT_EQ(q.s_dec.item<float>(), s_dec);
      EXPECT_NE(s_dec, fp4qat::nvfp4_quantize(x, b, std::nullopt, rule).s_dec.item<float>());
    }
  }
}

// Blocks far below the amax: their scales round to zero (enc = FLT_MAX, codes saturate, decode to
// 0) or to E4M3 subnormals, under both candidates; the 4 candidate's scale is 1.5x and may survive
// where the 6 one does not. Dequantized values stay within the block's reach and finite.
TEST(NVFP4Rules, UnderflowingBlocksDecodeFinite) {
  at::Tensor x = randn({4, 64}, 8) * 1e-6;
  x[0][0] = 1000.0f;
  for (const auto& rule : all_rules()) {
    SCOPED_TRACE(fp4qat::describe(rule));
    const auto q = fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D, std::nullopt, rule);
    const at::Tensor d = fp4qat::nvfp4_dequantize(q);
    EXPECT_TRUE(at::isfinite(d).all().item<bool>());
    if (!rule.row_scaled) {
      EXPECT_GT((q.scales.view(at::kByte) == 0).sum().item<int64_t>(), 0);
    }
    EXPECT_LE((d - x).abs().max().item<float>(), 1000.0f / 3.0f);
  }
}

// Dequantization with one S_dec per row: each row decoded with its own scale (2-D and 3-D).
TEST(NVFP4Rules, RowScaledDequantizeUsesEachRowsScale) {
  const at::Tensor x = randn({2, 5, 32}, 9) * at::tensor({1.0f, 100.0f, 0.001f, 5.0f, 1e4f}).view({1, 5, 1});
  for (bool four : {false, true}) {
    const fp4qat::NVFP4Rule rule{four, 256.0f, false, true};
    const auto q = fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D, std::nullopt, rule);
    const at::Tensor d = fp4qat::nvfp4_dequantize(q);
    for (int64_t e = 0; e < 2; ++e)
      for (int64_t r = 0; r < 5; ++r) {
        fp4qat::NVFP4Tensor one{q.codes[e].narrow(0, r, 1), q.scales[e].narrow(0, r, 1), q.s_dec[e][r], q.blocks};
        EXPECT_TRUE(bytes_equal(d[e].narrow(0, r, 1), fp4qat::nvfp4_dequantize(one)));
      }
    EXPECT_LT(((d - x).norm() / x.norm()).item<float>(), 0.15f);
  }
}

// Row groups (a grouped linear's activations) with Four Over Six: each group's rows quantized alone;
// row-scaled rules ignore the groups (one S_dec per row).
TEST(NVFP4Rules, RowGroupsWithRules) {
  const at::Tensor x = (randn({9, 32}, 10) * 3).to(at::kBFloat16);
  const std::vector<int64_t> off = {0, 4, 4, 9};
  for (const auto& rule : all_rules()) {
    SCOPED_TRACE(fp4qat::describe(rule));
    const auto q = fp4qat::nvfp4_quantize_rows(x, off, /*packed=*/true, rule);
    if (rule.row_scaled) {
      const auto all = fp4qat::nvfp4_quantize_and_fake(x, fp4qat::Blocks::k1D, std::nullopt, rule);
      EXPECT_TRUE(bytes_equal(q.values, all.values));
      EXPECT_TRUE(bytes_equal(q.packed.s_dec, all.packed.s_dec));
      continue;
    }
    ASSERT_EQ(q.packed.s_dec.numel(), 3);
    EXPECT_EQ(q.packed.s_dec[1].item<float>(), 1.0f);  // the empty group
    for (int g : {0, 2}) {
      const auto one = fp4qat::nvfp4_quantize_and_fake(x.narrow(0, off[g], off[g + 1] - off[g]), fp4qat::Blocks::k1D,
                                                       std::nullopt, rule);
      EXPECT_TRUE(bytes_equal(q.values.narrow(0, off[g], off[g + 1] - off[g]), one.values));
      EXPECT_TRUE(bytes_equal(q.packed.codes.narrow(0, off[g], off[g + 1] - off[g]), one.packed.codes));
      EXPECT_TRUE(bytes_equal(q.packed.s_dec[g], one.packed.s_dec));
    }
  }
}

// Fake quantization is the packed result decoded with a unit global scale, for every rule.
TEST(NVFP4Rules, FakeValuesAreTheCodesTimesBlockScales) {
  const at::Tensor x = randn({17, 64}, 11).to(at::kBFloat16);
  for (const auto& rule : all_rules()) {
    SCOPED_TRACE(fp4qat::describe(rule));
    const auto o = fp4qat::nvfp4_quantize_and_fake(x, fp4qat::Blocks::k1D, std::nullopt, rule);
    fp4qat::NVFP4Tensor unit = o.packed;
    unit.s_dec = at::ones_like(o.packed.s_dec);
    EXPECT_TRUE(bytes_equal(o.values, fp4qat::nvfp4_dequantize(unit, at::kBFloat16)));
    EXPECT_TRUE(bytes_equal(fp4qat::nvfp4_fake_quantize(x, fp4qat::Blocks::k1D, std::nullopt, rule).values, o.values));
  }
}

TEST(NVFP4Rules, BadRulesAreRefused) {
  const at::Tensor x = randn({16, 32}, 12);
  auto msg = [&](const fp4qat::NVFP4Rule& r, fp4qat::Blocks b) {
    try {
      fp4qat::nvfp4_quantize(x, b, std::nullopt, r);
    } catch (const fp4qat::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(msg({true, 300.0f, false, false}, fp4qat::Blocks::k1D).find("256 or 448"), std::string::npos);
  EXPECT_NE(msg({false, 256.0f, false, true}, fp4qat::Blocks::k2D).find("1x16"), std::string::npos);
  EXPECT_NE(msg({true, 256.0f, false, true}, fp4qat::Blocks::k2D).find("row-scaled"), std::string::npos);
  // A row-scaled rule wants one amax per row.
  EXPECT_THROW(
      fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D, at::scalar_tensor(1.0f, at::kFloat), {false, 256.0f, false, true}),
      fp4qat::Error);
  EXPECT_EQ(fp4qat::describe({true, 448.0f, true, true}), "4over6(M=448, mse) + row-scaled");
}

// ---- The GPU kernels' fast path: Four Over Six's choice from error estimates ----------------
// (formats.h nvfp4_4over6_err_estimate / nvfp4_4over6_sure_choice). Every choice it calls must be
// the exact errors' choice; every estimate must be within a quarter of the margin (the documented
// bound); and it must call nearly every block of ordinary data, or the kernels would pay for the
// exact path anyway.
namespace {

struct FourOverSixCase {
  float e6, e4, x6, x4, spread;  // estimates, exact errors, X or Q
  bool same;                     // both candidates have one scale byte: the kernels keep 6 unasked
  float big;                     // max(bmax, R6, R4)
};

// One 1x16 block under both candidates: estimates and exact errors (the reference's order).
// bmax: the block's max, or a tile's.
template <bool kMse>
FourOverSixCase four_over_six_case(const float* v, float amax, float e4m3_max, float bmax = -1.0f) {
  using namespace fp4qat::fmt;
  const float s_enc = nvfp4_4over6_s_enc(amax, e4m3_max), s_dec = nvfp4_s_dec(s_enc), six_m = e4m3_max * kE2M1Max;
  if (bmax < 0.0f) {
    bmax = 0.0f;
    for (int i = 0; i < 16; ++i) bmax = fmaxf(bmax, fabsf(v[i]));
  }
  uint8_t sb[2];
  nvfp4_4over6_scales(bmax, s_enc, &sb[0], &sb[1]);
  float est[2], ex[2], big = bmax;
  for (int c = 0; c < 2; ++c) {
    const float enc = nvfp4_block_enc(sb[c], s_dec), fsb = e4m3_to_float(sb[c]);
    const float unit = ((1.0f * fsb) * amax) / six_m;
    big = fmaxf(big, unit);
    float q[16], q_unclamped[16];
    est[c] = nvfp4_4over6_err_estimate<kMse>(v, enc, unit, q);
    if (nvfp4_4over6_unclamped(bmax, enc)) {  // the kernels' form without the clamp: the same
      EXPECT_EQ(f2u(nvfp4_4over6_err_estimate<kMse, false>(v, enc, unit, q_unclamped)), f2u(est[c]));
      for (int i = 0; i < 16; ++i) EXPECT_EQ(f2u(q_unclamped[i]), f2u(q[i])) << "element " << i;
    }
    ex[c] = 0.0f;
    for (int i = 0; i < 16; ++i) {
      const uint8_t code = nvfp4_encode(v[i], enc);
      ex[c] += nvfp4_4over6_err(code, fsb, amax, six_m, v[i], kMse);
      // The winner's codes and fake values from the rounded magnitudes (the kernels' fast path),
      // where no nonzero |x| * enc underflows.
      if (!(std::fabs(v[i]) * enc > 0.0f) && v[i] < 0.0f) continue;
      EXPECT_EQ(nvfp4_code_word_from_rounded(v[i], q[i]) >> 22, code) << "x " << v[i] << " enc " << enc;
    }
  }
  return {est[0], est[1], ex[0], ex[1], nvfp4_4over6_spread_bound<kMse>(bmax), sb[0] == sb[1], big};
}

// Checks one decision (a block's or a tile's); returns whether it was called.
template <bool kMse>
bool check_decision(const std::string& what, float e6, float e4, float x6, float x4, float spread, float big) {
  using namespace fp4qat::fmt;
  const int sure = nvfp4_4over6_sure_choice<kMse>(e6, e4, spread, big);
  if (sure >= 0) {
    EXPECT_EQ(sure == 1, x4 < x6) << what << " estimates " << e6 << " " << e4 << " exact " << x6 << " " << x4;
  }
  if (std::isfinite(x6) && std::isfinite(x4) && big < 0x1p56f) {
    const float quarter = nvfp4_4over6_margin<kMse>(x6, x4, spread) / 4;
    EXPECT_LE(std::fabs(double(e6) - x6), quarter) << what << ": the documented bound";
    EXPECT_LE(std::fabs(double(e4) - x4), quarter) << what << ": the documented bound";
  }
  return sure >= 0;
}

template <bool kMse>
void check_estimates(const std::string& what, const std::vector<float>& x, float amax, float e4m3_max,
                     double min_called) {
  int64_t called = 0, blocks = 0, tiles_called = 0, tiles = 0;
  for (size_t b = 0; b + 16 <= x.size(); b += 16, ++blocks) {
    const auto c = four_over_six_case<kMse>(x.data() + b, amax, e4m3_max);
    if (c.same) {
      EXPECT_FALSE(c.x4 < c.x6) << what << " block " << b / 16;
      ++called;
      continue;
    }
    called += check_decision<kMse>(what + " block " + std::to_string(b / 16), c.e6, c.e4, c.x6, c.x4, c.spread, c.big);
  }
  // 16x16 tiles: 16 consecutive blocks as the tile's rows, the tile max's scales, the tree sum.
  for (size_t t = 0; t + 256 <= x.size(); t += 256, ++tiles) {
    float m = 0.0f;
    for (size_t i = t; i < t + 256; ++i) m = fmaxf(m, fabsf(x[i]));
    float e6[16], e4[16], x6[16], x4[16], spread = 0.0f;
    bool same = false;
    float big = 0.0f;
    for (int r = 0; r < 16; ++r) {
      const auto c = four_over_six_case<kMse>(x.data() + t + 16 * r, amax, e4m3_max, m);
      e6[r] = c.e6, e4[r] = c.e4, x6[r] = c.x6, x4[r] = c.x4, spread += c.spread, same = c.same, big = c.big;
    }
    for (int h = 8; h >= 1; h /= 2)
      for (int i = 0; i < h; ++i) e6[i] += e6[i + h], e4[i] += e4[i + h], x6[i] += x6[i + h], x4[i] += x4[i + h];
    if (same) {
      EXPECT_FALSE(x4[0] < x6[0]) << what << " tile " << t / 256;
      ++tiles_called;
      continue;
    }
    tiles_called += check_decision<kMse>(what + " tile " + std::to_string(t / 256), e6[0], e4[0], x6[0], x4[0],
                                         spread, big);
  }
  EXPECT_GE(double(called) / double(blocks), min_called) << what << ": " << called << " of " << blocks << " blocks";
  EXPECT_GE(double(tiles_called) / double(tiles), min_called) << what << ": " << tiles_called << " of " << tiles
                                                               << " tiles";
}

template <bool kMse>
void check_estimates_on_data(uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t n = 16 * 20000;
  for (float e4m3_max : {256.0f, 448.0f}) {
    // Gaussian weights-like data; heavy tails; values on the E2M1 grids of either candidate
    // (exact reconstructions, ties and near-ties); tiny values (subnormal terms), huge values.
    const auto g = at::randn({n}, gen);
    const auto heavy = at::randn({n}, gen) * at::exp(at::randn({n}, gen) * 2);
    const auto grid = at::tensor({0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f})
                          .index({at::randint(0, 8, {n}, gen)}) *
                      (at::randint(0, 2, {n}, gen) * 2 - 1) * at::where(at::rand({n}, gen) < 0.5, 1.0f, 1.5f);
    const auto near = grid * (1 + at::randn({n}, gen) * 1e-6);
    for (const auto& [name, t] :
         std::vector<std::pair<std::string, at::Tensor>>{{"gaussian", g},
                                                         {"bf16 gaussian", (g * 0.02).to(at::kBFloat16).to(at::kFloat)},
                                                         {"heavy tails", heavy},
                                                         {"tiny", g * 1e-38f},
                                                         {"huge", g * 1e15f},
                                                         {"grid", grid},
                                                         {"near grid", near}}) {
      const auto c = t.to(at::kFloat).contiguous();
      const float* p = c.template data_ptr<float>();
      const std::vector<float> v(p, p + c.numel());
      const float amax = c.abs().max().template item<float>();
      // Ordinary data must be called almost always. Heavy tails tie exactly in ~1.5% of blocks
      // (an outlier reconstructed exactly by both candidates, the rest rounding to 0 in both: the
      // exact path decides those); grids and tiny values are where ties and subnormal terms live,
      // so there only correctness is asked.
      const double min_called = name == "heavy tails" ? 0.98 : (name == "gaussian" || name == "huge" || name == "bf16 gaussian") ? 0.995 : 0.0;
      check_estimates<kMse>(name + " M " + std::to_string(int(e4m3_max)), v, amax, e4m3_max, min_called);
    }
  }
}

}  // namespace

TEST(FourOverSix, EstimatedChoiceIsTheExactChoiceMae) { check_estimates_on_data<false>(11); }
TEST(FourOverSix, EstimatedChoiceIsTheExactChoiceMse) { check_estimates_on_data<true>(12); }

TEST(FourOverSix, EstimatedChoiceNeverCallsTiesNanOrInfinity) {
  using fp4qat::fmt::nvfp4_4over6_sure_choice;
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(1.0f, 1.0f, 16.0f, 1.0f), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<true>(0.0f, 0.0f, 0.0f, 0.0f), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(NAN, 0.0f, 16.0f, 1.0f), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(1.0f, NAN, 16.0f, 1.0f), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(1.0f, 0.5f, 16.0f, INFINITY), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<true>(1.0f, 0.5f, 16.0f, 0x1p61f), -1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(1.0f, 0.5f, 16.0f, 1.0f), 1);
  EXPECT_EQ(nvfp4_4over6_sure_choice<true>(0.5f, 1.0f, 16.0f, 1.0f), 0);
  EXPECT_EQ(nvfp4_4over6_sure_choice<false>(1.0f, 1.0f - 0x1p-20f, 16.0f, 1.0f), -1);  // within the margin
}
