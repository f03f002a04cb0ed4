// kernels/loss/cross_entropy_ref.h — the fused cross-entropy rows: each row's log-sum-exp and
// target log-probability in one read of the logits (forward), and the logits' gradient in one more
// read and one write (backward). The arithmetic is defined once here for the CPU reference
// (cross_entropy_ref.cpp) and the CUDA kernels (cross_entropy.cu): the same partition of a row
// over 256 lanes (lane t takes the 8-element pieces t, t + 256, ... in order), the same online
// max/sum update, the same combination tree (shuffle-down halving within each warp of 32, then
// the 8 warps in order), IEEE float32 without FMA contraction. The two agree to the
// last bit except where expf / logf do: the device's are within 2 ulp of the host's, so a row's
// sum of exponentials agrees to about 1e-6 relative (tests/kernels/gpu_cross_entropy.cpp).
// Raw pointers, no torch. Logits are bf16 (as bit patterns) or float32.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/formats.h"
#include "kernels/common/host_device.h"

namespace fp4qat::loss {

constexpr int kLanes = 256, kPiece = 8, kWarp = 32;

FP4QAT_HD float bf16_to_float(uint16_t b) { return fmt::u2f(static_cast<uint32_t>(b) << 16); }
// Round to nearest even; a NaN becomes 0x7FFF with its sign.
FP4QAT_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = fmt::f2u(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x7FFFu);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

FP4QAT_HD float ce_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}
FP4QAT_HD float ce_log(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return std::log(x);
#endif
}

// A lane's running (max, sum of exp(x - max)); an empty lane is (-inf, 0).
struct MaxSum {
  float m, s;
};
FP4QAT_HD MaxSum maxsum_empty() { return {-INFINITY, 0.0f}; }
// One more element x: a new max rescales the sum. (A NaN x makes the sum NaN; -inf adds nothing.)
FP4QAT_HD void maxsum_add(MaxSum& a, float x) {
  if (x > a.m) {
    a.s = a.s * ce_exp(a.m - x) + 1.0f;
    a.m = x;
  } else if (x != -INFINITY) {
    a.s = a.s + ce_exp(x - a.m);
  }
}
// a then b (the order of the combination tree).
FP4QAT_HD MaxSum maxsum_combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  const float sa = a.s == 0.0f ? 0.0f : a.s * ce_exp(a.m - m);
  const float sb = b.s == 0.0f ? 0.0f : b.s * ce_exp(b.m - m);
  MaxSum r;
  r.m = m;
  r.s = sa + sb;  // a NaN sum stays NaN (NaN == 0 is false)
  return r;
}
// The row's log-sum-exp from its combined (max, sum).
FP4QAT_HD float maxsum_lse(MaxSum a) { return a.m + ce_log(a.s); }

// The gradient of the target's log-probability times g at one logit x (column j, target t):
// g * ((j == t) - exp(x - lse)).
FP4QAT_HD float ce_grad(float x, float lse, bool is_target, float g) {
  const float p = ce_exp(x - lse);
  return (is_target ? 1.0f - p : -p) * g;
}

// CPU reference. logits [N, V] (bf16 bit patterns when bf16, else float32), targets int64 [N]:
// lse [N] and target_lp [N] = x[t] - lse (NaN for a target outside [0, V)).
void ce_forward_ref(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, float* lse,
                    float* target_lp);
// grad [N, V] (bf16 bit patterns when bf16, else float32) from g [N] and the forward's lse.
void ce_backward_ref(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, const float* lse,
                     const float* g, void* grad);

}  // namespace fp4qat::loss
