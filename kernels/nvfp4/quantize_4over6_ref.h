// kernels/nvfp4/quantize_4over6_ref.h — CPU reference of the 2026 NVFP4 variants of
// docs/spec/numerics.md on float32 rows: Four Over Six block scales (1x16 blocks or 16x16 tiles,
// MAE or MSE, E4M3 bound M = 448 or 256) and row-scaled (per-token) global scales, with or
// without Four Over Six. Same layouts as quantize_ref.h; raw pointers, no torch. The arithmetic
// lives in kernels/common/formats.h, shared with the CUDA kernels to come.
#pragma once
#include <cstdint>

#include "kernels/common/nvfp4_rule.h"

namespace fp4qat::ref {

// Four Over Six (rule.e4m3_max, rule.mse; rule.four_over_six and row_scaled are not read) of
// x[M, K] (K % 16 == 0) with the given global amax (the tensor's, or a shared one): codes[M, K/2],
// scales[M, K/16], *s_dec = 1 / S_enc. blocks2d: 16x16 tiles (rows past M count as zeros), one
// choice per tile from the tree sum of its rows' errors.
void nvfp4_quantize_4over6(const float* x, int64_t M, int64_t K, float amax, bool blocks2d, const NVFP4Rule& rule,
                           uint8_t* codes, uint8_t* scales, float* s_dec);

// Row-scaled global scales (1x16 blocks): each row quantized as its own tensor with its own
// amax (row_amax[M], or max |row| when null); s_dec[M]. rule.four_over_six false: the max6 rule,
// else Four Over Six with the row's amax.
void nvfp4_quantize_rows(const float* x, int64_t M, int64_t K, const NVFP4Rule& rule, const float* row_amax,
                         uint8_t* codes, uint8_t* scales, float* s_dec);

}  // namespace fp4qat::ref
