// kernels/nvfp4/quantize_dispatch.cu — CUDA NVFP4 quantize: the choice of kernel for
// nvfp4_quantize (E stacked experts, the per-expert amax computed in the same launch or given) and
// nvfp4_quantize_rows (row groups), the workspace, and the host helpers the kernel families share
// (kernels/nvfp4/quantize_launch.h). The kernels live one family a file:
//   quantize_onepass.cu  staged2 (default on sm_90+ for 1D blocks with the amax computed): one
//     read, multi-buffered in shared memory, cooperative launch; also the row groups. Its bf16
//     variant with a third slot in registers (park) is the default when fake values are written;
//   quantize_staged.cu   staged (default on sm_90+ for 2D blocks with the amax computed): one read,
//     single-buffered;
//   quantize_fused.cu    fused (everything else, and every given amax): two reads, the second
//     meant to hit L2;
//   quantize_rows.cu     the row groups' two passes where staged2 does not apply;
//   quantize_rules.cu    the 2026 rules (Four Over Six, row-scaled global scales): its own
//     launcher, nvfp4_quantize_rule, chosen in kernels/cuda_api.cpp by the rule; Four Over Six
//     with one amax an expert runs in the one-read kernels' Four Over Six forms (staged2-4over6,
//     staged-4over6; the pieces in quantize_4over6.cuh);
//   quantize_dequantize.cu, amax.cu.
// Per-element arithmetic is kernels/common/formats.h, shared with the CPU reference
// (kernels/nvfp4/quantize_ref.cpp); built with --fmad=false and IEEE div/rcp. Shapes that only a
// tuning knob (kernels/common/tuning.h) selects are benchmark variants in bench/dev/.
#include <algorithm>
#include <atomic>

#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/tuning.h"
#include "kernels/cuda_kernels.h"
#include "kernels/nvfp4/quantize_launch.h"

namespace fp4qat::cuda_kernels {

using tuning::Nvfp4Kernel;

namespace {
std::atomic<const char*> g_last_kernel{""};  // nvfp4_last_kernel()
std::atomic<int64_t> g_last_ctas_per_sm{0};  // nvfp4_last_ctas_per_sm()
unsigned long long* g_trace = nullptr;
int64_t g_trace_items = 0;
std::atomic<const nvfp4::DevVariants*> g_dev_variants{nullptr};
}  // namespace

namespace nvfp4 {

// A cooperative launch of a kernel whose CTAs wait for each other: all CTAs are resident
// together, also when another kernel (a quantization on a side stream) shares the device. Returns
// false, launching nothing, where that cannot be had: while a graph is being captured (its replays
// guarantee no co-residency), or when the device refuses (fewer SMs than it reports, e.g. under
// MPS); the caller then falls back. Other errors throw.
bool launch_cooperative(const void* kernel, int64_t grid, int threads, void** args, size_t smem, cudaStream_t stream) {
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  FP4QAT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return false;
  const cudaError_t err =
      cudaLaunchCooperativeKernel(kernel, dim3(static_cast<unsigned>(grid)), dim3(threads), args, smem, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported) {
    (void)cudaGetLastError();
    return false;
  }
  FP4QAT_CUDA_CHECK(err);
  return true;
}

void set_last_kernel(const char* name) { g_last_kernel = name; }
void set_last_ctas_per_sm(int64_t ctas) { g_last_ctas_per_sm = ctas; }

void apply_trace(Slices& sl) {
  sl.trace = g_trace;
  sl.trace_items = g_trace_items;
}

Workspace clear_workspace(void* workspace, int64_t E, cudaStream_t stream) {
  auto* amax_bits = static_cast<uint32_t*>(workspace);
  Workspace w{amax_bits, reinterpret_cast<int*>(amax_bits + E),
              reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) +
                                                    ((static_cast<size_t>(E) * 8 + 15) / 16) * 16)};
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(workspace, 0, nvfp4_workspace_bytes(E), stream));
  return w;
}

void register_dev_variants(const DevVariants* v) { g_dev_variants = v; }

const DevVariants& dev_variants(const char* what) {
  const DevVariants* v = g_dev_variants.load();
  FP4QAT_CHECK(v != nullptr, "nvfp4_quantize (CUDA): ", what,
               " is a benchmark variant, not compiled into kernels/: link bench/dev (fp4qat_nvfp4_dev) and call "
               "fp4qat::dev::register_nvfp4_variants() first");
  return *v;
}

}  // namespace nvfp4

size_t nvfp4_workspace_bytes(int64_t E) { return ((static_cast<size_t>(E) * 8 + 15) / 16) * 16 + 16; }

const char* nvfp4_last_kernel() { return g_last_kernel.load(); }
int64_t nvfp4_last_ctas_per_sm() { return g_last_ctas_per_sm.load(); }

void nvfp4_trace(unsigned long long* buf, int64_t items) {
  g_trace = buf;
  g_trace_items = buf ? items : 0;
}

int64_t nvfp4_rows_slice_rows(InType t, int64_t K, bool fake) {
  const int64_t row_bytes = K * (t == InType::F32 ? 4 : 2);
  return row_bytes > 0 ? std::max<int64_t>(1, nvfp4::staged2_slot_bytes(t, fake, tuning::nvfp4_tuning()) / row_bytes)
                       : 1;
}

void nvfp4_quantize_rows(const void* x, InType t, int64_t rows, int64_t K, const int32_t* table, int64_t groups,
                         int64_t slice_rows, int64_t total_slices, int64_t max_slices, void* workspace, uint8_t* codes,
                         uint8_t* scales, uint16_t* fake, float* s_dec, cudaStream_t stream) {
  FP4QAT_CHECK(K % 16 == 0 && K > 0, "nvfp4_quantize_rows (CUDA): K = ", K, " is not a positive multiple of 16");
  if (groups == 0) return;
  const tuning::Nvfp4Tuning tu = tuning::nvfp4_tuning();
  const bool try_staged2 =
      tu.kernel == Nvfp4Kernel::kDefault || tu.kernel == Nvfp4Kernel::kStaged2 || tu.kernel == Nvfp4Kernel::kPark;
  Nvfp4Args a;
  a.x = x;
  a.type = t;
  a.E = groups;
  a.N = rows;
  a.K = K;
  a.codes = codes;
  a.scales = scales;
  a.fake = fake;
  a.s_dec = s_dec;
  a.workspace = workspace;
  nvfp4::Slices sl;
  sl.groups = groups;
  sl.R = slice_rows;
  sl.G = max_slices;
  sl.total = total_slices;
  sl.table = table;
  switch (t) {
#define FP4QAT_ROWS(TY)                                                                                 \
  case TY:                                                                                              \
    if (try_staged2 && rows > 0 && nvfp4::staged2_available(stream) &&                                  \
        nvfp4::launch_staged2_slices<TY>(a, sl, tu, stream))                                            \
      return;                                                                                           \
    nvfp4::rows_two_pass<TY>(x, rows, K, table, groups, workspace, codes, scales, fake, s_dec, stream); \
    return;
    FP4QAT_ROWS(InType::BF16)
    FP4QAT_ROWS(InType::F16)
    FP4QAT_ROWS(InType::F32)
#undef FP4QAT_ROWS
  }
}

void nvfp4_quantize(const Nvfp4Args& a, cudaStream_t stream) {
  FP4QAT_CHECK(a.K % 16 == 0 && a.K > 0, "nvfp4_quantize (CUDA): K = ", a.K, " is not a positive multiple of 16");
  FP4QAT_CHECK(a.s_dec && a.workspace, "nvfp4_quantize (CUDA): s_dec and workspace are required");
  if (a.E == 0) return;
  // Default: with the amax computed here, the multi-buffered one-read kernel (staged2) where it
  // applies (sm_90+, 1D blocks, 16-byte aligned rows, not while capturing a graph); 2D blocks: the
  // one-read staged kernel where it applies (its slices fit in shared memory, sm_90+, not while
  // capturing: 0.94–0.97 ms against the fused kernel's 1.00–1.03 for the MoE layer, H100); else
  // the fused two-pass kernel; with a given amax the fused kernel's single streaming pass (as fast
  // as staged2's for packed outputs, faster with fake values: bench/RESULTS.md, H100).
  // FP4QAT_NVFP4_KERNEL=fused|staged|staged2|park picks one (benchmarks and tests; a variant that
  // does not apply falls back to fused); the tuning knobs are read once (kernels/common/tuning.h).
  const tuning::Nvfp4Tuning tu = tuning::nvfp4_tuning();
  const bool forced_none = tu.kernel == Nvfp4Kernel::kDefault;
  const bool try_staged2 =
      forced_none ? a.given_amax == nullptr : tu.kernel == Nvfp4Kernel::kStaged2 || tu.kernel == Nvfp4Kernel::kPark;
  const bool try_staged = tu.kernel == Nvfp4Kernel::kStaged ||
                          (forced_none && a.two_d && a.given_amax == nullptr && nvfp4::staged2_available(stream));
#define FP4QAT_DISPATCH(TY)                                                                                            \
  if (a.type == TY) {                                                                                                  \
    if (try_staged2 && nvfp4::launch_staged2_uniform<TY>(a, tu, stream)) return;                                       \
    if (a.two_d) {                                                                                                     \
      if (!(try_staged && nvfp4::launch_staged_2d<TY>(a, stream))) nvfp4::launch_fused_tuned<TY, true>(a, tu, stream); \
    } else if (!(try_staged &&                                                                                         \
                 nvfp4::dev_variants("FP4QAT_NVFP4_KERNEL=staged with 1D blocks").staged_1d(a, stream))) {             \
      nvfp4::launch_fused_tuned<TY, false>(a, tu, stream);                                                             \
    }                                                                                                                  \
    return;                                                                                                            \
  }
  FP4QAT_DISPATCH(InType::BF16)
  FP4QAT_DISPATCH(InType::F16)
  FP4QAT_DISPATCH(InType::F32)
#undef FP4QAT_DISPATCH
  FP4QAT_FAIL("nvfp4_quantize (CUDA): unsupported input type");
}

}  // namespace fp4qat::cuda_kernels
