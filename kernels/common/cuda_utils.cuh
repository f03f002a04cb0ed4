// kernels/common/cuda_utils.cuh — device helpers shared by the CUDA kernels: exact widening
// 16-element loads (bf16/f16/f32), warp/block max reductions, grid sizing. Include only from .cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- loads: 16 consecutive elements widened exactly to float32 ------------------------------
__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);
  hi = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void unpack_f16x2(uint32_t w, float& lo, float& hi) {
  lo = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
  hi = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}

template <InType T, bool kStreaming>
__device__ __forceinline__ void load16(const void* base, int64_t elem, float v[16]) {
  if constexpr (T == InType::F32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 f = kStreaming ? __ldcs(p + i) : __ldcg(p + i);
      v[4 * i] = f.x;
      v[4 * i + 1] = f.y;
      v[4 * i + 2] = f.z;
      v[4 * i + 3] = f.w;
    }
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 u = kStreaming ? __ldcs(p + i) : __ldcg(p + i);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (T == InType::BF16) unpack_bf16x2(w[j], v[8 * i + 2 * j], v[8 * i + 2 * j + 1]);
        else unpack_f16x2(w[j], v[8 * i + 2 * j], v[8 * i + 2 * j + 1]);
      }
    }
  }
}

// The same 16-element widening load from shared memory (plain vector loads).
template <InType T>
__device__ __forceinline__ void load16_shared(const void* base, int64_t elem, float v[16]) {
  if constexpr (T == InType::F32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 f = p[i];
      v[4 * i] = f.x;
      v[4 * i + 1] = f.y;
      v[4 * i + 2] = f.z;
      v[4 * i + 3] = f.w;
    }
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 u = p[i];
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (T == InType::BF16) unpack_bf16x2(w[j], v[8 * i + 2 * j], v[8 * i + 2 * j + 1]);
        else unpack_f16x2(w[j], v[8 * i + 2 * j], v[8 * i + 2 * j + 1]);
      }
    }
  }
}

__device__ __forceinline__ float max16(const float v[16]) {
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < 16; ++i) m = fmaxf(m, fabsf(v[i]));
  return m;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide max; result valid in thread 0.
__device__ __forceinline__ float block_max(float v, float* smem) {
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = 0.0f;
  if (threadIdx.x < 32) {
    m = threadIdx.x < kWarps ? smem[threadIdx.x] : 0.0f;
    m = warp_max(m);
  }
  __syncthreads();
  return m;
}

inline int num_sms() {
  int dev = 0, n = 0;
  FP4QAT_CUDA_CHECK(cudaGetDevice(&dev));
  FP4QAT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

inline int64_t grid_for(int64_t units) { return std::max<int64_t>(1, std::min<int64_t>((units + kThreads - 1) / kThreads, num_sms() * 16)); }


}  // namespace fp4qat::cuda_kernels
