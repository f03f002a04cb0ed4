// kernels/mxfp8/quantize.cu — CUDA MXFP8 quantize/dequantize (1x32 blocks, E8M0 scale rounded
// up to a power of two, E4M3 elements). One thread per 32-element block (two blocks an iteration
// for 16-bit inputs); the arithmetic is
// kernels/common/formats.h, as in the CPU reference kernels/mxfp8/quantize_ref.cpp.
#include <atomic>

#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/common/formats.h"

namespace fp4qat::cuda_kernels {

using namespace fp4qat::fmt;

namespace {

// One 32-element block u: its E8M0 scale and E4M3 codes.
__device__ __forceinline__ void mxfp8_block(const float v[32], int64_t u, uint8_t* q, uint8_t* scales) {
  const float m = fmaxf(max16(v), max16(v + 16));
  const uint8_t e8m0 = mxfp8_scale_e8m0(m);
  scales[u] = e8m0;
  // The scale is a power of two 2^k (-127 <= k <= 127; code 0 is the subnormal 2^-127), so
  // 1/scale is exact and x * (1/scale) is the same real number as x / scale: both correctly
  // rounded, hence the same bits as the reference's division (this is not the general
  // a * (1/b) that numerics.md forbids). An amax-0 block: q 0 (byte 0, also for -0.0).
  const float inv = 1.0f / e8m0_to_float(e8m0);
  const uint32_t keep = m == 0.0f ? 0u : 0xffffffffu;
  uint32_t w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = keep & (static_cast<uint32_t>(float2_to_e4m3x2(v[4 * i] * inv, v[4 * i + 1] * inv)) |
                   (static_cast<uint32_t>(float2_to_e4m3x2(v[4 * i + 2] * inv, v[4 * i + 3] * inv)) << 16));
  uint4* p = reinterpret_cast<uint4*>(q + u * 32);
  __stcs(p, make_uint4(w[0], w[1], w[2], w[3]));
  __stcs(p + 1, make_uint4(w[4], w[5], w[6], w[7]));
}

// One thread a block, kU blocks (u, u + stride, ...) an iteration: for 16-bit inputs with kU = 2
// the raw bytes of both blocks are loaded before either is converted (twice the bytes in flight
// a thread); the blocks and their arithmetic are the same either way.
template <InType T, int kU>
__global__ void __launch_bounds__(kThreads)
    mxfp8_quant_kernel(const void* x, int64_t units, uint8_t* q, uint8_t* scales) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t u0 = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u0 < units; u0 += kU * stride) {
    if constexpr (kU == 1 || T == InType::F32) {
#pragma unroll
      for (int k = 0; k < kU; ++k) {
        const int64_t u = u0 + k * stride;
        if (u >= units) break;
        float v[32];
        load16<T, Src::kStreaming>(x, u * 32, v);
        load16<T, Src::kStreaming>(x, u * 32 + 16, v + 16);
        mxfp8_block(v, u, q, scales);
      }
    } else {
      uint4 raw[kU][4];  // 32 16-bit elements a block
#pragma unroll
      for (int k = 0; k < kU; ++k) {
        const int64_t u = u0 + k * stride;
        if (u < units) {
          const uint4* p = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + u * 32);
#pragma unroll
          for (int j = 0; j < 4; ++j) raw[k][j] = __ldcs(p + j);
        }
      }
#pragma unroll
      for (int k = 0; k < kU; ++k) {
        const int64_t u = u0 + k * stride;
        if (u >= units) break;
        float v[32];
#pragma unroll
        for (int j = 0; j < 4; ++j) unpack8<T>(raw[k][j], v + 8 * j);
        mxfp8_block(v, u, q, scales);
      }
    }
  }
}

template <bool kBf16Out>
__global__ void __launch_bounds__(kThreads)
    mxfp8_dequant_kernel(const uint8_t* q, const uint8_t* scales, int64_t units, void* out) {
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const uint4* p = reinterpret_cast<const uint4*>(q + u * 32);
    const uint4 a = __ldcs(p), b = __ldcs(p + 1);
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    const float s = e8m0_to_float(scales[u]);
    float v[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = e4m3_to_float(static_cast<uint8_t>((w[i / 4] >> (8 * (i % 4))) & 0xff)) * s;
    if constexpr (kBf16Out) {
      uint4* o = reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + u * 32);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        uint32_t r[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          r[i] = static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[8 * k + 2 * i]))) |
                 (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[8 * k + 2 * i + 1]))) << 16);
        __stcs(o + k, make_uint4(r[0], r[1], r[2], r[3]));
      }
    } else {
      float4* o = reinterpret_cast<float4*>(static_cast<float*>(out) + u * 32);
#pragma unroll
      for (int k = 0; k < 8; ++k) __stcs(o + k, make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]));
    }
  }
}

std::atomic<int> g_mxfp8_units{0};  // set_mxfp8_units (benchmarks); 0: the default

template <InType T, int kU>
void launch_quant(const void* x, int64_t units, uint8_t* q, uint8_t* scales, cudaStream_t stream) {
  // The grid as for one block a thread: a thread then takes about units / (threads x kU) iterations.
  const auto g = static_cast<unsigned>(grid_for((units + kU - 1) / kU));
  mxfp8_quant_kernel<T, kU><<<g, kThreads, 0, stream>>>(x, units, q, scales);
}

}  // namespace

void set_mxfp8_units(int units) { g_mxfp8_units = units; }

void mxfp8_quantize(const void* x, InType t, int64_t M, int64_t K, uint8_t* q, uint8_t* scales, cudaStream_t stream) {
  FP4QAT_CHECK(K % 32 == 0, "mxfp8_quantize (CUDA): K = ", K, " is not a multiple of 32");
  const int64_t units = M * (K / 32);
  if (units == 0) return;
  // Two blocks an iteration for 16-bit inputs (default), one for float32 or when a benchmark sets 1.
  const bool two = g_mxfp8_units.load() != 1;
  switch (t) {
    case InType::BF16:
      two ? launch_quant<InType::BF16, 2>(x, units, q, scales, stream)
          : launch_quant<InType::BF16, 1>(x, units, q, scales, stream);
      break;
    case InType::F16:
      two ? launch_quant<InType::F16, 2>(x, units, q, scales, stream)
          : launch_quant<InType::F16, 1>(x, units, q, scales, stream);
      break;
    case InType::F32:
      launch_quant<InType::F32, 1>(x, units, q, scales, stream);
      break;
  }
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

void mxfp8_dequantize(const uint8_t* q, const uint8_t* scales, int64_t M, int64_t K, void* out, bool out_bf16,
                      cudaStream_t stream) {
  const int64_t units = M * (K / 32);
  if (units == 0) return;
  const auto g = static_cast<unsigned>(grid_for(units));
  if (out_bf16)
    mxfp8_dequant_kernel<true><<<g, kThreads, 0, stream>>>(q, scales, units, out);
  else
    mxfp8_dequant_kernel<false><<<g, kThreads, 0, stream>>>(q, scales, units, out);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4qat::cuda_kernels
