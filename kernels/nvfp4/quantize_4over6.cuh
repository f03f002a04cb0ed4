// kernels/nvfp4/quantize_4over6.cuh — device pieces of Four Over Six (docs/spec/numerics.md)
// shared by the rule kernels (quantize_rules.cu) and the one-read kernel's Four Over Six form
// (quantize_onepass.cuh, quantize_staged.cuh): one candidate's codes and error from a table of its
// 8 reconstructions, the choice of the one-read 1D kernel from error estimates where they are
// certain (formats.h), the tables, the winner's outputs. The exact errors are summed
// in the CPU reference's order (kernels/nvfp4/quantize_4over6_ref.cpp): the same choice, the same
// bytes. Include only from .cu.
#pragma once

#include "kernels/nvfp4/quantize_common.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

// One Four Over Six candidate of a block: its codes (packed, element 2i low nibble), the
// decoded magnitude of its scale byte, and its error — the terms of nvfp4_4over6_err summed in
// element order. The term's reconstruction ((e2m1(q) * fsb) * amax) / (6M) takes 8 magnitudes a
// block scale, so it is looked up in t[8] (rec8 below: 8 correctly rounded divisions a block
// scale) by the code's 3 magnitude bits; a negative code's is the exact negation (IEEE rounding
// is sign-symmetric: (-a * b) * c / d = -(a * b * c / d)).
struct Candidate {
  uint32_t packed[2];
  float fsb, err;
};
__device__ __forceinline__ float pick8(const float t[8], uint32_t k) {
  const float a = (k & 1u) ? t[1] : t[0], b = (k & 1u) ? t[3] : t[2];
  const float c = (k & 1u) ? t[5] : t[4], d = (k & 1u) ? t[7] : t[6];
  const float ab = (k & 2u) ? b : a, cd = (k & 2u) ? d : c;
  return (k & 4u) ? cd : ab;
}
// t[k] = ((e2m1(k) * fsb) * amax) / six_m, k = 0..7: the reconstructions of a block scale.
__device__ __forceinline__ void rec8(float fsb, float amax, float six_m, float t[8]) {
#pragma unroll
  for (uint32_t k = 0; k < 8; ++k) t[k] = ((e2m1_to_float(static_cast<uint8_t>(k)) * fsb) * amax) / six_m;
}
// The candidate with encode multiplier enc (nvfp4_block_enc of its scale byte), decoded scale
// fsb and reconstructions t.
template <bool kMse>
__device__ __forceinline__ Candidate candidate_from(const float v[16], float enc, float fsb, const float t[8]) {
  Candidate c;
  c.fsb = fsb;
  c.packed[0] = c.packed[1] = 0u;
  c.err = 0.0f;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const uint32_t q = nvfp4_encode_u32(v[i], enc);
    c.packed[i >> 3] |= q << (4 * (i & 7));
    const float r = pick8(t, q);
    const float d = ((q & 8u) ? -r : r) - v[i];
    c.err += kMse ? d * d : fabsf(d);
  }
  return c;
}
__device__ __forceinline__ Candidate candidate(const float v[16], uint8_t sb, float s_dec, float amax, float six_m,
                                               bool mse) {
  const float fsb = e4m3_to_float(sb);
  float t[8];
  rec8(fsb, amax, six_m, t);
  const float enc = nvfp4_block_enc(sb, s_dec);
  return mse ? candidate_from<true>(v, enc, fsb, t) : candidate_from<false>(v, enc, fsb, t);
}

// A chosen candidate's outputs: its codes and scale byte, and the fake values e2m1(q) * fsb from
// the codes (the definition nvfp4_fake_value computes without them; exact in bf16).
__device__ __forceinline__ void emit_candidate(const Candidate& c, uint8_t sb, int64_t unit, uint8_t* codes,
                                               uint8_t* scales, uint16_t* fake) {
  if (codes || scales) store_codes(c.packed, sb, unit, codes, scales);
  if (fake) {
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t q0 = (c.packed[i >> 2] >> (8 * (i & 3))) & 0xFu,
                     q1 = (c.packed[i >> 2] >> (8 * (i & 3) + 4)) & 0xFu;
      w[i] = __byte_perm(__float_as_uint(e2m1_to_float(static_cast<uint8_t>(q0)) * c.fsb),
                         __float_as_uint(e2m1_to_float(static_cast<uint8_t>(q1)) * c.fsb), 0x7632);
    }
    store_fake_words(w, unit, fake);
  }
}

// ---- Tables per amax (one global scale: an expert, a tensor) --------------------------------
// Both candidates' scale bytes are e4m3_rne of a value in [0, 448] (or NaN): bytes 0..0x7F. For
// one amax, every block's candidates are then looked up in
//   enc[b] = nvfp4_block_enc(b, S_dec)                      b = 0..127
//   rec[8 * b + k] = ((e2m1(k) * float(b)) * amax) / (6M)   k = 0..7
// (128 + 1024 correctly rounded divisions an amax instead of 2 + 16 a block). Indexes are masked
// to 7 bits: a byte >= 0x80 (a NaN scale from a NaN input, which user-facing paths refuse before)
// reads some entry instead of memory past the table.
constexpr int kLutEnc = 128, kLutRec = 128 * 8;
__device__ __forceinline__ int lut_index(uint8_t sb) { return sb & 0x7F; }
// The slim tables of one amax (prepare_head_4over6<.., true>) in shared memory: enc (kLutEnc
// entries), then one (kLutEnc entries), by the 32-bit shared address of the first — one register a
// thread, each look-up an offset from it (a generic pointer was rebuilt from the CTA's cluster rank
// at every block).
struct SlimLut {
  uint32_t base;
  __device__ __forceinline__ float at(int i) const {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(base + 4u * static_cast<uint32_t>(i)));
    return v;
  }
  __device__ __forceinline__ float enc(int i) const { return at(i); }
  __device__ __forceinline__ float one(int i) const { return at(kLutEnc + i); }
};
// Entry i of the tables (i < kLutEnc + kLutRec: enc first, then rec).
__device__ __forceinline__ float lut_entry(int i, float amax, float s_dec, float six_m) {
  if (i < kLutEnc) return nvfp4_block_enc(static_cast<uint8_t>(i), s_dec);
  const int j = i - kLutEnc, b = j >> 3, k = j & 7;
  return ((e2m1_to_float(static_cast<uint8_t>(k)) * e4m3_to_float(static_cast<uint8_t>(b))) * amax) / six_m;
}
// Element i's code word (its code << 22, the low 22 bits zero: nvfp4_code_word_from_rounded) into
// nibble i of packed[2], by a shift without a mask (i is a compile-time index after unrolling).
__device__ __forceinline__ void add_code_word(uint32_t packed[2], int i, uint32_t w) {
  const int s = 4 * (i & 7);
  packed[i >> 3] += s <= 22 ? w >> (22 - s) : w << (s - 22);
}
// The outputs of a block from the rounded magnitudes of its chosen candidate (q: the estimate's,
// e2m1_round(min(|x| * enc, 6))), without encoding again: the codes by
// nvfp4_code_word_from_rounded, the fake values q * (x < 0 ? -fsb : fsb) (nvfp4_fake_value's sign is
// that of x * enc) — the bytes of emit_block_enc where no |x| * enc underflows to 0 (the caller's
// condition).
__device__ __forceinline__ void emit_rounded(const float v[16], const float q[16], uint8_t sb, int64_t unit,
                                             uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  if (codes || scales) {
    uint32_t packed[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 16; ++i) add_code_word(packed, i, nvfp4_code_word_from_rounded(v[i], q[i]));
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) {
    const float fsb = e4m3_to_float(sb);
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
      w[i] = __byte_perm(__float_as_uint(q[2 * i] * (v[2 * i] < 0.0f ? -fsb : fsb)),
                         __float_as_uint(q[2 * i + 1] * (v[2 * i + 1] < 0.0f ? -fsb : fsb)), 0x7632);
    store_fake_words(w, unit, fake);
  }
}

// The same outputs for bf16 input, from its raw pairs (raw[i]: element 2i low, 2i + 1 high; the
// values v of emit_rounded are exact in float32), two elements at a time: the codes' signs by
// nvfp4_sign_nibbles (4 permutes and 2 logic ops a word instead of a compare and a select an
// element), the codes' magnitudes by one bf16x2 product a pair of elements j, j + 4 (a permute and
// a product for two codes instead of a product and a shift-add each), the fake values as bf16 pairs
// q * fsb (exact: at most 6 significant bits in [2^-10, 2688]) by one bf16x2 fma with -0.0 (+0
// stays +0), the sign ORed in from the raw pair. Same bytes as emit_rounded.
__device__ __forceinline__ uint32_t bf16x2_mul_exact(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  return d;
}
__device__ __forceinline__ void emit_rounded_bf16(const uint32_t raw[8], const float q[16], uint8_t sb, int64_t unit,
                                                  uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  uint32_t neg[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) neg[i] = bf16x2_negative_bits(raw[i]);
  if (codes || scales) {
    uint32_t packed[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // c[j]: the magnitude codes of elements 8h + j (bits 6-8) and 8h + j + 4 (bits 22-24), by one
      // bf16x2 product of the pair (q exact in bf16) with 2^-126: 0.5 becomes the subnormal 2^-127.
      uint32_t c[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        c[j] = bf16x2_mul_exact(__byte_perm(__float_as_uint(q[8 * h + j]), __float_as_uint(q[8 * h + j + 4]), 0x7632),
                                0x00800080u);
      // nibble j and j + 4 from c[j], shifted by 4j - 6 (the fields do not overlap: a sum)
      packed[h] = ((c[0] >> 6) + (c[1] >> 2) + (c[2] << 2) + (c[3] << 6)) | nvfp4_sign_nibbles(neg + 4 * h);
    }
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) {
    const uint32_t f2 = __byte_perm(__float_as_uint(e4m3_to_float(sb)), 0u, 0x3232);  // fsb, fsb as bf16 (exact)
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t qp = __byte_perm(__float_as_uint(q[2 * i]), __float_as_uint(q[2 * i + 1]), 0x7632);  // exact
      w[i] = bf16x2_mul_exact(qp, f2) | (neg[i] & 0x80008000u);
    }
    store_fake_words(w, unit, fake);
  }
}

// A block's Four Over Six choice with the tables of its amax (enc, rec: 16-byte aligned), its
// outputs written: both candidates' exact errors (table look-ups), the smaller wins (the rule
// kernels).
template <bool kMse>
__device__ __forceinline__ void four_over_six_block_lut(const float v[16], float bmax, float s_enc, const float* enc,
                                                        const float* rec, int64_t unit, uint8_t* codes,
                                                        uint8_t* scales, uint16_t* fake) {
  uint8_t sb6, sb4;
  nvfp4_4over6_scales(bmax, s_enc, &sb6, &sb4);
  const int i6 = lut_index(sb6), i4 = lut_index(sb4);
  float t6[8], t4[8];
  const float4* p6 = reinterpret_cast<const float4*>(rec + 8 * i6);
  const float4* p4 = reinterpret_cast<const float4*>(rec + 8 * i4);
  const float4 a6 = p6[0], b6 = p6[1], a4 = p4[0], b4 = p4[1];
  t6[0] = a6.x, t6[1] = a6.y, t6[2] = a6.z, t6[3] = a6.w, t6[4] = b6.x, t6[5] = b6.y, t6[6] = b6.z, t6[7] = b6.w;
  t4[0] = a4.x, t4[1] = a4.y, t4[2] = a4.z, t4[3] = a4.w, t4[4] = b4.x, t4[5] = b4.y, t4[6] = b4.z, t4[7] = b4.w;
  const Candidate c6 = candidate_from<kMse>(v, enc[i6], e4m3_to_float(sb6), t6);
  const Candidate c4 = candidate_from<kMse>(v, enc[i4], e4m3_to_float(sb4), t4);
  if (c4.err < c6.err)
    emit_candidate(c4, sb4, unit, codes, scales, fake);
  else
    emit_candidate(c6, sb6, unit, codes, scales, fake);
}

// The same choice and bytes from error estimates (the one-read staged2 kernel, compute bound), with
// the slim tables of its amax: enc (kLutEnc entries) and one[b] = rec[8b + 2], the reconstruction
// of code 1.0 (prepare_head_4over6<.., true>). Candidates with one scale byte are one candidate
// (the tie keeps 6); otherwise the errors are estimated (formats.h nvfp4_4over6_err_estimate: no
// codes, no look-ups, R = one[b]; the clamp left out where no product reaches 7) and the exact
// errors are computed only where the estimates cannot call the choice (ties, near-ties:
// nvfp4_4over6_sure_choice), their reconstructions then made on the spot (rec8: the tables'
// entries, from amax and six_m). The winner's outputs come from the estimate's rounded magnitudes
// where no product underflows (tiny: the input type's smallest positive value; tiny * enc > 0
// bounds every nonzero |x| * enc away from 0), else by encoding again. Both give the exact errors'
// choice and emit_block_enc's bytes, so the same bytes. kBf16: the input is bf16, raw its 8 raw pairs
// (emit_rounded_bf16; v the same values in float32).
template <bool kMse, bool kBf16 = false>
__device__ __forceinline__ void four_over_six_block_est(const float v[16], float bmax, float s_enc, SlimLut lut,
                                                        float amax, float six_m, int64_t unit,
                                                        uint8_t* codes, uint8_t* scales, uint16_t* fake, float tiny,
                                                        const uint32_t* raw = nullptr) {
  uint8_t sb6, sb4;
  nvfp4_4over6_scales(bmax, s_enc, &sb6, &sb4);
  const int i6 = lut_index(sb6), i4 = lut_index(sb4);
  const float enc6 = lut.enc(i6), enc4 = lut.enc(i4);
  bool four = false;
  if (sb6 != sb4) {
    const float r6 = lut.one(i6), r4 = lut.one(i4);
    float q6[16], q4[16], e6, e4;
    if (nvfp4_4over6_unclamped(bmax, enc6) && nvfp4_4over6_unclamped(bmax, enc4)) {
      e6 = nvfp4_4over6_err_estimate<kMse, false>(v, enc6, r6, q6);
      e4 = nvfp4_4over6_err_estimate<kMse, false>(v, enc4, r4, q4);
    } else {
      e6 = nvfp4_4over6_err_estimate<kMse, true>(v, enc6, r6, q6);
      e4 = nvfp4_4over6_err_estimate<kMse, true>(v, enc4, r4, q4);
    }
    const int sure =
        nvfp4_4over6_sure_choice<kMse>(e6, e4, nvfp4_4over6_spread_bound<kMse>(bmax), fmaxf(bmax, fmaxf(r6, r4)));
    if (sure >= 0) {
      four = sure == 1;
      if (tiny * (four ? enc4 : enc6) > 0.0f) {
        float q[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) q[i] = four ? q4[i] : q6[i];
        if constexpr (kBf16)
          emit_rounded_bf16(raw, q, four ? sb4 : sb6, unit, codes, scales, fake);
        else
          emit_rounded(v, q, four ? sb4 : sb6, unit, codes, scales, fake);
        return;
      }
    } else {  // the exact errors (rare): the tables' reconstructions of the two scale bytes
      float t6[8], t4[8];
      rec8(e4m3_to_float(static_cast<uint8_t>(i6)), amax, six_m, t6);
      rec8(e4m3_to_float(static_cast<uint8_t>(i4)), amax, six_m, t4);
      four = candidate_from<kMse>(v, enc4, e4m3_to_float(sb4), t4).err <
             candidate_from<kMse>(v, enc6, e4m3_to_float(sb6), t6).err;
    }
  }
  emit_block_enc(v, four ? sb4 : sb6, four ? enc4 : enc6, unit, codes, scales, fake);
}

// Four Over Six on 16x16 tiles, a half-warp a tile: lane i holds row i's 16 elements of the tile's
// column block (zeros for rows past the tensor: valid false). The tile max by xor-shuffles, both
// candidates per row from the tables of the tile's amax (enc, rec), the tile errors by the spec's
// tree (lane i adds lane i + 8, then + 4, + 2, + 1), one choice for the tile, each valid row's
// outputs written. Every lane of the warp calls it (the shuffles need all 32); a half without a
// tile passes valid false and any s_enc and tables.
template <bool kMse>
__device__ __forceinline__ void four_over_six_tile(const float v[16], bool valid, float s_enc, const float* enc,
                                                   const float* rec, int64_t unit, uint8_t* codes, uint8_t* scales,
                                                   uint16_t* fake) {
  float m = max16(v);
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o, 16));
  uint8_t sb6, sb4;
  nvfp4_4over6_scales(m, s_enc, &sb6, &sb4);
  const int i6 = lut_index(sb6), i4 = lut_index(sb4);
  float t6[8], t4[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) t6[k] = rec[8 * i6 + k], t4[k] = rec[8 * i4 + k];
  const Candidate c6 = candidate_from<kMse>(v, enc[i6], e4m3_to_float(sb6), t6);
  const Candidate c4 = candidate_from<kMse>(v, enc[i4], e4m3_to_float(sb4), t4);
  float e6 = c6.err, e4 = c4.err;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) {
    const float d6 = __shfl_down_sync(0xffffffffu, e6, o, 16), d4 = __shfl_down_sync(0xffffffffu, e4, o, 16);
    e6 = e6 + d6;  // meaningful in lanes < o: rows[i] + rows[i + o]
    e4 = e4 + d4;
  }
  const bool four = __shfl_sync(0xffffffffu, e4 < e6 ? 1 : 0, 0, 16) != 0;
  if (valid) {
    if (four)
      emit_candidate(c4, sb4, unit, codes, scales, fake);
    else
      emit_candidate(c6, sb6, unit, codes, scales, fake);
  }
}

// The one-read kernels' Four Over Six (staged2 1D, staged 2D; a.rule): a slice's S_enc (with
// M = a.rule.e4m3_max), its S_dec (written by the group's first slice), and the tables of its amax
// (shared memory): enc_lut (kLutEnc) and rec_lut — kSlim false: all of rec (kLutRec, the tiles'
// exact errors); kSlim true: the reconstructions of code 1.0 only (kLutEnc: entry b is rec[8b + 2],
// all four_over_six_block_est looks up). Made only when the amax differs from the one they were
// made for (tag, the amax bits, initially a NaN's: a register every thread keeps alike; consecutive
// slices of a CTA are mostly of other experts); then followed by a barrier, which is the only one.
// All threads; the caller's barriers keep the last tables' readers before this.
template <int kTh, bool kSlim = false>
__device__ __forceinline__ float prepare_head_4over6(float amax, bool first, int g, const Nvfp4Args& a,
                                                     float* enc_lut, float* rec_lut, uint32_t& tag) {
  const float s_enc = nvfp4_4over6_s_enc(amax, a.rule.e4m3_max);
  const float s_dec = nvfp4_s_dec(s_enc);
  if (first && threadIdx.x == 0) a.s_dec[g] = s_dec;
  if (tag != __float_as_uint(amax)) {  // the same in every thread: a uniform branch
    const float six_m = a.rule.e4m3_max * kE2M1Max;
    constexpr int kRec = kSlim ? kLutEnc : kLutRec;
    for (int i = threadIdx.x; i < kLutEnc + kRec; i += kTh) {
      // slim: entry b of rec_lut is lut_entry's rec[8b + 2]
      const int j = i < kLutEnc || !kSlim ? i : kLutEnc + 8 * (i - kLutEnc) + 2;
      const float v = lut_entry(j, amax, s_dec, six_m);
      if (i < kLutEnc)
        enc_lut[i] = v;
      else
        rec_lut[i - kLutEnc] = v;
    }
    tag = __float_as_uint(amax);
    __syncthreads();
  }
  return s_enc;
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
