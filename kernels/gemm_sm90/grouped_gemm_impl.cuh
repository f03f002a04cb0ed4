// kernels/gemm_sm90/grouped_gemm_impl.cuh — the CUTLASS 3 pointer-array grouped GEMM of
// grouped_gemm.h, templated on where alpha comes from; included by the one translation unit of
// each variant (grouped_gemm.cu: one alpha per group; grouped_gemm_rows.cu: one alpha per row).
// bf16 A [M_g, K] row-major (activations), bf16 B = W [N, K] row-major (CUTLASS's column-major
// K x N), bf16 D [M_g, N] row-major, fp32 accumulation; the epilogue multiplies the fp32
// accumulator by alpha once (per group: LinearCombination with beta = 0 and no source tensor, C is
// never read; per row: an epilogue visitor tree alpha[m] * acc with alpha read as a column
// broadcast), one round-to-nearest conversion to bf16.
#pragma once

#include <vector>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"
#include "kernels/gemm_sm90/grouped_gemm.h"

namespace fp4qat::cuda_kernels::sm90::detail {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using ElementAB = cutlass::bfloat16_t;
using ElementD = cutlass::bfloat16_t;
using ElementAcc = float;
using LayoutA = cutlass::layout::RowMajor;     // x_g [M, K]
using LayoutB = cutlass::layout::ColumnMajor;  // w [N, K] row-major = K x N column-major
using LayoutD = cutlass::layout::RowMajor;     // y_g [M, N]
constexpr int kAlign = 8;                      // 16 bytes of bf16
using TileShape = Shape<_256, _128, _64>;
using ClusterShape = Shape<_1, _1, _1>;

// alpha[m] * acc in fp32, rounded once to bf16. alpha is read per group through a pointer array
// (group g's pointer: its first row), one float a row (alignment 1: a group's first row need not
// be 16-byte aligned), batch stride 0 (each group is an L of one).
using RowAlpha = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float*, float, Stride<_1, _0, int64_t>, 1>;
using RowScaled = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementD, ElementAcc,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    RowAlpha, cutlass::epilogue::fusion::Sm90AccFetch>;

template <GroupedAlpha A>
using FusionOf =
    std::conditional_t<A == GroupedAlpha::kPerRow, RowScaled,
                       cutlass::epilogue::fusion::LinearCombination<ElementD, ElementAcc, void, ElementAcc>>;

template <GroupedAlpha A>
struct GroupedGemm {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, void, LayoutD*, kAlign, ElementD,
      LayoutD*, kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, FusionOf<A>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA*, kAlign, ElementAB, LayoutB*, kAlign,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Gemm::GemmKernel::InternalStrideA;
  using StrideB = typename Gemm::GemmKernel::InternalStrideB;
  using StrideD = typename Gemm::GemmKernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;

  static size_t workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count);
  static bool run(const void* dev, int groups, const int* host_m, int N, int K, void* workspace, size_t workspace_bytes,
                  int sm_count, cudaStream_t stream);
};

// The packed argument block: sections of `groups` entries each, 256-byte aligned. The strides of
// both variants are the same types (same mainloop and layouts).
using Strides = GroupedGemm<GroupedAlpha::kPerGroup>;
struct ArgsLayout {
  size_t shapes, a, b, d, sa, sb, sd, alpha, total;
  explicit ArgsLayout(int g) {
    auto up = [](size_t v) { return (v + 255) / 256 * 256; };
    size_t o = 0;
    shapes = o;
    o = up(o + g * sizeof(Strides::Shape3));
    a = o;
    o = up(o + g * sizeof(void*));
    b = o;
    o = up(o + g * sizeof(void*));
    d = o;
    o = up(o + g * sizeof(void*));
    sa = o;
    o = up(o + g * sizeof(Strides::StrideA));
    sb = o;
    o = up(o + g * sizeof(Strides::StrideB));
    sd = o;
    o = up(o + g * sizeof(Strides::StrideD));
    alpha = o;
    o = up(o + g * sizeof(float*));
    total = o;
  }
};

template <typename T>
T* at_off(const void* base, size_t off) {
  return reinterpret_cast<T*>(const_cast<char*>(static_cast<const char*>(base)) + off);
}

template <GroupedAlpha A>
typename GroupedGemm<A>::Gemm::Arguments grouped_arguments(const void* dev, int groups, const int* host_m, int N, int K,
                                                           int sm_count,
                                                           std::vector<typename GroupedGemm<A>::Shape3>& host_shapes) {
  using G = GroupedGemm<A>;
  const ArgsLayout L(groups);
  host_shapes.clear();
  for (int g = 0; g < groups; ++g) host_shapes.push_back(typename G::Shape3{host_m[g], N, K});
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sm_count;
  typename G::Gemm::Arguments args;
  decltype(args.epilogue.thread) fusion;
  if constexpr (A == GroupedAlpha::kPerRow) {
    // {{alpha column broadcast}, {accumulator}, {multiply}}
    fusion = {{at_off<const float*>(dev, L.alpha), 0.0f, {_1{}, _0{}, 0}}, {}, {}};
  } else {
    fusion.alpha = 0;
    fusion.beta = 0;
    fusion.alpha_ptr = nullptr;
    fusion.beta_ptr = nullptr;
    fusion.alpha_ptr_array = at_off<const float*>(dev, L.alpha);
    fusion.beta_ptr_array = nullptr;
    fusion.dAlpha = {_0{}, _0{}, 1};  // one alpha per group
    fusion.dBeta = {_0{}, _0{}, 0};
  }
  args = typename G::Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {groups, at_off<typename G::Shape3>(dev, L.shapes), host_shapes.data()},
      {at_off<const ElementAB*>(dev, L.a), at_off<typename G::StrideA>(dev, L.sa), at_off<const ElementAB*>(dev, L.b),
       at_off<typename G::StrideB>(dev, L.sb)},
      {fusion, nullptr, nullptr, at_off<ElementD*>(dev, L.d), at_off<typename G::StrideD>(dev, L.sd)},
      hw};
  return args;
}

template <GroupedAlpha A>
size_t GroupedGemm<A>::workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count) {
  std::vector<Shape3> hs;
  return Gemm::get_workspace_size(grouped_arguments<A>(dev, groups, host_m, N, K, sm_count, hs));
}

template <GroupedAlpha A>
bool GroupedGemm<A>::run(const void* dev, int groups, const int* host_m, int N, int K, void* workspace, size_t ws_bytes,
                         int sm_count, cudaStream_t stream) {
  std::vector<Shape3> hs;
  const auto args = grouped_arguments<A>(dev, groups, host_m, N, K, sm_count, hs);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  FP4QAT_CHECK(Gemm::get_workspace_size(args) <= ws_bytes, "grouped GEMM: workspace too small");
  cutlass::Status s = gemm.initialize(args, workspace, stream);
  FP4QAT_CHECK(s == cutlass::Status::kSuccess, "grouped GEMM: CUTLASS initialize failed: ", cutlassGetStatusString(s));
  s = gemm.run(stream);
  FP4QAT_CHECK(s == cutlass::Status::kSuccess, "grouped GEMM: CUTLASS run failed: ", cutlassGetStatusString(s));
  FP4QAT_CUDA_CHECK(cudaGetLastError());
  return true;
}

// The per-row variant, compiled in its own translation unit (grouped_gemm_rows.cu), which is the
// only one that instantiates it: GroupedGemm<kPerRow>::workspace_bytes and ::run.
size_t per_row_workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count);
bool per_row_run(const void* dev, int groups, const int* host_m, int N, int K, void* workspace, size_t ws_bytes,
                 int sm_count, cudaStream_t stream);

}  // namespace fp4qat::cuda_kernels::sm90::detail
