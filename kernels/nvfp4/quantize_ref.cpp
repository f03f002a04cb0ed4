// kernels/nvfp4/quantize_ref.cpp — CPU reference NVFP4 (see quantize_ref.h). Rows are
// independent, so they are split across threads with at::parallel_for; results do not depend on
// the split.
#include "kernels/nvfp4/quantize_ref.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/common/formats.h"

namespace fp4qat::ref {

using namespace fp4qat::fmt;

float amax(const float* x, int64_t n) {
  // Per-chunk maxima then a max of those: max is exact, so any split gives the same bits.
  const int64_t grain = 1 << 16;
  const int64_t chunks = (n + grain - 1) / grain;
  std::vector<float> part(static_cast<size_t>(std::max<int64_t>(chunks, 1)), 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float m = 0.0f;
      const int64_t end = std::min(n, (c + 1) * grain);
      for (int64_t i = c * grain; i < end; ++i) m = fmaxf(m, fabsf(x[i]));
      part[static_cast<size_t>(c)] = m;
    }
  });
  float m = 0.0f;
  for (float p : part) m = fmaxf(m, p);
  return m;
}

namespace {

// Encode one row's 16-element block given its scale byte.
inline void encode_block(const float* xb, uint8_t sb, float s_dec, uint8_t* codes_b) {
  const float enc = nvfp4_block_enc(sb, s_dec);
  for (int j = 0; j < kNvfp4Block; j += 2) {
    const uint8_t lo = nvfp4_encode(xb[j], enc);
    const uint8_t hi = nvfp4_encode(xb[j + 1], enc);
    codes_b[j / 2] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

inline float block_max(const float* xb) {
  float m = 0.0f;
  for (int j = 0; j < kNvfp4Block; ++j) m = fmaxf(m, fabsf(xb[j]));
  return m;
}

}  // namespace

void nvfp4_quantize(const float* x, int64_t M, int64_t K, float amax_v, bool blocks2d, uint8_t* codes, uint8_t* scales,
                    float* s_dec_out) {
  const float s_enc = nvfp4_s_enc(amax_v);
  const float s_dec = nvfp4_s_dec(s_enc);
  const float factor = nvfp4_block_factor(s_enc);
  const int64_t nb = K / kNvfp4Block;
  *s_dec_out = s_dec;
  if (!blocks2d) {
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
          const float* xb = x + r * K + b * kNvfp4Block;
          const uint8_t sb = nvfp4_block_scale(block_max(xb), factor);
          scales[r * nb + b] = sb;
          encode_block(xb, sb, s_dec, codes + r * (K / 2) + b * (kNvfp4Block / 2));
        }
      }
    });
    return;
  }
  // 2D: one scale per 16x16 tile, replicated into each of the tile's rows.
  const int64_t tiles_m = (M + kNvfp4Block - 1) / kNvfp4Block;
  at::parallel_for(0, tiles_m, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r_begin = t * kNvfp4Block;
      const int64_t r_end = std::min(M, r_begin + kNvfp4Block);
      for (int64_t b = 0; b < nb; ++b) {
        float m = 0.0f;  // rows past M count as zeros: they cannot raise the max
        for (int64_t r = r_begin; r < r_end; ++r) m = fmaxf(m, block_max(x + r * K + b * kNvfp4Block));
        const uint8_t sb = nvfp4_block_scale(m, factor);
        for (int64_t r = r_begin; r < r_end; ++r) {
          scales[r * nb + b] = sb;
          encode_block(x + r * K + b * kNvfp4Block, sb, s_dec, codes + r * (K / 2) + b * (kNvfp4Block / 2));
        }
      }
    }
  });
}

void nvfp4_dequantize(const uint8_t* codes, const uint8_t* scales, float s_dec, int64_t M, int64_t K, float* out) {
  const int64_t nb = K / kNvfp4Block;
  at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        const uint8_t byte = codes[r * (K / 2) + k / 2];
        const uint8_t code = (k & 1) ? (byte >> 4) : (byte & 0xf);
        out[r * K + k] = nvfp4_decode(code, scales[r * nb + k / kNvfp4Block], s_dec);
      }
    }
  });
}

}  // namespace fp4qat::ref
