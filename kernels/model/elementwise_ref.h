// kernels/model/elementwise_ref.h — the fused elementwise functions of the model's step: SwiGLU
// (silu(gate) * up over the experts' gate/up projection) and RoPE (rotate-half rotary embedding of
// the attention's q and k), forward and backward. Each replaces a handful of ATen kernels (and
// their intermediates) by one pass; the arithmetic is defined once here for the CPU reference
// (elementwise_ref.cpp) and the CUDA kernels (elementwise.cu), and is that of ATen's composite, op
// by op: every ATen op of the composite rounds its result to the tensor's dtype once (bf16: to
// nearest even; float32: no extra rounding), so the fused version rounds at the same places and
// gives the same bits. The one transcendental is silu's expf: the device's and the host's can
// differ by an ulp (tests/model/). IEEE float32, no FMA contraction (-ffp-contract=off, nvcc
// --fmad=false). Raw pointers, no torch; bf16 as bit patterns (uint16_t).
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/host_device.h"
#include "kernels/loss/cross_entropy_ref.h"  // bf16_to_float / float_to_bf16

namespace fp4qat::elementwise {

using loss::bf16_to_float;
using loss::float_to_bf16;

// A float result rounded as an ATen op of the dtype stores it: bf16 to nearest even, float32 kept.
template <bool kBf16>
FP4QAT_HD float to_dtype(float v) {
  if constexpr (kBf16)
    return bf16_to_float(float_to_bf16(v));
  else
    return v;
}

FP4QAT_HD float ew_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

// ---- SwiGLU: act = silu(gate) * up, h = [gate | up] ------------------------------------------
// ATen's silu (CPU and CUDA): x / (1 + exp(-x)) in float, stored in the dtype. expf over- or
// underflows for |x| > ~88: x = -90 gives -90 / inf = -0, x = 90 gives 90 / 1 = 90, as ATen.
template <bool kBf16>
FP4QAT_HD float silu_rounded(float x) {
  return to_dtype<kBf16>(x / (1.0f + ew_exp(-x)));
}
// One output element: the bf16 silu times up (the mul's rounding is the store's).
template <bool kBf16>
FP4QAT_HD float swiglu_out(float x, float up) {
  return silu_rounded<kBf16>(x) * up;
}

// The gradient at one (gate, up) pair from g (dact), as ATen's autograd of silu(gate) * up:
//   du = g * s (mul's backward; s the stored silu), ds = g * up (rounded: a tensor of the dtype),
//   dgate = silu_backward(ds, x) = ds * sig * (1 + x * (1 - sig)), left to right, sig = 1 / (1 + exp(-x)).
// Both rounded to the dtype, then + 0: the slice gradients are accumulated into zeros, which turns
// a -0 into +0 (rounding first: a tiny float product can round to a bf16 -0).
struct SwigluGrad {
  float dgate, du;
};
template <bool kBf16>
FP4QAT_HD SwigluGrad swiglu_grad(float x, float up, float g) {
  const float e = ew_exp(-x);
  const float s = to_dtype<kBf16>(x / (1.0f + e));
  const float sig = 1.0f / (1.0f + e);
  const float ds = to_dtype<kBf16>(g * up);
  SwigluGrad r;
  r.du = to_dtype<kBf16>(g * s) + 0.0f;
  r.dgate = to_dtype<kBf16>((ds * sig) * (1.0f + x * (1.0f - sig))) + 0.0f;
  return r;
}

// ---- RoPE (rotate half): out = x * cos + rotate_half(x) * sin ----------------------------------
// With h = D / 2, rotate_half(x)[d] = d < h ? -x[d + h] : x[d - h]. One element from its value p,
// its partner's signed value q (-x[d + h] or x[d - h]) and cos / sin at d: each of ATen's three ops
// (two products, the sum) rounds once; negation is exact.
template <bool kBf16>
FP4QAT_HD float rope_out(float p, float c, float q, float s) {
  return to_dtype<kBf16>(to_dtype<kBf16>(p * c) + to_dtype<kBf16>(q * s));
}
// The gradient at d from g: g[d] * cos[d] plus the rotate-half part, whose signed partner is
// q = g[d + h] (d < h) or -g[d - h] (d >= h) at sin of the partner's position s = sin[d ± h]
// (rounding is symmetric: bf16(-a * b) = -bf16(a * b), as ATen's neg after the mul). + 0: the
// slice gradients are accumulated into zeros (-0 becomes +0).
template <bool kBf16>
FP4QAT_HD float rope_grad(float g, float c, float q, float s) {
  return to_dtype<kBf16>(to_dtype<kBf16>(g * c) + to_dtype<kBf16>(q * s)) + 0.0f;
}

// ---- MoE combine: out[n] = sum over the k slots j of y[slot_row[n k + j]] * w[n, j] -------------
// The composite it replaces (model/qwen3_moe.cpp): the slots' rows gathered, each product rounded
// to the dtype (a tensor of it), the k products summed in float32 in slot order, rounded once.
// Backward from G [N, H], slot s = n k + j, its row r = slot_row[s]:
//   dy[r] = G[n] * w[s], rounded (the product's gradient, gathered back to the row);
//   dw[s] = the sum over h of G[n, h] * y[r, h] (each product rounded), in float32 in a warp's
//   order: lane l takes the 8-element pieces l, l + 32, ... of the row in order, each piece's
//   elements in order, from 0; then the 32 lane sums by xor butterfly (16, 8, 4, 2, 1; both partners
//   add the same two values, so every lane holds the same sum); rounded once to the dtype.
// H % 8 == 0 (whole pieces).
constexpr int kCombineLanes = 32, kCombinePiece = 8;
template <bool kBf16>
FP4QAT_HD float combine_term(float a, float b) {
  return to_dtype<kBf16>(a * b);
}

// ---- element access: bf16 bit patterns or float32 ---------------------------------------------
template <bool kBf16>
FP4QAT_HD float load_elem(const void* p, int64_t i) {
  if constexpr (kBf16)
    return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  else
    return static_cast<const float*>(p)[i];
}
// v is already a value of the dtype (to_dtype) or is rounded here once.
template <bool kBf16>
FP4QAT_HD void store_elem(void* p, int64_t i, float v) {
  if constexpr (kBf16)
    static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
  else
    static_cast<float*>(p)[i] = v;
}

// ---- CPU references (elementwise_ref.cpp) -------------------------------------------------------
// Tensors of bf16 bit patterns (bf16) or float32, contiguous.
// SwiGLU: h [T, 2I] (gate = columns 0..I-1, up = I..2I-1) -> out [T, I].
void swiglu_forward_ref(const void* h, bool bf16, int64_t T, int64_t I, void* out);
// h [T, 2I], g [T, I] -> dh [T, 2I] = [dgate | du].
void swiglu_backward_ref(const void* h, const void* g, bool bf16, int64_t T, int64_t I, void* dh);

// RoPE over x [B, T, H, D] (D even): cos / sin [T, D] (per_batch false) or [B, T, D] (true).
struct RopeShape {
  int64_t B, T, H, D;
  bool per_batch;
};
// x -> out [B, T, H, D].
void rope_forward_ref(const void* x, const void* cos, const void* sin, bool bf16, const RopeShape& s, void* out);
// g [B, T, H, D] -> dx [B, T, H, D].
void rope_backward_ref(const void* g, const void* cos, const void* sin, bool bf16, const RopeShape& s, void* dx);

// MoE combine: y [N k, H] (rows sorted by expert), w [N, k], slot_row int64 [N k] (slot -> row, a
// permutation) -> out [N, H]; backward from g [N, H] -> dy [N k, H], dw [N, k]. H % 8 == 0.
void moe_combine_forward_ref(const void* y, const void* w, const int64_t* slot_row, bool bf16, int64_t N, int64_t k,
                             int64_t H, void* out);
void moe_combine_backward_ref(const void* y, const void* w, const int64_t* slot_row, const void* g, bool bf16,
                              int64_t N, int64_t k, int64_t H, void* dy, void* dw);

}  // namespace fp4qat::elementwise
