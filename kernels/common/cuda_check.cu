// kernels/common/cuda_check.cu — see cuda_check.h.
#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"

namespace fp4qat::cuda_kernels {

void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) ::fp4qat::detail::fail(file, line, "CUDA error in ", what, ": ", cudaGetErrorString(e));
}

}  // namespace fp4qat::cuda_kernels
