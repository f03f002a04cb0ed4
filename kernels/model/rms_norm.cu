// kernels/model/rms_norm.cu — RMSNorm over short rows (the attention's per-head q / k norms, hidden
// sizes up to 1024), without or with the weight's product fused (D <= 512), forward and backward (kernels/model/rms_norm_ref.h: the arithmetic and its CPU
// reference, bit for bit). ATen's fused RMSNorm runs these rows (64 or 128 elements) at about
// 400 GB/s; here one warp takes a row (8 rows a block of 256, grid-stride over the rows): lane l
// holds the row's piece [l P, (l + 1) P), P = D / 32, in registers, so x is read once and y written
// once (forward), x and g read once and dx written once (backward); the row's sum is an xor
// butterfly. Pieces of whole 8-element chunks (P % 8 == 0) at 16-byte aligned addresses take
// 16-byte loads and stores, else one element at a time. A row's bits depend on nothing but the row
// (no per-batch choices), so results are batch invariant.
#include <type_traits>

#include "kernels/common/check.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/model/rms_norm_ref.h"
#include "kernels/model/vec8.cuh"

namespace fp4qat::cuda_kernels {

namespace {

constexpr int kChunk = kVec8;  // elements a vector access (kernels/model/vec8.cuh)
template <int N>
using Int = std::integral_constant<int, N>;

// Lane's piece of P elements at element `at` widened to float into v[0..P) (v[P..kMaxP) zero).
// kVec: P % 8 == 0 and `base + at` 16-byte aligned; streaming loads (read once).
template <bool kBf16, bool kVec, int kMaxP>
__device__ __forceinline__ void load_piece(const void* base, int64_t at, int P, float v[kMaxP]) {
  if constexpr (kVec) {
#pragma unroll
    for (int c = 0; c < kMaxP / kChunk; ++c) {
      float* w = v + c * kChunk;
      if (c * kChunk < P) {
        load8<kBf16, true>(base, at + c * kChunk, w);  // streaming: read once
      } else {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) w[i] = 0.0f;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kMaxP; ++i) v[i] = i < P ? norm::load_elem<kBf16>(base, at + i) : 0.0f;
  }
}

// v[0..P) rounded to the dtype and stored at element `at` (kVec as load_piece). Plain stores: the
// next kernel (RoPE, attention) reads them soon.
template <bool kBf16, bool kVec, int kMaxP>
__device__ __forceinline__ void store_piece(void* base, int64_t at, int P, const float v[kMaxP]) {
  if constexpr (kVec) {
#pragma unroll
    for (int c = 0; c < kMaxP / kChunk; ++c) {
      if (c * kChunk >= P) continue;
      store8<kBf16>(base, at + c * kChunk, v + c * kChunk);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kMaxP; ++i)
      if (i < P) norm::store_elem<kBf16>(base, at + i, v[i]);
  }
}

// The row's sum: every lane ends with the same bits (rms_norm_ref.h).
__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = norm::kRowLanes / 2; o > 0; o >>= 1) s = norm::lane_add(s, __shfl_xor_sync(0xffffffffu, s, o));
  return s;
}

__device__ __forceinline__ int64_t first_row() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * (blockDim.x / 32); }

// A warp a row (the loop's row is the same for the warp's 32 lanes: the shuffles see all of them).
// P = D / 32 <= kMaxP (P % 8 == 0 when kVec).
// kW: y = dtype(w * dtype(x * rstd)) with the lane's piece of w (the same columns in every row)
// read once.
template <bool kBf16, bool kVec, int kMaxP, bool kW = false>
__global__ void __launch_bounds__(kThreads)
    rms_forward_warps(const void* __restrict__ x, int64_t rows, int D, float eps, void* __restrict__ y,
                      float* __restrict__ rstd, const void* __restrict__ w = nullptr) {
  const int lane = threadIdx.x % 32, P = D / norm::kRowLanes;
  float wv[kW ? kMaxP : 1];
  if constexpr (kW) load_piece<kBf16, false, kMaxP>(w, static_cast<int64_t>(lane) * P, P, wv);
  for (int64_t r = first_row(); r < rows; r += row_stride()) {
    const int64_t at = r * D + static_cast<int64_t>(lane) * P;
    float v[kMaxP];
    load_piece<kBf16, kVec, kMaxP>(x, at, P, v);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxP; ++i)
      if (i < P) s = norm::sumsq_add(s, v[i]);
    const float rs = norm::rstd_of(warp_sum(s), D, eps);
    if (lane == 0) rstd[r] = rs;
#pragma unroll
    for (int i = 0; i < kMaxP; ++i) {
      v[i] = norm::normalized(v[i], rs);
      if constexpr (kW) v[i] = norm::weighted(wv[i], norm::in_dtype<kBf16>(v[i]));
    }
    store_piece<kBf16, kVec, kMaxP>(y, at, P, v);
  }
}

// One row's backward by its warp (every lane: the sum is a butterfly). kW: the formula's g is
// gn = dtype(g * w) (w: the lane's piece), and the lane's dw terms dtype(g * dtype(xh)) are added to
// acc in this row's turn.
template <bool kBf16, bool kVec, int kMaxP, bool kW>
__device__ __forceinline__ void backward_row(const void* __restrict__ x, const void* __restrict__ g, float rs,
                                             int64_t at, int D, int P, void* __restrict__ dx, const float* wv,
                                             float* acc) {
  float xv[kMaxP], gv[kMaxP];
  load_piece<kBf16, kVec, kMaxP>(x, at, P, xv);
  load_piece<kBf16, kVec, kMaxP>(g, at, P, gv);
  float d = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxP; ++i) {
    xv[i] = norm::normalized(xv[i], rs);  // xh
    if constexpr (kW) {
      acc[i] = acc[i] + norm::in_dtype<kBf16>(norm::weighted(gv[i], norm::in_dtype<kBf16>(xv[i])));  // dw term
      gv[i] = norm::in_dtype<kBf16>(norm::weighted(gv[i], wv[i]));                                   // gn
    }
    if (i < P) d = norm::dot_add(d, gv[i], xv[i]);
  }
  const float m = norm::grad_mean(warp_sum(d), D);
#pragma unroll
  for (int i = 0; i < kMaxP; ++i) xv[i] = norm::grad_of(gv[i], xv[i], m, rs);
  store_piece<kBf16, kVec, kMaxP>(dx, at, P, xv);
}

template <bool kBf16, bool kVec, int kMaxP>
__global__ void __launch_bounds__(kThreads)
    rms_backward_warps(const void* __restrict__ x, const void* __restrict__ g, const float* __restrict__ rstd,
                       int64_t rows, int D, void* __restrict__ dx) {
  const int lane = threadIdx.x % 32, P = D / norm::kRowLanes;
  for (int64_t r = first_row(); r < rows; r += row_stride())
    backward_row<kBf16, kVec, kMaxP, false>(x, g, rstd[r], r * D + static_cast<int64_t>(lane) * P, D, P, dx, nullptr,
                                            nullptr);
}

// With a weight: a warp a chunk of kWeightChunkRows rows (grid-stride over the chunks), its rows in
// order (backward_row with kW), each lane's dw terms summed over the chunk's rows in row order into
// partial[chunk, D] (rms_norm_ref.h); then the groups' sums and dw by the two kernels below. (With
// chunks of 64 rows a warp, the hidden norm of a 16k-token batch had 256 warps for 132 SMs and its
// column sum 256 dependent loads a thread: 7x the unweighted backward, bench/RESULTS.md session 23.)
template <bool kBf16, bool kVec, int kMaxP>
__global__ void __launch_bounds__(kThreads)
    rms_backward_weighted_warps(const void* __restrict__ x, const void* __restrict__ g, const float* __restrict__ rstd,
                                const void* __restrict__ w, int64_t rows, int D, void* __restrict__ dx,
                                float* __restrict__ partial) {
  const int lane = threadIdx.x % 32, P = D / norm::kRowLanes;
  float wv[kMaxP];
  load_piece<kBf16, false, kMaxP>(w, static_cast<int64_t>(lane) * P, P, wv);
  const int64_t chunks = norm::weight_chunks(rows);
  for (int64_t c = first_row(); c < chunks; c += row_stride()) {
    float acc[kMaxP];
#pragma unroll
    for (int i = 0; i < kMaxP; ++i) acc[i] = 0.0f;
    const int64_t end = (c + 1) * norm::kWeightChunkRows < rows ? (c + 1) * norm::kWeightChunkRows : rows;
    for (int64_t r = c * norm::kWeightChunkRows; r < end; ++r)
      backward_row<kBf16, kVec, kMaxP, true>(x, g, rstd[r], r * D + static_cast<int64_t>(lane) * P, D, P, dx, wv, acc);
#pragma unroll
    for (int i = 0; i < kMaxP; ++i)
      if (i < P) partial[c * D + static_cast<int64_t>(lane) * P + i] = acc[i];
  }
}

// A group's sum (rms_norm_ref.h's order): partial[chunks + k, j] = the sum, in chunk order from
// 0.0f, of partial[c, j] over group k's chunks. A thread a (group, column).
__global__ void __launch_bounds__(kThreads)
    rms_weight_grad_groups(float* __restrict__ partial, int64_t chunks, int64_t group_size, int D) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= norm::kWeightGroups * D) return;
  const int64_t k = t / D, j = t % D;
  const int64_t c0 = k * group_size, c1 = c0 + group_size < chunks ? c0 + group_size : chunks;
  float s = 0.0f;
  for (int64_t c = c0; c < c1; ++c) s = s + partial[c * D + j];
  partial[(chunks + k) * D + j] = s;
}

// dw[j] = dtype(sum over the groups, in group order from 0.0f, of their sums): a thread a column.
template <bool kBf16>
__global__ void __launch_bounds__(kThreads)
    rms_weight_grad_columns(const float* __restrict__ groups, int D, void* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= D) return;
  float s = 0.0f;
#pragma unroll 8
  for (int64_t k = 0; k < norm::kWeightGroups; ++k) s = s + groups[k * D + j];
  norm::store_elem<kBf16>(dw, j, s);
}

// Calls f(grid, bf16 flag, vec flag, kMaxP) with the smallest kMaxP in {1, 2, 4, 8, 16, 32} holding
// P = D / 32 (the vector kernels only for 8, 16, 32: P is a multiple of 8 there).
// `warps`: the warps the kernel's grid-stride loop has work for (rows, or dw's chunks). kMaxP 32 is
// compiled only for the kernels without a weight (weighted_rows_supported: P <= 16).
template <bool kWeighted = false, typename F>
void launch(int64_t warps, int64_t D, bool bf16, bool vec, F&& f) {
  const int P = static_cast<int>(D / norm::kRowLanes);
  const unsigned grid = static_cast<unsigned>(grid_for(warps * norm::kRowLanes));  // a warp a row / chunk
  auto by_p = [&](auto b, auto v) {
    if constexpr (!decltype(v)::value) {
      if (P <= 1) return f(grid, b, v, Int<1>{});
      if (P <= 2) return f(grid, b, v, Int<2>{});
      if (P <= 4) return f(grid, b, v, Int<4>{});
    }
    if (P <= 8) return f(grid, b, v, Int<8>{});
    if constexpr (kWeighted) {
      return f(grid, b, v, Int<16>{});
    } else {
      if (P <= 16) return f(grid, b, v, Int<16>{});
      return f(grid, b, v, Int<32>{});
    }
  };
  if (bf16)
    vec ? by_p(std::true_type{}, std::true_type{}) : by_p(std::true_type{}, std::false_type{});
  else
    vec ? by_p(std::false_type{}, std::true_type{}) : by_p(std::false_type{}, std::false_type{});
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

void check_rows(int64_t rows, int64_t D, const char* who, bool weighted = false) {
  FP4QAT_CHECK(rows >= 0, who, ": rows must be >= 0, got ", rows);
  const int64_t most = weighted ? norm::kMaxWeightedRowLen : norm::kMaxRowLen;
  FP4QAT_CHECK(norm::rows_supported(D) && D <= most, who,
               ": the row length D must be a positive multiple of 32, at most ", most, weighted ? " with a weight" : "",
               ", got ", D);
}

}  // namespace

void rms_norm_rows_forward(const void* x, bool bf16, int64_t rows, int64_t D, float eps, void* y, float* rstd,
                           cudaStream_t stream, const void* w) {
  check_rows(rows, D, "rms_norm_rows_forward", w != nullptr);
  if (rows == 0) return;
  const bool vec = (D / norm::kRowLanes) % kChunk == 0 && aligned16(x) && aligned16(y);
  if (w) {
    launch<true>(rows, D, bf16, vec, [&](unsigned grid, auto b, auto v, auto p) {
      rms_forward_warps<decltype(b)::value, decltype(v)::value, decltype(p)::value, true>
          <<<grid, kThreads, 0, stream>>>(x, rows, static_cast<int>(D), eps, y, rstd, w);
    });
    return;
  }
  launch(rows, D, bf16, vec, [&](unsigned grid, auto b, auto v, auto p) {
    rms_forward_warps<decltype(b)::value, decltype(v)::value, decltype(p)::value>
        <<<grid, kThreads, 0, stream>>>(x, rows, static_cast<int>(D), eps, y, rstd);
  });
}

void rms_norm_rows_backward(const void* x, const void* g, const float* rstd, bool bf16, int64_t rows, int64_t D,
                            void* dx, cudaStream_t stream, const void* w, void* dw, float* partial) {
  check_rows(rows, D, "rms_norm_rows_backward", w != nullptr);
  FP4QAT_CHECK(!w == !dw && (!w || partial), "rms_norm_rows_backward: w, dw and partial go together");
  const bool vec = (D / norm::kRowLanes) % kChunk == 0 && aligned16(x) && aligned16(g) && aligned16(dx);
  if (w) {
    const int64_t chunks = norm::weight_chunks(rows);
    if (chunks > 0)
      launch<true>(chunks, D, bf16, vec, [&](unsigned grid, auto b, auto v, auto p) {
        rms_backward_weighted_warps<decltype(b)::value, decltype(v)::value, decltype(p)::value>
            <<<grid, kThreads, 0, stream>>>(x, g, rstd, w, rows, static_cast<int>(D), dx, partial);
      });
    const unsigned group_blocks = static_cast<unsigned>((norm::kWeightGroups * D + kThreads - 1) / kThreads);
    rms_weight_grad_groups<<<group_blocks, kThreads, 0, stream>>>(partial, chunks, norm::weight_group_size(rows),
                                                                  static_cast<int>(D));
    const unsigned cols = static_cast<unsigned>((D + kThreads - 1) / kThreads);
    const float* groups = partial + chunks * D;
    if (bf16)
      rms_weight_grad_columns<true><<<cols, kThreads, 0, stream>>>(groups, static_cast<int>(D), dw);
    else
      rms_weight_grad_columns<false><<<cols, kThreads, 0, stream>>>(groups, static_cast<int>(D), dw);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (rows == 0) return;
  launch(rows, D, bf16, vec, [&](unsigned grid, auto b, auto v, auto p) {
    rms_backward_warps<decltype(b)::value, decltype(v)::value, decltype(p)::value>
        <<<grid, kThreads, 0, stream>>>(x, g, rstd, rows, static_cast<int>(D), dx);
  });
}

}  // namespace fp4qat::cuda_kernels
