// kernels/optim/widen.cu — a bf16 gradient widened to float32 (a master weight's gradient from
// its compute copy's): one vectorized pass, 8 elements a thread where both arrays are 16-byte
// aligned. Widening is exact (the bf16 bits are the float's upper half), so the bytes are those of
// ATen's casting copy, whose CUDA kernel runs unvectorized for a dtype change (bench/RESULTS.md,
// session 20).
#include "kernels/common/cuda_utils.cuh"

namespace fp4qat::cuda_kernels {

namespace {

__global__ void widen_bf16_vec8(const uint4* __restrict__ in, float4* __restrict__ out, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[8];
    unpack8<InType::BF16>(__ldcs(in + i), v);  // streamed: read once
    __stcs(out + 2 * i, make_float4(v[0], v[1], v[2], v[3]));
    __stcs(out + 2 * i + 1, make_float4(v[4], v[5], v[6], v[7]));
  }
}

__global__ void widen_bf16_scalar(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __uint_as_float(static_cast<uint32_t>(in[i]) << 16);
}

}  // namespace

void widen_bf16(const uint16_t* in, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t n8 = aligned16(in) && aligned16(out) ? n / 8 : 0;
  if (n8 > 0) {
    widen_bf16_vec8<<<grid_for(n8), kThreads, 0, stream>>>(reinterpret_cast<const uint4*>(in),
                                                           reinterpret_cast<float4*>(out), n8);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  const int64_t done = n8 * 8;
  if (done < n) {
    widen_bf16_scalar<<<grid_for(n - done), kThreads, 0, stream>>>(in + done, out + done, n - done);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
