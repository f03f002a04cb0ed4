// kernels/model/vec8.cuh — the model kernels' 8-element vector access (elementwise.cu, rms_norm.cu):
// 8 consecutive elements at a 16-byte aligned address as one 16-byte access (bf16) or two
// (float32), widened to / rounded from float. Include only from .cu.
#pragma once
#include <cstdint>

#include "kernels/common/cuda_utils.cuh"
#include "kernels/loss/cross_entropy_ref.h"  // float_to_bf16

namespace fp4qat::cuda_kernels {

constexpr int kVec8 = 8;  // elements a vector access

// Widened to float. kStream: read once (evict first); else kept in cache.
template <bool kBf16, bool kStream>
__device__ __forceinline__ void load8(const void* base, int64_t i, float v[kVec8]) {
  if constexpr (kBf16) {
    const uint4* q = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i);
    unpack8<InType::BF16>(kStream ? __ldcs(q) : __ldg(q), v);
  } else {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
    const float4 a = kStream ? __ldcs(q) : __ldg(q), b = kStream ? __ldcs(q + 1) : __ldg(q + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

// Stored in the dtype (bf16: rounded to nearest even). Plain stores: the next kernel reads them soon.
template <bool kBf16>
__device__ __forceinline__ void store8(void* base, int64_t i, const float v[kVec8]) {
  if constexpr (kBf16) {
    uint32_t u[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      u[j] = loss::float_to_bf16(v[2 * j]) | (static_cast<uint32_t>(loss::float_to_bf16(v[2 * j + 1])) << 16);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i) = make_uint4(u[0], u[1], u[2], u[3]);
  } else {
    float4* q = reinterpret_cast<float4*>(static_cast<float*>(base) + i);
    q[0] = make_float4(v[0], v[1], v[2], v[3]);
    q[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

}  // namespace fp4qat::cuda_kernels
