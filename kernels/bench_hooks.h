// kernels/bench_hooks.h — benchmark and test hooks into kernels/: replacing the tuning knobs
// (kernels/common/tuning.h) at run time, the NVFP4 quantizer's trace and the name of the kernel
// its last launch used, and the NVFP4 GEMM path's switches. For bench/ and tests/ only:
// production code (qat/, autograd/, trainer/) never includes this header. No torch and no CUDA
// headers here.
#pragma once
#include <cstdint>

#include "kernels/common/tuning.h"

namespace fp4qat::tuning {

// Replace the knobs in effect (the environment is then no longer read). Not concurrently with
// launches that read them.
void set_nvfp4_tuning(const Nvfp4Tuning& t);
void set_gemm_tuning(const GemmTuning& t);

// Sets the NVFP4 knobs for its lifetime, then puts back the ones it found.
class ScopedNvfp4Tuning {
 public:
  explicit ScopedNvfp4Tuning(const Nvfp4Tuning& t) : saved_(nvfp4_tuning()) { set_nvfp4_tuning(t); }
  ~ScopedNvfp4Tuning() { set_nvfp4_tuning(saved_); }
  ScopedNvfp4Tuning(const ScopedNvfp4Tuning&) = delete;
  ScopedNvfp4Tuning& operator=(const ScopedNvfp4Tuning&) = delete;

 private:
  Nvfp4Tuning saved_;
};

}  // namespace fp4qat::tuning

namespace fp4qat::cuda_kernels {

// The one-read launches (staged2, park) that follow record, for each ticket t < items, into
// buf[kNvfp4TraceFields * t + k] (device memory, uint64 [kNvfp4TraceFields * items]) the
// globaltimer (ns) when its slice was: k = 0 claimed, 1 seen landed (by thread 0's warp), 2 found
// its expert complete (at the head), 3 quantized, 4 folded in (its max and arrival released: by the
// last warp where warps fold apart); k = 5 is not a time but the CTA (blockIdx.x) that claimed it.
// Null stops it.
constexpr int kNvfp4TraceFields = 6;
void nvfp4_trace(unsigned long long* buf, int64_t items);
// The kernel the last NVFP4 quantize launch on this host used ("staged2", "park", "staged",
// "fused", "two-pass"), to check that a forced variant really ran.
const char* nvfp4_last_kernel();
// The CTAs a SM (occupancy, by registers and shared memory) of the last one-read launch (staged2,
// park): what a kernel's register count or slot size leaves resident.
int64_t nvfp4_last_ctas_per_sm();
// MXFP8 quantize: blocks a thread takes an iteration for 16-bit inputs, 1 or 2 (0: the default, 2).
void set_mxfp8_units(int units);

}  // namespace fp4qat::cuda_kernels

namespace fp4qat::gemm {

// The grouped GEMM of grouped_scaled_mm (kernels/gemm/scaled_bmm.h) on or off (GemmTuning::grouped;
// FP4QAT_GROUPED_GEMM=0 in the environment turns it off at start).
void set_grouped_gemm(bool on);
bool grouped_gemm_enabled();

// The batched form's tile (GemmTuning::batched_tile): -1 turns the batched form off (the grouped
// GEMM runs), 0 (the default) or 1 picks a compiled tile; FP4QAT_BATCHED_GEMM in the environment
// sets it at start. Other values throw.
void set_batched_gemm_tile(int tile);
int batched_gemm_tile();

// Which kernel the last grouped_scaled_mm(_rows) call on this thread ran: "batched", "grouped",
// "batched_rows", "grouped_rows" or "none" (declined, or nothing to compute). Tests use it to know the path they checked.
const char* last_grouped_kernel();

// Diagnostic switch (GemmTuning::fused_epilogue): false makes the CUDA path use the unfused ATen
// epilogue (at::mul_, Tensor::to, index_select) instead of the fused kernel; the bytes are the same.
void set_fused_epilogue(bool on);
bool fused_epilogue();

}  // namespace fp4qat::gemm
