// kernels/gemm/epilogue.cu — the emulated NVFP4 GEMM's epilogue as one pass (see
// kernels/cuda_kernels.h, scale_rows_cast): out[t, :] = cast(y[r, :] * alpha[r / M]) with
// r = rows ? rows[t] : t, i.e. the fp32 GEMM result times its batch's alpha in fp32 (one IEEE
// multiply), rounded once to the output type (round to nearest even), optionally gathering the
// real rows out of a padded [B, M, N] result. CPU reference: at::mul then Tensor::to — the same
// single multiply and single rounding per element.
#include <cuda_bf16.h>
#include <algorithm>
#include <cuda_fp16.h>

#include "kernels/common/cuda_check.h"
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels {

namespace {

template <typename T>
__device__ __forceinline__ T cast_out(float v);
template <>
__device__ __forceinline__ float cast_out<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 cast_out<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half cast_out<__half>(float v) {
  return __float2half_rn(v);
}

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// One thread per 4 consecutive elements of an output row (N % 4 == 0: a float4 never spans rows).
template <typename T>
__global__ void scale_rows_cast_vec4(const float* __restrict__ y, const float* __restrict__ alpha,
                                     const int64_t* __restrict__ rows, int64_t T_rows, int64_t M, int64_t N,
                                     T* __restrict__ out) {
  const int64_t n4 = N / 4, total = T_rows * n4;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / n4, c = (i - t * n4) * 4;
    const int64_t r = rows ? rows[t] : t;
    const float a = alpha[r / M];
    const float4 v = __ldcs(reinterpret_cast<const float4*>(y + r * N + c));
    Vec4<T> o;
    o.v[0] = cast_out<T>(v.x * a);
    o.v[1] = cast_out<T>(v.y * a);
    o.v[2] = cast_out<T>(v.z * a);
    o.v[3] = cast_out<T>(v.w * a);
    *reinterpret_cast<Vec4<T>*>(out + t * N + c) = o;  // 4 * sizeof(T)-aligned: N % 4 == 0, c % 4 == 0
  }
}

template <typename T>
__global__ void scale_rows_cast_scalar(const float* __restrict__ y, const float* __restrict__ alpha,
                                       const int64_t* __restrict__ rows, int64_t T_rows, int64_t M, int64_t N,
                                       T* __restrict__ out) {
  const int64_t total = T_rows * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / N, c = i - t * N;
    const int64_t r = rows ? rows[t] : t;
    out[i] = cast_out<T>(y[r * N + c] * alpha[r / M]);
  }
}

template <typename T>
void launch(const float* y, const float* alpha, const int64_t* rows, int64_t T_rows, int64_t M, int64_t N, T* out,
            cudaStream_t stream) {
  const int threads = 256;
  const bool vec =
      N % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % (4 * sizeof(T)) == 0;
  const int64_t work = vec ? T_rows * (N / 4) : T_rows * N;
  const int64_t blocks = std::min<int64_t>((work + threads - 1) / threads, 65535LL * 8);
  if (vec)
    scale_rows_cast_vec4<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(y, alpha, rows, T_rows, M, N, out);
  else
    scale_rows_cast_scalar<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(y, alpha, rows, T_rows, M, N, out);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void scale_rows_cast(const float* y, const float* alpha, const int64_t* rows, int64_t T_rows, int64_t M, int64_t N,
                     void* out, OutType o, cudaStream_t stream) {
  if (T_rows == 0 || N == 0) return;
  switch (o) {
    case OutType::F32:
      launch(y, alpha, rows, T_rows, M, N, static_cast<float*>(out), stream);
      break;
    case OutType::BF16:
      launch(y, alpha, rows, T_rows, M, N, static_cast<__nv_bfloat16*>(out), stream);
      break;
    case OutType::F16:
      launch(y, alpha, rows, T_rows, M, N, static_cast<__half*>(out), stream);
      break;
  }
}

}  // namespace fp4qat::cuda_kernels
