// kernels/nvfp4/quantize_staged.cu — the single-buffered one-read NVFP4 quantize kernel
// (quantize_staged.cuh) with 2D blocks: the default for 2D blocks with the amax computed on
// sm_90+ (0.94–0.97 ms against the fused kernel's 1.00–1.03 for the MoE layer, H100). Its 1D form
// is a benchmark variant (bench/dev/nvfp4_variants.cu). Also its Four Over Six form with 2D tiles
// (through nvfp4_quantize_rule).
#include "kernels/nvfp4/quantize_staged.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {

template <InType T>
bool launch_staged_2d(const Nvfp4Args& a, cudaStream_t stream) {
  return launch_staged<T, true>(a, stream);
}

// Four Over Six with 2D tiles (a.rule), unless FP4QAT_NVFP4_KERNEL names another kernel.
template <InType T>
bool launch_staged_4over6_2d(const Nvfp4Args& a, cudaStream_t stream) {
  const tuning::Nvfp4Kernel k = tuning::nvfp4_tuning().kernel;
  if (k != tuning::Nvfp4Kernel::kDefault && k != tuning::Nvfp4Kernel::kStaged) return false;
  if (!a.rule.four_over_six || a.rule.row_scaled || !a.two_d || !staged2_available(stream)) return false;
  return a.rule.mse ? launch_staged<T, true, 2>(a, stream) : launch_staged<T, true, 1>(a, stream);
}

template bool launch_staged_4over6_2d<InType::BF16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_4over6_2d<InType::F16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_4over6_2d<InType::F32>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_2d<InType::BF16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_2d<InType::F16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged_2d<InType::F32>(const Nvfp4Args&, cudaStream_t);

}  // namespace fp4qat::cuda_kernels::nvfp4
