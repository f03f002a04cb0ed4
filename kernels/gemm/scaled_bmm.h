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

namespace fp4qat::gemm {

at::Tensor scaled_bmm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out,
                      const at::Tensor& rows = at::Tensor());

// Diagnostic switch (benchmark, tests): false makes the CUDA path use the unfused ATen epilogue
// (at::mul_, Tensor::to, index_select) instead of the fused kernel; the bytes are the same.
void set_fused_epilogue(bool on);
bool fused_epilogue();

}  // namespace fp4qat::gemm
