// kernels/gemm_sm90/grouped_gemm_rows.cu — the grouped GEMM with one alpha per row (row-scaled
// activations: alpha[t] = S_dec_x[t] * S_dec_w[e(t)]); see grouped_gemm.h and grouped_gemm_impl.cuh.
#include "kernels/gemm_sm90/grouped_gemm_impl.cuh"

namespace fp4qat::cuda_kernels::sm90::detail {

size_t per_row_workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count) {
  return GroupedGemm<GroupedAlpha::kPerRow>::workspace_bytes(dev, groups, host_m, N, K, sm_count);
}

bool per_row_run(const void* dev, int groups, const int* host_m, int N, int K, void* workspace, size_t ws_bytes,
                 int sm_count, cudaStream_t stream) {
  return GroupedGemm<GroupedAlpha::kPerRow>::run(dev, groups, host_m, N, K, workspace, ws_bytes, sm_count, stream);
}

}  // namespace fp4qat::cuda_kernels::sm90::detail
