// kernels/nvfp4/amax.cu — the per-expert amax (max |x|) of E contiguous experts: amax (kernels/
// cuda_kernels.h), the global amax of NVFP4's S_enc.
#include <algorithm>

#include "kernels/nvfp4/quantize_common.cuh"

namespace fp4qat::cuda_kernels {
namespace {

using nvfp4::atomic_max_nonneg;

template <InType T>
__global__ void __launch_bounds__(kThreads) amax_kernel(const void* x, int64_t per, uint32_t* out_bits) {
  __shared__ float red[kWarps];
  const int64_t e = blockIdx.y;
  const int64_t units = per / 16;
  float m = 0.0f;
  for (int64_t u = blockIdx.x * kThreads + threadIdx.x; u < units; u += static_cast<int64_t>(gridDim.x) * kThreads) {
    float v[16];
    load16<T, Src::kCached>(x, (e * units + u) * 16, v);
    m = fmaxf(m, max16(v));
  }
  m = block_max(m, red);
  if (threadIdx.x == 0) atomic_max_nonneg(out_bits + e, m);
}

}  // namespace

void amax(const void* x, InType t, int64_t E, int64_t per, float* out, cudaStream_t stream) {
  FP4QAT_CHECK(per % 16 == 0, "amax (CUDA): elements per expert must be a multiple of 16");
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(E) * sizeof(float), stream));
  if (E == 0 || per == 0) return;
  const int64_t units = per / 16;
  const int64_t gx = std::max<int64_t>(
      1, std::min<int64_t>((units + kThreads - 1) / kThreads, std::max<int64_t>(1, num_sms() * 8 / E)));
  dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(E));
  auto* bits = reinterpret_cast<uint32_t*>(out);
  switch (t) {
    case InType::BF16:
      amax_kernel<InType::BF16><<<grid, kThreads, 0, stream>>>(x, per, bits);
      break;
    case InType::F16:
      amax_kernel<InType::F16><<<grid, kThreads, 0, stream>>>(x, per, bits);
      break;
    case InType::F32:
      amax_kernel<InType::F32><<<grid, kThreads, 0, stream>>>(x, per, bits);
      break;
  }
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4qat::cuda_kernels
