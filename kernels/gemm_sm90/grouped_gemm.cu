// kernels/gemm_sm90/grouped_gemm.cu — see grouped_gemm.h: the argument block, the dispatch, and
// the variant with one alpha per group (the per-row one is grouped_gemm_rows.cu; both are
// grouped_gemm_impl.cuh).
#include "kernels/gemm_sm90/grouped_gemm_impl.cuh"

namespace fp4qat::cuda_kernels::sm90 {

using detail::ArgsLayout;
using detail::at_off;
using G = detail::GroupedGemm<GroupedAlpha::kPerGroup>;

size_t grouped_args_bytes(int groups) { return ArgsLayout(groups).total; }

void fill_grouped_args(void* host, int groups, int N, int K, const int* m, const int64_t* x_row0, const int64_t* y_row0,
                       const int64_t* w_index, const void* x, const void* w, void* y, const float* alpha,
                       GroupedAlpha kind) {
  const ArgsLayout L(groups);
  auto* shapes = at_off<G::Shape3>(host, L.shapes);
  auto* pa = at_off<const detail::ElementAB*>(host, L.a);
  auto* pb = at_off<const detail::ElementAB*>(host, L.b);
  auto* pd = at_off<detail::ElementD*>(host, L.d);
  auto* sa = at_off<G::StrideA>(host, L.sa);
  auto* sb = at_off<G::StrideB>(host, L.sb);
  auto* sd = at_off<G::StrideD>(host, L.sd);
  auto* pal = at_off<const float*>(host, L.alpha);
  const auto* xa = static_cast<const detail::ElementAB*>(x);
  const auto* wa = static_cast<const detail::ElementAB*>(w);
  auto* ya = static_cast<detail::ElementD*>(y);
  for (int g = 0; g < groups; ++g) {
    shapes[g] = G::Shape3{m[g], N, K};
    pa[g] = xa + x_row0[g] * K;
    pb[g] = wa + w_index[g] * static_cast<int64_t>(N) * K;
    pd[g] = ya + y_row0[g] * N;
    sa[g] = cutlass::make_cute_packed_stride(G::StrideA{}, {m[g], K, 1});
    sb[g] = cutlass::make_cute_packed_stride(G::StrideB{}, {N, K, 1});
    sd[g] = cutlass::make_cute_packed_stride(G::StrideD{}, {m[g], N, 1});
    pal[g] = kind == GroupedAlpha::kPerRow ? alpha + y_row0[g] : alpha + w_index[g];
  }
}

size_t grouped_workspace_bytes(const void* dev, int groups, const int* host_m, int N, int K, int sm_count,
                               GroupedAlpha kind) {
  return kind == GroupedAlpha::kPerRow ? detail::per_row_workspace_bytes(dev, groups, host_m, N, K, sm_count)
                                       : G::workspace_bytes(dev, groups, host_m, N, K, sm_count);
}

bool grouped_gemm_bf16(const void* dev, int groups, const int* host_m, int N, int K, void* workspace,
                       size_t workspace_bytes, int sm_count, cudaStream_t stream, GroupedAlpha kind) {
  return kind == GroupedAlpha::kPerRow
             ? detail::per_row_run(dev, groups, host_m, N, K, workspace, workspace_bytes, sm_count, stream)
             : G::run(dev, groups, host_m, N, K, workspace, workspace_bytes, sm_count, stream);
}

}  // namespace fp4qat::cuda_kernels::sm90
