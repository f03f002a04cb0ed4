// kernels/common/cuda_check.h — FP4QAT_CUDA_CHECK(expr): a CUDA runtime call whose error throws
// fp4qat::Error (kernels/common/check.h) naming the call and file:line. Defined in
// kernels/common/cuda_check.cu; used by the kernels' launchers, the benchmarks and the GPU tests.
#pragma once
#include <cuda_runtime.h>

namespace fp4qat::cuda_kernels {

// Throws fp4qat::Error (kernels/common/check.h) with file:line on any CUDA error.
void check(cudaError_t e, const char* what, const char* file, int line);
#define FP4QAT_CUDA_CHECK(expr) ::fp4qat::cuda_kernels::check((expr), #expr, __FILE__, __LINE__)

}  // namespace fp4qat::cuda_kernels
