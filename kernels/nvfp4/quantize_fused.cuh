// kernels/nvfp4/quantize_fused.cuh — the fused two-pass NVFP4 quantize kernel (two reads, the
// second meant to hit L2) and its launcher, templated on the shape. kernels/nvfp4/
// quantize_fused.cu instantiates the shape the defaults use (256 threads, L2 hint 0, unroll 1);
// bench/dev/nvfp4_variants.cu the others. Include only from .cu.
//
// Fused quantize schedule (one persistent launch for E stacked experts [E, N, K]):
// Fused quantize schedule (one persistent launch for E stacked experts [E, N, K]):
//   Each expert is cut into C chunks of R rows (R a multiple of 16, ~32K elements). Work items
//   are claimed in order from a global ticket:
//     A(e, c): max |x| over chunk c of expert e -> atomicMax into amax[e]; done[e] += 1
//     Q(e, c): wait until done[e] == C, then quantize chunk c with expert e's amax
//   ordered  A(0..L-1) | A(L) Q(0) | A(L+1) Q(1) | ... | Q(E-L..E-1)   (per expert, C items each)
//   so an expert is re-read about L experts after its amax pass: L is chosen so that those bytes
//   fit in L2, making the second read an L2 hit. A Q item waits only on A items with smaller
//   tickets, which resident CTAs (the grid never exceeds what fits at once) finish without
#pragma once
#include <algorithm>

#include "kernels/nvfp4/quantize_common.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

struct Schedule {
  int64_t E, C, L;  // experts, chunks per expert, lag (experts)
  bool with_amax;
  __host__ __device__ int64_t total() const { return with_amax ? 2 * E * C : E * C; }
  // ticket -> (is_amax, expert, chunk)
  __device__ void decode(int64_t t, bool& is_amax, int64_t& e, int64_t& c) const {
    if (!with_amax) {
      is_amax = false;
      e = t / C;
      c = t % C;
      return;
    }
    const int64_t head = L * C;  // A items of experts 0..L-1
    if (t < head) {
      is_amax = true;
      e = t / C;
      c = t % C;
      return;
    }
    t -= head;
    const int64_t mid = (E - L) * 2 * C;  // steps with one A and one Q expert each
    if (t < mid) {
      const int64_t step = t / (2 * C), w = t % (2 * C);
      is_amax = w < C;
      e = is_amax ? L + step : step;
      c = is_amax ? w : w - C;
      return;
    }
    t -= mid;
    is_amax = false;
    e = E - L + t / C;
    c = t % C;
  }
};

// Fused two-pass kernel: a chunk is R consecutive rows of one expert (R a multiple of 16, about
// FP4QAT_NVFP4_CHUNK_ELEMS elements). 1D: units (16-element row blocks) in linear order; 2D: a
// half-warp holds one 16x16 tile (lane = row; rows past N count as zeros).
// kHint: L2 policy of the two reads. 0: first read cached (ld.cg), second streaming (ld.cs);
// 1: first read evict-last, second demotes each line back to evict-normal; 2: first evict-last,
// second streaming. kUnroll: 16-element units in flight per thread (1D loops).
template <InType T, bool kTwoD, int kTh, int kHint, int kUnroll>
__global__ void __launch_bounds__(kTh)
    nvfp4_fused_kernel(Nvfp4Args a, Schedule s, int64_t R, uint32_t* amax_bits, int* done, unsigned long long* ticket) {
  __shared__ float red[kTh / 32];
  __shared__ long long cur[2];
  __shared__ float shared_amax;
  const int64_t K = a.K, N = a.N, nb = K / 16;
  const int64_t total = s.total();
  for (;;) {
    // Claim one item at a time: a ticket claimed ahead would hold back A items that Q items of
    // other CTAs are waiting for (measured slower).
    if (threadIdx.x == 0) cur[0] = static_cast<long long>(atomicAdd(ticket, 1ull));
    __syncthreads();
    const int64_t t = cur[0];
    if (t >= total) return;
    bool is_amax;
    int64_t e, c;
    s.decode(t, is_amax, e, c);
    const int64_t r0 = c * R, r1 = min(N, r0 + R);
    const int64_t unit0 = (e * N + r0) * nb, units = (r1 - r0) * nb;
    if (is_amax) {
      constexpr Src kFirst = kHint == 0 ? Src::kCached : Src::kEvictLast;
      const uint64_t pol = kHint == 0 ? 0 : l2_evict_last_policy();
      float m = 0.0f;
      for (int64_t u = threadIdx.x; u < units; u += kTh * kUnroll) {
        float v[kUnroll][16];
#pragma unroll
        for (int j = 0; j < kUnroll; ++j) {
          if (u + j * kTh < units) {
            load16<T, kFirst>(a.x, (unit0 + u + j * kTh) * 16, v[j], pol);  // kept for the Q item's read
          } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) v[j][i] = 0.0f;
          }
        }
#pragma unroll
        for (int j = 0; j < kUnroll; ++j) m = fmaxf(m, max16(v[j]));
      }
      m = block_max<kTh>(m, red);
      if (threadIdx.x == 0) {
        atomic_max_nonneg(amax_bits + e, m);
        __threadfence();
        atomicAdd(done + e, 1);
      }
    } else {
      if (threadIdx.x == 0) {
        float am;
        if (a.given_amax) {
          am = a.given_amax[e];
        } else {
          while (atomicAdd(done + e, 0) < static_cast<int>(s.C)) __nanosleep(64);
          __threadfence();
          am = __uint_as_float(atomicOr(amax_bits + e, 0u));
        }
        shared_amax = am;
      }
      __syncthreads();
      const float s_enc = nvfp4_s_enc(shared_amax);
      const float s_dec = nvfp4_s_dec(s_enc);
      const float factor = nvfp4_block_factor(s_enc);
      if (c == 0 && threadIdx.x == 0) a.s_dec[e] = s_dec;
      constexpr Src kSecond = kHint == 1 ? Src::kLastUse : Src::kStreaming;
      if constexpr (!kTwoD) {
        for (int64_t u = threadIdx.x; u < units; u += kTh * kUnroll) {
          float v[kUnroll][16];
#pragma unroll
          for (int j = 0; j < kUnroll; ++j)
            if (u + j * kTh < units) load16<T, kSecond>(a.x, (unit0 + u + j * kTh) * 16, v[j]);
#pragma unroll
          for (int j = 0; j < kUnroll; ++j)
            if (u + j * kTh < units)
              emit_block(v[j], nvfp4_block_scale(max16(v[j]), factor), s_dec, unit0 + u + j * kTh, a.codes, a.scales,
                         a.fake);
        }
      } else {
        const int hw = threadIdx.x >> 4, lane = threadIdx.x & 15;
        const int64_t tiles = ((r1 - r0 + 15) / 16) * nb;
        for (int64_t p0 = 0; p0 < tiles; p0 += kTh / 16) {  // uniform trip count: shuffles are safe
          const int64_t p = p0 + hw;
          const bool active = p < tiles;
          const int64_t band = active ? p / nb : 0, b = active ? p % nb : 0;
          const int64_t row = r0 + band * 16 + lane;
          const bool valid = active && row < r1;
          float v[16];
          if (valid) {
            load16<T, kSecond>(a.x, ((e * N + row) * nb + b) * 16, v);
          } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) v[i] = 0.0f;
          }
          float m = max16(v);
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
          if (valid)
            emit_block(v, nvfp4_block_scale(m, factor), s_dec, (e * N + row) * nb + b, a.codes, a.scales, a.fake);
        }
      }
    }
    __syncthreads();  // `cur`, `red` and `shared_amax` are reused by the next item
  }
}

// Tuning knobs (benchmarks only; defaults measured on H100, see bench/RESULTS.md): the shape
// (kTh: FP4QAT_NVFP4_THREADS 256|512, kHint: FP4QAT_NVFP4_L2HINT 0|1|2, kUnroll:
// FP4QAT_NVFP4_UNROLL 1|2) and, from tu, FP4QAT_NVFP4_CHUNK_ELEMS, FP4QAT_NVFP4_CTAS_PER_SM,
// FP4QAT_NVFP4_LAG_BYTES (0: the default).
template <InType T, bool kTwoD, int kTh, int kHint, int kUnroll>
void launch_fused_t(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  auto kernel = nvfp4_fused_kernel<T, kTwoD, kTh, kHint, kUnroll>;
  int per_sm = 0;
  FP4QAT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kTh, 0));
  const int64_t want_per_sm = tu.ctas_per_sm > 0 ? tu.ctas_per_sm : per_sm;
  const int64_t resident = std::max<int64_t>(1, std::min<int64_t>(per_sm, want_per_sm)) * num_sms();
  const int64_t chunk_elems = std::max<int64_t>(256, tu.chunk_elems > 0 ? tu.chunk_elems : 32768);
  // Rows per chunk: about chunk_elems elements; 2D: a multiple of 16 (whole 16x16 tiles). 1D: a
  // multiple of 16 where a chunk holds 16 rows or more, else fewer rows (down to one) — so that a
  // single wide tensor (K = 8192: 16 rows are 131072 elements) still makes several items a CTA
  // instead of one A item per CTA while the CTAs holding Q items wait idle.
  const int64_t rows = std::max<int64_t>(1, chunk_elems / a.K);
  const int64_t R = kTwoD || rows >= 16 ? 16 * std::max<int64_t>(1, chunk_elems / (16 * a.K)) : rows;
  Schedule s;
  s.E = a.E;
  s.C = std::max<int64_t>(1, (a.N + R - 1) / R);
  s.with_amax = a.given_amax == nullptr;
  // Lag in experts: about 12 MB of input between an expert's two reads, so that the second read
  // finds it in L2 (measured: a lag covering all items in flight, ~48 MB here, was slower).
  const int64_t expert_bytes = std::max<int64_t>(1, a.N * a.K * (T == InType::F32 ? 4 : 2));
  s.L = std::min<int64_t>(a.E, std::max<int64_t>(1, (tu.lag_bytes > 0 ? tu.lag_bytes : 12ll << 20) / expert_bytes));
  const Workspace w = clear_workspace(a.workspace, a.E, stream);
  // All CTAs must be resident at once (Q items spin on A items): never exceed occupancy. At most
  // half as many CTAs as items: with one item a CTA (a single wide tensor in 2D, whose chunks are
  // 16 rows), half the CTAs would hold Q items idle through the whole amax pass.
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>((s.total() + 1) / 2, resident));
  kernel<<<static_cast<unsigned>(grid), kTh, 0, stream>>>(a, s, R, w.amax_bits, w.counter, w.ticket);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
  set_last_kernel("fused");
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
