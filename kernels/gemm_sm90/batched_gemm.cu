// kernels/gemm_sm90/batched_gemm.cu — see batched_gemm.h: the variant with one alpha per batch
// (alpha[b] read through the epilogue's scalar pointer with a batch stride of 1), in two tiles;
// the per-row one is batched_gemm_rows.cu (both are batched_gemm_impl.cuh).
#include "kernels/gemm_sm90/batched_gemm.h"

#include "kernels/gemm_sm90/batched_gemm_impl.cuh"

namespace fp4qat::cuda_kernels::sm90 {

namespace {

using namespace cute;
using batched_detail::Config;

using Tile0 = Config<Shape<_256, _128, _64>, Shape<_1, _1, _1>>;
using Tile1 = Config<Shape<_256, _128, _64>, Shape<_1, _2, _1>>;

}  // namespace

const char* batched_tile_name(BatchedTile t) {
  switch (t) {
    case BatchedTile::k256x128:
      return "256x128x64 cooperative";
    case BatchedTile::k256x128c12:
      return "256x128x64 cooperative, cluster 1x2";
    default:
      return "?";
  }
}

size_t batched_workspace_bytes(int B, int M, int N, int K, int sm_count, BatchedTile tile) {
  switch (tile) {
    case BatchedTile::k256x128:
      return Tile0::workspace(B, M, N, K, sm_count);
    case BatchedTile::k256x128c12:
      return Tile1::workspace(B, M, N, K, sm_count);
    default:
      FP4QAT_CHECK(false, "batched GEMM: unknown tile configuration ", static_cast<int>(tile));
  }
  return 0;
}

bool batched_gemm_bf16(const void* x, const void* w, void* y, const float* alpha, int B, int M, int N, int K, void* ws,
                       size_t ws_bytes, int sm_count, BatchedTile tile, cudaStream_t stream) {
  switch (tile) {
    case BatchedTile::k256x128:
      return Tile0::run(x, w, y, alpha, B, M, N, K, ws, ws_bytes, sm_count, stream);
    case BatchedTile::k256x128c12:
      return Tile1::run(x, w, y, alpha, B, M, N, K, ws, ws_bytes, sm_count, stream);
    default:
      FP4QAT_CHECK(false, "batched GEMM: unknown tile configuration ", static_cast<int>(tile));
  }
  return false;
}

}  // namespace fp4qat::cuda_kernels::sm90
