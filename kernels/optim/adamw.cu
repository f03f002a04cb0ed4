// kernels/optim/adamw.cu — the fused AdamW step on the GPU (kernels/optim/adamw_ref.h): one
// grid-stride pass, four elements a thread where the four arrays are 16-byte aligned; or many
// parameters in one launch (a block a chunk of a parameter). The element's arithmetic is
// adamw_element, the CPU reference's.
#include "kernels/common/check.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/optim/adamw_ref.h"

namespace fp4qat::cuda_kernels {

namespace {

// Four elements (one float4 of each array), each as adamw_element.
__device__ __forceinline__ void adamw4(float4* p, const float4* g, float4* m, float4* v, const optim::AdamWScalars& s) {
  float4 P = *p, M = *m, V = *v;
  const float4 G = *g;
  optim::adamw_element(P.x, G.x, M.x, V.x, s);
  optim::adamw_element(P.y, G.y, M.y, V.y, s);
  optim::adamw_element(P.z, G.z, M.z, V.z, s);
  optim::adamw_element(P.w, G.w, M.w, V.w, s);
  *p = P;
  *m = M;
  *v = V;
}

__global__ void adamw_vec4(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                           float4* __restrict__ v, int64_t n4, optim::AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    adamw4(p + i, g + i, m + i, v + i, s);
  }
}

__global__ void adamw_scalar(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, optim::AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    optim::adamw_element(p[i], g[i], m[i], v[i], s);
}


// Many parameters in one launch: block b takes chunk b - first[s] of segment s (the last segment
// whose first chunk is <= b), kChunk elements, four at a time where the segment's four arrays are
// 16-byte aligned (a chunk starts at a multiple of kChunk, so the float4s stay aligned), one at a
// time otherwise and for the tail. Each element is adamw_element with the segment's decay.
constexpr int64_t kChunk = 16384;
__global__ void adamw_many(AdamWSegments segs, optim::AdamWScalars s) {
  int lo = 0, hi = segs.count - 1;  // the last segment with first <= blockIdx.x
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segs.first[mid] <= static_cast<int64_t>(blockIdx.x))
      lo = mid;
    else
      hi = mid - 1;
  }
  const AdamWSegment& g = segs.seg[lo];
  s.decay = g.decay;
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - segs.first[lo]) * kChunk;
  const int64_t end = begin + kChunk < g.n ? begin + kChunk : g.n;
  int64_t i = begin;
  if (aligned16(g.p) && aligned16(g.g) && aligned16(g.m) && aligned16(g.v)) {
    const int64_t n4 = (end - begin) / 4;
    float4* p4 = reinterpret_cast<float4*>(g.p + begin);
    const float4* g4 = reinterpret_cast<const float4*>(g.g + begin);
    float4* m4 = reinterpret_cast<float4*>(g.m + begin);
    float4* v4 = reinterpret_cast<float4*>(g.v + begin);
    for (int64_t j = threadIdx.x; j < n4; j += blockDim.x) {
      adamw4(p4 + j, g4 + j, m4 + j, v4 + j, s);
    }
    i = begin + n4 * 4;
  }
  for (int64_t j = i + threadIdx.x; j < end; j += blockDim.x) optim::adamw_element(g.p[j], g.g[j], g.m[j], g.v[j], s);
}

}  // namespace

void adamw_step_many(const AdamWSegment* segs, int count, const optim::AdamWScalars& s, cudaStream_t stream) {
  for (int at = 0; at < count;) {
    AdamWSegments a{};
    int64_t chunks = 0;
    for (; at < count && a.count < kAdamWSegmentsPerLaunch; ++at) {
      if (segs[at].n == 0) continue;
      a.seg[a.count] = segs[at];
      a.first[a.count] = chunks;
      chunks += (segs[at].n + kChunk - 1) / kChunk;
      ++a.count;
    }
    if (a.count == 0) continue;
    FP4QAT_CHECK(chunks <= 0x7FFFFFFF, "adamw_step_many: ", chunks, " chunks exceed one grid");
    adamw_many<<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(a, s);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

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
