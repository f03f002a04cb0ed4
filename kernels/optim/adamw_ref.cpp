// kernels/optim/adamw_ref.cpp — see adamw_ref.h.
#include "kernels/optim/adamw_ref.h"

namespace fp4qat::optim {

void adamw_step_ref(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  for (int64_t i = 0; i < n; ++i) adamw_element(p[i], g[i], m[i], v[i], s);
}

}  // namespace fp4qat::optim
