// kernels/gemm_sm90/batched_gemm.h — the emulated NVFP4 GEMM for a batch of equal experts, with
// alpha in the epilogue, on Hopper (sm_90a) through a CUTLASS 3 batched GEMM (TMA + warp-specialized
// WGMMA, the batch as the L mode of one problem): for every b in [0, B), in one launch,
//   y[b][M, N] = bf16( alpha[b] * (x[b][M, K] @ w[b][N, K]^T) )
// with bf16 operands, fp32 accumulation, alpha (float32 [B], on the device) multiplying the fp32
// accumulator once in the epilogue and one rounding to nearest even to bf16: the arithmetic of
// grouped_gemm.h, for the case where every expert has the same row count M (uniform routing).
// One 3-D TMA descriptor per operand instead of a descriptor per group, and no argument block
// copied from the host. Raw pointers, no torch: kernels/gemm/scaled_bmm.cpp wraps it.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace fp4qat::cuda_kernels::sm90 {

// Tile configurations compiled in (the benchmark compares them; the default is the first).
enum class BatchedTile : int {
  k256x128 = 0,     // cooperative, 256x128x64 tile, no cluster (the grouped GEMM's)
  k256x128c12 = 1,  // cooperative, 256x128x64 tile, 1x2x1 cluster (cuBLAS's choice for these bmm shapes)
  kCount = 2,
};
const char* batched_tile_name(BatchedTile t);

// Workspace bytes for this problem.
size_t batched_workspace_bytes(int B, int M, int N, int K, int sm_count, BatchedTile tile);

// x [B, M, K], w [B, N, K], y [B, M, N]: contiguous bf16 device arrays; alpha float32 [B] on the
// device. Launches on `stream`. Returns false (launching nothing) when CUTLASS cannot implement
// the problem (alignment): the caller falls back. Throws fp4qat::Error on a CUDA / CUTLASS error.
bool batched_gemm_bf16(const void* x, const void* w, void* y, const float* alpha, int B, int M, int N, int K,
                       void* workspace, size_t workspace_bytes, int sm_count, BatchedTile tile, cudaStream_t stream);

// The same with one alpha per row (row-scaled activations): alpha_rows float32 [B * M],
//   y[b][m, :] = bf16( alpha_rows[b * M + m] * (x[b][m, :] @ w[b]^T) ),
// the first tile only (batched_gemm_rows.cu).
size_t batched_rows_workspace_bytes(int B, int M, int N, int K, int sm_count);
bool batched_gemm_bf16_rows(const void* x, const void* w, void* y, const float* alpha_rows, int B, int M, int N, int K,
                            void* workspace, size_t workspace_bytes, int sm_count, cudaStream_t stream);

}  // namespace fp4qat::cuda_kernels::sm90
