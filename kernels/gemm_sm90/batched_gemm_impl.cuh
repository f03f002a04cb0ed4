// kernels/gemm_sm90/batched_gemm_impl.cuh — the CUTLASS 3 batched GEMM of batched_gemm.h, templated
// on its tile, cluster and where alpha comes from; included by the translation unit of each variant
// (batched_gemm.cu: one alpha per batch, two tiles; batched_gemm_rows.cu: one alpha per row).
// bf16 A = x [B, M, K] row-major per batch, bf16 B = w [B, N, K] row-major per batch (CUTLASS's
// column-major K x N), bf16 D = y [B, M, N] row-major per batch, fp32 accumulation; epilogue
// D = alpha * acc (per batch: LinearCombination with beta = 0 and no source tensor, C is never
// read, as in grouped_gemm_impl.cuh; per row: an epilogue visitor tree), one round-to-nearest
// conversion to bf16.
#pragma once

#include <type_traits>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"

namespace fp4qat::cuda_kernels::sm90::batched_detail {

using namespace cute;

using ProblemShape = Shape<int, int, int, int>;  // (M, N, K, L = B)
using ElementAB = cutlass::bfloat16_t;
using ElementD = cutlass::bfloat16_t;
using ElementAcc = float;
using LayoutA = cutlass::layout::RowMajor;     // x[b] [M, K]
using LayoutB = cutlass::layout::ColumnMajor;  // w[b] [N, K] row-major = K x N column-major
using LayoutD = cutlass::layout::RowMajor;     // y[b] [M, N]
constexpr int kAlign = 8;                      // 16 bytes of bf16

// alpha[b * M + m] * acc in fp32 (one alpha per row: row-scaled activations), read as a column
// broadcast with batch stride M, one float a row (alignment 1), then one rounding to bf16.
template <class TileShape>
using RowScaled = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementD, ElementAcc,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>, 1>,
    cutlass::epilogue::fusion::Sm90AccFetch>;

// kRows: alpha per row ([B * M]) instead of per batch ([B]).
template <class TileShape, class ClusterShape, bool kRows = false>
struct Config {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, void, LayoutD, kAlign, ElementD, LayoutD,
      kAlign, cutlass::epilogue::TmaWarpSpecializedCooperative,
      std::conditional_t<kRows, RowScaled<TileShape>,
                         cutlass::epilogue::fusion::LinearCombination<ElementD, ElementAcc, void, ElementAcc>>>::
      CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA, kAlign, ElementAB, LayoutB, kAlign,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const void* x, const void* w, void* y, const float* alpha, int B, int M,
                                            int N, int K, int sm_count) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    cutlass::KernelHardwareInfo hw;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = sm_count;
    typename Gemm::Arguments args;
    decltype(args.epilogue.thread) fusion;
    if constexpr (kRows) {
      fusion = {{alpha, 0.0f, {_1{}, _0{}, static_cast<int64_t>(M)}}, {}, {}};  // alpha[b * M + m]
    } else {
      fusion.alpha = 0;
      fusion.beta = 0;
      fusion.alpha_ptr = alpha;
      fusion.beta_ptr = nullptr;
      fusion.dAlpha = {_0{}, _0{}, 1};  // alpha[b]: one scalar per batch
      fusion.dBeta = {_0{}, _0{}, 0};
    }
    args = typename Gemm::Arguments{
        cutlass::gemm::GemmUniversalMode::kBatched,
        {M, N, K, B},
        {static_cast<const ElementAB*>(x), cutlass::make_cute_packed_stride(StrideA{}, {M, K, B}),
         static_cast<const ElementAB*>(w), cutlass::make_cute_packed_stride(StrideB{}, {N, K, B})},
        {fusion, nullptr, cutlass::make_cute_packed_stride(StrideC{}, {M, N, B}), static_cast<ElementD*>(y),
         cutlass::make_cute_packed_stride(StrideD{}, {M, N, B})},
        hw};
    return args;
  }

  static size_t workspace(int B, int M, int N, int K, int sm_count) {
    return Gemm::get_workspace_size(arguments(nullptr, nullptr, nullptr, nullptr, B, M, N, K, sm_count));
  }

  static bool run(const void* x, const void* w, void* y, const float* alpha, int B, int M, int N, int K, void* ws,
                  size_t ws_bytes, int sm_count, cudaStream_t stream) {
    const auto args = arguments(x, w, y, alpha, B, M, N, K, sm_count);
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
    FP4QAT_CHECK(Gemm::get_workspace_size(args) <= ws_bytes, "batched GEMM: workspace too small");
    cutlass::Status s = gemm.initialize(args, ws, stream);
    FP4QAT_CHECK(s == cutlass::Status::kSuccess,
                 "batched GEMM: CUTLASS initialize failed: ", cutlassGetStatusString(s));
    s = gemm.run(stream);
    FP4QAT_CHECK(s == cutlass::Status::kSuccess, "batched GEMM: CUTLASS run failed: ", cutlassGetStatusString(s));
    FP4QAT_CUDA_CHECK(cudaGetLastError());
    return true;
  }
};

}  // namespace fp4qat::cuda_kernels::sm90::batched_detail
