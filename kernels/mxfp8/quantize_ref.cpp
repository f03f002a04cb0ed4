// kernels/mxfp8/quantize_ref.cpp — CPU reference MXFP8 (see quantize_ref.h).
#include "kernels/mxfp8/quantize_ref.h"

#include <ATen/Parallel.h>

#include "kernels/common/formats.h"

namespace fp4qat::ref {

using namespace fp4qat::fmt;

void mxfp8_quantize(const float* x, int64_t M, int64_t K, uint8_t* q, uint8_t* scales) {
  const int64_t nb = K / kMxfp8Block;
  at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + r * K + b * kMxfp8Block;
        uint8_t* qb = q + r * K + b * kMxfp8Block;
        float m = 0.0f;
        for (int j = 0; j < kMxfp8Block; ++j) m = fmaxf(m, fabsf(xb[j]));
        const uint8_t e8m0 = mxfp8_scale_e8m0(m);
        scales[r * nb + b] = e8m0;
        const float scale = e8m0_to_float(e8m0);  // code 0: the subnormal 2^-127
        if (m == 0.0f) {                          // amax 0: e8m0 0 and q 0 (byte 0, also for -0.0 elements)
          for (int j = 0; j < kMxfp8Block; ++j) qb[j] = 0;
          continue;
        }
        for (int j = 0; j < kMxfp8Block; ++j) qb[j] = float_to_e4m3(xb[j] / scale);
      }
    }
  });
}

void mxfp8_dequantize(const uint8_t* q, const uint8_t* scales, int64_t M, int64_t K, float* out) {
  const int64_t nb = K / kMxfp8Block;
  at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = 0; k < K; ++k)
        out[r * K + k] = e4m3_to_float(q[r * K + k]) * e8m0_to_float(scales[r * nb + k / kMxfp8Block]);
  });
}

}  // namespace fp4qat::ref
