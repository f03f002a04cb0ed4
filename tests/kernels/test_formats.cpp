// tests/kernels/test_formats.cpp — element formats of kernels/common/formats.h: exhaustive
// E4M3 / E2M1 / E8M0 round trips and encoders checked against brute-force nearest-even oracles.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/common/formats.h"

using namespace fp4qat::fmt;

namespace {

// Independent oracle: nearest E4M3 value by enumeration; ties go to the even code (mantissa LSB 0),
// saturating to 448 above the grid.
uint8_t e4m3_oracle(float x) {
  const bool neg = std::signbit(x);
  const double a = std::fabs(static_cast<double>(x));
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7e; ++c) {
    const int e = c >> 3, m = c & 7;
    const double v = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
    const double d = std::fabs(v - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best | (neg ? 0x80 : 0));
}

// Independent oracle for E2M1 on |v| <= 6: nearest of the 8 magnitudes, ties to the even code.
uint8_t e2m1_oracle(float v) {
  static const double mags[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  const double a = std::fabs(static_cast<double>(v));
  int best = 0;
  double best_d = 1e300;
  for (int c = 0; c < 8; ++c) {
    const double d = std::fabs(mags[c] - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best | (v < 0 ? 8 : 0));
}

}  // namespace

TEST(E4M3, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const float v = e4m3_to_float(code);
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
      EXPECT_EQ(float_to_e4m3(v) & 0x7f, 0x7f) << "NaN must stay NaN";
      continue;
    }
    EXPECT_EQ(float_to_e4m3(v), code) << "code 0x" << std::hex << c << " value " << v;
  }
}

TEST(E4M3, EveryCodeDecodesToItsDefinition) {
  // (-1)^s * (e == 0 ? m * 2^-9 : 2^(e - 7) * (1 + m / 8)), computed with ldexp, bit for bit
  // (signed zeros included); 0x7f / 0xff NaN.
  for (int c = 0; c < 256; ++c) {
    const int e = (c >> 3) & 0xf, m = c & 7;
    if ((c & 0x7f) == 0x7f) continue;
    float want = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
    if (c & 0x80) want = -want;
    EXPECT_EQ(f2u(e4m3_to_float(static_cast<uint8_t>(c))), f2u(want)) << "code " << c;
  }
}

TEST(E4M3, KnownValues) {
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(float_to_e4m3(1000.0f), 0x7e);  // saturates
  EXPECT_EQ(float_to_e4m3(-1e30f), 0xfe);
  EXPECT_EQ(float_to_e4m3(464.0f), 0x7e);                     // would round past the grid: saturate
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.0f, -10)), 0x00);      // half of the smallest subnormal: tie to even (0)
  EXPECT_EQ(float_to_e4m3(3 * std::ldexp(1.0f, -10)), 0x02);  // 1.5 * 2^-9: tie to even (2)
}

TEST(E4M3, EncoderMatchesOracleOnMidpointsAndRandom) {
  std::vector<float> xs;
  // Every midpoint between neighbours, and one ulp either side of it.
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = e4m3_to_float(static_cast<uint8_t>(c)), hi = e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);
    xs.insert(xs.end(), {lo, hi, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)});
  }
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> ex(-14.0f, 9.5f);
  for (int i = 0; i < 200000; ++i) xs.push_back(std::exp2(ex(rng)) * (i & 1 ? -1.0f : 1.0f));
  for (float x : xs) {
    ASSERT_EQ(float_to_e4m3(x), e4m3_oracle(x)) << "x = " << x;
  }
}

TEST(E2M1, EveryCodeRoundTrips) {
  for (int c = 0; c < 16; ++c) {
    const float v = e2m1_to_float(static_cast<uint8_t>(c));
    if (c == 8) {  // -0: may encode as 0x0 or 0x8
      EXPECT_EQ(v, 0.0f);
      EXPECT_EQ(float_to_e2m1(v) & 7, 0);
      continue;
    }
    EXPECT_EQ(float_to_e2m1(v), c) << "code " << c;
  }
  const float mags[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 8; ++c) {
    EXPECT_EQ(e2m1_to_float(static_cast<uint8_t>(c)), mags[c]);
    EXPECT_EQ(e2m1_to_float(static_cast<uint8_t>(c | 8)), -mags[c]);
  }
}

TEST(E2M1, LadderBoundariesAndTies) {
  // numerics.md: <= .25 -> 0, < .75 -> .5, <= 1.25 -> 1, < 1.75 -> 1.5, <= 2.5 -> 2, < 3.5 -> 3, <= 5 -> 4, else 6
  struct Case {
    float v;
    uint8_t code;
  };
  const Case cases[] = {{0.25f, 0}, {std::nextafter(0.25f, 1.f), 1}, {0.75f, 2}, {std::nextafter(0.75f, 0.f), 1},
                        {1.25f, 2}, {std::nextafter(1.25f, 2.f), 3}, {1.75f, 4}, {std::nextafter(1.75f, 0.f), 3},
                        {2.5f, 4},  {std::nextafter(2.5f, 3.f), 5},  {3.5f, 6},  {std::nextafter(3.5f, 0.f), 5},
                        {5.0f, 6},  {std::nextafter(5.0f, 6.f), 7},  {6.0f, 7},  {-0.1f, 8},
                        {-5.5f, 15}};
  for (const auto& c : cases) EXPECT_EQ(float_to_e2m1(c.v), c.code) << "v = " << c.v;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-6.0f, 6.0f);
  for (int i = 0; i < 100000; ++i) {
    const float v = u(rng);
    ASSERT_EQ(float_to_e2m1(v), e2m1_oracle(v)) << "v = " << v;
  }
}

TEST(E2M1, ArithmeticEncoderEqualsLadder) {
  // nvfp4_encode's arithmetic path must equal the numerics.md ladder on every boundary, every
  // grid point and its neighbours, and random magnitudes (including values past 6 and tiny ones).
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1e-30f,
                           -1e-30f,
                           6.0f,
                           6.5f,
                           1e30f,
                           -1e30f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity()};
  for (float b : {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f})
    for (float s : {1.0f, -1.0f}) {
      xs.push_back(s * b);
      xs.push_back(s * std::nextafter(b, 0.0f));
      xs.push_back(s * std::nextafter(b, 10.0f));
    }
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-7.0f, 7.0f);
  for (int i = 0; i < 200000; ++i) xs.push_back(u(rng));
  for (float x : xs) {
    const float v = std::fmin(std::fmax(x, -6.0f), 6.0f);
    ASSERT_EQ(nvfp4_encode(x, 1.0f), float_to_e2m1(v)) << "x = " << x;
  }
}

TEST(E2M1, ArithmeticMagnitudeCodeEqualsLadderOnEveryFloatUpTo6) {
  // e2m1_magnitude_code (the kernels' arithmetic path: one magic add following the binade)
  // and e2m1_round (the value without the code) on every float32 in [0, 6] (1.09 G values), plus
  // every pattern within 64 ulps of each ladder boundary.
  int64_t checked = 0;
  auto check = [&](uint32_t u) {
    const float a = u2f(u);
    if (!(a >= 0.0f && a <= 6.0f)) return true;
    ++checked;
    const uint8_t code = float_to_e2m1(a);
    return e2m1_magnitude_code(a) == code && f2u(e2m1_round(a)) == f2u(e2m1_to_float(code));
  };
  for (uint32_t u = 0; u <= f2u(6.0f); ++u)
    if (!check(u)) FAIL() << "a = " << u2f(u) << " (bits " << u << ")";
  for (float b : {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f})
    for (int d = -64; d <= 64; ++d) ASSERT_TRUE(check(f2u(b) + d)) << "a = " << u2f(f2u(b) + d);
  EXPECT_GT(checked, 1086000000);
  // [6, 7) rounds to 6 (code 7) without the clamp: the Four Over Six kernels leave the clamp out
  // where no product reaches 7 (nvfp4_4over6_unclamped).
  for (uint32_t u = f2u(6.0f); u < f2u(7.0f); ++u)
    ASSERT_TRUE(e2m1_magnitude_code(u2f(u)) == 7u && e2m1_round(u2f(u)) == 6.0f) << "a = " << u2f(u);
  EXPECT_NE(e2m1_round(7.0f), 6.0f);  // 7 ties to 8: the bound is tight
}

TEST(SignNibbles, PackedSignsEqualEachElementsCompare) {
  // nvfp4_sign_nibbles(bf16x2_negative_bits(raw pairs)) — the Four Over Six kernel's code signs for
  // bf16 input, through prmt's sign-replicating selectors (emulated here bit for bit as PTX
  // defines them; the GPU tests compare the kernel's bytes) — against x < 0 element by element:
  // bit 4j + 3 set iff element j is strictly negative (-0.0 is not), every other bit clear. No
  // NaN reaches it (a NaN element makes the block's estimates NaN: the exact path encodes it).
  const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x7f80, 0xff80, 0x3f80, 0xbf80, 0x7f7f, 0xff7f, 0x0080, 0x8080};
  std::mt19937 rng(7);
  auto half = [&](int i) -> uint16_t {
    const uint16_t h =
        i % 3 == 0 ? special[rng() % (sizeof special / sizeof special[0])] : static_cast<uint16_t>(rng());
    return (h & 0x7fff) > 0x7f80 ? static_cast<uint16_t>(h & 0x807f) : h;  // a NaN becomes a finite value
  };
  for (int trial = 0; trial < 200000; ++trial) {
    uint16_t h[8];
    for (int j = 0; j < 8; ++j) h[j] = half(trial + j);
    uint32_t neg[4];
    uint32_t want = 0;
    for (int i = 0; i < 4; ++i) neg[i] = bf16x2_negative_bits(h[2 * i] | (static_cast<uint32_t>(h[2 * i + 1]) << 16));
    for (int j = 0; j < 8; ++j) want |= (u2f(static_cast<uint32_t>(h[j]) << 16) < 0.0f ? 1u : 0u) << (4 * j + 3);
    ASSERT_EQ(nvfp4_sign_nibbles(neg), want) << trial << " " << std::hex << h[0] << " " << h[1] << " " << h[2] << " "
                                              << h[3] << " " << h[4] << " " << h[5] << " " << h[6] << " " << h[7];
  }
  // prmt's emulation: a byte select and a sign replication.
  EXPECT_EQ(prmt(0x44332211u, 0x88776655u, 0x7654u), 0x88776655u);
  EXPECT_EQ(prmt(0x00800001u, 0u, 0x000Au), 0x010101FFu);
}

TEST(Div6, FmaFormEqualsTheDivisionWhereItIsUsed) {
  // div6's GPU form (one correction of x * RN(1/6)) against x / 6 where the kernels use it,
  // [2^-122, FLT_MAX]: every float32 of the lowest four binades (where the correction term comes
  // nearest the subnormals), of [1, 2) (normal quotients round the same way in every binade:
  // both forms scale by powers of two) and of the top binade (no overflow). Below 2^-122 the form
  // is wrong for some inputs — the bound is needed.
  int64_t checked = 0;
  auto range = [&](float lo, float hi) {
    for (uint32_t u = f2u(lo); u <= f2u(hi) && u2f(u) <= hi; ++u) {
      const float x = u2f(u);
      if (!div6_by_fma_exact(x)) continue;
      ++checked;
      if (f2u(div6_by_fma(x)) != f2u(x / 6.0f)) return u;
    }
    return 0u;
  };
  EXPECT_EQ(range(0x1p-122f, 0x1p-118f), 0u);
  EXPECT_EQ(range(1.0f, 2.0f), 0u);
  EXPECT_EQ(range(0x1p127f, kFltMax), 0u);
  EXPECT_GT(checked, 5 * (int64_t{1} << 23));
  EXPECT_FALSE(div6_by_fma_exact(0x1p-123f));
  EXPECT_FALSE(div6_by_fma_exact(std::numeric_limits<float>::infinity()));
  EXPECT_FALSE(div6_by_fma_exact(std::numeric_limits<float>::quiet_NaN()));
  bool wrong_below = false;  // the bound is needed: some input below it is rounded wrong
  for (uint32_t u = 1; u < f2u(0x1p-122f) && !wrong_below; ++u)
    wrong_below = f2u(div6_by_fma(u2f(u))) != f2u(u2f(u) / 6.0f);
  EXPECT_TRUE(wrong_below);
  for (float x : {0.0f, 1e-40f, 0x1p-123f, 3.0f, 448.0f, kFltMax}) EXPECT_EQ(f2u(div6(x)), f2u(x / 6.0f)) << x;
}

TEST(E2M1, CodeWordFromRoundedMagnitudeEqualsEncode) {
  // nvfp4_code_word_from_rounded (the Four Over Six kernels' codes from the estimate's rounded
  // magnitudes) against nvfp4_encode: every grid value and the points around each boundary, both
  // signs, signed zeros, multipliers from tiny to huge; where |x| * enc underflows to 0 for a
  // negative x the caller must encode instead (the word's sign would be set, encode's is not).
  std::vector<float> xs = {0.0f, -0.0f, 1e-45f, -1e-45f, 0x1p-133f, -0x1p-133f, 7.0f, -7.0f, 100.0f, -100.0f};
  for (float b : {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f})
    for (int d = -3; d <= 3; ++d) {
      xs.push_back(u2f(f2u(b) + d));
      xs.push_back(-u2f(f2u(b) + d));
    }
  int underflows = 0;
  for (float enc : {1.0f, 0.37f, 3.0f, 1e-20f, 0x1p-17f, kFltMax})
    for (float x : xs) {
      const float p = std::fabs(x) * enc;
      const float q = e2m1_round(std::fmin(p, kE2M1Max));
      const uint32_t w = nvfp4_code_word_from_rounded(x, q);
      ASSERT_EQ(w & 0x3fffffu, 0u) << "x " << x << " enc " << enc;
      if (x < 0.0f && p == 0.0f) {
        ++underflows;
        EXPECT_NE(w >> 22, nvfp4_encode(x, enc));
        continue;
      }
      ASSERT_EQ(w >> 22, nvfp4_encode(x, enc)) << "x " << x << " enc " << enc;
    }
  EXPECT_GT(underflows, 0);
}

TEST(E2M1, DecodeTimesEveryScaleIsExactInBf16) {
  // The fake-quant kernel writes e2m1(q) * sb as the float32's upper half: exact for every code
  // and every finite E4M3 scale byte (at most 6 significant bits, within bf16's range).
  for (int c = 0; c < 16; ++c)
    for (int b = 0; b < 256; ++b) {
      if ((b & 0x7f) == 0x7f) continue;  // NaN: never a block scale (saturating encode)
      const float p = e2m1_to_float(static_cast<uint8_t>(c)) * e4m3_to_float(static_cast<uint8_t>(b));
      ASSERT_EQ(f2u(p) & 0xffffu, 0u) << "code " << c << " scale byte " << b;
    }
}

TEST(NVFP4, FakeValueEqualsDecodedCodeTimesScale) {
  // nvfp4_fake_value (the kernels' fake-quant output) against the code path, decode(encode(x)) *
  // float(sb), bit for bit: signed zeros, values around every E2M1 boundary and past 6, inf, NaN,
  // every finite scale byte, and encode multipliers including 0 and FLT_MAX.
  std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, INFINITY, -INFINITY, NAN, -NAN, 7.0f, -7.0f, 1e30f, -1e30f};
  for (float b : {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 5.0f, 6.0f})
    for (int d = -3; d <= 3; ++d) {
      xs.push_back(u2f(f2u(b) + d));
      xs.push_back(-u2f(f2u(b) + d));
    }
  for (float enc : {1.0f, 0.0f, 0.37f, 3.0f, kFltMax, 1e-20f})
    for (int sb = 0; sb < 256; ++sb) {
      if ((sb & 0x7f) == 0x7f) continue;  // NaN: never a block scale
      const float fsb = e4m3_to_float(static_cast<uint8_t>(sb));
      for (float x : xs) {
        const float want = e2m1_to_float(nvfp4_encode(x, enc)) * fsb;
        ASSERT_EQ(f2u(nvfp4_fake_value(x, enc, fsb)), f2u(want)) << "x " << x << " enc " << enc << " sb " << sb;
      }
    }
}

TEST(E8M0, Decode) {
  EXPECT_EQ(e8m0_to_float(127), 1.0f);
  EXPECT_EQ(e8m0_to_float(128), 2.0f);
  EXPECT_EQ(e8m0_to_float(1), std::ldexp(1.0f, -126));
  EXPECT_EQ(e8m0_to_float(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(e8m0_to_float(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(e8m0_to_float(255)));
}

// Independent oracle of numerics.md's MXFP8 scale: the smallest E8M0 value 2^(c-127), c in
// [0, 254], that is >= s = amax / 448 (float32 division), in double. Code 0 is the subnormal
// 2^-127, so a subnormal s <= 2^-127 keeps code 0 (TransformerEngine's float_to_e8m0).
uint8_t e8m0_oracle(float amax) {
  const double s = static_cast<double>(amax / 448.0f);
  for (int c = 0; c <= 254; ++c)
    if (std::ldexp(1.0, c - 127) >= s) return static_cast<uint8_t>(c);
  return 255;
}

TEST(MXFP8Scale, RoundsUpToPowerOfTwo) {
  // amax/448 exactly a power of two stays; anything above goes to the next power of two.
  EXPECT_EQ(mxfp8_scale_e8m0(448.0f), 127u);
  EXPECT_EQ(mxfp8_scale_e8m0(std::nextafter(448.0f, 1e9f)), 128u);
  EXPECT_EQ(mxfp8_scale_e8m0(449.0f), 128u);
  EXPECT_EQ(mxfp8_scale_e8m0(224.0f), 126u);
  EXPECT_EQ(mxfp8_scale_e8m0(0.0f), 0u);
  // The corrected subnormal rule: a subnormal quotient <= 2^-127 keeps code 0 (scale 2^-127);
  // above 2^-127 it rounds up to the smallest normal, code 1 (2^-126).
  EXPECT_EQ(mxfp8_scale_e8m0(448.0f * std::ldexp(1.0f, -130)), 0u);
  EXPECT_EQ(mxfp8_scale_e8m0(448.0f * std::ldexp(1.0f, -127)), 0u);
  EXPECT_EQ(mxfp8_scale_e8m0(448.0f * std::ldexp(1.0f, -127) * 1.0001f), 1u);
  EXPECT_EQ(mxfp8_scale_e8m0(std::numeric_limits<float>::denorm_min()), 0u);
  EXPECT_EQ(mxfp8_scale_e8m0(std::numeric_limits<float>::max()), 128u + 127u - 8u);  // 2^128/448 -> 2^120
  EXPECT_EQ(mxfp8_scale_e8m0(std::numeric_limits<float>::quiet_NaN()), 255u);
}

TEST(MXFP8Scale, EqualsTheOracleOnEveryExponentAndRandomBits) {
  std::vector<float> xs;
  for (int e = 0; e < 255; ++e)
    for (uint32_t m : {0u, 1u, 0x200000u, 0x3fffffu, 0x400000u, 0x400001u, 0x7ffffeu, 0x7fffffu})
      xs.push_back(u2f((static_cast<uint32_t>(e) << 23) | m));
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) xs.push_back(u2f(rng() & 0x7f7fffffu));  // finite, >= 0
  int bad = 0;
  for (float a : xs)
    if (mxfp8_scale_e8m0(a) != e8m0_oracle(a) && ++bad < 5) ADD_FAILURE() << "amax " << a << " bits " << f2u(a);
  EXPECT_EQ(bad, 0);
}

TEST(NVFP4Scale, GlobalAndBlockRules) {
  EXPECT_EQ(nvfp4_s_enc(0.0f), 1.0f);
  EXPECT_EQ(nvfp4_s_enc(2688.0f), 1.0f);
  EXPECT_EQ(nvfp4_s_enc(1.0f), 2688.0f);
  EXPECT_EQ(nvfp4_s_enc(std::numeric_limits<float>::denorm_min()), kFltMax);  // 2688/amax overflows
  // bmax == amax maps to the largest block scale 448.
  const float s_enc = nvfp4_s_enc(3.0f);
  EXPECT_EQ(nvfp4_block_scale(3.0f, nvfp4_block_factor(s_enc)), 0x7e);
  // A zero scale gives enc = FLT_MAX (1/0 clamped).
  EXPECT_EQ(nvfp4_block_enc(0, 1.0f), kFltMax);
  // Codes of a zero-scale block decode to zero.
  EXPECT_EQ(nvfp4_decode(nvfp4_encode(1e-30f, kFltMax), 0, 1.0f), 0.0f);
}
