// bench/dev/nvfp4_variants.cu — see nvfp4_variants.h. The kernels and launchers are the ones of
// kernels/nvfp4/ (their headers), instantiated here in the shapes kernels/ does not compile.
#include "bench/dev/nvfp4_variants.h"

#include "kernels/common/check.h"
#include "kernels/nvfp4/quantize_fused.cuh"
#include "kernels/nvfp4/quantize_launch.h"
#include "kernels/nvfp4/quantize_onepass.cuh"
#include "kernels/nvfp4/quantize_staged.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

// The fused kernel's shapes other than 256 threads, L2 hint 0, unroll 1 (quantize_fused.cu):
// the choice the dispatch made before they moved here.
template <InType T, bool kTwoD>
void dev_fused_t(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  if (tu.threads == 512) return launch_fused_t<T, kTwoD, 512, 0, 1>(a, tu, stream);
  // L2 hint and unroll variants for bf16 (the trainer's and the benchmark's type) only.
  if constexpr (T == InType::BF16) {
    const int64_t hint = tu.l2hint, unroll = tu.unroll > 0 ? tu.unroll : 1;
    if (hint == 1 && unroll == 2) return launch_fused_t<T, kTwoD, 256, 1, 2>(a, tu, stream);
    if (hint == 1) return launch_fused_t<T, kTwoD, 256, 1, 1>(a, tu, stream);
    if (hint == 2 && unroll == 2) return launch_fused_t<T, kTwoD, 256, 2, 2>(a, tu, stream);
    if (hint == 2) return launch_fused_t<T, kTwoD, 256, 2, 1>(a, tu, stream);
    if (unroll == 2) return launch_fused_t<T, kTwoD, 256, 0, 2>(a, tu, stream);
  }
  FP4QAT_FAIL("bench/dev: the fused kernel's default shape is compiled in kernels/nvfp4/quantize_fused.cu");
}

template <InType T>
void dev_fused_2(const Nvfp4Args& a, bool two_d, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  if (two_d)
    dev_fused_t<T, true>(a, tu, stream);
  else
    dev_fused_t<T, false>(a, tu, stream);
}

void dev_fused(const Nvfp4Args& a, bool two_d, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  switch (a.type) {
    case InType::BF16:
      return dev_fused_2<InType::BF16>(a, two_d, tu, stream);
    case InType::F16:
      return dev_fused_2<InType::F16>(a, two_d, tu, stream);
    case InType::F32:
      return dev_fused_2<InType::F32>(a, two_d, tu, stream);
  }
  FP4QAT_FAIL("nvfp4_quantize (CUDA): unsupported input type");
}

bool dev_staged_1d(const Nvfp4Args& a, cudaStream_t stream) {
  switch (a.type) {
    case InType::BF16:
      return launch_staged<InType::BF16, false>(a, stream);
    case InType::F16:
      return launch_staged<InType::F16, false>(a, stream);
    case InType::F32:
      return launch_staged<InType::F32, false>(a, stream);
  }
  FP4QAT_FAIL("nvfp4_quantize (CUDA): unsupported input type");
}

// staged2's shapes that quantize_onepass.cu does not compile: 256 x 4 and 512 x 3 / 4 for every
// type, 256 x 3 for bf16, 256 x 2 for f16 / f32.
template <InType T>
bool dev_staged2_t(const Nvfp4Args& a, const Slices& sl, int64_t threads, int64_t slots, cudaStream_t stream) {
  if (threads != 256 && threads != 512)
    FP4QAT_FAIL("FP4QAT_NVFP4_THREADS=", threads, ": staged2 runs 256 or 512 threads (384: Four Over Six only)");
  const bool wide = threads == 512;
  if (slots == 4) return wide ? launch_staged2_t<T, 512, 4>(a, sl, stream) : launch_staged2_t<T, 256, 4>(a, sl, stream);
  if (slots == 3 && wide) return launch_staged2_t<T, 512, 3>(a, sl, stream);
  if constexpr (T == InType::BF16) {
    if (slots == 3) return launch_staged2_t<T, 256, 3>(a, sl, stream);
  } else {
    if (slots == 2 && !wide) return launch_staged2_t<T, 256, 2>(a, sl, stream);
  }
  FP4QAT_FAIL("bench/dev: staged2 ", threads, " x ", slots, " is compiled in kernels/nvfp4/quantize_onepass.cu");
}

bool dev_staged2(const Nvfp4Args& a, const Slices& sl, int64_t threads, int64_t slots, cudaStream_t stream) {
  switch (a.type) {
    case InType::BF16:
      return dev_staged2_t<InType::BF16>(a, sl, threads, slots, stream);
    case InType::F16:
      return dev_staged2_t<InType::F16>(a, sl, threads, slots, stream);
    case InType::F32:
      return dev_staged2_t<InType::F32>(a, sl, threads, slots, stream);
  }
  FP4QAT_FAIL("nvfp4_quantize (CUDA): unsupported input type");
}

const DevVariants kVariants{dev_fused, dev_staged_1d, dev_staged2};

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4

namespace fp4qat::dev {

void register_nvfp4_variants() { cuda_kernels::nvfp4::register_dev_variants(&cuda_kernels::nvfp4::kVariants); }

}  // namespace fp4qat::dev
