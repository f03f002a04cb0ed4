// kernels/mxfp8/quantize_ref.h — CPU reference of MXFP8 quantize/dequantize (numerics.md:
// 1x32 blocks, E8M0 scale rounded UP to a power of two, E4M3 elements). Raw pointers, no torch.
#pragma once
#include <cstdint>

namespace fp4qat::ref {

// MXFP8: x[M, K] (K % 32 == 0) -> q[M, K] E4M3 bytes, scales[M, K/32] E8M0 bytes.
void mxfp8_quantize(const float* x, int64_t M, int64_t K, uint8_t* q, uint8_t* scales);
// out[M, K] = e4m3(q) * 2^(e8m0 - 127).
void mxfp8_dequantize(const uint8_t* q, const uint8_t* scales, int64_t M, int64_t K, float* out);

}  // namespace fp4qat::ref
