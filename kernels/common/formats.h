// kernels/common/formats.h — the element formats of docs/spec/numerics.md, once:
//   E2M1 (fp4), E4M3fn (fp8), E8M0 (power-of-two scale) encode/decode, and the NVFP4 / MXFP8
//   scale rules. Every function is __host__ __device__ so the CPU reference and the CUDA kernels
//   run the same code: same operations, same order, IEEE float32, round to nearest even.
// Compile without fast-math and without FMA contraction (the build sets -ffp-contract=off and
// nvcc --fmad=false for kernels/).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/host_device.h"

namespace fp4qat::fmt {

constexpr float kFltMax = 3.40282346638528859812e+38f;  // FLT_MAX
constexpr float kE4M3Max = 448.0f;
constexpr float kE2M1Max = 6.0f;
constexpr float kNvfp4GlobalNum = 2688.0f;  // 448 * 6
constexpr int kNvfp4Block = 16;
constexpr int kMxfp8Block = 32;

FP4QAT_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FP4QAT_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ---- E4M3 (fn): 1-4-3, bias 7, max 448, 0x7F/0xFF NaN, subnormals m * 2^-9 -------------
// float32 -> E4M3, round to nearest even, saturating to +-448; NaN -> 0x7F (sign kept).
FP4QAT_HD uint8_t float_to_e4m3_soft(float x) {
  const uint32_t u = f2u(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7f);
  const float af = u2f(a);
  if (af >= kE4M3Max) return static_cast<uint8_t>(sign | 0x7e);
  if (af < 0.015625f) {  // below the smallest normal 2^-6: subnormal grid m * 2^-9
    // af * 512 is exact (power-of-two scale); rintf rounds half to even. m in [0, 8];
    // m == 8 is code 0x08, which is exactly the smallest normal 2^-6.
    const float m = rintf(af * 512.0f);
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(m));
  }
  // Normal: round the 23-bit mantissa to 3 bits, ties to even; a carry bumps the exponent.
  const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;                 // (exp8 << 3) | mant3
  return static_cast<uint8_t>(sign | static_cast<uint8_t>(r - (120u << 3)));  // rebias 127 -> 7
}

// The same conversion; on sm_89+ devices through the hardware's cvt.rn.satfinite.e4m3x2.f32
// (round to nearest even, saturating to the largest finite value: the same bytes for every
// finite input, which the GPU tests check against the CPU reference).
FP4QAT_HD uint8_t float_to_e4m3(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(x));
  return static_cast<uint8_t>(r & 0xff);
#else
  return float_to_e4m3_soft(x);
#endif
}

// Two conversions at once: low byte from lo, high byte from hi.
FP4QAT_HD uint16_t float2_to_e4m3x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return static_cast<uint16_t>(float_to_e4m3_soft(lo) | (float_to_e4m3_soft(hi) << 8));
#endif
}

FP4QAT_HD float e4m3_to_float(uint8_t b) {
  // Built from bits without branches or int-to-float conversion: t = (e << 23) | (m << 20);
  // normal: t + (120 << 23) = 2^(e-7) * (1 + m/8); subnormal (e = 0): the same bits with e = 1,
  // 2^-6 * (1 + m/8), minus 2^-6 = m * 2^-9 (exact); 0x7f: NaN.
  const uint32_t sign = static_cast<uint32_t>(b & 0x80) << 24;
  const uint32_t t = static_cast<uint32_t>(b & 0x7f) << 20;
  const float normal = u2f(t + 0x3C000000u);
  const float sub = u2f(t + 0x3C800000u) - 0.015625f;
  const uint32_t mag = (b & 0x7f) == 0x7f ? 0x7fc00000u : f2u((b & 0x78) == 0 ? sub : normal);
  return u2f(mag | sign);
}

// ---- E2M1: bit 3 sign, magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 ----------------------------------
// Round to nearest, ties to the even code (numerics.md ladder). Input is already clamped to
// [-6, 6]. A negative value sets bit 3 (-0.1 -> 0x8); -0.0 encodes as 0x0.
FP4QAT_HD uint8_t float_to_e2m1(float v) {
  const float a = fabsf(v);
  const uint8_t c = static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                                         (a >= 3.5f) + (a > 5.0f));
  return static_cast<uint8_t>(c | (v < 0.0f ? 0x8 : 0x0));
}

FP4QAT_HD float e2m1_to_float(uint8_t code) {
  // Built from bits, no int-to-float conversion (a slow pipe on the GPU): magnitude code c >= 2
  // is the normal 2^((c >> 1) - 1) * (1 + (c & 1) / 2), whose float32 bits are
  // ((c >> 1) + 126) << 23 | (c & 1) << 22 = 0x3F000000 + (c << 22); c = 1 is 0.5, c = 0 is 0.
  const uint32_t c = code & 0x7u;
  const uint32_t mag = c >= 2u ? 0x3F000000u + (c << 22) : (c == 1u ? 0x3F000000u : 0u);
  return u2f(mag | (static_cast<uint32_t>(code & 0x8u) << 28));
}
// ---- E8M0: value 2^(byte - 127); 0xFF NaN ---------------------------------------------------
FP4QAT_HD float e8m0_to_float(uint8_t b) {
  if (b == 0xff) return u2f(0x7fc00000u);
  if (b == 0) return u2f(0x00400000u);  // 2^-127 is a float32 subnormal
  return u2f(static_cast<uint32_t>(b) << 23);
}

// ---- NVFP4 scale rules (numerics.md) ---------------------------------------------------------
// S_enc = min(2688 / amax, FLT_MAX); 1 if amax == 0 or S_enc == 0.
FP4QAT_HD float nvfp4_s_enc(float amax) {
  float s = fminf(kNvfp4GlobalNum / amax, kFltMax);
  if (amax == 0.0f || s == 0.0f) s = 1.0f;
  return s;
}
// S_dec = 1 / S_enc (correctly rounded reciprocal): the tensor's "weight_scale_2".
FP4QAT_HD float nvfp4_s_dec(float s_enc) { return 1.0f / s_enc; }

// The per-tensor factor S_enc * (1/6), with 1/6 rounded to float32 first.
FP4QAT_HD float nvfp4_block_factor(float s_enc) { return s_enc * (1.0f / 6.0f); }

// Block decode scale sb = e4m3_rne(clamp(min(bmax * factor, FLT_MAX), -448, 448)).
FP4QAT_HD uint8_t nvfp4_block_scale(float bmax, float factor) {
  float v = fminf(bmax * factor, kFltMax);
  v = fminf(fmaxf(v, -kE4M3Max), kE4M3Max);
  return float_to_e4m3(v);
}

// Block encode multiplier enc = min(1 / (float(sb) * S_dec), FLT_MAX). A zero scale gives
// 1/0 = inf -> FLT_MAX: its codes saturate but decode to 0 (reproduced, not special-cased).
FP4QAT_HD float nvfp4_block_enc(uint8_t sb, float s_dec) { return fminf(1.0f / (e4m3_to_float(sb) * s_dec), kFltMax); }

// E2M1 code and value of a magnitude a in [0, 6] by arithmetic instead of the comparison ladder
// (the same results for every float32 in [0, 6], checked exhaustively by the CPU tests), with few
// instructions (the Four Over Six kernels are compute bound): one magic add whose magic number
// follows a's binade, M = m * 2^22 with m = max(2^floor(log2 a), 1), so that ulp(M) is the E2M1
// step at a (0.5 below 2, 1 in [2, 4), 2 in [4, 6]). t = a + M rounds a to the nearest multiple
// k * step, ties to the even multiple, which is the even code; every such t is exact in float32.
//   value: t - M (exact);
//   code: k is the bits of t minus those of M; the codes of the binade's multiples start at
//   2 * log2(m) (k = 0..4 below 2: codes 0..4; k = 2..4 in [2, 4): codes 4..6; k = 2, 3 in
//   [4, 6]: codes 6, 7), and 2 * log2(m) = (bits(m) >> 22) - 254.
// On the GPU t and t - M are fmas with the exact product m * 2^22.
FP4QAT_HD float e2m1_binade(float a) { return fmaxf(u2f(f2u(a) & 0x7f800000u), 1.0f); }  // m
FP4QAT_HD float e2m1_magic_sum(float a, float m) {                                          // t = a + m * 2^22
#if defined(__CUDA_ARCH__)
  return fmaf(m, 4194304.0f, a);
#else
  return a + m * 4194304.0f;  // the product is exact: one rounding, as the fma's
#endif
}
FP4QAT_HD uint32_t e2m1_magnitude_code(float a) {
  const float m = e2m1_binade(a);
  // bits(t) - bits(M) + 2 log2(m), with bits(M) = bits(m) + (22 << 23).
  return f2u(e2m1_magic_sum(a, m)) + ((f2u(m) >> 22) - f2u(m) - ((22u << 23) + 254u));
}
FP4QAT_HD float e2m1_round(float a) {  // e2m1_to_float(e2m1_magnitude_code(a))
  const float m = e2m1_binade(a);
#if defined(__CUDA_ARCH__)
  return fmaf(-m, 4194304.0f, e2m1_magic_sum(a, m));
#else
  return e2m1_magic_sum(a, m) - m * 4194304.0f;
#endif
}

// One element: q = e2m1_rne(clamp(x * enc, -6, 6)); the sign is taken from x * enc (v < 0).
// The code in a 32-bit word (magnitude + 8 * sign as one sum: the kernels pack it without
// narrowing), and as a byte.
FP4QAT_HD uint32_t nvfp4_encode_u32(float x, float enc) {
  const float v = x * enc;
  return e2m1_magnitude_code(fminf(fabsf(v), kE2M1Max)) + (v < 0.0f ? 8u : 0u);
}
FP4QAT_HD uint8_t nvfp4_encode(float x, float enc) { return static_cast<uint8_t>(nvfp4_encode_u32(x, enc)); }

// The fake-quant value of one element, e2m1_to_float(nvfp4_encode(x, enc)) * fsb with fsb =
// e4m3_to_float(sb), computed from the rounded magnitude instead of the code: the sign is that
// of the code (v < 0, so -0.0 for a negative v that rounds to 0 and +0.0 for v = -0.0).
FP4QAT_HD float nvfp4_fake_value(float x, float enc, float fsb) {
  const float v = x * enc;
  return e2m1_round(fminf(fabsf(v), kE2M1Max)) * (v < 0.0f ? -fsb : fsb);
}

// The code of x * enc from q = e2m1_round(min(|x * enc|, 6)) (a value of the E2M1 grid), shifted
// left by 22: q * 2^-126 is exact (0.5 becomes the subnormal 2^-127, 1 the smallest normal), and
// its bits are the magnitude code times 2^22 (0 .. 7 for 0, 0.5, 1, 1.5, 2, 3, 4, 6); the sign bit
// (2^25) is x * enc < 0, which is x < 0 (-0.0 is not) where |x| * enc does not underflow to 0 —
// the caller's condition (nvfp4_encode: the sign of the product). The low 22 bits are zero, so a
// packer shifts the word right by 22 - 4i for nibble i without a mask.
FP4QAT_HD uint32_t nvfp4_code_word_from_rounded(float x, float q) {
  return f2u(q * 0x1p-126f) + (x < 0.0f ? 0x02000000u : 0u);
}

// ---- Signs of bf16 pairs, for packing codes two elements a word at a time ----------------------
// The PTX byte permute (prmt.b32, default mode): byte i of the result is byte (sel >> 4i) & 7 of
// the 8 bytes {b, a} (a: bytes 0-3), or, with bit 3 of that selector nibble set, the sign bit of
// that byte replicated over all 8 bits. One instruction on the GPU; emulated bit for bit here.
FP4QAT_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
#else
  const uint64_t src = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t n = (sel >> (4 * i)) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(src >> (8 * (n & 7u))) & 0xFFu;
    if (n & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    d |= byte << (8 * i);
  }
  return d;
#endif
}
// Bits 15 and 31 of the result: whether the low / high bf16 of a raw pair is strictly negative
// (x < 0: -0.0 is not; a nonzero magnitude carries into bit 15 / 31 of (raw & 0x7fff7fff) +
// 0x7fff7fff, the low half's sum never carrying out). Other bits: anything. A NaN with its sign
// bit set counts as negative: callers see no NaN (Four Over Six sends a block with one to the
// exact path). On the GPU by one bf16x2 fma, raw * 1 + (+0): exact, and -0.0 + +0.0 = +0.0 under
// round to nearest, so its sign bits are these for every non-NaN pair (subnormals included: bf16
// arithmetic keeps them), in one instruction instead of three.
FP4QAT_HD uint32_t bf16x2_negative_bits(uint32_t raw) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(raw), "r"(0x3f803f80u), "r"(0u));
  return d;
#else
  return raw & ((raw & 0x7fff7fffu) + 0x7fff7fffu);
#endif
}
// The sign bits of a packed NVFP4 code word of 8 elements (bit 4j + 3: element j < 0, the rest 0)
// from the bf16x2_negative_bits of its 4 raw pairs (element 2i low, 2i + 1 high in neg[i]): the
// signs replicated into bytes [E0 E1 E2 E3] and [E4 .. E7] by two permutes, regrouped into the even
// and the odd elements' bytes by two more, bit 3 of each byte from the even, bit 7 from the odd.
FP4QAT_HD uint32_t nvfp4_sign_nibbles(const uint32_t neg[4]) {
  const uint32_t p = prmt(neg[0], neg[1], 0xFDB9u), q = prmt(neg[2], neg[3], 0xFDB9u);  // E0..E3, E4..E7
  const uint32_t even = prmt(p, q, 0x6420u), odd = prmt(p, q, 0x7531u);                // E0 E2 E4 E6, E1 E3 ..
  return (even & 0x08080808u) | (odd & 0x80808080u);
}

// Dequantized element: (e2m1(q) * float(sb)) * S_dec. The first product is exact.
FP4QAT_HD float nvfp4_decode(uint8_t code, uint8_t sb, float s_dec) {
  return e2m1_to_float(code) * e4m3_to_float(sb) * s_dec;
}

// ---- Four Over Six (numerics.md "Four Over Six", TransformerEngine >= 2.17) ----------------
// Each block picks the scale that maps its max to 6 or to 4, whichever reconstructs it with the
// smaller error; `e4m3_max` (M, 448 or 256) bounds the global scale.
// S_enc = min((M * 6) / amax, FLT_MAX); 1 if amax == 0 or S_enc == 0.
FP4QAT_HD float nvfp4_4over6_s_enc(float amax, float e4m3_max) {
  float s = fminf((e4m3_max * kE2M1Max) / amax, kFltMax);
  if (amax == 0.0f || s == 0.0f) s = 1.0f;
  return s;
}
// x / 6, correctly rounded. On the GPU, for x >= 2^-122, by one correction of the product with
// RN(1/6): q = x * RN(1/6), r = fma(-q, 6, x) (exact), q + r * RN(1/6) rounded once — equal to
// the division for every such float32 (checked over all of them when written; the quotient is
// normal, so the rounding repeats binade to binade: tests/kernels/test_formats.cpp checks the
// lowest four binades, [1, 2) and the top one exhaustively, and that the bound is needed);
// three instructions instead of the division's reciprocal, its refinements and the slow-path
// check. Below 2^-122 (a quotient near the subnormals), NaN and inf: the division.
FP4QAT_HD float div6_by_fma(float x) {  // div6's GPU form, on every platform (tested on the CPU)
  const float z = 1.0f / 6.0f, q = x * z;
  return fmaf(fmaf(-q, 6.0f, x), z, q);
}
FP4QAT_HD bool div6_by_fma_exact(float x) { return x >= 0x1p-122f && x <= kFltMax; }
FP4QAT_HD float div6(float x) {
#if defined(__CUDA_ARCH__)
  if (div6_by_fma_exact(x)) return div6_by_fma(x);
#endif
  return x / 6.0f;
}

// The two candidate block scales: base = (bmax / 6) * S_enc (the division first, unlike the
// max6 rule), sb6 = e4m3_rne(min(base, 448)), sb4 = e4m3_rne(min(base * 1.5, 448)) (one
// two-way conversion on the GPU).
FP4QAT_HD void nvfp4_4over6_scales(float bmax, float s_enc, uint8_t* sb6, uint8_t* sb4) {
  const float base = div6(bmax) * s_enc;
  const uint16_t both = float2_to_e4m3x2(fminf(base, kE4M3Max), fminf(base * 1.5f, kE4M3Max));
  *sb6 = static_cast<uint8_t>(both & 0xffu);
  *sb4 = static_cast<uint8_t>(both >> 8);
}
// One element's reconstruction error term with block scale sb: d = ((e2m1(q) * float(sb)) *
// amax) / (6 * M) - x; |d| (MAE) or d * d (MSE). Summed in element order by the caller.
FP4QAT_HD float nvfp4_4over6_err(uint8_t code, float fsb, float amax, float six_m, float x, bool mse) {
  const float d = ((e2m1_to_float(code) * fsb) * amax) / six_m - x;
  return mse ? d * d : fabsf(d);
}

// Four Over Six's choice without the exact errors, where it is certain (the GPU kernels' fast
// path; the result is the same choice, so the same bytes). A candidate's error term
// d = ((e2m1(q) * fsb) * amax) / (6M) - x is estimated as d' = fma(+-e2m1(q), R, -x), R the
// candidate's exact reconstruction of code 1.0, ((1 * fsb) * amax) / (6M): no table look-up, no
// code. With u = 2^-24, the estimate's R and fma against the exact term's 3 roundings give
// |d' - d| <= 4.1u|x| + 6.2u|d|. Summed over a block (both sums' rounding included), with
// X = sum |x|, Q = sum x^2 and S the larger error:
//   MAE: |S' - S| <= 4.1u X + 37u S;   MSE: |S' - S| <= 8.2u sqrt(Q S) + 45u S
// (with the estimate summed sequentially; its tree sum below only shrinks its part)
// (|x||d| summed by Cauchy-Schwarz). A 16x16 tile's tree sum of 16 rows adds 8u S, with X and Q
// the tile's. nvfp4_4over6_margin is 4x those bounds (2^-19 X or 2^-18 sqrt(Q S), plus
// 2^-16 S, with X and Q bounded from the block's max: nvfp4_4over6_spread_bound) plus 2^-120 for
// roundings of subnormal terms; nvfp4_4over6_sure_choice calls a choice only when the estimates
// differ by more than it, and never for ties, NaN, or big >= 2^56 (big: the largest of the
// block's max and both R; beyond, exact terms or the sums may overflow). The CPU tests check
// every call against the exact errors and the estimates against a quarter of the margin
// (tests/kernels/test_4over6_ref.cpp).
// Computed on magnitudes: with a = |x|, q = e2m1_round(min(a * enc, 6)) (enc >= 0) and
// d = fma(q, R, -a), whose magnitude is that of fma(+-q, R, -x) with q's sign taken from x * enc
// (round to nearest is sign-symmetric; a zero q gives |x| either way). The rounded magnitudes go
// to q[16] (the winner's codes and fake values come from them: nvfp4_code_word_from_rounded).
// kClamp false leaves out the clamp to 6 where no product reaches 7 (nvfp4_4over6_unclamped):
// e2m1_round rounds [6, 7) to 6, so the same q.
// The terms are summed as a tree (pairs, then pairs of pairs: 4 levels, against the exact
// errors' 15 sequential roundings), which keeps the bound — the estimate's own summation error is
// at most 4u of the sum, an MSE term's product one more u — and lets the GPU add 8 pairs at once
// instead of waiting on 16 dependent additions. Each half block's 8 terms are a 3-level tree
// (nvfp4_4over6_err_estimate8: the Four Over Six kernel that splits a block over two lanes adds
// the halves' sums), the block's estimate their sum.
template <bool kMse, bool kClamp = true>
FP4QAT_HD float nvfp4_4over6_err_estimate8(const float v[8], float enc, float unit, float q[8]) {
  float t[8];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int i = 0; i < 8; ++i) {
    const float a = fabsf(v[i]);
    q[i] = e2m1_round(kClamp ? fminf(a * enc, kE2M1Max) : a * enc);
    const float d = fmaf(q[i], unit, -a);
    t[i] = kMse ? d * d : fabsf(d);
  }
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}
template <bool kMse, bool kClamp = true>
FP4QAT_HD float nvfp4_4over6_err_estimate(const float v[16], float enc, float unit, float q[16]) {
  const float lo = nvfp4_4over6_err_estimate8<kMse, kClamp>(v, enc, unit, q);
  return lo + nvfp4_4over6_err_estimate8<kMse, kClamp>(v + 8, enc, unit, q + 8);
}
// Whether a block with max bmax needs no clamp under enc: fl is monotone, so every product
// fl(|x| * enc) <= fl(bmax * enc) < 7 (false for NaN).
FP4QAT_HD bool nvfp4_4over6_unclamped(float bmax, float enc) { return bmax * enc < 7.0f; }
// The margin's spread from the block's max, a bound of X = sum |x| (MAE: 16 bmax) or of
// Q = sum x^2 (MSE: 16 bmax^2): no pass over the elements. A tile's is the sum of its rows'.
template <bool kMse>
FP4QAT_HD float nvfp4_4over6_spread_bound(float bmax) {
  return kMse ? 16.0f * (bmax * bmax) : 16.0f * bmax;
}
template <bool kMse>
FP4QAT_HD float nvfp4_4over6_margin(float e6, float e4, float spread) {
  const float s = fmaxf(e6, e4);
  return (kMse ? 0x1p-18f * (sqrtf(spread) * sqrtf(s)) : 0x1p-19f * spread) + 0x1p-16f * s + 0x1p-120f;
}
// 1: the 4 candidate wins, 0: the 6 candidate (a tie keeps 6), -1: not certain.
template <bool kMse>
FP4QAT_HD int nvfp4_4over6_sure_choice(float e6, float e4, float spread, float big) {
  if (!(big < 0x1p56f)) return -1;  // also NaN
  const float m = nvfp4_4over6_margin<kMse>(e6, e4, spread);
  if (e4 < e6 - m) return 1;
  if (e4 > e6 + m) return 0;
  return -1;  // also a NaN estimate
}

// ---- MXFP8 scale rule (numerics.md: TransformerEngine's float_to_e8m0, ModelOpt's RCEIL) ------
// s = amax / 448; e8m0 = e + 1 if the mantissa m != 0, e < 0xFE and not (e == 0 and m <=
// 0x400000), else e: the scale rounded UP to a power of two, except that a subnormal s <= 2^-127
// keeps code 0, whose scale is the subnormal 2^-127 (e8m0_to_float). amax 0 -> code 0, and every
// element of such a block quantizes to 0. NaN/inf amax -> 0xFF (NaN).
FP4QAT_HD uint8_t mxfp8_scale_e8m0(float amax) {
  const uint32_t s = f2u(amax / kE4M3Max);
  const uint32_t e = (s >> 23) & 0xffu, m = s & 0x7fffffu;
  const bool up = m != 0u && e < 0xfeu && !(e == 0u && m <= 0x400000u);
  return static_cast<uint8_t>(up ? e + 1u : e);
}

}  // namespace fp4qat::fmt
