// kernels/optim/adamw.cu — the fused AdamW step on the GPU (kernels/optim/adamw_ref.h): one
// grid-stride pass, four elements a thread where the four arrays are 16-byte aligned; the
// element's arithmetic is adamw_element, the CPU reference's.
#include "kernels/common/cuda_utils.cuh"
#include "kernels/optim/adamw_ref.h"

namespace fp4qat::cuda_kernels {

namespace {

__global__ void adamw_vec4(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                           float4* __restrict__ v, int64_t n4, optim::AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 P = p[i], M = m[i], V = v[i];
    const float4 G = g[i];
    optim::adamw_element(P.x, G.x, M.x, V.x, s);
    optim::adamw_element(P.y, G.y, M.y, V.y, s);
    optim::adamw_element(P.z, G.z, M.z, V.z, s);
    optim::adamw_element(P.w, G.w, M.w, V.w, s);
    p[i] = P;
    m[i] = M;
    v[i] = V;
  }
}

__global__ void adamw_scalar(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, optim::AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    optim::adamw_element(p[i], g[i], m[i], v[i], s);
}

}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const optim::AdamWScalars& s,
                cudaStream_t stream) {
  if (n == 0) return;
  const int64_t n4 = (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v)) ? n / 4 : 0;
  if (n4 > 0) {
    adamw_vec4<<<grid_for(n4), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(p), reinterpret_cast<const float4*>(g), reinterpret_cast<float4*>(m),
        reinterpret_cast<float4*>(v), n4, s);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  const int64_t done = n4 * 4;
  if (done < n) {
    adamw_scalar<<<grid_for(n - done), kThreads, 0, stream>>>(p + done, g + done, m + done, v + done,
                                                                           n - done, s);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
