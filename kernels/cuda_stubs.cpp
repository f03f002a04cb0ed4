// kernels/cuda_stubs.cpp — stand-ins for kernels/cuda_api.h in a build without CUDA kernels:
// a CUDA tensor reaching them gets a clear error instead of a link failure.
#ifndef FP4QAT_WITH_CUDA
#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

namespace fp4qat::cuda {
namespace {
[[noreturn]] void no_cuda() {
  FP4QAT_FAIL("fp4qat was built without CUDA kernels; use CPU tensors or rebuild with nvcc");
}
}  // namespace
at::Tensor global_amax(const at::Tensor&) { no_cuda(); }
at::Tensor row_amax(const at::Tensor&) { no_cuda(); }
NVFP4Tensor nvfp4_quantize(const at::Tensor&, Blocks, const std::optional<at::Tensor>&, const NVFP4Rule&) { no_cuda(); }
at::Tensor nvfp4_dequantize(const NVFP4Tensor&, at::ScalarType) { no_cuda(); }
NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor&, Blocks, const std::optional<at::Tensor>&, const NVFP4Rule&) {
  no_cuda();
}
NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor&, Blocks, const std::optional<at::Tensor>&, const NVFP4Rule&) {
  no_cuda();
}
NVFP4Operand nvfp4_quantize_rows(const at::Tensor&, const std::vector<int64_t>&, bool, const NVFP4Rule&) { no_cuda(); }
MXFP8Tensor mxfp8_quantize(const at::Tensor&) { no_cuda(); }
at::Tensor mxfp8_dequantize(const MXFP8Tensor&, at::ScalarType) { no_cuda(); }
void adamw_step(at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, const optim::AdamWScalars&) { no_cuda(); }
void adamw_step_many(const std::vector<at::Tensor>&, const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,
                     const std::vector<at::Tensor>&, const std::vector<float>&, const optim::AdamWScalars&) {
  no_cuda();
}
at::Tensor widen_bf16(const at::Tensor&) { no_cuda(); }
std::pair<at::Tensor, at::Tensor> ce_forward(const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor ce_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor swiglu_forward(const at::Tensor&) { no_cuda(); }
at::Tensor swiglu_backward(const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor rope_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor rope_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
at::Tensor moe_combine_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
std::pair<at::Tensor, at::Tensor> moe_combine_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       const at::Tensor&) {
  no_cuda();
}
std::pair<at::Tensor, at::Tensor> rms_norm_rows_forward(const at::Tensor&, double, const at::Tensor&) { no_cuda(); }
std::pair<at::Tensor, at::Tensor> rms_norm_rows_backward_weighted(const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, const at::Tensor&) {
  no_cuda();
}
at::Tensor rms_norm_rows_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
}  // namespace fp4qat::cuda
#endif
