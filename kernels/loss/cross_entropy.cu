// kernels/loss/cross_entropy.cu — the fused cross-entropy rows (kernels/loss/cross_entropy_ref.h:
// the arithmetic and its CPU reference). One block of 256 threads a row: the forward reads the
// row once (an online max and sum of exponentials a lane, then the lanes combined) and writes its
// log-sum-exp and target log-probability; the backward reads the row once more and writes its
// gradient: 2 + 4 bytes of traffic a bf16 logit, where ATen's float32 log-softmax, its backward and
// the casts around them move about 36 (bench/RESULTS.md, session 20).
#include "kernels/common/cuda_utils.cuh"
#include "kernels/loss/cross_entropy_ref.h"

namespace fp4qat::cuda_kernels {

namespace {

using loss::kLanes;
using loss::kPiece;
using loss::kWarp;
using loss::MaxSum;

// The 8 logits of piece c of a row (fewer at the row's end, the rest untouched): one 16-byte load
// for a full bf16 piece at a 16-byte aligned address, else one at a time.
template <bool kBf16>
__device__ __forceinline__ int load_piece(const void* row, int64_t c, int64_t V, float x[kPiece]) {
  const int64_t j0 = c * kPiece;
  const int n = static_cast<int>(V - j0 < kPiece ? V - j0 : kPiece);
  if constexpr (kBf16) {
    const uint16_t* p = static_cast<const uint16_t*>(row) + j0;
    if (n == kPiece && aligned16(p)) {
      unpack8<InType::BF16>(__ldcs(reinterpret_cast<const uint4*>(p)), x);
    } else {
      for (int i = 0; i < n; ++i) x[i] = loss::bf16_to_float(p[i]);
    }
  } else {
    const float* p = static_cast<const float*>(row) + j0;
    for (int i = 0; i < n; ++i) x[i] = p[i];
  }
  return n;
}

template <bool kBf16>
__global__ void __launch_bounds__(kLanes) ce_forward_rows(const void* __restrict__ logits, int64_t V,
                                                          const int64_t* __restrict__ targets, float* __restrict__ lse,
                                                          float* __restrict__ target_lp) {
  const int64_t r = blockIdx.x;
  const void* row = kBf16 ? static_cast<const void*>(static_cast<const uint16_t*>(logits) + r * V)
                          : static_cast<const void*>(static_cast<const float*>(logits) + r * V);
  MaxSum a = loss::maxsum_empty();
  for (int64_t c = threadIdx.x; c * kPiece < V; c += kLanes) {
    float x[kPiece];
    const int n = load_piece<kBf16>(row, c, V, x);
    for (int i = 0; i < n; ++i) loss::maxsum_add(a, x[i]);
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    MaxSum b;
    b.m = __shfl_down_sync(0xffffffffu, a.m, o);
    b.s = __shfl_down_sync(0xffffffffu, a.s, o);
    a = loss::maxsum_combine(a, b);  // meaningful in lanes l with l + o < 32, as in the reference
  }
  __shared__ MaxSum warp_sum[kLanes / kWarp];
  if ((threadIdx.x & (kWarp - 1)) == 0) warp_sum[threadIdx.x / kWarp] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum all = warp_sum[0];
    for (int w = 1; w < kLanes / kWarp; ++w) all = loss::maxsum_combine(all, warp_sum[w]);
    const float l = loss::maxsum_lse(all);
    lse[r] = l;
    const int64_t t = targets[r];
    float xt = __int_as_float(0x7FC00000);  // NaN for a target outside [0, V)
    if (t >= 0 && t < V)
      xt = kBf16 ? loss::bf16_to_float(static_cast<const uint16_t*>(row)[t]) : static_cast<const float*>(row)[t];
    target_lp[r] = xt - l;
  }
}

template <bool kBf16>
__global__ void __launch_bounds__(kLanes) ce_backward_rows(const void* __restrict__ logits, int64_t V,
                                                           const int64_t* __restrict__ targets,
                                                           const float* __restrict__ lse, const float* __restrict__ g,
                                                           void* __restrict__ grad) {
  const int64_t r = blockIdx.x;
  const float l = lse[r], gr = g[r];
  const int64_t t = targets[r];
  const void* row = kBf16 ? static_cast<const void*>(static_cast<const uint16_t*>(logits) + r * V)
                          : static_cast<const void*>(static_cast<const float*>(logits) + r * V);
  for (int64_t c = threadIdx.x; c * kPiece < V; c += kLanes) {
    float x[kPiece];
    const int n = load_piece<kBf16>(row, c, V, x);
    const int64_t j0 = c * kPiece;
    if constexpr (kBf16) {
      uint16_t* out = static_cast<uint16_t*>(grad) + r * V + j0;
      if (n == kPiece && aligned16(out)) {
        uint32_t u[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          u[i] = loss::float_to_bf16(loss::ce_grad(x[2 * i], l, j0 + 2 * i == t, gr)) |
                 (static_cast<uint32_t>(loss::float_to_bf16(loss::ce_grad(x[2 * i + 1], l, j0 + 2 * i + 1 == t, gr)))
                  << 16);
        __stcs(reinterpret_cast<uint4*>(out), make_uint4(u[0], u[1], u[2], u[3]));
      } else {
        for (int i = 0; i < n; ++i) out[i] = loss::float_to_bf16(loss::ce_grad(x[i], l, j0 + i == t, gr));
      }
    } else {
      float* out = static_cast<float*>(grad) + r * V + j0;
      for (int i = 0; i < n; ++i) out[i] = loss::ce_grad(x[i], l, j0 + i == t, gr);
    }
  }
}

}  // namespace

void ce_forward(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, float* lse,
                float* target_lp, cudaStream_t stream) {
  if (N == 0) return;
  if (bf16)
    ce_forward_rows<true><<<static_cast<unsigned>(N), kLanes, 0, stream>>>(logits, V, targets, lse, target_lp);
  else
    ce_forward_rows<false><<<static_cast<unsigned>(N), kLanes, 0, stream>>>(logits, V, targets, lse, target_lp);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

void ce_backward(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, const float* lse,
                 const float* g, void* grad, cudaStream_t stream) {
  if (N == 0) return;
  if (bf16)
    ce_backward_rows<true><<<static_cast<unsigned>(N), kLanes, 0, stream>>>(logits, V, targets, lse, g, grad);
  else
    ce_backward_rows<false><<<static_cast<unsigned>(N), kLanes, 0, stream>>>(logits, V, targets, lse, g, grad);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4qat::cuda_kernels
