// kernels/nvfp4/quantize_dequantize.cu — NVFP4 dequantize: out[E, N, K] = e2m1(q) * sb * S_dec[e]
// (nvfp4_dequantize, kernels/cuda_kernels.h), bf16 or float32 out; nvfp4_decode's arithmetic
// (kernels/common/formats.h).
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/common/formats.h"
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels {

using namespace fp4qat::fmt;

namespace {

template <bool kBf16Out>
// Expert e0 + blockIdx.y (one S_dec per CTA, no division per block); a thread decodes half a
// block (8 elements: one 32-bit word of codes), so that a warp's stores cover 512 contiguous
// bytes per instruction (bf16 out).
__global__ void __launch_bounds__(kThreads)
    nvfp4_dequant_kernel(const uint8_t* codes, const uint8_t* scales, const float* s_dec, int64_t units_per_expert,
                         int64_t e0, void* out) {
  const int64_t e = e0 + blockIdx.y;
  const float sd = s_dec[e];
  const int64_t halves = 2 * units_per_expert;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < halves;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t hb = e * halves + i;  // half-block index: elements [8 hb, 8 hb + 8)
    const uint32_t word = __ldcs(reinterpret_cast<const uint32_t*>(codes) + hb);
    const float fsb = e4m3_to_float(scales[hb >> 1]);
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k)  // nvfp4_decode's order: (e2m1(q) * float(sb)) * S_dec, the first product exact
      v[k] = e2m1_to_float(static_cast<uint8_t>((word >> (4 * k)) & 0xf)) * fsb * sd;
    if constexpr (kBf16Out) {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // two roundings to nearest even in one conversion
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
        w[k] = *reinterpret_cast<const uint32_t*>(&h);
      }
      __stcs(reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + hb * 8), make_uint4(w[0], w[1], w[2], w[3]));
    } else {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(out) + hb * 8);
      __stcs(p, make_float4(v[0], v[1], v[2], v[3]));
      __stcs(p + 1, make_float4(v[4], v[5], v[6], v[7]));
    }
  }
}

}  // namespace

void nvfp4_dequantize(const uint8_t* codes, const uint8_t* scales, const float* s_dec, int64_t E, int64_t N, int64_t K,
                      void* out, bool out_bf16, cudaStream_t stream) {
  const int64_t per = N * (K / 16);
  if (E == 0 || per == 0) return;
  // grid.y: experts (at most 65535 a launch); grid.x: about 8 waves of CTAs over all of them.
  const int64_t gx =
      std::max<int64_t>(1, std::min<int64_t>((2 * per + kThreads - 1) / kThreads, (grid_for(2 * E * per) + E - 1) / E));
  for (int64_t e0 = 0; e0 < E; e0 += 65535) {
    const dim3 g(static_cast<unsigned>(gx), static_cast<unsigned>(std::min<int64_t>(65535, E - e0)));
    if (out_bf16)
      nvfp4_dequant_kernel<true><<<g, kThreads, 0, stream>>>(codes, scales, s_dec, per, e0, out);
    else
      nvfp4_dequant_kernel<false><<<g, kThreads, 0, stream>>>(codes, scales, s_dec, per, e0, out);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
