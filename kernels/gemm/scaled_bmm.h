// kernels/gemm/scaled_bmm.h — the emulated NVFP4 GEMM, batched, with its scale:
//   y[b, m, :] = to(out)( alpha[b] * (a[b, m, :] @ w[b, :, :]^T) )        a [B, M, K], w [B, N, K]
// a and w hold exact operand values (e2m1(q) * sb in bf16/f16, or fp32); products are accumulated
// in fp32, alpha (float32 [B]: S_dec_x[b] * S_dec_w[b]) multiplies the fp32 result once, and the
// result is rounded once to `out`. With `rows` (int64 [T], on a's device) only those rows of the
// flattened [B * M, N] result are returned, as [T, N] (the real rows of a padded batch).
// CUDA: one strided-batched cuBLAS GEMM with fp32 output, then one fused pass (kernels/gemm/
// epilogue.cu) that scales, rounds and gathers: the fp32 result is read once. CPU (the reference):
// fp32 bmm, at::mul, Tensor::to, index_select — the same multiply and rounding per element.
// No host synchronisation.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fp4qat::gemm {

at::Tensor scaled_bmm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out,
                      const at::Tensor& rows = at::Tensor());

// One scale per row (row-scaled activations, numerics.md): a [M, K], w [N, K], alpha float32 [M]
// (S_dec_x[m] * S_dec_w, the product first): y[m, :] = to(out)(alpha[m] * (a[m, :] @ w^T)), fp32
// accumulation, one multiply, one rounding — scaled_bmm's epilogue with each row a batch of one.
at::Tensor scaled_mm_rows(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out);

// The grouped form on rows of a padded batch: x [E, Mmax, K] (expert e's rows first in slice e;
// or x [T, K] with expert e's rows at off[e], unpadded),
// w [E, N, K], alpha float32 [E], off: host row offsets [E + 1] of the result (expert e has
// off[e+1] - off[e] <= Mmax rows). Returns y [off[E], N] in `out` with
//   y[off[e] + j, :] = to(out)( alpha[e] * (x[e, j, :] @ w[e]^T) ),
// the same arithmetic as scaled_bmm(x, w, alpha, out, rows) — in one CUTLASS grouped GEMM with
// alpha in its epilogue (kernels/gemm_sm90/grouped_gemm.h), or one batched GEMM when every
// expert has the same row count (below): no fp32 result in memory, no padding rows computed. Returns an undefined tensor when that kernel does not apply (not compiled in,
// not an sm_90 device, dtypes other than bf16, N or K not a multiple of 8, or switched off): the
// caller then uses scaled_bmm.
at::Tensor grouped_scaled_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& alpha,
                             const std::vector<int64_t>& off, at::ScalarType out);
// The same with one alpha per row (row-scaled activations, numerics.md): x [T, K] with expert e's
// rows at off[e], alpha float32 [T] (S_dec_x[t] * S_dec_w[e(t)], the product first):
//   y[t, :] = to(out)( alpha[t] * (x[t, :] @ w[e(t)]^T) ),
// scaled_mm_rows's arithmetic for each expert's row range, in one CUTLASS grouped GEMM whose
// epilogue reads alpha per row (kernels/gemm_sm90/grouped_gemm_rows.cu), or one batched GEMM of
// the same epilogue when every expert has the same row count (batched_gemm_rows.cu). Undefined when that kernel
// does not apply (as grouped_scaled_mm): the caller then loops over experts with scaled_mm_rows.
at::Tensor grouped_scaled_mm_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& alpha,
                                  const std::vector<int64_t>& off, at::ScalarType out);
// Whether grouped_scaled_mm would run for x on this device with these sizes (compiled in,
// switched on, CUDA sm_90, bf16 in and out, N and K multiples of 8).
bool grouped_gemm_supported(const at::Tensor& x, int64_t N, int64_t K, at::ScalarType out);
// The switches of this path (the grouped GEMM on or off, the batched form's tile, the fused
// epilogue) are tuning knobs, read once (kernels/common/tuning.h GemmTuning: FP4QAT_GROUPED_GEMM,
// FP4QAT_BATCHED_GEMM); benchmarks and tests set them through kernels/bench_hooks.h, which also
// tells which kernel the last grouped_scaled_mm call ran.
//
// When every expert has the same row count (off[e] = e * Mmax) grouped_scaled_mm runs one CUTLASS
// batched GEMM over the [E, Mmax, K] batch instead of the grouped one (kernels/gemm_sm90/
// batched_gemm.h): the same arithmetic (alpha[e] on the fp32 accumulator, one rounding), one TMA
// descriptor per operand instead of one per group; two tile configurations are compiled.

}  // namespace fp4qat::gemm
