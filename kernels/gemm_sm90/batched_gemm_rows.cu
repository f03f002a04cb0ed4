// kernels/gemm_sm90/batched_gemm_rows.cu — the batched GEMM with one alpha per row (row-scaled
// activations of equal expert counts: alpha[b * M + m] = S_dec_x[row] * S_dec_w[b]); see
// batched_gemm.h and batched_gemm_impl.cuh. One tile: 256x128x64 cooperative, no cluster.
#include "kernels/gemm_sm90/batched_gemm.h"

#include "kernels/gemm_sm90/batched_gemm_impl.cuh"

namespace fp4qat::cuda_kernels::sm90 {

namespace {
using namespace cute;
using RowsTile = batched_detail::Config<Shape<_256, _128, _64>, Shape<_1, _1, _1>, /*kRows=*/true>;
}  // namespace

size_t batched_rows_workspace_bytes(int B, int M, int N, int K, int sm_count) {
  return RowsTile::workspace(B, M, N, K, sm_count);
}

bool batched_gemm_bf16_rows(const void* x, const void* w, void* y, const float* alpha_rows, int B, int M, int N, int K,
                            void* ws, size_t ws_bytes, int sm_count, cudaStream_t stream) {
  return RowsTile::run(x, w, y, alpha_rows, B, M, N, K, ws, ws_bytes, sm_count, stream);
}

}  // namespace fp4qat::cuda_kernels::sm90
