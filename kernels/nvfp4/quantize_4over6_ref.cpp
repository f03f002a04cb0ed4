// kernels/nvfp4/quantize_4over6_ref.cpp — see quantize_4over6_ref.h. Sequential loops in the
// spec's order (the error of a block is summed element by element, a tile's by a fixed tree).
#include "kernels/nvfp4/quantize_4over6_ref.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/formats.h"

namespace fp4qat::ref {

using namespace fp4qat::fmt;

namespace {

constexpr int B = kNvfp4Block;

float block_max(const float* xb) {
  float m = 0.0f;
  for (int j = 0; j < B; ++j) m = fmaxf(m, fabsf(xb[j]));
  return m;
}

// The 16 codes of one row's block with scale sb, packed into codes_b[8]; returns its error.
float encode_block(const float* xb, uint8_t sb, float s_dec, float amax, float six_m, bool mse, uint8_t* codes_b) {
  const float enc = nvfp4_block_enc(sb, s_dec), fsb = e4m3_to_float(sb);
  float err = 0.0f;
  for (int j = 0; j < B; j += 2) {
    const uint8_t lo = nvfp4_encode(xb[j], enc), hi = nvfp4_encode(xb[j + 1], enc);
    err += nvfp4_4over6_err(lo, fsb, amax, six_m, xb[j], mse);
    err += nvfp4_4over6_err(hi, fsb, amax, six_m, xb[j + 1], mse);
    codes_b[j / 2] = static_cast<uint8_t>(lo | (hi << 4));
  }
  return err;
}

// One row of 1x16 blocks with Four Over Six.
void row_4over6(const float* xr, int64_t K, float amax, float s_enc, float s_dec, const NVFP4Rule& o, uint8_t* codes_r,
                uint8_t* scales_r) {
  const float six_m = o.e4m3_max * kE2M1Max;
  uint8_t c6[B / 2], c4[B / 2];
  for (int64_t b = 0; b < K / B; ++b) {
    const float* xb = xr + b * B;
    uint8_t sb6, sb4;
    nvfp4_4over6_scales(block_max(xb), s_enc, &sb6, &sb4);
    const float e6 = encode_block(xb, sb6, s_dec, amax, six_m, o.mse, c6);
    const float e4 = encode_block(xb, sb4, s_dec, amax, six_m, o.mse, c4);
    const bool four = e4 < e6;  // strict: a tie keeps 6
    scales_r[b] = four ? sb4 : sb6;
    std::copy(four ? c4 : c6, (four ? c4 : c6) + B / 2, codes_r + b * (B / 2));
  }
}

}  // namespace

void nvfp4_quantize_4over6(const float* x, int64_t M, int64_t K, float amax, bool blocks2d, const NVFP4Rule& o,
                           uint8_t* codes, uint8_t* scales, float* s_dec_out) {
  const float s_enc = nvfp4_4over6_s_enc(amax, o.e4m3_max), s_dec = nvfp4_s_dec(s_enc);
  const int64_t nb = K / B;
  *s_dec_out = s_dec;
  if (!blocks2d) {
    for (int64_t r = 0; r < M; ++r)
      row_4over6(x + r * K, K, amax, s_enc, s_dec, o, codes + r * (K / 2), scales + r * nb);
    return;
  }
  const float six_m = o.e4m3_max * kE2M1Max;
  uint8_t c6[B][B / 2], c4[B][B / 2];
  for (int64_t r0 = 0; r0 < M; r0 += B) {
    const int64_t rows = std::min<int64_t>(B, M - r0);
    for (int64_t b = 0; b < nb; ++b) {
      float m = 0.0f;  // rows past M count as zeros: they cannot raise the max
      for (int64_t r = 0; r < rows; ++r) m = fmaxf(m, block_max(x + (r0 + r) * K + b * B));
      uint8_t sb6, sb4;
      nvfp4_4over6_scales(m, s_enc, &sb6, &sb4);
      float e6[B] = {}, e4[B] = {};  // per row; a row past M is all zeros and has error 0
      for (int64_t r = 0; r < rows; ++r) {
        const float* xb = x + (r0 + r) * K + b * B;
        e6[r] = encode_block(xb, sb6, s_dec, amax, six_m, o.mse, c6[r]);
        e4[r] = encode_block(xb, sb4, s_dec, amax, six_m, o.mse, c4[r]);
      }
      // The tile's error: the tree sum of its 16 rows' errors.
      for (int w = B / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) e6[i] = e6[i] + e6[i + w], e4[i] = e4[i] + e4[i + w];
      const bool four = e4[0] < e6[0];
      for (int64_t r = 0; r < rows; ++r) {
        scales[(r0 + r) * nb + b] = four ? sb4 : sb6;
        std::copy(four ? c4[r] : c6[r], (four ? c4[r] : c6[r]) + B / 2, codes + (r0 + r) * (K / 2) + b * (B / 2));
      }
    }
  }
}

void nvfp4_quantize_rows(const float* x, int64_t M, int64_t K, const NVFP4Rule& o, const float* row_amax,
                         uint8_t* codes, uint8_t* scales, float* s_dec) {
  const int64_t nb = K / B;
  for (int64_t r = 0; r < M; ++r) {
    const float* xr = x + r * K;
    float amax = 0.0f;
    if (row_amax)
      amax = row_amax[r];
    else
      for (int64_t k = 0; k < K; ++k) amax = fmaxf(amax, fabsf(xr[k]));
    if (o.four_over_six) {
      const float s_enc = nvfp4_4over6_s_enc(amax, o.e4m3_max);
      s_dec[r] = nvfp4_s_dec(s_enc);
      row_4over6(xr, K, amax, s_enc, s_dec[r], o, codes + r * (K / 2), scales + r * nb);
      continue;
    }
    const float s_enc = nvfp4_s_enc(amax), factor = nvfp4_block_factor(s_enc);
    s_dec[r] = nvfp4_s_dec(s_enc);
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = xr + b * B;
      const uint8_t sb = nvfp4_block_scale(block_max(xb), factor);
      scales[r * nb + b] = sb;
      const float enc = nvfp4_block_enc(sb, s_dec[r]);
      for (int j = 0; j < B; j += 2)
        codes[r * (K / 2) + b * (B / 2) + j / 2] =
            static_cast<uint8_t>(nvfp4_encode(xb[j], enc) | (nvfp4_encode(xb[j + 1], enc) << 4));
    }
  }
}

}  // namespace fp4qat::ref
