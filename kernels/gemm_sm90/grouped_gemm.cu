// kernels/gemm_sm90/grouped_gemm.cu — see grouped_gemm.h. CUTLASS 3 pointer-array grouped GEMM
// for sm_90a: bf16 A [M_g, K] row-major (activations), bf16 B = W [N, K] row-major (CUTLASS's
// column-major K x N), bf16 D [M_g, N] row-major, fp32 accumulation; epilogue
// D = alpha_g * acc (+ beta * C with beta = 0 and no source tensor: C is never read), one
// round-to-nearest conversion to bf16.
#include "kernels/gemm_sm90/grouped_gemm.h"

#include <vector>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "kernels/common/check.h"
#include "kernels/common/cuda_check.h"

namespace fp4qat::cuda_kernels::sm90 {

namespace {

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

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, void, LayoutD*, kAlign, ElementD, LayoutD*,
    kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<ElementD, ElementAcc, void, ElementAcc>>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA*, kAlign, ElementAB, LayoutB*, kAlign,
    ElementAcc, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

using StrideA = typename Gemm::GemmKernel::InternalStrideA;
using StrideB = typename Gemm::GemmKernel::InternalStrideB;
using StrideC = typename Gemm::GemmKernel::InternalStrideC;
using StrideD = typename Gemm::GemmKernel::InternalStrideD;
using Shape3 = typename ProblemShape::UnderlyingProblemShape;

// The packed argument block: sections of `groups` entries each, 256-byte aligned.
struct Layout {
  size_t shapes, a, b, d, sa, sb, sd, alpha, total;
  explicit Layout(int g) {
    auto up = [](size_t v) { return (v + 255) / 256 * 256; };
    size_t o = 0;
    shapes = o;
    o = up(o + g * sizeof(Shape3));
    a = o;
    o = up(o + g * sizeof(void*));
    b = o;
    o = up(o + g * sizeof(void*));
    d = o;
    o = up(o + g * sizeof(void*));
    sa = o;
    o = up(o + g * sizeof(StrideA));
    sb = o;
    o = up(o + g * sizeof(StrideB));
    sd = o;
    o = up(o + g * sizeof(StrideD));
    alpha = o;
    o = up(o + g * sizeof(float*));
    total = o;
  }
};

template <typename T>
T* at_off(const void* base, size_t off) {
  return reinterpret_cast<T*>(const_cast<char*>(static_cast<const char*>(base)) + off);
}

typename Gemm::Arguments arguments(const void* dev, int groups, const int* host_m, int N, int K, int sm_count,
                                   std::vector<Shape3>& host_shapes) {
  const Layout L(groups);
  host_shapes.clear();
  for (int g = 0; g < groups; ++g) host_shapes.push_back(Shape3{host_m[g], N, K});
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sm_count;
  typename Gemm::Arguments args;
  decltype(args.epilogue.thread) fusion;
  fusion.alpha = 0;
  fusion.beta = 0;
  fusion.alpha_ptr = nullptr;
  fusion.beta_ptr = nullptr;
  fusion.alpha_ptr_array = at_off<const float*>(dev, L.alpha);
  fusion.beta_ptr_array = nullptr;
  fusion.dAlpha = {_0{}, _0{}, 1};  // one alpha per group
  fusion.dBeta = {_0{}, _0{}, 0};
  args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                  {groups, at_off<Shape3>(dev, L.shapes), host_shapes.data()},
                                  {at_off<const ElementAB*>(dev, L.a), at_off<StrideA>(dev, L.sa),
                                   at_off<const ElementAB*>(dev, L.b), at_off<StrideB>(dev, L.sb)},
                                  {fusion, nullptr, nullptr, at_off<ElementD*>(dev, L.d), at_off<StrideD>(dev, L.sd)},
                                  hw};
  return args;
}

}  // namespace

size_t grouped_args_bytes(int groups) { return Layout(groups).total; }

void fill_grouped_args(void* host, int groups, int N, int K, const int* m, const int64_t* x_row0, const int64_t* y_row0,
                       const int64_t* w_index, const void* x, const void* w, void* y, const float* alpha) {
  const Layout L(groups);
  auto* shapes = at_off<Shape3>(host, L.shapes);
  auto* pa = at_off<const ElementAB*>(host, L.a);
  auto* pb = at_off<const ElementAB*>(host, L.b);
  auto* pd = at_off<ElementD*>(host, L.d);
  auto* sa = at_off<StrideA>(host, L.sa);
  auto* sb = at_off<StrideB>(host, L.sb);
  auto* sd = at_off<StrideD>(host, L.sd);
  auto* pal = at_off<const float*>(host, L.alpha);
  const auto* xa = static_cast<const ElementAB*>(x);
  const auto* wa = static_cast<const ElementAB*>(w);
  auto* ya = static_cast<ElementD*>(y);
  for (int g = 0; g < groups; ++g) {
    shapes[g] = Shape3{m[g], N, K};
    pa[g] = xa + x_row0[g] * K;
    pb[g] = wa + w_index[g] * static_cast<int64_t>(N) * K;
    pd[g] = ya + y_row0[g] * N;
    sa[g] = cutlass::make_cute_packed_stride(StrideA{}, {m[g], K, 1});
    sb[g] = cutlass::make_cute_packed_stride(StrideB{}, {N, K, 1});
    sd[g] = cutlass::make_cute_packed_stride(StrideD{}, {m[g], N, 1});
    pal[g] = alpha + w_index[g];
  }
}

size_t grouped_workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count) {
  std::vector<Shape3> hs;
  return Gemm::get_workspace_size(arguments(dev, groups, host_m, N, K, sm_count, hs));
}

bool grouped_gemm_bf16(const void* dev, int groups, const int* host_m, int N, int K, void* workspace,
                       size_t workspace_bytes, int sm_count, cudaStream_t stream) {
  std::vector<Shape3> hs;
  const auto args = arguments(dev, groups, host_m, N, K, sm_count, hs);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  FP4QAT_CHECK(Gemm::get_workspace_size(args) <= workspace_bytes, "grouped GEMM: workspace too small");
  cutlass::Status s = gemm.initialize(args, workspace, stream);
  FP4QAT_CHECK(s == cutlass::Status::kSuccess, "grouped GEMM: CUTLASS initialize failed: ", cutlassGetStatusString(s));
  s = gemm.run(stream);
  FP4QAT_CHECK(s == cutlass::Status::kSuccess, "grouped GEMM: CUTLASS run failed: ", cutlassGetStatusString(s));
  FP4QAT_CUDA_CHECK(cudaGetLastError());
  return true;
}

}  // namespace fp4qat::cuda_kernels::sm90
