// kernels/nvfp4/quantize_fused.cu — the fused two-pass NVFP4 quantize kernel (quantize_fused.cuh)
// in the shape the defaults use: 256 threads, L2 hint 0 (cached, then streaming), unroll 1. It
// runs with a given amax, with 2D blocks where the one-read kernel does not apply, and wherever
// staged2 does not (before sm_90, while capturing a CUDA graph, unaligned rows). The other shapes
// (FP4QAT_NVFP4_THREADS=512, FP4QAT_NVFP4_L2HINT, FP4QAT_NVFP4_UNROLL) are benchmark variants
// in bench/dev/nvfp4_variants.cu, reached through dev_variants().
#include "kernels/nvfp4/quantize_fused.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {

template <InType T, bool kTwoD>
void launch_fused_tuned(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  // L2 hint and unroll variants exist for bf16 (the trainer's and the benchmark's type) only. The
  // knobs shape this kernel only when it is the one asked for (or none is): a fallback from a
  // forced staged2 / park launch that does not apply (a given amax, say) takes the default shape,
  // whose threads knob belongs to that kernel.
  const bool mine = tu.kernel == tuning::Nvfp4Kernel::kFused || tu.kernel == tuning::Nvfp4Kernel::kDefault;
  const bool variant = mine && (tu.threads == 512 || (T == InType::BF16 && (tu.l2hint != 0 || tu.unroll == 2)));
  if (variant)
    return dev_variants("the fused kernel with FP4QAT_NVFP4_THREADS=512, FP4QAT_NVFP4_L2HINT or FP4QAT_NVFP4_UNROLL")
        .fused(a, kTwoD, tu, stream);
  launch_fused_t<T, kTwoD, 256, 0, 1>(a, tu, stream);
}

template void launch_fused_tuned<InType::BF16, false>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template void launch_fused_tuned<InType::BF16, true>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template void launch_fused_tuned<InType::F16, false>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template void launch_fused_tuned<InType::F16, true>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template void launch_fused_tuned<InType::F32, false>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template void launch_fused_tuned<InType::F32, true>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);

}  // namespace fp4qat::cuda_kernels::nvfp4
