// kernels/model/rms_norm_ref.h — RMSNorm over short rows without a weight (the attention's per-head
// q / k norms: rows of the head dim, 64 or 128), forward and backward. The arithmetic is defined
// once here for the CPU reference (rms_norm_ref.cpp) and the CUDA kernels (rms_norm.cu), which give
// the same bits: no transcendental besides IEEE sqrt and division (correctly rounded on both sides;
// no rsqrt), IEEE float32 without FMA contraction (-ffp-contract=off, nvcc --fmad=false), one
// summation order.
//
// A row of D elements (D % 32 == 0, 32 <= D <= 1024) is one warp's: lane l (0..31) owns the
// contiguous piece [l P, (l + 1) P), P = D / 32, and sums over it in element order from 0.0f; the 32
// lane sums are combined by an xor butterfly (o = 16, 8, 4, 2, 1: s = s + partner's s; the two
// partners add the same two values in opposite order, which IEEE addition does not tell apart, so
// every lane ends with the same bits). The CPU reference simulates the 32 lanes.
//   forward:  s = sum x * x; rstd = 1 / sqrt(s / D + eps); y = dtype(x * rstd); rstd kept (float32).
//   backward: xh = x * rstd (float32, not rounded); d = sum g * xh (the same order);
//             m = d / D; dx = dtype(rstd * (g - xh * m)).
// dtype: bf16 (rounded to nearest even) or float32 (no rounding). Raw pointers, no torch; bf16 as
// bit patterns (uint16_t).
//
// With a weight w [D] (in x's dtype: the model's w.to(dtype) * norm(x), fused): n = dtype(x * rstd)
// as above, y = dtype(w * n) (the bf16 product ATen's mul makes: both widened, one rounding). The
// backward takes g = dL/dy: gn = dtype(g * w) is the g of the formula above (dx), and
// dw = dtype(sum over rows of dtype(g * n)), summed in a fixed order: the rows in chunks of
// kWeightChunkRows, each chunk's rows in row order from 0.0f (a chunk's partial); the chunks in
// kWeightGroups groups of weight_group_size(rows) consecutive chunks (the last ones may be short
// or empty), each group's partials in chunk order from 0.0f (a group's sum); then the groups' sums
// in group order from 0.0f — the same bits for any grid of the CUDA kernels, which run each level
// wide (a warp a chunk, a thread a group and column).
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/host_device.h"
#include "kernels/loss/cross_entropy_ref.h"  // bf16_to_float / float_to_bf16
#include "kernels/model/elementwise_ref.h"    // load_elem / store_elem

namespace fp4qat::norm {

using loss::bf16_to_float;
using loss::float_to_bf16;

constexpr int kRowLanes = 32;         // lanes (a warp) a row
constexpr int64_t kMaxRowLen = 1024;  // D <= 32 lanes x 32 elements

// The row lengths the lane partition covers: D a positive multiple of 32, at most 1024.
FP4QAT_HD bool rows_supported(int64_t D) { return D > 0 && D % kRowLanes == 0 && D <= kMaxRowLen; }

FP4QAT_HD float norm_sqrt(float v) {
#if defined(__CUDA_ARCH__)
  return sqrtf(v);  // IEEE (--prec-sqrt=true)
#else
  return std::sqrt(v);
#endif
}

// One more element of a lane's sum of squares.
FP4QAT_HD float sumsq_add(float s, float x) {
  const float p = x * x;
  return s + p;
}
// One more element of a lane's sum of g * xh (backward).
FP4QAT_HD float dot_add(float s, float g, float xh) {
  const float p = g * xh;
  return s + p;
}
// One butterfly step: a lane's sum plus its partner's.
FP4QAT_HD float lane_add(float mine, float partner) { return mine + partner; }

// The row's 1 / sqrt(mean square + eps) from its combined sum of squares.
FP4QAT_HD float rstd_of(float s, int64_t D, float eps) {
  const float var = s / static_cast<float>(D);
  const float r = norm_sqrt(var + eps);
  return 1.0f / r;
}
// The normalized element (before the cast to the dtype); also the backward's xh.
FP4QAT_HD float normalized(float x, float rstd) { return x * rstd; }
// The backward's d / D from the row's combined sum of g * xh.
FP4QAT_HD float grad_mean(float d, int64_t D) { return d / static_cast<float>(D); }
// The input's gradient at one element (before the cast): rstd * (g - xh * m).
FP4QAT_HD float grad_of(float g, float xh, float m, float rstd) {
  const float t = xh * m;
  const float u = g - t;
  return rstd * u;
}

// The value stored in the dtype, read back (bf16: rounded to nearest even; float32: itself).
template <bool kBf16>
FP4QAT_HD float in_dtype(float v) {
  if constexpr (kBf16) return bf16_to_float(float_to_bf16(v));
  return v;
}
// y's element from the weight and the normalized element (both already in the dtype); the same
// product is the backward's gn = g * w and dw's term g * n.
FP4QAT_HD float weighted(float w, float n) { return w * n; }
// With a weight the row length is at most 512 (the CUDA kernels keep x, g, w and dw's partial of a
// lane's piece in registers).
constexpr int64_t kMaxWeightedRowLen = 512;
FP4QAT_HD bool weighted_rows_supported(int64_t D) { return rows_supported(D) && D <= kMaxWeightedRowLen; }
// dw's summation: rows a chunk (one warp's in the CUDA kernel), the groups of chunks, and the
// chunks a group.
constexpr int64_t kWeightChunkRows = 8;
constexpr int64_t kWeightGroups = 256;
FP4QAT_HD int64_t weight_chunks(int64_t rows) { return (rows + kWeightChunkRows - 1) / kWeightChunkRows; }
FP4QAT_HD int64_t weight_group_size(int64_t rows) {
  return (weight_chunks(rows) + kWeightGroups - 1) / kWeightGroups;
}
// The CUDA kernels' float32 scratch for dw: the chunks' partials, then the groups' sums, [.., D].
FP4QAT_HD int64_t weight_scratch_rows(int64_t rows) { return weight_chunks(rows) + kWeightGroups; }

// Element access (bf16 bit patterns or float32): the fused elementwise functions' (one home).
using elementwise::load_elem;
using elementwise::store_elem;

// ---- CPU references (rms_norm_ref.cpp) ----------------------------------------------------------
// x [rows, D] contiguous (bf16 bit patterns when bf16, else float32), rows_supported(D) (else
// fp4qat::Error), w [D] in x's dtype or null (then weighted_rows_supported(D)): y [rows, D] in x's
// dtype and rstd float32 [rows].
void rms_norm_rows_forward_ref(const void* x, bool bf16, int64_t rows, int64_t D, float eps, void* y, float* rstd,
                               const void* w = nullptr);
// x, g [rows, D] (x's dtype), the forward's rstd [rows], w as the forward's -> dx [rows, D] in x's
// dtype, and with w: dw [D] in x's dtype.
void rms_norm_rows_backward_ref(const void* x, const void* g, const float* rstd, bool bf16, int64_t rows, int64_t D,
                                void* dx, const void* w = nullptr, void* dw = nullptr);

}  // namespace fp4qat::norm
