// kernels/common/cuda_utils.cuh — device helpers shared by the CUDA kernels: exact widening
// 16-element loads (bf16/f16/f32) from global or shared memory with a cache policy (Src), warp
// and block max reductions, grid sizing. Include only from .cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/common/cuda_check.h"
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
// 8 consecutive 16-bit elements (one 16-byte word, element 2j in the low half of word j) widened.
template <InType T>
__device__ __forceinline__ void unpack8(const uint4& u, float v[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (T == InType::BF16)
      unpack_bf16x2(w[j], v[2 * j], v[2 * j + 1]);
    else
      unpack_f16x2(w[j], v[2 * j], v[2 * j + 1]);
  }
}

// Where a 16-byte load comes from and how it treats the caches:
//   kCached     global, cache in L2 only (ld.global.cg): data read again soon
//   kStreaming  global, evict-first (ld.global.cs): data read once
//   kEvictLast  global, L2 evict-last policy: kept in L2 for a second read (two-pass kernels)
//   kLastUse    global, then the 128-byte line is demoted to evict-normal (the second read)
//   kShared     shared memory (plain vector load)
enum class Src { kCached, kStreaming, kEvictLast, kLastUse, kShared };

__device__ __forceinline__ uint64_t l2_evict_last_policy() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}

template <Src S>
__device__ __forceinline__ uint4 load_u4(const uint4* p, uint64_t pol) {
  if constexpr (S == Src::kCached) return __ldcg(p);
  if constexpr (S == Src::kStreaming) return __ldcs(p);
  if constexpr (S == Src::kShared) return *p;
  if constexpr (S == Src::kEvictLast) {
    uint4 u;
    asm volatile("ld.global.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "l"(p), "l"(pol));
    return u;
  }
  if constexpr (S == Src::kLastUse) {
    const uint4 u = __ldcg(p);
    // One demotion per 128-byte line (8 of these 16-byte loads), by the load at its start.
    if ((reinterpret_cast<uintptr_t>(p) & 127) == 0)
      asm volatile("applypriority.global.L2::evict_normal [%0], 128;" ::"l"(p));
    return u;
  }
}

// 16 consecutive elements at `base + elem` widened exactly to float32. `pol` is the L2 policy
// for Src::kEvictLast (l2_evict_last_policy()), unused otherwise.
template <InType T, Src S = Src::kCached>
__device__ __forceinline__ void load16(const void* base, int64_t elem, float v[16], uint64_t pol = 0) {
  if constexpr (T == InType::F32) {
    const uint4* p = reinterpret_cast<const uint4*>(static_cast<const float*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint4 u = load_u4<S>(p + i, pol);
      v[4 * i] = __uint_as_float(u.x);
      v[4 * i + 1] = __uint_as_float(u.y);
      v[4 * i + 2] = __uint_as_float(u.z);
      v[4 * i + 3] = __uint_as_float(u.w);
    }
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + elem);
#pragma unroll
    for (int i = 0; i < 2; ++i) unpack8<T>(load_u4<S>(p + i, pol), v + 8 * i);
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

// Block-wide max over a CTA of kTh threads; result valid in thread 0. smem: kTh / 32 floats.
template <int kTh = kThreads>
__device__ __forceinline__ float block_max(float v, float* smem) {
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = 0.0f;
  if (threadIdx.x < 32) {
    m = threadIdx.x < kTh / 32 ? smem[threadIdx.x] : 0.0f;
    m = warp_max(m);
  }
  __syncthreads();
  return m;
}

// A 16-byte aligned address (one uint4 / float4 access).
__host__ __device__ __forceinline__ bool aligned16(const void* x) { return (reinterpret_cast<uintptr_t>(x) & 15) == 0; }

// The current device's SM count, asked once per device (every elementwise launch sizes its grid
// with it: a driver call each time was ~200 calls a training step).
inline int num_sms() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  int dev = 0;
  FP4QAT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < kMaxDevices) {
    if (const int n = cached[dev].load(std::memory_order_relaxed); n > 0) return n;
  }
  int n = 0;
  FP4QAT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < kMaxDevices) cached[dev].store(n, std::memory_order_relaxed);
  return n;
}

inline int64_t grid_for(int64_t units) {
  return std::max<int64_t>(1, std::min<int64_t>((units + kThreads - 1) / kThreads, num_sms() * 16));
}

}  // namespace fp4qat::cuda_kernels
