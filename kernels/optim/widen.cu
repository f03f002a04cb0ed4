// kernels/optim/widen.cu — a bf16 gradient widened to float32 (a master weight's gradient from
// its compute copy's): one vectorized pass, 8 elements a thread where both arrays are 16-byte
// aligned. Widening is exact (the bf16 bits are the float's upper half), so the bytes are those of
// ATen's casting copy, whose CUDA kernel runs unvectorized for a dtype change (bench/RESULTS.md,
// session 20).
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels {

namespace {

__device__ __forceinline__ float widen1(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

__global__ void widen_bf16_vec8(const uint4* __restrict__ in, float4* __restrict__ out, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 w = __ldcs(in + i);  // streamed: read once
    __stcs(out + 2 * i, make_float4(widen1(w.x & 0xFFFFu), widen1(w.x >> 16), widen1(w.y & 0xFFFFu), widen1(w.y >> 16)));
    __stcs(out + 2 * i + 1,
           make_float4(widen1(w.z & 0xFFFFu), widen1(w.z >> 16), widen1(w.w & 0xFFFFu), widen1(w.w >> 16)));
  }
}

__global__ void widen_bf16_scalar(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = widen1(in[i]);
}

bool aligned16(const void* x) { return (reinterpret_cast<uintptr_t>(x) & 15) == 0; }

int grid_for(int64_t work, int threads) {
  static const int sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  const int64_t want = (work + threads - 1) / threads;
  return static_cast<int>(want < int64_t(sms) * 8 ? (want > 0 ? want : 1) : int64_t(sms) * 8);
}

}  // namespace

void widen_bf16(const uint16_t* in, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int64_t n8 = aligned16(in) && aligned16(out) ? n / 8 : 0;
  if (n8 > 0) {
    widen_bf16_vec8<<<grid_for(n8, kThreads), kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(in),
                                                                     reinterpret_cast<float4*>(out), n8);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  const int64_t done = n8 * 8;
  if (done < n) {
    widen_bf16_scalar<<<grid_for(n - done, kThreads), kThreads, 0, stream>>>(in + done, out + done, n - done);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
