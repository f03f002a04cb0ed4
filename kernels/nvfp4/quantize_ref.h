// kernels/nvfp4/quantize_ref.h — CPU reference of NVFP4 quantize/dequantize on float32 rows
// (numerics.md). Raw pointers, no torch: the CUDA kernels beside this file follow the same
// per-element arithmetic (kernels/common/formats.h) and are compared against it byte for byte.
#pragma once
#include <cstdint>

namespace fp4qat::ref {

// max |x| over n elements (order-independent, exact).
float amax(const float* x, int64_t n);

// Quantize x[M, K] (row-major, K % 16 == 0) with the given global amax.
//   blocks2d=false: 1x16 blocks; true: 16x16 tiles, each tile's scale written into its 16 rows
//   (rows past M count as zeros).
// Outputs: codes[M, K/2] (element 2i low nibble, 2i+1 high nibble), scales[M, K/16] (E4M3
// bytes, row-major, linear), *s_dec = 1 / S_enc.
void nvfp4_quantize(const float* x, int64_t M, int64_t K, float amax, bool blocks2d, uint8_t* codes, uint8_t* scales,
                    float* s_dec);

// out[M, K] = e2m1(q) * float(sb) * S_dec (float32).
void nvfp4_dequantize(const uint8_t* codes, const uint8_t* scales, float s_dec, int64_t M, int64_t K, float* out);

}  // namespace fp4qat::ref
