// bench/dev/nvfp4_variants.h — the NVFP4 quantize variants that only a tuning knob selects
// (kernels/common/tuning.h), compiled here instead of into kernels/: the fused kernel with 512
// threads, an L2 hint or an unroll of 2; the single-buffered one-read kernel with 1D blocks;
// staged2 in the threads x slots shapes no default chooses. Benchmarks and their tests link
// fp4qat_nvfp4_dev and call register_nvfp4_variants() once; without it, a knob that selects one
// of these makes nvfp4_quantize throw an error naming it.
#pragma once

namespace fp4qat::dev {

void register_nvfp4_variants();

}  // namespace fp4qat::dev
