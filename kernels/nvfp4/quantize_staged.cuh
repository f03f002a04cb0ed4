// kernels/nvfp4/quantize_staged.cuh — the single-buffered one-read NVFP4 quantize kernel
// ("staged") and its launcher, templated on the block shape. kernels/nvfp4/quantize_staged.cu
// instantiates the 2D form (the default for 2D blocks with the amax computed, sm_90+);
// bench/dev/nvfp4_variants.cu the 1D form (FP4QAT_NVFP4_KERNEL=staged). Include only from .cu.
#pragma once
#include <algorithm>

#include "kernels/nvfp4/quantize_4over6.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

// ---- One-read variant: each CTA stages its slice of an expert in shared memory --------------
// Items (e, g) = rows [g*R, (g+1)*R) of expert e, claimed in ticket order. A CTA copies its slice
// into shared memory (cp.async), folds its max into amax[e], waits until all G slices of expert e
// have arrived, then quantizes from shared memory: every input byte is read from HBM once.
// Deadlock-free when G <= resident CTAs: the oldest unfinished expert then has all of its slices
// claimed (items are claimed in order and fewer than G can be in progress otherwise).
// kRule: 0 max6; Four Over Six (a.rule; 2D only) 1 MAE, 2 MSE — a half-warp a tile
// (four_over_six_tile) with the tables of the expert's amax in shared memory.
template <InType T, bool kTwoD, int kRule = 0>
__global__ void __launch_bounds__(kThreads) nvfp4_staged_kernel(Nvfp4Args a, int64_t R, int64_t G, uint32_t* amax_bits,
                                                                int* arrived, unsigned long long* ticket) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kElem = T == InType::F32 ? 4 : 2;
  __shared__ float red[kWarps];
  __shared__ long long cur;
  __shared__ float shared_amax;
  __shared__ float enc_lut[kRule != 0 ? kLutEnc : 1];
  __shared__ __align__(16) float rec_lut[kRule != 0 ? kLutRec : 4];
  uint32_t lut_tag = 0xFFFFFFFFu;  // the amax bits of the tables (a NaN's: none), alike in every thread
  static_assert(kRule == 0 || kTwoD, "the staged kernel's Four Over Six form is 2D");
  const int64_t K = a.K, N = a.N, nb = K / 16;
  float* bmax = reinterpret_cast<float*>(smem + R * K * kElem);  // [R, nb] block (or tile) maxima
  const int64_t total = a.E * G;
  for (;;) {
    if (threadIdx.x == 0) cur = static_cast<long long>(atomicAdd(ticket, 1ull));
    __syncthreads();
    const int64_t t = cur;
    if (t >= total) return;
    const int64_t e = t / G, g = t % G;
    const int64_t r0 = g * R, rows = min(R, N - r0);
    const int64_t units = rows * nb;
    const char* src = static_cast<const char*>(a.x) + (e * N + r0) * K * kElem;

    // Stage the slice: 16-byte asynchronous copies, all in flight at once.
    const int64_t chunks16 = rows * K * kElem / 16;
    for (int64_t i = threadIdx.x; i < chunks16; i += kThreads) {
      const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem + i * 16));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src + i * 16));
    }
    asm volatile("cp.async.wait_all;\n" ::);
    __syncthreads();

    // Block maxima (kept for the encode step) and the slice max.
    float m = 0.0f;
    for (int64_t u = threadIdx.x; u < units; u += kThreads) {
      float v[16];
      load16<T, Src::kShared>(smem, u * 16, v);
      const float bm = max16(v);
      bmax[u] = bm;
      m = fmaxf(m, bm);
    }
    if (a.given_amax == nullptr) {
      m = block_max(m, red);
      if (threadIdx.x == 0) {
        atomic_max_nonneg(amax_bits + e, m);
        __threadfence();
        atomicAdd(arrived + e, 1);
        while (atomicAdd(arrived + e, 0) < static_cast<int>(G)) __nanosleep(32);
        __threadfence();
        shared_amax = __uint_as_float(atomicOr(amax_bits + e, 0u));
      }
    } else if (threadIdx.x == 0) {
      shared_amax = a.given_amax[e];
    }
    __syncthreads();
    if constexpr (kRule != 0) {
      const float s_enc = prepare_head_4over6<kThreads>(shared_amax, g == 0, static_cast<int>(e), a, enc_lut, rec_lut,
                                                        lut_tag);
      const int64_t tiles = (rows + 15) / 16 * nb, unit0 = (e * N + r0) * nb;
      const int lane = threadIdx.x & 15;
      for (int64_t w = threadIdx.x >> 5; 2 * w < tiles; w += kWarps) {  // uniform per warp
        const int64_t p = 2 * w + ((threadIdx.x >> 4) & 1);
        const bool active = p < tiles;
        const int64_t r = (active ? p / nb : 0) * 16 + lane, b = active ? p % nb : 0;
        const bool valid = active && r < rows;
        float v[16];
        if (valid) {
          load16<T, Src::kShared>(smem, (r * nb + b) * 16, v);
        } else {
#pragma unroll
          for (int i = 0; i < 16; ++i) v[i] = 0.0f;
        }
        four_over_six_tile<kRule == 2>(v, valid, s_enc, enc_lut, rec_lut, unit0 + r * nb + b, a.codes, a.scales,
                                       a.fake);
      }
      __syncthreads();  // shared memory, `cur` and the tables are reused by the next item
      continue;
    }
    if constexpr (kTwoD) {
      // Tile maxima: the max of 16 rows' block maxima, written back into each row's slot.
      const int64_t bands = (rows + 15) / 16;
      for (int64_t p = threadIdx.x; p < bands * nb; p += kThreads) {
        const int64_t band = p / nb, b = p % nb;
        const int64_t rr1 = min(rows, band * 16 + 16);
        float tm = 0.0f;
        for (int64_t r = band * 16; r < rr1; ++r) tm = fmaxf(tm, bmax[r * nb + b]);
        for (int64_t r = band * 16; r < rr1; ++r) bmax[r * nb + b] = tm;
      }
      __syncthreads();
    }
    const float s_enc = nvfp4_s_enc(shared_amax);
    const float s_dec = nvfp4_s_dec(s_enc);
    const float factor = nvfp4_block_factor(s_enc);
    if (g == 0 && threadIdx.x == 0) a.s_dec[e] = s_dec;
    const int64_t unit0 = (e * N + r0) * nb;
    for (int64_t u = threadIdx.x; u < units; u += kThreads) {
      float v[16];
      load16<T, Src::kShared>(smem, u * 16, v);
      emit_block(v, nvfp4_block_scale(bmax[u], factor), s_dec, unit0 + u, a.codes, a.scales, a.fake);
    }
    __syncthreads();  // shared memory and `cur` are reused by the next item
  }
}

// Launches the one-read kernel if its conditions hold; returns false to fall back.
template <InType T, bool kTwoD, int kRule = 0>
bool launch_staged(const Nvfp4Args& a, cudaStream_t stream) {
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  constexpr int64_t kSliceBudget = 88 * 1024;  // two CTAs per SM fit in Hopper's 228 KB
  const int64_t row_bytes = a.K * kElem;
  int64_t R = (kSliceBudget / row_bytes) / 16 * 16;
  if (R < 16 || a.N == 0) return false;
  R = std::min(R, (a.N + 15) / 16 * 16);
  const int64_t G = (a.N + R - 1) / R;
  const size_t smem = static_cast<size_t>(R * row_bytes + R * (a.K / 16) * 4);
  auto kernel = nvfp4_staged_kernel<T, kTwoD, kRule>;
  const int64_t resident = resident_ctas(kernel, kThreads, smem);
  if (resident < 1 || G > resident) return false;  // the deadlock-freedom condition
  // Cooperative: the deadlock-freedom condition counts on all CTAs being resident.
  const Workspace w = clear_workspace(a.workspace, a.E, stream);
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(a.E * G, resident));
  int64_t r = R, g = G;
  void* args[] = {const_cast<Nvfp4Args*>(&a),
                  &r,
                  &g,
                  const_cast<uint32_t**>(&w.amax_bits),
                  const_cast<int**>(&w.counter),
                  const_cast<unsigned long long**>(&w.ticket)};
  if (!launch_cooperative(reinterpret_cast<const void*>(kernel), grid, kThreads, args, smem, stream)) return false;
  set_last_kernel(kRule != 0 ? "staged-4over6" : "staged");
  return true;
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
