// kernels/nvfp4/quantize_staged.cu — the single-buffered one-read NVFP4 quantize kernel
// (quantize_staged.cuh) with 2D blocks: the default for 2D blocks with the amax computed on
// sm_90+ (0.94–0.97 ms against the fused kernel's 1.00–1.03 for the MoE layer, H100). Its 1D form
// is a benchmark variant (bench/dev/nvfp4_variants.cu).
#include "kernels/nvfp4/quantize_staged.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {

template <InType T>
bool launch_staged_2d(const Nvfp4Args& a, cudaStream_t stream) {
  return launch_staged<T, true>(a, stream);
}

template bool launch_staged_2d<InType::BF16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_2d<InType::F16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_2d<InType::F32>(const Nvfp4Args&, cudaStream_t);

}  // namespace fp4qat::cuda_kernels::nvfp4
