// kernels/gemm_sm90/grouped_gemm.h — the emulated NVFP4 grouped GEMM with alpha in the epilogue,
// on Hopper (sm_90a) through a CUTLASS 3 pointer-array grouped GEMM (TMA + warp-specialized
// WGMMA): for each group g (an expert with rows), in one launch,
//   y_g[M_g, N] = bf16( alpha[e_g] * (x_g[M_g, K] @ w_{e_g}[N, K]^T) )              (kPerGroup)
//   y_g[m, :]   = bf16( alpha[y_row0_g + m] * (x_g[m, :] @ w_{e_g}[N, K]^T) )    (kPerRow)
// with bf16 operands, fp32 accumulation, alpha (float32, on the device) multiplying the fp32
// accumulator once in the epilogue, one rounding to nearest even to bf16 — the arithmetic of
// kernels/gemm/scaled_bmm.h without the fp32 result in memory and without padding rows.
// Raw pointers, no torch: kernels/gemm/scaled_bmm.cpp wraps it. Compiled only where the CUTLASS
// headers are found (FP4QAT_WITH_CUTLASS); its translation unit targets sm_90a.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fp4qat::cuda_kernels::sm90 {

// Where alpha comes from: one value per group (alpha[w_index[g]]), or one per output row
// (alpha[y_row0[g] + m], row-scaled activations; its own kernel, grouped_gemm_rows.cu).
enum class GroupedAlpha { kPerGroup, kPerRow };

// Bytes of the packed argument block for `groups` groups (problem shapes, pointer and stride
// arrays, alpha pointers), 256-byte aligned sections.
size_t grouped_args_bytes(int groups);

// Fills the host argument block: group g multiplies rows [x_row0[g], x_row0[g] + m[g]) of x
// [*, K] by w[w_index[g]] ([N, K]) into rows [y_row0[g], y_row0[g] + m[g]) of y [*, N], with
// alpha[w_index[g]] (kPerGroup) or alpha[y_row0[g] + m] for its row m (kPerRow). All pointers
// are device pointers; m[g] >= 1.
void fill_grouped_args(void* host_block, int groups, int N, int K, const int* m, const int64_t* x_row0,
                       const int64_t* y_row0, const int64_t* w_index, const void* x, const void* w, void* y,
                       const float* alpha, GroupedAlpha kind = GroupedAlpha::kPerGroup);

// Workspace bytes for this problem (call after the block is on the device).
size_t grouped_workspace_bytes(const void* dev_block, int groups, const int* host_m, int N, int K, int sm_count,
                               GroupedAlpha kind = GroupedAlpha::kPerGroup);

// Launches on `stream`. Returns false (launching nothing) when CUTLASS cannot implement the
// problem (alignment): the caller falls back. Throws fp4qat::Error on a CUDA / CUTLASS error.
bool grouped_gemm_bf16(const void* dev_block, int groups, const int* host_m, int N, int K, void* workspace,
                       size_t workspace_bytes, int sm_count, cudaStream_t stream,
                       GroupedAlpha kind = GroupedAlpha::kPerGroup);

}  // namespace fp4qat::cuda_kernels::sm90
