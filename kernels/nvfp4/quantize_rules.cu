// kernels/nvfp4/quantize_rules.cu — CUDA NVFP4 quantize under the 2026 scale rules
// (kernels/common/nvfp4_rule.h, docs/spec/numerics.md): Four Over Six block scales (1x16 blocks or
// 16x16 tiles, M 256 or 448, MAE or MSE) and row-scaled global scales (with or without Four Over
// Six), over stacked experts, row groups, or with a given (shared) amax: nvfp4_quantize_rule and
// nvfp4_row_amax (kernels/cuda_kernels.h). The arithmetic is kernels/common/formats.h, the
// order that of the CPU reference kernels/nvfp4/quantize_4over6_ref.cpp: a block's error summed
// element by element, a tile's as the tree sum of its 16 rows' errors. Kernels:
//   Four Over Six, 1x16 blocks, one amax an expert (computed or given), sm_90+: the one-read
//     kernel's Four Over Six form (quantize_onepass.cuh, "staged2-4over6"): one launch, one read;
//   row-scaled rules without a given amax: one launch, a warp a row (rule_rows_kernel);
//   otherwise three launches: the amax (unless given); per amax, Four Over Six's tables
//     (quantize_4over6.cuh; not for per-row amax); the quantization ("rule-1d", "rule-2d"); S_dec.
#include <algorithm>

#include "kernels/nvfp4/quantize_4over6.cuh"

namespace fp4qat::cuda_kernels {
namespace nvfp4 {
namespace {

enum class AmaxOf { kExpert, kRow, kGroup };

// The amax that row `row` (of all E * N rows) is quantized with.
__device__ __forceinline__ float amax_of_row(AmaxOf kind, const float* amax, int64_t row, int64_t N,
                                             const int32_t* row_off, int64_t groups) {
  switch (kind) {
    case AmaxOf::kRow:
      return amax[row];
    case AmaxOf::kGroup:
      return amax[last_at_most(row_off, groups, row)];
    default:
      return amax[row / N];
  }
}

// Four Over Six on one 1x16 block: both candidates, the smaller error wins (strict: a tie keeps 6).
__device__ __forceinline__ void four_over_six_block(const float v[16], float bmax, float s_enc, float s_dec, float amax,
                                                    float six_m, bool mse, int64_t unit, uint8_t* codes,
                                                    uint8_t* scales, uint16_t* fake) {
  uint8_t sb6, sb4;
  nvfp4_4over6_scales(bmax, s_enc, &sb6, &sb4);
  const Candidate c6 = candidate(v, sb6, s_dec, amax, six_m, mse), c4 = candidate(v, sb4, s_dec, amax, six_m, mse);
  if (c4.err < c6.err)
    emit_candidate(c4, sb4, unit, codes, scales, fake);
  else
    emit_candidate(c6, sb6, unit, codes, scales, fake);
}

// 1x16 blocks, one thread a block: the block's amax (expert, row or group), its scale by the
// rule, its outputs.
template <InType T, bool kFour>
__global__ void __launch_bounds__(kThreads)
    rule_1d_kernel(const void* x, int64_t units, int64_t nb, int64_t N, AmaxOf kind, const float* amax_in,
                   const int32_t* row_off, int64_t groups, float e4m3_max, bool mse, uint8_t* codes, uint8_t* scales,
                   uint16_t* fake) {
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float amax = amax_of_row(kind, amax_in, u / nb, N, row_off, groups);
    float v[16];
    load16<T, Src::kStreaming>(x, u * 16, v);
    const float bmax = max16(v);
    if constexpr (kFour) {
      const float s_enc = nvfp4_4over6_s_enc(amax, e4m3_max), s_dec = nvfp4_s_dec(s_enc);
      four_over_six_block(v, bmax, s_enc, s_dec, amax, e4m3_max * kE2M1Max, mse, u, codes, scales, fake);
    } else {
      const float s_enc = nvfp4_s_enc(amax);
      emit_block(v, nvfp4_block_scale(bmax, nvfp4_block_factor(s_enc)), nvfp4_s_dec(s_enc), u, codes, scales, fake);
    }
  }
}

// Four Over Six's tables (quantize_4over6.cuh) of each of n amax values: lut[g] = enc then rec,
// kLutFloats floats a group.
constexpr int64_t kLutFloats = kLutEnc + kLutRec;
__global__ void __launch_bounds__(kThreads)
    rule_lut_kernel(const float* amax, int64_t n, float e4m3_max, float* lut) {
  const float six_m = e4m3_max * kE2M1Max;
  for (int64_t g = blockIdx.x; g < n; g += gridDim.x) {
    const float am = amax[g];
    const float s_dec = nvfp4_s_dec(nvfp4_4over6_s_enc(am, e4m3_max));
    for (int i = threadIdx.x; i < kLutFloats; i += kThreads) lut[g * kLutFloats + i] = lut_entry(i, am, s_dec, six_m);
  }
}

// Four Over Six, 1x16 blocks, one amax an expert or a row group (kind kExpert or kGroup), one
// thread a block: its candidates from the tables of its amax.
template <InType T, bool kMse>
__global__ void __launch_bounds__(kThreads)
    rule_1d_lut_kernel(const void* x, int64_t units, int64_t nb, int64_t N, AmaxOf kind, const float* amax_in,
                       const int32_t* row_off, int64_t groups, float e4m3_max, const float* lut, uint8_t* codes,
                       uint8_t* scales, uint16_t* fake) {
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = u / nb;
    const int64_t gi = kind == AmaxOf::kGroup ? last_at_most(row_off, groups, row) : row / N;
    const float* tab = lut + gi * kLutFloats;
    float v[16];
    load16<T, Src::kStreaming>(x, u * 16, v);
    four_over_six_block_lut<kMse>(v, max16(v), nvfp4_4over6_s_enc(amax_in[gi], e4m3_max), tab, tab + kLutEnc, u,
                                  codes, scales, fake);
  }
}

// Row-scaled rules with the amax found here (no given amax): a warp a row. The row's amax first
// (warp_row_amax, as rows_amax_kernel),
// then every block quantized by the rule from a second read of the row — a cache hit, a row being
// a few kB read by the same warp just before — and S_dec[row] written by lane 0: one launch and
// one read of x from memory instead of three launches (row_amax, blocks, S_dec) and two reads.
template <InType T, bool kFour>
__global__ void __launch_bounds__(kThreads)
    rule_rows_kernel(const void* x, int64_t rows, int64_t nb, float e4m3_max, bool mse, uint8_t* codes, uint8_t* scales,
                     uint16_t* fake, float* s_dec_out) {
  const int64_t lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float amax = warp_row_amax<T>(x, r, nb, lane);
    const float s_enc = kFour ? nvfp4_4over6_s_enc(amax, e4m3_max) : nvfp4_s_enc(amax), s_dec = nvfp4_s_dec(s_enc);
    for (int64_t b = lane; b < nb; b += 32) {
      const int64_t u = r * nb + b;
      float v[16];
      load16<T, Src::kStreaming>(x, u * 16, v);
      const float bmax = max16(v);
      if constexpr (kFour) {
        four_over_six_block(v, bmax, s_enc, s_dec, amax, e4m3_max * kE2M1Max, mse, u, codes, scales, fake);
      } else {
        emit_block(v, nvfp4_block_scale(bmax, nvfp4_block_factor(s_enc)), s_dec, u, codes, scales, fake);
      }
    }
    if (lane == 0) s_dec_out[r] = s_dec;
  }
}

// Four Over Six on 16x16 tiles: a half-warp a tile (lane i = the tile's row i, 16 elements of one
// column block), the tile max by xor-shuffles, the tile error by the spec's tree (lane i adds lane
// i + 8, then + 4, + 2, + 1), one choice for the tile. Rows past N are zeros with error 0. Both
// half-warps of a warp run every iteration (the shuffles need all 32 lanes); a half without an item
// computes on zeros and writes nothing.
template <InType T, bool kMse>
__global__ void __launch_bounds__(kThreads)
    rule_2d_kernel(const void* x, int64_t E, int64_t N, int64_t nb, const float* amax_in, float e4m3_max,
                   const float* lut, uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  const int64_t tiles = (N + 15) / 16, items = E * tiles * nb;
  const int lane = threadIdx.x & 15;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t w = blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5); 2 * w < items; w += warps) {
    const int64_t item = 2 * w + ((threadIdx.x >> 4) & 1);
    const bool active = item < items;
    const int64_t e = active ? item / (tiles * nb) : 0, rem = active ? item % (tiles * nb) : 0;
    const int64_t row = (rem / nb) * 16 + lane, b = rem % nb;
    const bool valid = active && row < N;
    const int64_t unit = (e * N + row) * nb + b;
    float v[16];
    if (valid) {
      load16<T, Src::kStreaming>(x, unit * 16, v);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = 0.0f;
    }
    const float amax = active ? amax_in[e] : 0.0f;
    const float* enc = lut + e * kLutFloats;  // e = 0 for a half without an item: any table will do
    four_over_six_tile<kMse>(v, valid, nvfp4_4over6_s_enc(amax, e4m3_max), enc, enc + kLutEnc, unit, codes, scales,
                             fake);
  }
}

__global__ void rule_s_dec_kernel(const float* amax, int64_t n, bool four, float e4m3_max, float* s_dec) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) s_dec[i] = nvfp4_s_dec(four ? nvfp4_4over6_s_enc(amax[i], e4m3_max) : nvfp4_s_enc(amax[i]));
}

// The quantization launch; lut: Four Over Six's tables per amax (kind kExpert or kGroup), else null.
template <InType T>
void launch_rule(const Nvfp4RuleArgs& a, AmaxOf kind, const float* amax, const float* lut, cudaStream_t stream) {
  const int64_t nb = a.K / 16;
  const float m = a.rule.e4m3_max;
  if (a.two_d) {
    const int64_t items = a.E * ((a.N + 15) / 16) * nb;
    const int64_t warps = (items + 1) / 2;
    const auto g = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>((warps + kThreads / 32 - 1) / (kThreads / 32), num_sms() * 16)));
    if (a.rule.mse)
      rule_2d_kernel<T, true><<<g, kThreads, 0, stream>>>(a.x, a.E, a.N, nb, amax, m, lut, a.codes, a.scales, a.fake);
    else
      rule_2d_kernel<T, false><<<g, kThreads, 0, stream>>>(a.x, a.E, a.N, nb, amax, m, lut, a.codes, a.scales, a.fake);
  } else {
    const int64_t units = a.E * a.N * nb;
    const auto g = static_cast<unsigned>(grid_for(units));
    if (lut && a.rule.mse)
      rule_1d_lut_kernel<T, true><<<g, kThreads, 0, stream>>>(a.x, units, nb, a.N, kind, amax, a.row_off, a.groups, m,
                                                              lut, a.codes, a.scales, a.fake);
    else if (lut)
      rule_1d_lut_kernel<T, false><<<g, kThreads, 0, stream>>>(a.x, units, nb, a.N, kind, amax, a.row_off, a.groups,
                                                               m, lut, a.codes, a.scales, a.fake);
    else if (a.rule.four_over_six)
      rule_1d_kernel<T, true><<<g, kThreads, 0, stream>>>(a.x, units, nb, a.N, kind, amax, a.row_off, a.groups, m,
                                                          a.rule.mse, a.codes, a.scales, a.fake);
    else
      rule_1d_kernel<T, false><<<g, kThreads, 0, stream>>>(a.x, units, nb, a.N, kind, amax, a.row_off, a.groups, m,
                                                           a.rule.mse, a.codes, a.scales, a.fake);
  }
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

template <InType T>
void launch_amax(const void* x, int64_t rows, int64_t K, AmaxOf kind, const int32_t* row_off, int64_t groups,
                 float* out, cudaStream_t stream) {
  if (rows == 0) return;
  rows_amax_kernel<T><<<rows_amax_grid(rows), kThreads, 0, stream>>>(
      x, rows, K, kind == AmaxOf::kRow ? nullptr : row_off, groups, out);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

template <typename F>
bool by_type_ret(InType t, F&& f) {
  switch (t) {
    case InType::BF16:
      return f(std::integral_constant<InType, InType::BF16>{});
    case InType::F16:
      return f(std::integral_constant<InType, InType::F16>{});
    case InType::F32:
      return f(std::integral_constant<InType, InType::F32>{});
  }
  return false;
}

template <typename F>
void by_type(InType t, F&& f) {
  switch (t) {
    case InType::BF16:
      f(std::integral_constant<InType, InType::BF16>{});
      break;
    case InType::F16:
      f(std::integral_constant<InType, InType::F16>{});
      break;
    case InType::F32:
      f(std::integral_constant<InType, InType::F32>{});
      break;
  }
}

}  // namespace
}  // namespace nvfp4

int64_t nvfp4_rule_amax_count(const Nvfp4RuleArgs& a) {
  return a.row_off ? a.groups : (a.rule.row_scaled ? a.E * a.N : a.E);
}

namespace {
// Four Over Six's tables are made per amax where one amax covers an expert or a row group.
bool rule_uses_lut(const Nvfp4RuleArgs& a) { return a.rule.four_over_six && !a.rule.row_scaled; }
size_t rule_lut_offset(const Nvfp4RuleArgs& a) {
  return (static_cast<size_t>(std::max<int64_t>(nvfp4_rule_amax_count(a), 1)) * sizeof(float) + 15) / 16 * 16;
}
}  // namespace

// The computed amax [n], then (Four Over Six, one amax an expert or group) the tables [n, kLutFloats];
// at least what the one-read kernel needs when it runs the rule (nvfp4_workspace_bytes(E)).
size_t nvfp4_rule_workspace_bytes(const Nvfp4RuleArgs& a) {
  const size_t lut = rule_uses_lut(a) ? static_cast<size_t>(std::max<int64_t>(nvfp4_rule_amax_count(a), 0)) *
                                            nvfp4::kLutFloats * sizeof(float)
                                      : 0;
  return std::max(rule_lut_offset(a) + lut, nvfp4_workspace_bytes(a.E));
}

void nvfp4_row_amax(const void* x, InType t, int64_t rows, int64_t K, float* out, cudaStream_t stream) {
  FP4QAT_CHECK(K % 16 == 0, "row_amax (CUDA): K = ", K, " is not a multiple of 16");
  nvfp4::by_type(t, [&](auto ty) {
    nvfp4::launch_amax<decltype(ty)::value>(x, rows, K, nvfp4::AmaxOf::kRow, nullptr, 0, out, stream);
  });
}

void nvfp4_quantize_rule(const Nvfp4RuleArgs& a, cudaStream_t stream) {
  using nvfp4::AmaxOf;
  FP4QAT_CHECK(a.K % 16 == 0 && a.K > 0, "nvfp4_quantize (CUDA): K = ", a.K, " is not a positive multiple of 16");
  FP4QAT_CHECK(!(a.rule.row_scaled && a.two_d), "nvfp4_quantize (CUDA): row-scaled global scales need 1x16 blocks");
  FP4QAT_CHECK(!a.two_d || a.rule.four_over_six, "nvfp4_quantize (CUDA): the rule kernels' 2D path is Four Over Six");
  FP4QAT_CHECK(!a.row_off || (a.E == 1 && !a.two_d && !a.rule.row_scaled && !a.given_amax),
               "nvfp4_quantize (CUDA): row groups are 1D, one tensor, with the groups' own amax");
  const AmaxOf kind = a.row_off ? AmaxOf::kGroup : (a.rule.row_scaled ? AmaxOf::kRow : AmaxOf::kExpert);
  const int64_t n_amax = nvfp4_rule_amax_count(a), rows = a.E * a.N;
  if (kind == AmaxOf::kRow && !a.given_amax) {  // one launch, one read: rule_rows_kernel
    nvfp4::set_last_kernel("rule-rows");
    if (rows == 0) return;
    nvfp4::by_type(a.type, [&](auto ty) {
      constexpr InType T = decltype(ty)::value;
      const unsigned g = nvfp4::rows_amax_grid(rows);
      if (a.rule.four_over_six)
        nvfp4::rule_rows_kernel<T, true><<<g, kThreads, 0, stream>>>(a.x, rows, a.K / 16, a.rule.e4m3_max, a.rule.mse,
                                                                     a.codes, a.scales, a.fake, a.s_dec);
      else
        nvfp4::rule_rows_kernel<T, false><<<g, kThreads, 0, stream>>>(a.x, rows, a.K / 16, a.rule.e4m3_max, a.rule.mse,
                                                                      a.codes, a.scales, a.fake, a.s_dec);
    });
    FP4QAT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (kind == AmaxOf::kExpert && a.rule.four_over_six && rows > 0 && (!a.two_d || !a.given_amax)) {
    Nvfp4Args o;  // the one-read kernels' Four Over Six forms (staged2 1D, staged 2D); they set the last kernel
    o.x = a.x, o.type = a.type, o.E = a.E, o.N = a.N, o.K = a.K, o.two_d = a.two_d, o.given_amax = a.given_amax;
    o.rule = a.rule, o.codes = a.codes, o.scales = a.scales, o.fake = a.fake, o.s_dec = a.s_dec;
    o.workspace = a.workspace;
    if (nvfp4::by_type_ret(a.type, [&](auto ty) {
          constexpr InType T = decltype(ty)::value;
          return a.two_d ? nvfp4::launch_staged_4over6_2d<T>(o, stream) : nvfp4::launch_staged2_4over6<T>(o, stream);
        }))
      return;
  }
  nvfp4::set_last_kernel(a.two_d ? "rule-2d" : "rule-1d");
  const float* amax = a.given_amax;
  if (!amax) {
    auto* ws = static_cast<float*>(a.workspace);
    switch (kind) {
      case AmaxOf::kExpert:
        cuda_kernels::amax(a.x, a.type, a.E, a.N * a.K, ws, stream);
        break;
      case AmaxOf::kRow:
        nvfp4_row_amax(a.x, a.type, rows, a.K, ws, stream);
        break;
      case AmaxOf::kGroup:
        FP4QAT_CUDA_CHECK(cudaMemsetAsync(ws, 0, rule_lut_offset(a), stream));
        nvfp4::by_type(a.type, [&](auto ty) {
          nvfp4::launch_amax<decltype(ty)::value>(a.x, rows, a.K, kind, a.row_off, a.groups, ws, stream);
        });
        break;
    }
    amax = ws;
  }
  float* lut = nullptr;
  if (rule_uses_lut(a) && n_amax > 0 && rows > 0) {
    lut = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + rule_lut_offset(a));
    nvfp4::rule_lut_kernel<<<static_cast<unsigned>(std::min<int64_t>(n_amax, 65535)), kThreads, 0, stream>>>(
        amax, n_amax, a.rule.e4m3_max, lut);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  if (rows > 0)
    nvfp4::by_type(a.type, [&](auto ty) { nvfp4::launch_rule<decltype(ty)::value>(a, kind, amax, lut, stream); });
  if (n_amax > 0) {
    nvfp4::rule_s_dec_kernel<<<static_cast<unsigned>((n_amax + 255) / 256), 256, 0, stream>>>(
        amax, n_amax, a.rule.four_over_six, a.rule.e4m3_max, a.s_dec);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
