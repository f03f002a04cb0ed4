// kernels/nvfp4/quantize_4over6_ref.h — CPU reference of the 2026 NVFP4 variants of
// docs/spec/numerics.md on float32 rows: Four Over Six block scales (1x16 blocks or 16x16 tiles,
// MAE or MSE, E4M3 bound M = 448 or 256) and row-scaled (per-token) global scales, with or
// without Four Over Six. Same layouts as quantize_ref.h; raw pointers, no torch. The arithmetic
// lives in kernels/common/formats.h, shared with the CUDA kernels to come.
#pragma once
#include <cstdint>

namespace fp4qat::ref {

struct FourOverSix {
  float e4m3_max = 256.0f;  // M: 256 (TransformerEngine's default) or 448 (FlashInfer's)
  bool mse = false;         // the block error: MAE (default) or MSE
};

// x[M, K] (K % 16 == 0) with the given global amax (the tensor's): codes[M, K/2],
// scales[M, K/16], *s_dec = 1 / S_enc. blocks2d: 16x16 tiles (rows past M count as zeros), one
// choice per tile from the tree sum of its rows' errors.
void nvfp4_quantize_4over6(const float* x, int64_t M, int64_t K, float amax, bool blocks2d, const FourOverSix& o,
                           uint8_t* codes, uint8_t* scales, float* s_dec);

// Row-scaled global scales (1x16 blocks): each row quantized as its own tensor with its own
// amax; s_dec[M]. four_over_six null: the max6 rule, else Four Over Six with the row's amax.
void nvfp4_quantize_rows(const float* x, int64_t M, int64_t K, const FourOverSix* four_over_six, uint8_t* codes,
                         uint8_t* scales, float* s_dec);

}  // namespace fp4qat::ref
