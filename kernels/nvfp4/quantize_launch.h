// kernels/nvfp4/quantize_launch.h — the host-side interface between the NVFP4 quantize files of
// kernels/nvfp4/ (internal: included by those files and by bench/dev/ only): the workspace, the
// slices of a one-read launch, each kernel family's launcher as the dispatch
// (quantize_dispatch.cu) calls it, and the hook through which the benchmark-only variants
// (bench/dev/) are reached. Templates declared here are explicitly instantiated, for the three
// input types, in the family's .cu.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/bench_hooks.h"
#include "kernels/common/tuning.h"
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels::nvfp4 {

// The persistent launchers' workspace (nvfp4_workspace_bytes(E)), cleared on the stream:
// amax bits [E], a per-expert counter [E], the item ticket.
struct Workspace {
  uint32_t* amax_bits;
  int* counter;
  unsigned long long* ticket;
};
Workspace clear_workspace(void* workspace, int64_t E, cudaStream_t stream);

// The items of a staged2 launch: slices of at most R rows of one group, claimed in ticket order
// (a group's slices consecutive). Uniform (table null): group e = rows [e*N, (e+1)*N) of
// x[E, N, K], G slices each. Row groups (nvfp4_quantize_rows): table = int32 row_off[groups + 1]
// then item_off[groups + 1] (group g: rows [row_off[g], row_off[g+1]), slices item_off[g] ..
// item_off[g+1] - 1), copied into shared memory at the start; G is then the most slices of a group.
struct Slices {
  int64_t groups = 0, R = 0, G = 0, total = 0;
  const int32_t* table = nullptr;
  // Benchmarks (nvfp4_trace, kernels/bench_hooks.h): per ticket t < trace_items, the fields
  // [kNvfp4TraceFields * t + k]: globaltimer ns, and the claiming CTA.
  unsigned long long* trace = nullptr;
  int64_t trace_items = 0;
};

// ---- Shared host helpers (quantize_dispatch.cu) ------------------------------------------------
// A cooperative launch of a kernel whose CTAs wait for each other: all CTAs are resident
// together, also when another kernel (a quantization on a side stream) shares the device. Returns
// false, launching nothing, where that cannot be had: while a graph is being captured (its replays
// guarantee no co-residency), or when the device refuses (fewer SMs than it reports, e.g. under
// MPS); the caller then falls back. Other errors throw.
bool launch_cooperative(const void* kernel, int64_t grid, int threads, void** args, size_t smem, cudaStream_t stream);
// Records the kernel of the launch just made (nvfp4_last_kernel, kernels/bench_hooks.h).
void set_last_kernel(const char* name);
// Records the CTAs a SM of the one-read launch just made (nvfp4_last_ctas_per_sm).
void set_last_ctas_per_sm(int64_t ctas);
// The trace buffer set by nvfp4_trace (kernels/bench_hooks.h) into sl.trace / sl.trace_items.
void apply_trace(Slices& sl);

// ---- Kernel families ---------------------------------------------------------------------------
// quantize_onepass.cu: whether the one-read kernels (staged2, park) can run on this device and
// stream; the bytes per slot they use; staged2 / park over x [E, N, K] as E uniform groups or
// over given slices (row groups). Each returns false to fall back, launching nothing.
bool staged2_available(cudaStream_t stream);
int64_t staged2_slot_bytes(InType t, bool fake, const tuning::Nvfp4Tuning& tu);
template <InType T>
bool launch_staged2_uniform(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream);
// Its Four Over Six form (a.rule.four_over_six; 1D; one amax an expert, computed or given) over
// x [E, N, K] as E uniform groups, unless FP4QAT_NVFP4_KERNEL names another kernel.
template <InType T>
bool launch_staged2_4over6(const Nvfp4Args& a, cudaStream_t stream);
template <InType T>
bool launch_staged2_slices(const Nvfp4Args& a, const Slices& sl, const tuning::Nvfp4Tuning& tu, cudaStream_t stream);
// quantize_staged.cu: the single-buffered one-read kernel with 2D blocks (false: fall back).
template <InType T>
bool launch_staged_2d(const Nvfp4Args& a, cudaStream_t stream);
// Its Four Over Six form (a.rule.four_over_six, 2D tiles, one amax an expert computed here),
// unless FP4QAT_NVFP4_KERNEL names another kernel.
template <InType T>
bool launch_staged_4over6_2d(const Nvfp4Args& a, cudaStream_t stream);
// quantize_fused.cu: the fused two-pass kernel (always launches).
template <InType T, bool kTwoD>
void launch_fused_tuned(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream);
// quantize_rows.cu: row groups in two passes (the groups' amax, then quantization).
template <InType T>
void rows_two_pass(const void* x, int64_t rows, int64_t K, const int32_t* row_off, int64_t groups, void* workspace,
                   uint8_t* codes, uint8_t* scales, uint16_t* fake, float* s_dec, cudaStream_t stream);

// ---- Benchmark-only variants (bench/dev/, fp4qat_nvfp4_dev) ------------------------------------
// Shapes that only a tuning knob selects are not compiled into kernels/: the families call them
// through this table, which bench/dev/ registers (fp4qat::dev::register_nvfp4_variants()). Each
// launcher behaves as the one it replaces (false: fall back).
struct DevVariants {
  // The fused kernel with 512 threads, or (bf16) an L2 hint other than 0 or an unroll of 2.
  void (*fused)(const Nvfp4Args& a, bool two_d, const tuning::Nvfp4Tuning& tu, cudaStream_t stream);
  // The single-buffered one-read kernel with 1D blocks (FP4QAT_NVFP4_KERNEL=staged).
  bool (*staged_1d)(const Nvfp4Args& a, cudaStream_t stream);
  // staged2 with a threads x slots shape that no default chooses for this type.
  bool (*staged2)(const Nvfp4Args& a, const Slices& sl, int64_t threads, int64_t slots, cudaStream_t stream);
};
void register_dev_variants(const DevVariants* v);
// The registered table; throws fp4qat::Error naming `what` (the knobs that asked for it) if none is.
const DevVariants& dev_variants(const char* what);

}  // namespace fp4qat::cuda_kernels::nvfp4
