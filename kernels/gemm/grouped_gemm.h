// kernels/gemm/grouped_gemm.h — grouped (per-expert) GEMMs on CUDA through cuBLAS
// (cublasGemmGroupedBatchedEx): bf16 operands, fp32 accumulation, one launch for all experts,
// on the current stream, no host synchronisation. Rows of the [T, *] operands are grouped by
// expert with host offsets off[E + 1]; experts with no rows are skipped (their outputs untouched).
// Layouts are row-major, weights `[E, N, K]` = `[expert, out, in]`.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fp4qat::gemm {

// y[rows of e, N] = x[rows of e, K] @ w[e]^T, fp32 output (for the NVFP4 alpha epilogue).
// x: bf16 [T, K], w: bf16 [E, N, K].
at::Tensor grouped_nt_f32(const at::Tensor& x, const at::Tensor& w, const std::vector<int64_t>& off);

// dx[rows of e, K] = dy[rows of e, N] @ w[e] (bf16 output, like a bf16 Linear's dgrad).
at::Tensor grouped_nn(const at::Tensor& dy, const at::Tensor& w, const std::vector<int64_t>& off);

// dw[e] = dy[rows of e]^T @ x[rows of e] -> [E, N, K] (bf16; zero for experts without rows).
at::Tensor grouped_wgrad(const at::Tensor& dy, const at::Tensor& x, const std::vector<int64_t>& off, int64_t E);

}  // namespace fp4qat::gemm
