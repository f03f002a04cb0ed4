// kernels/cuda_kernels.h — raw-pointer launchers of the CUDA kernels: NVFP4 in kernels/nvfp4/
// (quantize_dispatch.cu chooses the quantize kernel; amax.cu, quantize_dequantize.cu,
// quantize_rows.cu), MXFP8 in kernels/mxfp8/quantize.cu, the GEMM epilogue in
// kernels/gemm/epilogue.cu. No torch here: kernels/cuda_api.cpp wraps them for at::Tensor. Every
// launcher enqueues on `stream`, never synchronises the host, and checks the launch
// (FP4QAT_CUDA_CHECK, kernels/common/cuda_check.h). Benchmark and test hooks (the trace, the last
// kernel) are in kernels/bench_hooks.h; the tuning knobs in kernels/common/tuning.h.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/cuda_check.h"
#include "kernels/common/nvfp4_rule.h"
#include "kernels/model/elementwise_ref.h"
#include "kernels/optim/adamw_ref.h"

namespace fp4qat::cuda_kernels {

enum class InType { F32, BF16, F16 };

// out[e] = max |x[e, :]| over `per` elements of each of E contiguous experts (float32 [E]).
void amax(const void* x, InType t, int64_t E, int64_t per, float* out, cudaStream_t stream);

// NVFP4 quantize of E stacked experts x[E, N, K] (K % 16 == 0), one persistent launch: the
// per-expert amax (unless given_amax) and the quantization in the same launch — on sm_90+ with 1D
// blocks each byte read once (staged in shared memory), else twice (the second read from L2).
// Outputs (any may be null except s_dec): codes [E, N, K/2], scales [E, N, K/16] (E4M3
// bytes), fake [E, N, K] bf16 = e2m1(q) * sb (exact; S_dec not applied), s_dec [E].
struct Nvfp4Args {
  const void* x = nullptr;
  InType type = InType::BF16;
  int64_t E = 1, N = 0, K = 0;
  bool two_d = false;
  const float* given_amax = nullptr;  // [E] or null
  // The scale rule: max6 (default), or Four Over Six (four_over_six, e4m3_max, mse; 1D blocks,
  // through nvfp4_quantize_rule only). row_scaled is not taken here.
  NVFP4Rule rule;
  uint8_t* codes = nullptr;
  uint8_t* scales = nullptr;
  uint16_t* fake = nullptr;
  float* s_dec = nullptr;
  void* workspace = nullptr;  // nvfp4_workspace_bytes(E), any contents (cleared in-stream)
};
size_t nvfp4_workspace_bytes(int64_t E);
void nvfp4_quantize(const Nvfp4Args& a, cudaStream_t stream);

// NVFP4 1D quantize of the rows of x [rows, K] (K % 16 == 0) in groups, each quantized with its
// own amax exactly as nvfp4_quantize of that group's rows alone would (1x16 blocks never span
// rows). table: device int32 [2 * (groups + 1)]: row_off[groups + 1] (group g = rows
// [row_off[g], row_off[g+1]); row_off[0] = 0, row_off[groups] = rows, non-decreasing), then
// item_off[groups + 1] = the prefix sums of ceil(rows of g / slice_rows), slice_rows from
// nvfp4_rows_slice_rows; total_slices = item_off[groups], max_slices = the most of one group.
// On sm_90+ one read (the staged2 / park kernel over those slices) where it applies, else two passes
// (the groups' amax, then quantization). workspace: nvfp4_workspace_bytes(groups), any contents.
// Outputs as Nvfp4Args (codes / scales / fake may be null); s_dec [groups] (no rows: amax 0).
int64_t nvfp4_rows_slice_rows(InType t, int64_t K, bool fake);  // fake: whether `fake` will be written
// That table (host memory, int32 [2 * (groups + 1)]) for host row offsets off[groups + 1] (< 2^31);
// returns total_slices and max_slices.
struct RowsTable {
  int64_t total_slices, max_slices;
};
RowsTable nvfp4_rows_table(const int64_t* off, int64_t groups, int64_t slice_rows, int32_t* table);
void nvfp4_quantize_rows(const void* x, InType t, int64_t rows, int64_t K, const int32_t* table, int64_t groups,
                         int64_t slice_rows, int64_t total_slices, int64_t max_slices, void* workspace, uint8_t* codes,
                         uint8_t* scales, uint16_t* fake, float* s_dec, cudaStream_t stream);

// NVFP4 quantize under a 2026 scale rule (kernels/nvfp4/quantize_rules.cu; kernels/common/
// nvfp4_rule.h): Four Over Six (1D blocks or 2D tiles) and / or row-scaled global scales (1D),
// over E stacked experts x [E, N, K], or over row groups of x [N, K] (E = 1, 1D, not row-scaled:
// each group its own amax, as nvfp4_quantize_rows). Outputs as Nvfp4Args; s_dec has
// nvfp4_rule_amax_count(a) entries: [E], [E * N] (row-scaled) or [groups].
struct Nvfp4RuleArgs {
  const void* x = nullptr;
  InType type = InType::BF16;
  int64_t E = 1, N = 0, K = 0;
  bool two_d = false;
  NVFP4Rule rule;
  const float* given_amax = nullptr;  // nvfp4_rule_amax_count(a) floats, or null: computed
  const int32_t* row_off = nullptr;   // device int32 [groups + 1] (row groups), or null
  int64_t groups = 0;
  uint8_t* codes = nullptr;
  uint8_t* scales = nullptr;
  uint16_t* fake = nullptr;
  float* s_dec = nullptr;
  void* workspace = nullptr;  // nvfp4_rule_workspace_bytes(a), any contents
};
int64_t nvfp4_rule_amax_count(const Nvfp4RuleArgs& a);
size_t nvfp4_rule_workspace_bytes(const Nvfp4RuleArgs& a);
void nvfp4_quantize_rule(const Nvfp4RuleArgs& a, cudaStream_t stream);
// out[r] = max |x[r, :]| for each of `rows` rows of K (K % 16 == 0): float32 [rows].
void nvfp4_row_amax(const void* x, InType t, int64_t rows, int64_t K, float* out, cudaStream_t stream);

// out[E, N, K] = e2m1(q) * sb * s_dec[e]; out is bf16 (out_bf16) or float32.
void nvfp4_dequantize(const uint8_t* codes, const uint8_t* scales, const float* s_dec, int64_t E, int64_t N, int64_t K,
                      void* out, bool out_bf16, cudaStream_t stream);

// MXFP8 over M rows of K (K % 32 == 0): q [M, K] E4M3 bytes, scales [M, K/32] E8M0 bytes.
void mxfp8_quantize(const void* x, InType t, int64_t M, int64_t K, uint8_t* q, uint8_t* scales, cudaStream_t stream);
void mxfp8_dequantize(const uint8_t* q, const uint8_t* scales, int64_t M, int64_t K, void* out, bool out_bf16,
                      cudaStream_t stream);

// The emulated NVFP4 GEMM's epilogue in one pass (kernels/gemm/epilogue.cu): y float32 [B * M, N]
// (an fp32 GEMM's result, B batches of M rows), alpha float32 [B]; out [T_rows, N] with
// out[t, :] = cast(y[r, :] * alpha[r / M]), r = rows ? rows[t] : t (int64 [T_rows], a gather of
// the real rows of a padded result; null: T_rows = B * M, every row in order). One fp32 multiply,
// one rounding to nearest even.
enum class OutType { F32, BF16, F16 };
void scale_rows_cast(const float* y, const float* alpha, const int64_t* rows, int64_t T_rows, int64_t M, int64_t N,
                     void* out, OutType o, cudaStream_t stream);

// The fused AdamW step (kernels/optim/adamw.cu) over n float32 elements of one parameter: p, m, v
// updated in place from g, each element as optim::adamw_element (the CPU reference's arithmetic).
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const optim::AdamWScalars& s,
                cudaStream_t stream);
// The same step on many parameters, kAdamWSegmentsPerLaunch a launch (the kernel's argument holds
// them: 64 x 48 + 64 x 8 bytes, under the 4 KB parameter limit of every CUDA version): segment k is
// n float32 elements of one parameter with its own decay (weight decay on matrices only), the
// other scalars shared. Empty segments are skipped.
struct AdamWSegment {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  float decay;
};
constexpr int kAdamWSegmentsPerLaunch = 64;
struct AdamWSegments {
  AdamWSegment seg[kAdamWSegmentsPerLaunch];
  int64_t first[kAdamWSegmentsPerLaunch];  // the segment's first chunk (block) in the launch
  int count;
};
void adamw_step_many(const AdamWSegment* segs, int count, const optim::AdamWScalars& s, cudaStream_t stream);

// The fused SwiGLU and RoPE (kernels/model/elementwise.cu) on the arguments of their CPU
// references (kernels/model/elementwise_ref.h), enqueued on `stream`.
void swiglu_forward(const void* h, bool bf16, int64_t T, int64_t I, void* out, cudaStream_t stream);
void swiglu_backward(const void* h, const void* g, bool bf16, int64_t T, int64_t I, void* dh, cudaStream_t stream);
void rope_forward(const void* x, const void* cos, const void* sin, bool bf16, const elementwise::RopeShape& s, void* out,
                  cudaStream_t stream);
void rope_backward(const void* g, const void* cos, const void* sin, bool bf16, const elementwise::RopeShape& s,
                   void* dx, cudaStream_t stream);
// The MoE combine (the same file; arguments of moe_combine_*_ref): H % 8 == 0, 16-byte aligned.
void moe_combine_forward(const void* y, const void* w, const int64_t* slot_row, bool bf16, int64_t N, int64_t k,
                         int64_t H, void* out, cudaStream_t stream);
void moe_combine_backward(const void* y, const void* w, const int64_t* slot_row, const void* g, bool bf16, int64_t N,
                          int64_t k, int64_t H, void* dy, void* dw, cudaStream_t stream);
// RMSNorm over short rows (kernels/model/rms_norm.cu; arithmetic and CPU reference in
// kernels/model/rms_norm_ref.h, arguments of rms_norm_rows_*_ref): x [rows, D] bf16 (bit patterns)
// or float32, D % 32 == 0 and D <= 1024 (else fp4qat::Error), optionally the weight w [D] in x's
// dtype (then D <= 512). Forward: y [rows, D] in x's dtype and rstd float32 [rows]; backward from
// g [rows, D]: dx [rows, D], and with w: dw [D] in x's dtype through partial, float32
// [weight_scratch_rows(rows), D] scratch.
void rms_norm_rows_forward(const void* x, bool bf16, int64_t rows, int64_t D, float eps, void* y, float* rstd,
                           cudaStream_t stream, const void* w = nullptr);
void rms_norm_rows_backward(const void* x, const void* g, const float* rstd, bool bf16, int64_t rows, int64_t D,
                            void* dx, cudaStream_t stream, const void* w = nullptr, void* dw = nullptr,
                            float* partial = nullptr);

// out[i] = float(in[i]) for n bf16 bit patterns (kernels/optim/widen.cu): exact, bytes as a CPU cast.
void widen_bf16(const uint16_t* in, float* out, int64_t n, cudaStream_t stream);

// The fused cross-entropy rows (kernels/loss/cross_entropy.cu; arithmetic and CPU reference in
// kernels/loss/cross_entropy_ref.h): logits [N, V] bf16 (bit patterns) or float32, targets int64 [N].
// Forward: lse [N], target_lp [N]. Backward: grad [N, V] in the logits' dtype from g [N] and lse.
void ce_forward(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, float* lse,
                float* target_lp, cudaStream_t stream);
void ce_backward(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, const float* lse,
                 const float* g, void* grad, cudaStream_t stream);

}  // namespace fp4qat::cuda_kernels
