// kernels/optim/adamw_ref.h — the fused AdamW step: its float32 arithmetic, defined once here for
// the CPU reference (adamw_ref.cpp) and the CUDA kernel (adamw.cu), which does the same operations
// in the same order (IEEE float32, no FMA contraction: the project's compile options), so the two
// agree bit for bit. One pass reads p, g, m, v and writes p, m, v: 28 bytes a parameter, where the
// unfused tensor-op sequence (trainer/adamw.cpp, the CPU path) makes ten passes over them.
// Raw pointers, no torch.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/host_device.h"

namespace fp4qat::optim {

// The step's constants, each rounded once to float32 from the host's double.
struct AdamWScalars {
  float grad_scale = 1;  // global-norm clipping factor
  float beta1 = 0.9f, one_minus_beta1 = 0.1f;
  float beta2 = 0.95f, one_minus_beta2 = 0.05f;
  float decay = 1;  // 1 - lr * weight_decay on matrices, else 1 (multiplying by 1 is exact)
  float bc2 = 1;    // 1 - beta2^t
  float eps = 1e-8f;
  float step = 0;   // -lr / (1 - beta1^t)
};

// One element, every operation rounded to float32:
//   g = grad * grad_scale
//   m = m * beta1 + one_minus_beta1 * g
//   v = v * beta2 + (one_minus_beta2 * g) * g
//   p = p * decay
//   p = p + step * (m / (sqrt(v / bc2) + eps))
FP4QAT_HD void adamw_element(float& p, float grad, float& m, float& v, const AdamWScalars& s) {
  const float g = grad * s.grad_scale;
  m = m * s.beta1 + s.one_minus_beta1 * g;
  v = v * s.beta2 + (s.one_minus_beta2 * g) * g;
#if defined(__CUDA_ARCH__)
  const float d = __fsqrt_rn(v / s.bc2) + s.eps;
#else
  const float d = std::sqrt(v / s.bc2) + s.eps;  // IEEE: correctly rounded
#endif
  p = p * s.decay;
  p = p + s.step * (m / d);
}

// The CPU reference over n elements (p, m, v updated in place).
void adamw_step_ref(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);

}  // namespace fp4qat::optim
