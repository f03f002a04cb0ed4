// kernels/nvfp4/quantize_common.cuh — device helpers shared by the NVFP4 quantize kernels
// (kernels/nvfp4/quantize_*.cu, bench/dev/): writing a block's outputs (codes, scale byte, fake
// values), bf16 block max, binary search, shared-memory block loads, and the residency query of
// the persistent launchers. Per-element arithmetic is kernels/common/formats.h. Include only
// from .cu.
#pragma once
#include <cuda_bf16.h>
#include <algorithm>
#include <cuda_fp16.h>

#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/common/formats.h"
#include "kernels/cuda_kernels.h"
#include "kernels/nvfp4/quantize_launch.h"

namespace fp4qat::cuda_kernels::nvfp4 {

using namespace fp4qat::fmt;

namespace {

// Non-negative floats order like their bit patterns, so atomicMax on the bits is an exact max.
__device__ __forceinline__ void atomic_max_nonneg(uint32_t* addr, float v) { atomicMax(addr, __float_as_uint(v)); }

// Store one block's outputs: packed codes (element 2i low nibble) and its scale byte.
__device__ __forceinline__ void store_codes(const uint32_t packed[2], uint8_t sb, int64_t unit, uint8_t* codes,
                                            uint8_t* scales) {
  if (codes) __stcs(reinterpret_cast<uint2*>(codes) + unit, make_uint2(packed[0], packed[1]));
  if (scales) scales[unit] = sb;
}

// One block's 16 bf16 fake values, packed two a word (element 2i in the low half of w[i]):
// streaming stores (written once, read by the next kernel from L2 or HBM).
__device__ __forceinline__ void store_fake_words(const uint32_t w[8], int64_t unit, uint16_t* fake) {
  uint4* p = reinterpret_cast<uint4*>(fake + unit * 16);
  __stcs(p, make_uint4(w[0], w[1], w[2], w[3]));
  __stcs(p + 1, make_uint4(w[4], w[5], w[6], w[7]));
}

// The fake quant values e2m1(q) * sb of one block from its 16 elements (nvfp4_fake_value, the
// value without the code): at most 6 significant bits in [2^-10, 2688], exact in bf16, so the
// bf16 is the float32's upper half (what rounding to nearest would give), two per byte_perm.
__device__ __forceinline__ void store_fake(const float v[16], float enc, float fsb, int64_t unit, uint16_t* fake) {
  uint32_t w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = __byte_perm(__float_as_uint(nvfp4_fake_value(v[2 * i], enc, fsb)),
                       __float_as_uint(nvfp4_fake_value(v[2 * i + 1], enc, fsb)), 0x7632);
  store_fake_words(w, unit, fake);
}

// Encode one 16-element block with scale byte sb and encode multiplier enc (nvfp4_block_enc)
// and write the requested outputs.
__device__ __forceinline__ void emit_block_enc(const float v[16], uint8_t sb, float enc, int64_t unit, uint8_t* codes,
                                               uint8_t* scales, uint16_t* fake) {
  if (codes || scales) {
    uint32_t packed[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 16; ++i) packed[i >> 3] |= nvfp4_encode_u32(v[i], enc) << (4 * (i & 7));
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) store_fake(v, enc, e4m3_to_float(sb), unit, fake);
}

__device__ __forceinline__ void emit_block(const float v[16], uint8_t sb, float s_dec, int64_t unit, uint8_t* codes,
                                           uint8_t* scales, uint16_t* fake) {
  emit_block_enc(v, sb, nvfp4_block_enc(sb, s_dec), unit, codes, scales, fake);
}

// The same for 16 bf16 given as 8 raw words (element 2i in the low half of raw[i]): codes by
// nvfp4_encode per element (kept in 32 bits), nibble pairs by shift-add, bytes gathered by
// byte_perm; fake values as store_fake.
__device__ __forceinline__ void emit_block_bf16(const uint32_t raw[8], uint8_t sb, float enc, int64_t unit,
                                                uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  if (codes || scales) {
    uint32_t b[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
      b[i] = nvfp4_encode_u32(__uint_as_float(raw[i] << 16), enc) +
             (nvfp4_encode_u32(__uint_as_float(raw[i] & 0xffff0000u), enc) << 4);
    const uint32_t packed[2] = {__byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x4000), 0x7610),
                                __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x4000), 0x7610)};
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) {
    float v[16];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[2 * i] = __uint_as_float(raw[i] << 16);
      v[2 * i + 1] = __uint_as_float(raw[i] & 0xffff0000u);
    }
    store_fake(v, enc, e4m3_to_float(sb), unit, fake);
  }
}

// max |x| of 16 bf16 (8 raw words) on packed pairs: |x| and max are exact in bf16, and max.bf16x2
// skips a NaN operand as fmaxf does; the final fmaxf from 0 matches max16's order-free result.
__device__ __forceinline__ float max16_bf16(const uint32_t raw[8]) {
  __nv_bfloat162 m[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    m[i] = __hmax2(__habs2(*reinterpret_cast<const __nv_bfloat162*>(&raw[2 * i])),
                   __habs2(*reinterpret_cast<const __nv_bfloat162*>(&raw[2 * i + 1])));
  const __nv_bfloat162 r = __hmax2(__hmax2(m[0], m[1]), __hmax2(m[2], m[3]));
  const uint32_t w = *reinterpret_cast<const uint32_t*>(&r);
  return fmaxf(fmaxf(0.0f, __uint_as_float(w << 16)), __uint_as_float(w & 0xffff0000u));
}

// The last i in [0, n) with a[i] <= v, for a non-decreasing a with a[0] <= v (binary search).
__device__ __forceinline__ int last_at_most(const int32_t* a, int64_t n, int64_t v) {
  int lo = 0, hi = static_cast<int>(n);
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= v)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// One warp: max |x[r, :]| of row r of nb 16-element blocks (lane j reads blocks j, j + 32, ...;
// a max is order-free, so every lane gets the exact row max).
template <InType T>
__device__ __forceinline__ float warp_row_amax(const void* x, int64_t r, int64_t nb, int64_t lane) {
  float m = 0.0f;
  for (int64_t b = lane; b < nb; b += 32) {
    float v[16];
    load16<T, Src::kCached>(x, (r * nb + b) * 16, v);
    m = fmaxf(m, max16(v));
  }
  return warp_max(m);
}

// max |row| of each row of x [rows, K] (K % 16 == 0), one warp a row (exact: max is order-free):
// stored as out[r] (row_off null: one amax per row), or folded into the row's group, the last g
// with row_off[g] <= r (atomic max on bits cleared beforehand).
template <InType T>
__global__ void __launch_bounds__(kThreads)
    rows_amax_kernel(const void* x, int64_t rows, int64_t K, const int32_t* row_off, int64_t groups, float* out) {
  const int64_t nb = K / 16, lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float m = warp_row_amax<T>(x, r, nb, lane);
    if (lane != 0) continue;
    if (row_off)
      atomic_max_nonneg(reinterpret_cast<uint32_t*>(out) + last_at_most(row_off, groups, r), m);
    else
      out[r] = m;
  }
}
inline unsigned rows_amax_grid(int64_t rows) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((rows + kThreads / 32 - 1) / (kThreads / 32), 1 << 16)));
}

// The 16 bf16 of block `unit` of a shared-memory slice as 8 raw words (two 16-byte loads).
__device__ __forceinline__ void load_raw16(const unsigned char* base, int64_t unit, uint32_t raw[8]) {
  const uint4* p = reinterpret_cast<const uint4*>(base + unit * 32);
  const uint4 x0 = p[0], x1 = p[1];
  raw[0] = x0.x, raw[1] = x0.y, raw[2] = x0.z, raw[3] = x0.w;
  raw[4] = x1.x, raw[5] = x1.y, raw[6] = x1.z, raw[7] = x1.w;
}

// CTAs of `kernel` resident at once on the device with this dynamic shared memory; 0 when the
// kernel cannot be given that much shared memory or does not fit.
template <typename Kernel>
int64_t resident_ctas(Kernel kernel, int threads, size_t smem) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  int per_sm = 0;
  FP4QAT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return static_cast<int64_t>(per_sm) * num_sms();
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
