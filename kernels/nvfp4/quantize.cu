// kernels/nvfp4/quantize.cu — CUDA NVFP4: amax, quantize (packed and/or fake-quant outputs) with
// the per-expert amax computed in the same launch, row-group quantize, dequantize. Per-element
// arithmetic is kernels/common/formats.h, shared with the CPU reference
// (kernels/nvfp4/quantize_ref.cpp); built with --fmad=false and IEEE div/rcp.
//
// Quantize kernels (one dispatch point: nvfp4_quantize at the end of this file):
//   staged2 (default on sm_90+ for 1D blocks): one read, multi-buffered in shared memory,
//     cooperative launch — see "Multi-buffered one-read variant" below; also the row groups;
//   park (its bf16 variant with a third slot in registers; the default when fake values are
//     written) — see "One-read variant with a register slot";
//   fused (everything else): two reads, the second meant to hit L2 — schedule below (one with a
//     given amax);
//   staged (benchmarks only): one read, single-buffered.
//
// Fused quantize schedule (one persistent launch for E stacked experts [E, N, K]):
//   Each expert is cut into C chunks of R rows (R a multiple of 16, ~32K elements). Work items
//   are claimed in order from a global ticket:
//     A(e, c): max |x| over chunk c of expert e -> atomicMax into amax[e]; done[e] += 1
//     Q(e, c): wait until done[e] == C, then quantize chunk c with expert e's amax
//   ordered  A(0..L-1) | A(L) Q(0) | A(L+1) Q(1) | ... | Q(E-L..E-1)   (per expert, C items each)
//   so an expert is re-read about L experts after its amax pass: L is chosen so that those bytes
//   fit in L2, making the second read an L2 hit. A Q item waits only on A items with smaller
//   tickets, which resident CTAs (the grid never exceeds what fits at once) finish without
//   waiting: no deadlock. With a given amax there are only Q items and no waiting.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/common/cuda_utils.cuh"
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda_kernels {

using namespace fp4qat::fmt;

void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) ::fp4qat::detail::fail(file, line, "CUDA error in ", what, ": ", cudaGetErrorString(e));
}

namespace {

std::atomic<const char*> g_last_kernel{""};  // nvfp4_last_kernel()

// Non-negative floats order like their bit patterns, so atomicMax on the bits is an exact max.
__device__ __forceinline__ void atomic_max_nonneg(uint32_t* addr, float v) { atomicMax(addr, __float_as_uint(v)); }

// Store one block's outputs: packed codes (element 2i low nibble) and its scale byte.
__device__ __forceinline__ void store_codes(const uint32_t packed[2], uint8_t sb, int64_t unit, uint8_t* codes,
                                            uint8_t* scales) {
  if (codes) __stcs(reinterpret_cast<uint2*>(codes) + unit, make_uint2(packed[0], packed[1]));
  if (scales) scales[unit] = sb;
}

// The fake quant values e2m1(q) * sb of one block from its 16 elements (nvfp4_fake_value, the
// value without the code): at most 6 significant bits in [2^-10, 2688], exact in bf16, so the
// bf16 is the float32's upper half (what rounding to nearest would give), two per byte_perm.
__device__ __forceinline__ void store_fake(const float v[16], float enc, float fsb, int64_t unit, uint16_t* fake) {
  uint32_t w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = __byte_perm(__float_as_uint(nvfp4_fake_value(v[2 * i], enc, fsb)),
                       __float_as_uint(nvfp4_fake_value(v[2 * i + 1], enc, fsb)), 0x7632);
  uint4* p = reinterpret_cast<uint4*>(fake + unit * 16);
  __stcs(p, make_uint4(w[0], w[1], w[2], w[3]));
  __stcs(p + 1, make_uint4(w[4], w[5], w[6], w[7]));
}

// Encode one 16-element block with scale byte sb and encode multiplier enc (nvfp4_block_enc)
// and write the requested outputs.
__device__ __forceinline__ void emit_block_enc(const float v[16], uint8_t sb, float enc, int64_t unit, uint8_t* codes,
                                               uint8_t* scales, uint16_t* fake) {
  if (codes || scales) {
    uint32_t packed[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 16; ++i) packed[i >> 3] |= nvfp4_encode_u32(v[i], enc) << (4 * (i & 7));
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) store_fake(v, enc, e4m3_to_float(sb), unit, fake);
}

__device__ __forceinline__ void emit_block(const float v[16], uint8_t sb, float s_dec, int64_t unit,
                                           uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  emit_block_enc(v, sb, nvfp4_block_enc(sb, s_dec), unit, codes, scales, fake);
}

// The same for 16 bf16 given as 8 raw words (element 2i in the low half of raw[i]): codes by
// nvfp4_encode per element (kept in 32 bits), nibble pairs by shift-add, bytes gathered by
// byte_perm; fake values as store_fake.
__device__ __forceinline__ void emit_block_bf16(const uint32_t raw[8], uint8_t sb, float enc, int64_t unit,
                                                uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  if (codes || scales) {
    uint32_t b[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
      b[i] = nvfp4_encode_u32(__uint_as_float(raw[i] << 16), enc) +
             (nvfp4_encode_u32(__uint_as_float(raw[i] & 0xffff0000u), enc) << 4);
    const uint32_t packed[2] = {
        __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x4000), 0x7610),
        __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x4000), 0x7610)};
    store_codes(packed, sb, unit, codes, scales);
  }
  if (fake) {
    float v[16];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[2 * i] = __uint_as_float(raw[i] << 16);
      v[2 * i + 1] = __uint_as_float(raw[i] & 0xffff0000u);
    }
    store_fake(v, enc, e4m3_to_float(sb), unit, fake);
  }
}

// max |x| of 16 bf16 (8 raw words) on packed pairs: |x| and max are exact in bf16, and max.bf16x2
// skips a NaN operand as fmaxf does; the final fmaxf from 0 matches max16's order-free result.
__device__ __forceinline__ float max16_bf16(const uint32_t raw[8]) {
  __nv_bfloat162 m[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    m[i] = __hmax2(__habs2(*reinterpret_cast<const __nv_bfloat162*>(&raw[2 * i])),
                   __habs2(*reinterpret_cast<const __nv_bfloat162*>(&raw[2 * i + 1])));
  const __nv_bfloat162 r = __hmax2(__hmax2(m[0], m[1]), __hmax2(m[2], m[3]));
  const uint32_t w = *reinterpret_cast<const uint32_t*>(&r);
  return fmaxf(fmaxf(0.0f, __uint_as_float(w << 16)), __uint_as_float(w & 0xffff0000u));
}

// The last i in [0, n) with a[i] <= v, for a non-decreasing a with a[0] <= v (binary search).
__device__ __forceinline__ int last_at_most(const int32_t* a, int64_t n, int64_t v) {
  int lo = 0, hi = static_cast<int>(n);
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= v) lo = mid;
    else hi = mid;
  }
  return lo;
}

// The 16 bf16 of block `unit` of a shared-memory slice as 8 raw words (two 16-byte loads).
__device__ __forceinline__ void load_raw16(const unsigned char* base, int64_t unit, uint32_t raw[8]) {
  const uint4* p = reinterpret_cast<const uint4*>(base + unit * 32);
  const uint4 x0 = p[0], x1 = p[1];
  raw[0] = x0.x, raw[1] = x0.y, raw[2] = x0.z, raw[3] = x0.w;
  raw[4] = x1.x, raw[5] = x1.y, raw[6] = x1.z, raw[7] = x1.w;
}

// The persistent launchers' workspace (nvfp4_workspace_bytes(E)), cleared on the stream:
// amax bits [E], a per-expert counter [E], the item ticket.
struct Workspace {
  uint32_t* amax_bits;
  int* counter;
  unsigned long long* ticket;
};
Workspace clear_workspace(void* workspace, int64_t E, cudaStream_t stream);

// CTAs of `kernel` resident at once on the device with this dynamic shared memory; 0 when the
// kernel cannot be given that much shared memory or does not fit.
template <typename Kernel>
int64_t resident_ctas(Kernel kernel, int threads, size_t smem) {
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  int per_sm = 0;
  FP4QAT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return static_cast<int64_t>(per_sm) * num_sms();
}

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
__global__ void __launch_bounds__(kTh) nvfp4_fused_kernel(Nvfp4Args a, Schedule s, int64_t R, uint32_t* amax_bits,
                                                          int* done, unsigned long long* ticket) {
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
          if (valid) emit_block(v, nvfp4_block_scale(m, factor), s_dec, (e * N + row) * nb + b, a.codes, a.scales, a.fake);
        }
      }
    }
    __syncthreads();  // `cur`, `red` and `shared_amax` are reused by the next item
  }
}

template <InType T>
__global__ void __launch_bounds__(kThreads) amax_kernel(const void* x, int64_t per, uint32_t* out_bits) {
  __shared__ float red[kWarps];
  const int64_t e = blockIdx.y;
  const int64_t units = per / 16;
  float m = 0.0f;
  for (int64_t u = blockIdx.x * kThreads + threadIdx.x; u < units; u += static_cast<int64_t>(gridDim.x) * kThreads) {
    float v[16];
    load16<T, Src::kCached>(x, (e * units + u) * 16, v);
    m = fmaxf(m, max16(v));
  }
  m = block_max(m, red);
  if (threadIdx.x == 0) atomic_max_nonneg(out_bits + e, m);
}

template <bool kBf16Out>
// Expert e0 + blockIdx.y (one S_dec per CTA, no division per block); a thread decodes half a
// block (8 elements: one 32-bit word of codes), so that a warp's stores cover 512 contiguous
// bytes per instruction (bf16 out).
__global__ void __launch_bounds__(kThreads) nvfp4_dequant_kernel(const uint8_t* codes, const uint8_t* scales,
                                                                 const float* s_dec, int64_t units_per_expert,
                                                                 int64_t e0, void* out) {
  const int64_t e = e0 + blockIdx.y;
  const float sd = s_dec[e];
  const int64_t halves = 2 * units_per_expert;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < halves;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t hb = e * halves + i;  // half-block index: elements [8 hb, 8 hb + 8)
    const uint32_t word = __ldcs(reinterpret_cast<const uint32_t*>(codes) + hb);
    const float fsb = e4m3_to_float(scales[hb >> 1]);
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k)  // nvfp4_decode's order: (e2m1(q) * float(sb)) * S_dec, the first product exact
      v[k] = e2m1_to_float(static_cast<uint8_t>((word >> (4 * k)) & 0xf)) * fsb * sd;
    if constexpr (kBf16Out) {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // two roundings to nearest even in one conversion
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
        w[k] = *reinterpret_cast<const uint32_t*>(&h);
      }
      __stcs(reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + hb * 8), make_uint4(w[0], w[1], w[2], w[3]));
    } else {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(out) + hb * 8);
      __stcs(p, make_float4(v[0], v[1], v[2], v[3]));
      __stcs(p + 1, make_float4(v[4], v[5], v[6], v[7]));
    }
  }
}

// ---- One-read variant: each CTA stages its slice of an expert in shared memory --------------
// Items (e, g) = rows [g*R, (g+1)*R) of expert e, claimed in ticket order. A CTA copies its slice
// into shared memory (cp.async), folds its max into amax[e], waits until all G slices of expert e
// have arrived, then quantizes from shared memory: every input byte is read from HBM once.
// Deadlock-free when G <= resident CTAs: the oldest unfinished expert then has all of its slices
// claimed (items are claimed in order and fewer than G can be in progress otherwise).
template <InType T, bool kTwoD>
__global__ void __launch_bounds__(kThreads) nvfp4_staged_kernel(Nvfp4Args a, int64_t R, int64_t G, uint32_t* amax_bits,
                                                                int* arrived, unsigned long long* ticket) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kElem = T == InType::F32 ? 4 : 2;
  __shared__ float red[kWarps];
  __shared__ long long cur;
  __shared__ float shared_amax;
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

// A cooperative launch of a kernel whose CTAs wait for each other: all CTAs are resident
// together, also when another kernel (a quantization on a side stream) shares the device. Returns
// false, launching nothing, where that cannot be had: while a graph is being captured (its replays
// guarantee no co-residency), or when the device refuses (fewer SMs than it reports, e.g. under
// MPS); the caller then falls back. Other errors throw.
bool launch_cooperative(const void* kernel, int64_t grid, int threads, void** args, size_t smem, cudaStream_t stream) {
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  FP4QAT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return false;
  const cudaError_t err =
      cudaLaunchCooperativeKernel(kernel, dim3(static_cast<unsigned>(grid)), dim3(threads), args, smem, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported) {
    (void)cudaGetLastError();
    return false;
  }
  FP4QAT_CUDA_CHECK(err);
  return true;
}

// Launches the one-read kernel if its conditions hold; returns false to fall back.
template <InType T, bool kTwoD>
bool launch_staged(const Nvfp4Args& a, cudaStream_t stream) {
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  constexpr int64_t kSliceBudget = 88 * 1024;  // two CTAs per SM fit in Hopper's 228 KB
  const int64_t row_bytes = a.K * kElem;
  int64_t R = (kSliceBudget / row_bytes) / 16 * 16;
  if (R < 16 || a.N == 0) return false;
  R = std::min(R, (a.N + 15) / 16 * 16);
  const int64_t G = (a.N + R - 1) / R;
  const size_t smem = static_cast<size_t>(R * row_bytes + R * (a.K / 16) * 4);
  auto kernel = nvfp4_staged_kernel<T, kTwoD>;
  const int64_t resident = resident_ctas(kernel, kThreads, smem);
  if (resident < 1 || G > resident) return false;  // the deadlock-freedom condition
  // Cooperative: the deadlock-freedom condition counts on all CTAs being resident.
  const Workspace w = clear_workspace(a.workspace, a.E, stream);
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(a.E * G, resident));
  int64_t r = R, g = G;
  void* args[] = {const_cast<Nvfp4Args*>(&a), &r, &g, const_cast<uint32_t**>(&w.amax_bits), const_cast<int**>(&w.counter),
                  const_cast<unsigned long long**>(&w.ticket)};
  if (!launch_cooperative(reinterpret_cast<const void*>(kernel), grid, kThreads, args, smem, stream)) return false;
  g_last_kernel = "staged";
  return true;
}

// ---- Multi-buffered one-read variant (sm_90: bulk copies into shared memory) -----------------
// Items (e, g) = rows [g*R, (g+1)*R) of expert e, claimed in ticket order, as above, but each CTA
// holds a ring of kSlots slots, each filled by one cp.async.bulk (completion on an mbarrier):
// while it waits for the head item's expert amax and quantizes it, the next kSlots - 1 items are
// already being copied in, so HBM reads go on during a CTA's compute and waits. Every input byte
// is read from HBM once.
// Protocol per CTA: fill every slot (claims in ticket order); then, per head item: wait for its
// bytes and fold its max into amax[e] (arrived[e] += 1) unless done already; until all G slices
// of e have arrived, poll, folding in the max of every other slot whose bytes have landed (so no
// claimed slice waits on a waiting CTA); quantize the head from shared memory; refill its slot
// with the next ticket (it becomes the ring's tail); advance.
// Deadlock-free when G <= kSlots * CTAs, all CTAs resident together (a cooperative launch): if
// every CTA waited forever, the oldest incomplete expert would have an unclaimed slice, so every
// claimed item (older tickets; every expert before it is complete, so no CTA waits on one) would
// be a slice of it: kSlots * CTAs < G.
// 1D blocks. With a given amax every group is complete from the start: a streaming pass.
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ bool mbar_test(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_test(bar, parity)) {
  }
}

// One thread: expect `bytes` on `bar` and start the bulk copy global -> shared.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

__device__ __forceinline__ void red_release_add(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_relaxed(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The items of a staged2 launch: slices of at most R rows of one group, claimed in ticket order
// (a group's slices consecutive). Uniform (table null): group e = rows [e*N, (e+1)*N) of
// x[E, N, K], G slices each. Row groups (nvfp4_quantize_rows): table = int32 row_off[groups + 1]
// then item_off[groups + 1] (group g: rows [row_off[g], row_off[g+1]), slices item_off[g] ..
// item_off[g+1] - 1), copied into shared memory at the start; G is then the most slices of a group.
struct Slices {
  int64_t groups = 0, R = 0, G = 0, total = 0;
  const int32_t* table = nullptr;
  // Benchmarks (nvfp4_trace): per ticket t < trace_items, globaltimer ns at [4t] claimed, [4t+1]
  // bytes landed (seen by thread 0), [4t+2] group complete (seen at the head), [4t+3] quantized.
  unsigned long long* trace = nullptr;
  int64_t trace_items = 0;
};

__device__ __forceinline__ void trace_event(const Slices& sl, long long t, int k) {
  if (sl.trace != nullptr && t < sl.trace_items) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    sl.trace[4 * t + k] = now;
  }
}

// ---- Pieces shared by the one-read kernels (staged2, park) -----------------------------------
// A claimed ticket t: its group, its first row in x viewed as [rows, K], its rows, the group's
// slice count, and whether it is the group's first slice (which writes S_dec).
struct SliceInfo {
  int64_t g, row, rows, need;
  bool first;
};
__device__ __forceinline__ SliceInfo decode_slice(const Slices& sl, const int32_t* tab, int64_t N, long long t) {
  SliceInfo s;
  int64_t j;
  if (sl.table == nullptr) {
    s.g = t / sl.G, j = t % sl.G, s.row = s.g * N + j * sl.R, s.rows = min(sl.R, N - j * sl.R), s.need = sl.G;
  } else {  // the group whose slices hold t: the last g with item_off[g] <= t (skips empty groups)
    const int32_t* ioff = tab + sl.groups + 1;
    s.g = last_at_most(ioff, sl.groups, t), j = t - ioff[s.g], s.row = tab[s.g] + j * sl.R;
    s.rows = min(sl.R, static_cast<int64_t>(tab[s.g + 1]) - s.row), s.need = ioff[s.g + 1] - ioff[s.g];
  }
  s.first = j == 0;
  return s;
}

// All threads: the 16-element block maxima of a landed slice (units blocks at base) into bmax,
// and, unless the amax is given, the slice max folded into amax[g] followed by the arrival.
template <InType T, int kTh>
__device__ __forceinline__ void fold_slice(const Nvfp4Args& a, const unsigned char* base, float* bmax, int64_t units,
                                           int g, float* red, uint32_t* amax_bits, int* arrived) {
  float m = 0.0f;
  for (int64_t u = threadIdx.x; u < units; u += kTh) {
    float bm;
    if constexpr (T == InType::BF16) {
      uint32_t raw[8];
      load_raw16(base, u, raw);
      bm = max16_bf16(raw);
    } else {
      float v[16];
      load16<T, Src::kShared>(base, u * 16, v);
      bm = max16(v);
    }
    bmax[u] = bm;
    m = fmaxf(m, bm);
  }
  if (a.given_amax == nullptr) {
    m = block_max<kTh>(m, red);
    if (threadIdx.x == 0) {
      atomic_max_nonneg(amax_bits + g, m);
      red_release_add(arrived + g, 1);  // ordered after the max, without waiting for it
    }
  }
}

// Thread 0: whether group g's amax is final (all `need` slices folded in, or given), and if so
// its value into *amax (every max is ordered before the arrivals it reads).
__device__ __forceinline__ bool group_complete(const Nvfp4Args& a, const int* arrived, const uint32_t* amax_bits, int g,
                                               int need, float* amax) {
  if (a.given_amax != nullptr) {
    *amax = a.given_amax[g];
    return true;
  }
  if (ld_acquire(arrived + g) < need) return false;
  *amax = __uint_as_float(ld_relaxed(amax_bits + g));
  return true;
}

// All threads: quantize a slice held in shared memory (its blocks and their maxima) with the
// per-scale-byte encode multipliers enc_lut.
template <InType T, int kTh>
__device__ __forceinline__ void quantize_slice(const Nvfp4Args& a, const unsigned char* base, const float* bmax,
                                               int64_t units, int64_t unit0, float factor, const float* enc_lut) {
  for (int64_t u = threadIdx.x; u < units; u += kTh) {
    const uint8_t sb = nvfp4_block_scale(bmax[u], factor);
    if constexpr (T == InType::BF16) {
      uint32_t raw[8];
      load_raw16(base, u, raw);
      emit_block_bf16(raw, sb, enc_lut[sb], unit0 + u, a.codes, a.scales, a.fake);
    } else {
      float v[16];
      load16<T, Src::kShared>(base, u * 16, v);
      emit_block_enc(v, sb, enc_lut[sb], unit0 + u, a.codes, a.scales, a.fake);
    }
  }
}

// Thread 0: the slots among `candidates` (bits) holding an item whose bytes have landed but that
// is not folded in yet.
template <int kN>
__device__ __forceinline__ int scan_landed(uint32_t candidates, const long long* item, long long total, uint32_t folded,
                                           uint32_t parity, uint32_t bar0, const Slices& sl) {
  int landed = 0;
#pragma unroll
  for (int s = 0; s < kN; ++s)
    if (((candidates >> s) & 1u) && item[s] < total && !((folded >> s) & 1u) && mbar_test(bar0 + 8 * s, (parity >> s) & 1u)) {
      landed |= 1 << s;
      trace_event(sl, item[s], 1);
    }
  return landed;
}

// All threads: fold in the slots of `landed` (their bytes have arrived: each wait returns at once,
// and every thread acquires the bytes).
template <typename Fold>
__device__ __forceinline__ void fold_landed(int landed, uint32_t bar0, uint32_t& parity, uint32_t& folded, Fold&& fold) {
  while (landed) {
    const int s = __ffs(landed) - 1;
    landed &= landed - 1;
    mbar_wait(bar0 + 8 * s, (parity >> s) & 1u);
    parity ^= 1u << s;
    fold(s);
    folded |= 1u << s;
  }
}

// Thread kClaimer: the next ticket into slot s — its item arrays (ticket, first row, group, rows,
// the group's slice count, first slice) — and the bulk copy of its rows into dst (completion on bar).
__device__ __forceinline__ void claim_slot(int s, unsigned long long* ticket, const Slices& sl, const int32_t* tab,
                                           const Nvfp4Args& a, int64_t row_bytes, unsigned char* dst, uint32_t bar,
                                           long long* item, long long* item_row, int* item_group, int* item_rows,
                                           int* item_need, int* item_first) {
  const long long t = static_cast<long long>(atomicAdd(ticket, 1ull));
  item[s] = t;
  trace_event(sl, t, 0);
  if (t >= sl.total) return;
  const SliceInfo si = decode_slice(sl, tab, a.N, t);
  item_group[s] = static_cast<int>(si.g);
  item_row[s] = si.row;
  item_rows[s] = static_cast<int>(si.rows);
  item_need[s] = static_cast<int>(si.need);
  item_first[s] = si.first;
  // Generic-proxy reads of this slot's previous bytes come before the async-proxy writes.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  bulk_load(smem_addr(dst), static_cast<const char*>(a.x) + si.row * row_bytes, static_cast<uint32_t>(si.rows * row_bytes),
            bar);
}

// All threads, at the start: the row-group table into shared memory (tab), and the S_dec of groups
// without rows (amax 0: they have no slice to write it) by CTA 0.
template <int kTh>
__device__ __forceinline__ void stage_row_groups(const Slices& sl, int32_t* tab, const Nvfp4Args& a) {
  if (sl.table == nullptr) return;
  for (int64_t i = threadIdx.x; i < 2 * (sl.groups + 1); i += kTh) tab[i] = sl.table[i];
  __syncthreads();
  if (blockIdx.x == 0)
    for (int64_t g = threadIdx.x; g < sl.groups; g += kTh)
      if (tab[g + 1] == tab[g]) a.s_dec[g] = nvfp4_s_dec(nvfp4_s_enc(0.0f));
}

// One round of waiting for the head's group (all threads): thread 0 tests the group and scans the
// candidate slots for landed bytes; then every thread folds those slots in. Returns whether the
// group is complete (its amax is then in shared_amax). `flag` is rewritten by the next round
// only after a barrier (the caller's).
template <int kN, typename Fold>
__device__ __forceinline__ bool poll_round(const Nvfp4Args& a, const int* arrived, const uint32_t* amax_bits, int g,
                                           int need, long long head, uint32_t candidates, const long long* item,
                                           long long total, uint32_t& folded, uint32_t& parity, uint32_t bar0,
                                           const Slices& sl, int* flag, float& shared_amax, Fold&& fold) {
  if (threadIdx.x == 0) {
    float am = 0.0f;
    const bool complete = group_complete(a, arrived, amax_bits, g, need, &am);
    if (complete) {
      shared_amax = am;
      trace_event(sl, head, 2);
    }
    flag[0] = complete;
    flag[1] = scan_landed<kN>(candidates, item, total, folded, parity, bar0, sl);
  }
  __syncthreads();
  const bool complete = flag[0];
  fold_landed(flag[1], bar0, parity, folded, fold);
  return complete;
}

// All threads, once the head's group is complete: its S_dec (written by its first slice), the
// block factor it returns, and enc_lut = nvfp4_block_enc(sb, S_dec) per scale byte (one division
// per scale byte instead of one per block).
template <int kTh>
__device__ __forceinline__ float prepare_head(float amax, bool first, int g, const Nvfp4Args& a, float* enc_lut) {
  const float s_enc = nvfp4_s_enc(amax);
  const float s_dec = nvfp4_s_dec(s_enc);
  if (first && threadIdx.x == 0) a.s_dec[g] = s_dec;
  for (int b = threadIdx.x; b < 256; b += kTh) enc_lut[b] = nvfp4_block_enc(static_cast<uint8_t>(b), s_dec);
  __syncthreads();
  return nvfp4_block_factor(s_enc);
}

// One thread: initialize n mbarriers (one arrival each) at bar0, bar0 + 8, ...
__device__ __forceinline__ void init_bars(uint32_t bar0, int n) {
  for (int s = 0; s < n; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar0 + 8 * s) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Roles: thread 0 polls the head's group and the landed slots; thread kClaimer (another warp)
// claims tickets, decodes them and starts the bulk copies, so the two round trips to memory overlap.
template <InType T, int kTh, int kSlots>
__global__ void __launch_bounds__(kTh) nvfp4_staged2_kernel(Nvfp4Args a, Slices sl, int64_t data_bytes,
                                                            int64_t slot_stride, uint32_t* amax_bits, int* arrived,
                                                            unsigned long long* ticket) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Slot s: the bytes of its item at smem + s * slot_stride (data_bytes), then its 16-element
  // block maxima, float [rows * K/16] (computed once, when the slot lands, for both the group
  // amax and the block scales); completion of the bulk copy on bars[s]. After the slots: the
  // row-group table, if any.
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  __shared__ __align__(8) uint64_t bars[kSlots];
  __shared__ long long item[kSlots];  // ticket
  __shared__ long long item_row[kSlots];  // first row of the slice in x viewed as [rows, K]
  __shared__ int item_group[kSlots], item_rows[kSlots], item_need[kSlots], item_first[kSlots];
  __shared__ float red[kTh / 32];
  __shared__ int flag[2];  // [0]: the head's group is complete; [1]: slots that have landed (bits)
  __shared__ float shared_amax;
  __shared__ float enc_lut[256];  // nvfp4_block_enc(sb, S_dec) of the head's group, per scale byte
  const int64_t K = a.K, nb = K / 16, total = sl.total;
  const uint32_t bar0 = smem_addr(&bars[0]);
  int32_t* tab = reinterpret_cast<int32_t*>(smem + kSlots * slot_stride);  // [2 * (groups + 1)] if row groups
  constexpr int kClaimer = 32;
  auto claim = [&](int s) {  // thread kClaimer only
    claim_slot(s, ticket, sl, tab, a, K * kElem, smem + s * slot_stride, bar0 + 8 * s, item, item_row, item_group,
               item_rows, item_need, item_first);
  };

  // Block maxima of slot s into its bmax array; the slice max folded into amax[group]. All threads.
  auto contribute = [&](int s) {
    fold_slice<T, kTh>(a, smem + s * slot_stride, reinterpret_cast<float*>(smem + s * slot_stride + data_bytes),
                       item_rows[s] * nb, item_group[s], red, amax_bits, arrived);
  };

  stage_row_groups<kTh>(sl, tab, a);
  if (threadIdx.x == kClaimer) {
    init_bars(bar0, kSlots);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) claim(s);
  }
  __syncthreads();
  // Per-slot state as bit masks (registers, the same in every thread): the mbarrier phase each
  // slot waits for next, and whether its landed bytes were already folded in.
  uint32_t parity = 0u, folded = 0u;
  int h = 0;  // the head slot; the ring runs h, h + 1, ... (mod kSlots) in ticket order
  for (;;) {
    if (item[h] >= total) return;  // the ring's tickets increase from the head: no slot holds an item
    if (!((folded >> h) & 1u)) {
      mbar_wait(bar0 + 8 * h, (parity >> h) & 1u);
      if (threadIdx.x == 0) trace_event(sl, item[h], 1);
      parity ^= 1u << h;
      contribute(h);
      folded |= 1u << h;
    }
    const int g = item_group[h];
    const int need = item_need[h];
    while (!poll_round<kSlots>(a, arrived, amax_bits, g, need, item[h], ~(1u << h), item, total, folded, parity, bar0, sl,
                               flag, shared_amax, contribute)) {
      if (flag[1] == 0 && threadIdx.x == 0) __nanosleep(64);
      __syncthreads();  // flag is rewritten next round
    }
    const float factor = prepare_head<kTh>(shared_amax, item_first[h], g, a, enc_lut);
    const int64_t unit0 = item_row[h] * nb, units = item_rows[h] * nb;
    quantize_slice<T, kTh>(a, smem + h * slot_stride, reinterpret_cast<const float*>(smem + h * slot_stride + data_bytes),
                           units, unit0, factor, enc_lut);
    __syncthreads();  // the head slot is read before it is refilled; `shared_amax`, `flag`, `enc_lut` reused
    if (threadIdx.x == 0) trace_event(sl, item[h], 3);
    folded &= ~(1u << h);
    // The next ticket into the head slot (the ring's new tail). No barrier: every thread reads
    // the slot's item arrays again only after later barriers (it is the head kSlots - 1 heads from
    // now), and thread 0's scan learns the ticket with the bytes (the mbarrier's arrive releases it).
    if (threadIdx.x == kClaimer) claim(h);
    h = h + 1 < kSlots ? h + 1 : 0;
  }
#endif
}

// FP4QAT_NVFP4_KERNEL (benchmarks and tests): the kernel forced, "" for the default.
std::string forced_kernel() {
  const char* k = std::getenv("FP4QAT_NVFP4_KERNEL");
  return k ? std::string(k) : std::string();
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

unsigned long long* g_trace = nullptr;
int64_t g_trace_items = 0;

// Whether the multi-buffered kernel can run on this device and stream (sm_90+, cooperative
// launch, not while a CUDA graph is being captured: a graph's replays give no co-residency
// guarantee to rely on).
bool staged2_available(cudaStream_t stream) {
  int dev = 0, major = 0, coop = 0;
  FP4QAT_CUDA_CHECK(cudaGetDevice(&dev));
  FP4QAT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  FP4QAT_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  if (major < 9 || !coop) return false;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  FP4QAT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  return capturing == cudaStreamCaptureStatusNone;
}

// The launch of a one-read kernel (staged2, park: the same parameters) with `shared_slots` slots
// of R rows in shared memory (+ the row-group table) and a ring of `ring` items a CTA: 16-byte
// aligned rows, the deadlock-freedom condition G <= ring x CTAs (all resident: a cooperative
// launch), the workspace cleared; false to fall back (also when the cooperative launch is refused).
template <typename Kernel>
bool launch_one_read(Kernel kernel, int threads, int shared_slots, int ring, const Nvfp4Args& a, const Slices& sl,
                     int64_t row_bytes, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(a.x) % 16 != 0 || row_bytes % 16 != 0) return false;
  const int64_t data_bytes = (sl.R * row_bytes + 127) / 128 * 128;
  const int64_t slot_stride = data_bytes + (sl.R * (a.K / 16) * 4 + 127) / 128 * 128;  // + block maxima
  const int64_t table_bytes = sl.table ? 2 * (sl.groups + 1) * 4 : 0;
  const size_t smem = static_cast<size_t>(shared_slots * slot_stride + table_bytes);
  const int64_t resident = resident_ctas(kernel, threads, smem);
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(sl.total, resident));
  if (resident < 1 || sl.G > ring * grid) return false;  // the deadlock-freedom condition
  const Workspace w = clear_workspace(a.workspace, sl.groups, stream);
  Slices slt = sl;
  slt.trace = g_trace;
  slt.trace_items = g_trace_items;
  // Cooperative: the deadlock-freedom condition counts on all CTAs being resident.
  void* args[] = {const_cast<Nvfp4Args*>(&a), &slt, const_cast<int64_t*>(&data_bytes),
                  const_cast<int64_t*>(&slot_stride), const_cast<uint32_t**>(&w.amax_bits), const_cast<int**>(&w.counter),
                  const_cast<unsigned long long**>(&w.ticket)};
  return launch_cooperative(reinterpret_cast<const void*>(kernel), grid, threads, args, smem, stream);
}

template <InType T, int kTh, int kSlots>
bool launch_staged2_t(const Nvfp4Args& a, const Slices& sl, cudaStream_t stream) {
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  if (a.two_d || sl.total == 0 || sl.R < 1) return false;
  const bool ok = launch_one_read(nvfp4_staged2_kernel<T, kTh, kSlots>, kTh, kSlots, kSlots, a, sl, a.K * kElem, stream);
  if (ok) g_last_kernel = "staged2";
  return ok;
}


// ---- One-read variant with a register slot ("park", sm_90, bf16) ------------------------------
// The staged2 scheme with a third slot per CTA in registers: a slice that has landed and been
// folded into its expert's amax, but must wait for the expert to complete, is moved from its
// shared-memory slot into the registers of the CTA's threads (each thread parks the 16-element
// blocks it would quantize: at most kPark of them), and the freed slot starts the next bulk copy.
// The trace (bench_quantize --trace) showed slices waiting ~8 us for their expert against ~3.6 us
// loading, so that only ~120 of staged2's 528 slots were loading at a time. 256 threads and two
// CTAs a SM leave room in the register file (kPark * 8 + kPark registers a thread).
// Ring: the CTA holds up to three items (shared slots 0 and 1, the park), quantizes them in ticket
// order; deadlock-free when G <= 3 * CTAs (the staged2 argument with three slots: a waiting CTA
// parks a landed item and claims again, so it ends up holding three).
constexpr int kParkUnits = 6;  // 16-element blocks a thread parks: 6 * 256 = 1536 blocks = 48 KB of bf16

template <int kTh>
__global__ void __launch_bounds__(kTh, 2) nvfp4_park_kernel(Nvfp4Args a, Slices sl, int64_t data_bytes,
                                                            int64_t slot_stride, uint32_t* amax_bits, int* arrived,
                                                            unsigned long long* ticket) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kPark = kParkUnits;
  constexpr int kClaimer = 32;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(8) uint64_t bars[2];
  __shared__ long long item[3];  // ticket of slot 0, slot 1, the park (>= total: none)
  __shared__ long long item_row[3];
  __shared__ int item_group[3], item_rows[3], item_need[3], item_first[3];
  __shared__ float red[kTh / 32];
  __shared__ int flag[2];
  __shared__ float shared_amax;
  __shared__ float enc_lut[256];
  const int64_t K = a.K, nb = K / 16, total = sl.total;
  const uint32_t bar0 = smem_addr(&bars[0]);
  int32_t* tab = reinterpret_cast<int32_t*>(smem + 2 * slot_stride);
  auto claim = [&](int s) {  // thread kClaimer only; s = 0 or 1
    claim_slot(s, ticket, sl, tab, a, K * 2, smem + s * slot_stride, bar0 + 8 * s, item, item_row, item_group, item_rows,
               item_need, item_first);
  };

  auto contribute = [&](int s) {  // all threads; s = 0 or 1
    fold_slice<InType::BF16, kTh>(a, smem + s * slot_stride, reinterpret_cast<float*>(smem + s * slot_stride + data_bytes),
                                  item_rows[s] * nb, item_group[s], red, amax_bits, arrived);
  };

  stage_row_groups<kTh>(sl, tab, a);
  if (threadIdx.x == kClaimer) {
    init_bars(bar0, 2);
    claim(0);
    claim(1);
  }
  __syncthreads();
  uint4 park[2 * kPark];
  float park_bmax[kPark];
  bool park_full = false;
  uint32_t parity = 0u, folded = 0u;  // bits 0, 1: the shared slots
  for (;;) {
    // The head: the held item with the smallest ticket.
    int hs = -1;
    long long best = total;
    if (park_full) hs = 2, best = item[2];
    for (int s = 0; s < 2; ++s)
      if (item[s] < best) hs = s, best = item[s];
    if (hs < 0) return;
    if (hs < 2 && !((folded >> hs) & 1u)) {
      mbar_wait(bar0 + 8 * hs, (parity >> hs) & 1u);
      if (threadIdx.x == 0) trace_event(sl, item[hs], 1);
      parity ^= 1u << hs;
      contribute(hs);
      folded |= 1u << hs;
    }
    const int g = item_group[hs], need = item_need[hs];
    for (;;) {
      const bool complete = poll_round<2>(a, arrived, amax_bits, g, need, item[hs], ~(1u << hs), item, total, folded,
                                          parity, bar0, sl, flag, shared_amax, contribute);  // scans the shared slots
      // Park the other shared slot's item once it is folded (the head is in a shared slot), and
      // start the next bulk copy in that slot.
      const int o = 1 - hs;
      if (!park_full && hs < 2 && item[o] < total && ((folded >> o) & 1u)) {
        const int64_t units = item_rows[o] * nb;
        const unsigned char* base = smem + o * slot_stride;
        const float* bmax = reinterpret_cast<const float*>(smem + o * slot_stride + data_bytes);
#pragma unroll
        for (int k = 0; k < kPark; ++k) {
          const int64_t u = threadIdx.x + k * kTh;
          if (u < units) {
            const uint4* p = reinterpret_cast<const uint4*>(base + u * 32);
            park[2 * k] = p[0];
            park[2 * k + 1] = p[1];
            park_bmax[k] = bmax[u];
          }
        }
        if (threadIdx.x == 0) {
          item[2] = item[o], item_row[2] = item_row[o], item_group[2] = item_group[o];
          item_rows[2] = item_rows[o], item_need[2] = item_need[o], item_first[2] = item_first[o];
        }
        __syncthreads();  // slot o read by every thread (and its item copied) before it is refilled
        park_full = true;
        folded &= ~(1u << o);
        if (threadIdx.x == kClaimer) claim(o);
      }
      if (complete) break;
      if (flag[1] == 0 && threadIdx.x == 0) __nanosleep(64);
      __syncthreads();
    }
    const float factor = prepare_head<kTh>(shared_amax, item_first[hs], g, a, enc_lut);
    const int64_t unit0 = item_row[hs] * nb, units = item_rows[hs] * nb;
    if (hs == 2) {
#pragma unroll
      for (int k = 0; k < kPark; ++k) {
        const int64_t u = threadIdx.x + k * kTh;
        if (u < units) {
          const uint8_t sb = nvfp4_block_scale(park_bmax[k], factor);
          const uint32_t raw[8] = {park[2 * k].x,     park[2 * k].y,     park[2 * k].z,     park[2 * k].w,
                                   park[2 * k + 1].x, park[2 * k + 1].y, park[2 * k + 1].z, park[2 * k + 1].w};
          emit_block_bf16(raw, sb, enc_lut[sb], unit0 + u, a.codes, a.scales, a.fake);
        }
      }
    } else {
      quantize_slice<InType::BF16, kTh>(a, smem + hs * slot_stride,
                                        reinterpret_cast<const float*>(smem + hs * slot_stride + data_bytes), units,
                                        unit0, factor, enc_lut);
    }
    __syncthreads();  // the head's storage is read before it is reused; shared_amax, flag, enc_lut reused
    if (threadIdx.x == 0) trace_event(sl, item[hs], 3);
    if (hs == 2) {
      park_full = false;
      if (threadIdx.x == 0) item[2] = total;
      __syncthreads();
    } else {
      folded &= ~(1u << hs);
      if (threadIdx.x == kClaimer) claim(hs);
      __syncthreads();  // the head selection reads item[] next
    }
  }
#endif
}

template <int kTh>
bool launch_park_t(const Nvfp4Args& a, const Slices& sl, cudaStream_t stream) {
  if (a.type != InType::BF16 || a.two_d || sl.total == 0 || sl.R < 1) return false;
  if (sl.R * (a.K / 16) > kParkUnits * kTh) return false;  // a slice's blocks must fit the park
  const bool ok = launch_one_read(nvfp4_park_kernel<kTh>, kTh, 2, 3, a, sl, a.K * 2, stream);
  if (ok) g_last_kernel = "park";
  return ok;
}

// Which one-read kernel runs, and its shape: threads per CTA (256 or 512), bytes per slot, shared
// slots per CTA (2, 3 or 4). Defaults measured on H100 (bench/RESULTS.md), two CTAs a SM each:
// bf16 with fake values: the register-slot variant (park), 256 x 48 KB x 2 + registers; other
// fake outputs: staged2 256 x 32 KB x 3; packed outputs only: staged2 512 x 48 KB x 2.
// FP4QAT_NVFP4_KERNEL=park|staged2 forces one; FP4QAT_NVFP4_THREADS, FP4QAT_NVFP4_SLOT_BYTES and
// FP4QAT_NVFP4_SLOTS override the shape (benchmarks).
struct Staged2Shape {
  bool park;
  int64_t threads, slot_bytes, slots;
};
Staged2Shape staged2_shape(InType t, bool fake) {
  const std::string k = forced_kernel();
  const bool forced_park = k == "park", forced_staged2 = k == "staged2";
  const bool park = t == InType::BF16 && (forced_park || (!forced_staged2 && fake));
  const bool narrow = park || fake;
  return {park, env_int("FP4QAT_NVFP4_THREADS", narrow ? 256 : 512),
          env_int("FP4QAT_NVFP4_SLOT_BYTES", park || !fake ? 49152 : 32768), env_int("FP4QAT_NVFP4_SLOTS", park ? 2 : (fake ? 3 : 2))};
}

template <InType T>
bool launch_staged2(const Nvfp4Args& a, const Slices& sl, cudaStream_t stream) {
  const Staged2Shape sh = staged2_shape(T, a.fake != nullptr);
  if (sh.park && launch_park_t<256>(a, sl, stream)) return true;
  const bool wide = sh.threads == 512;
  if (sh.slots == 3) return wide ? launch_staged2_t<T, 512, 3>(a, sl, stream) : launch_staged2_t<T, 256, 3>(a, sl, stream);
  if (sh.slots == 4) return wide ? launch_staged2_t<T, 512, 4>(a, sl, stream) : launch_staged2_t<T, 256, 4>(a, sl, stream);
  return wide ? launch_staged2_t<T, 512, 2>(a, sl, stream) : launch_staged2_t<T, 256, 2>(a, sl, stream);
}

// x[E, N, K] as E uniform groups.
template <InType T>
bool launch_staged2_uniform(const Nvfp4Args& a, cudaStream_t stream) {
  if (a.N == 0 || !staged2_available(stream)) return false;
  Slices sl;
  sl.groups = a.E;
  sl.R = std::min(a.N, staged2_shape(T, a.fake != nullptr).slot_bytes / (a.K * (T == InType::F32 ? 4 : 2)));
  if (sl.R < 1) return false;
  sl.G = (a.N + sl.R - 1) / sl.R;
  sl.total = a.E * sl.G;
  return launch_staged2<T>(a, sl, stream);
}

// Tuning knobs (benchmarks only; defaults measured on H100, see bench/RESULTS.md):
//   FP4QAT_NVFP4_THREADS (256|512), FP4QAT_NVFP4_L2HINT (0|1|2), FP4QAT_NVFP4_UNROLL (1|2),
//   FP4QAT_NVFP4_CHUNK_ELEMS, FP4QAT_NVFP4_CTAS_PER_SM,
//   FP4QAT_NVFP4_LAG_BYTES.
template <InType T, bool kTwoD, int kTh, int kHint, int kUnroll>
void launch_fused_t(const Nvfp4Args& a, cudaStream_t stream) {
  auto kernel = nvfp4_fused_kernel<T, kTwoD, kTh, kHint, kUnroll>;
  int per_sm = 0;
  FP4QAT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kTh, 0));
  const int64_t want_per_sm = env_int("FP4QAT_NVFP4_CTAS_PER_SM", per_sm);
  const int64_t resident = std::max<int64_t>(1, std::min<int64_t>(per_sm, want_per_sm)) * num_sms();
  const int64_t chunk_elems = std::max<int64_t>(256, env_int("FP4QAT_NVFP4_CHUNK_ELEMS", 32768));
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
  s.L = std::min<int64_t>(a.E, std::max<int64_t>(1, env_int("FP4QAT_NVFP4_LAG_BYTES", 12ll << 20) / expert_bytes));
  const Workspace w = clear_workspace(a.workspace, a.E, stream);
  // All CTAs must be resident at once (Q items spin on A items): never exceed occupancy. At most
  // half as many CTAs as items: with one item a CTA (a single wide tensor in 2D, whose chunks are
  // 16 rows), half the CTAs would hold Q items idle through the whole amax pass.
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>((s.total() + 1) / 2, resident));
  kernel<<<static_cast<unsigned>(grid), kTh, 0, stream>>>(a, s, R, w.amax_bits, w.counter, w.ticket);
  FP4QAT_CUDA_CHECK(cudaGetLastError());
  g_last_kernel = "fused";
}

template <InType T, bool kTwoD>
void launch_fused(const Nvfp4Args& a, cudaStream_t stream) {
  const int64_t threads = env_int("FP4QAT_NVFP4_THREADS", 256);
  if (threads == 512) return launch_fused_t<T, kTwoD, 512, 0, 1>(a, stream);
  // L2 hint and unroll variants for bf16 (the trainer's and the benchmark's type) only.
  if constexpr (T == InType::BF16) {
    const int64_t hint = env_int("FP4QAT_NVFP4_L2HINT", 0), unroll = env_int("FP4QAT_NVFP4_UNROLL", 1);
    if (hint == 1 && unroll == 2) return launch_fused_t<T, kTwoD, 256, 1, 2>(a, stream);
    if (hint == 1) return launch_fused_t<T, kTwoD, 256, 1, 1>(a, stream);
    if (hint == 2 && unroll == 2) return launch_fused_t<T, kTwoD, 256, 2, 2>(a, stream);
    if (hint == 2) return launch_fused_t<T, kTwoD, 256, 2, 1>(a, stream);
    if (unroll == 2) return launch_fused_t<T, kTwoD, 256, 0, 2>(a, stream);
  }
  return launch_fused_t<T, kTwoD, 256, 0, 1>(a, stream);
}

}  // namespace

size_t nvfp4_workspace_bytes(int64_t E) { return ((static_cast<size_t>(E) * 8 + 15) / 16) * 16 + 16; }

namespace {
Workspace clear_workspace(void* workspace, int64_t E, cudaStream_t stream) {
  auto* amax_bits = static_cast<uint32_t*>(workspace);
  Workspace w{amax_bits, reinterpret_cast<int*>(amax_bits + E),
              reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) +
                                                    ((static_cast<size_t>(E) * 8 + 15) / 16) * 16)};
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(workspace, 0, nvfp4_workspace_bytes(E), stream));
  return w;
}
}  // namespace

namespace {

// ---- Row groups: rows of x [T, K] sorted by group (an expert's tokens), one amax per group ----
// Default on sm_90+ (1D): the staged2 kernel over the groups' slices (one read). Else, or when
// that kernel does not apply, two passes over x:
// The group of row r: the last g with row_off[g] <= r (empty groups skipped).
__device__ __forceinline__ int group_of_row(const int32_t* row_off, int64_t groups, int64_t r) {
  return last_at_most(row_off, groups, r);
}

// Pass 1: one warp per row folds max |row| into amax[group of the row] (exact: max is order-free).
template <InType T>
__global__ void __launch_bounds__(kThreads) rows_amax_kernel(const void* x, int64_t rows, int64_t K,
                                                             const int32_t* row_off, int64_t groups,
                                                             uint32_t* amax_bits) {
  const int64_t nb = K / 16, lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    float m = 0.0f;
    for (int64_t b = lane; b < nb; b += 32) {
      float v[16];
      load16<T, Src::kCached>(x, (r * nb + b) * 16, v);
      m = fmaxf(m, max16(v));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) atomic_max_nonneg(amax_bits + group_of_row(row_off, groups, r), m);
  }
}

// Pass 2: every 16-element block quantized with its row's group scale — the arithmetic of the
// fused kernel's 1D quantize step (emit_block), with S_enc taken per block from the group amax.
template <InType T>
__global__ void __launch_bounds__(kThreads) rows_quantize_kernel(const void* x, int64_t units, int64_t nb,
                                                                 const int32_t* row_off, int64_t groups,
                                                                 const uint32_t* amax_bits, uint8_t* codes,
                                                                 uint8_t* scales, uint16_t* fake) {
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float amax = __uint_as_float(amax_bits[group_of_row(row_off, groups, u / nb)]);
    const float s_enc = nvfp4_s_enc(amax);
    float v[16];
    load16<T, Src::kStreaming>(x, u * 16, v);
    emit_block(v, nvfp4_block_scale(max16(v), nvfp4_block_factor(s_enc)), nvfp4_s_dec(s_enc), u, codes, scales, fake);
  }
}

__global__ void rows_s_dec_kernel(const uint32_t* amax_bits, int64_t groups, float* s_dec) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g < groups) s_dec[g] = nvfp4_s_dec(nvfp4_s_enc(__uint_as_float(amax_bits[g])));
}

template <InType T>
void rows_two_pass(const void* x, int64_t rows, int64_t K, const int32_t* row_off, int64_t groups,
                   void* workspace, uint8_t* codes, uint8_t* scales, uint16_t* fake, float* s_dec,
                   cudaStream_t stream) {
  g_last_kernel = "two-pass";
  auto* amax_bits = static_cast<uint32_t*>(workspace);
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(amax_bits, 0, sizeof(uint32_t) * std::max<int64_t>(groups, 1), stream));
  if (rows > 0) {
    const int64_t nb = K / 16, units = rows * nb;
    const unsigned g1 = static_cast<unsigned>(std::min<int64_t>((rows + kThreads / 32 - 1) / (kThreads / 32), 1 << 16));
    const unsigned g2 = static_cast<unsigned>(std::min<int64_t>((units + kThreads - 1) / kThreads, 1 << 18));
    rows_amax_kernel<T><<<g1, kThreads, 0, stream>>>(x, rows, K, row_off, groups, amax_bits);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
    rows_quantize_kernel<T><<<g2, kThreads, 0, stream>>>(x, units, nb, row_off, groups, amax_bits, codes, scales, fake);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  if (groups > 0) {
    rows_s_dec_kernel<<<static_cast<unsigned>((groups + 255) / 256), 256, 0, stream>>>(amax_bits, groups, s_dec);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

const char* nvfp4_last_kernel() { return g_last_kernel.load(); }

void nvfp4_trace(unsigned long long* buf, int64_t items) {
  g_trace = buf;
  g_trace_items = buf ? items : 0;
}

RowsTable nvfp4_rows_table(const int64_t* off, int64_t groups, int64_t slice_rows, int32_t* table) {
  RowsTable r{0, 0};
  for (int64_t g = 0; g <= groups; ++g) {
    table[g] = static_cast<int32_t>(off[g]);
    table[groups + 1 + g] = static_cast<int32_t>(r.total_slices);  // <= rows
    if (g < groups) {
      const int64_t n = (off[g + 1] - off[g] + slice_rows - 1) / slice_rows;
      r.total_slices += n;
      r.max_slices = std::max(r.max_slices, n);
    }
  }
  return r;
}

int64_t nvfp4_rows_slice_rows(InType t, int64_t K, bool fake) {
  const int64_t row_bytes = K * (t == InType::F32 ? 4 : 2);
  return row_bytes > 0 ? std::max<int64_t>(1, staged2_shape(t, fake).slot_bytes / row_bytes) : 1;
}

void nvfp4_quantize_rows(const void* x, InType t, int64_t rows, int64_t K, const int32_t* table, int64_t groups,
                         int64_t slice_rows, int64_t total_slices, int64_t max_slices, void* workspace,
                         uint8_t* codes, uint8_t* scales, uint16_t* fake, float* s_dec, cudaStream_t stream) {
  FP4QAT_CHECK(K % 16 == 0 && K > 0, "nvfp4_quantize_rows (CUDA): K = ", K, " is not a positive multiple of 16");
  if (groups == 0) return;
  const std::string forced = forced_kernel();
  const bool try_staged2 = forced.empty() || forced == "staged2" || forced == "park";
  Nvfp4Args a;
  a.x = x;
  a.type = t;
  a.E = groups;
  a.N = rows;
  a.K = K;
  a.codes = codes;
  a.scales = scales;
  a.fake = fake;
  a.s_dec = s_dec;
  a.workspace = workspace;
  Slices sl;
  sl.groups = groups;
  sl.R = slice_rows;
  sl.G = max_slices;
  sl.total = total_slices;
  sl.table = table;
  switch (t) {
#define FP4QAT_ROWS(TY)                                                                                          \
  case TY:                                                                                                       \
    if (try_staged2 && rows > 0 && staged2_available(stream) && launch_staged2<TY>(a, sl, stream)) return;      \
    rows_two_pass<TY>(x, rows, K, table, groups, workspace, codes, scales, fake, s_dec, stream);                 \
    return;
    FP4QAT_ROWS(InType::BF16)
    FP4QAT_ROWS(InType::F16)
    FP4QAT_ROWS(InType::F32)
#undef FP4QAT_ROWS
  }
}

void nvfp4_quantize(const Nvfp4Args& a, cudaStream_t stream) {
  FP4QAT_CHECK(a.K % 16 == 0 && a.K > 0, "nvfp4_quantize (CUDA): K = ", a.K, " is not a positive multiple of 16");
  FP4QAT_CHECK(a.s_dec && a.workspace, "nvfp4_quantize (CUDA): s_dec and workspace are required");
  if (a.E == 0) return;
  // Default: with the amax computed here, the multi-buffered one-read kernel (staged2) where it
  // applies (sm_90+, 1D blocks, 16-byte aligned rows, not while capturing a graph); 2D blocks: the
  // one-read staged kernel where it applies (its slices fit in shared memory, sm_90+, not while
  // capturing: 0.94–0.97 ms against the fused kernel's 1.00–1.03 for the MoE layer, H100); else
  // the fused two-pass kernel; with a given amax the fused kernel's single streaming pass (as fast
  // as staged2's for packed outputs, faster with fake values: bench/RESULTS.md, H100).
  // FP4QAT_NVFP4_KERNEL=fused|staged|staged2|park picks one (benchmarks and tests; a variant that
  // does not apply falls back to fused).
  const std::string forced = forced_kernel();
  const bool try_staged2 = forced.empty() ? a.given_amax == nullptr : forced == "staged2" || forced == "park";
  const bool try_staged =
      forced == "staged" || (forced.empty() && a.two_d && a.given_amax == nullptr && staged2_available(stream));
#define FP4QAT_DISPATCH(TY)                                                    \
  if (a.type == TY) {                                                           \
    if (try_staged2 && launch_staged2_uniform<TY>(a, stream)) return;                   \
    if (a.two_d) {                                                              \
      if (!(try_staged && launch_staged<TY, true>(a, stream))) launch_fused<TY, true>(a, stream); \
    } else if (!(try_staged && launch_staged<TY, false>(a, stream))) {          \
      launch_fused<TY, false>(a, stream);                                       \
    }                                                                           \
    return;                                                                     \
  }
  FP4QAT_DISPATCH(InType::BF16)
  FP4QAT_DISPATCH(InType::F16)
  FP4QAT_DISPATCH(InType::F32)
#undef FP4QAT_DISPATCH
  FP4QAT_FAIL("nvfp4_quantize (CUDA): unsupported input type");
}

void amax(const void* x, InType t, int64_t E, int64_t per, float* out, cudaStream_t stream) {
  FP4QAT_CHECK(per % 16 == 0, "amax (CUDA): elements per expert must be a multiple of 16");
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(E) * sizeof(float), stream));
  if (E == 0 || per == 0) return;
  const int64_t units = per / 16;
  const int64_t gx = std::max<int64_t>(1, std::min<int64_t>((units + kThreads - 1) / kThreads,
                                                             std::max<int64_t>(1, num_sms() * 8 / E)));
  dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(E));
  auto* bits = reinterpret_cast<uint32_t*>(out);
  switch (t) {
    case InType::BF16: amax_kernel<InType::BF16><<<grid, kThreads, 0, stream>>>(x, per, bits); break;
    case InType::F16: amax_kernel<InType::F16><<<grid, kThreads, 0, stream>>>(x, per, bits); break;
    case InType::F32: amax_kernel<InType::F32><<<grid, kThreads, 0, stream>>>(x, per, bits); break;
  }
  FP4QAT_CUDA_CHECK(cudaGetLastError());
}

void nvfp4_dequantize(const uint8_t* codes, const uint8_t* scales, const float* s_dec, int64_t E, int64_t N,
                      int64_t K, void* out, bool out_bf16, cudaStream_t stream) {
  const int64_t per = N * (K / 16);
  if (E == 0 || per == 0) return;
  // grid.y: experts (at most 65535 a launch); grid.x: about 8 waves of CTAs over all of them.
  const int64_t gx = std::max<int64_t>(1, std::min<int64_t>((2 * per + kThreads - 1) / kThreads,
                                                             (grid_for(2 * E * per) + E - 1) / E));
  for (int64_t e0 = 0; e0 < E; e0 += 65535) {
    const dim3 g(static_cast<unsigned>(gx), static_cast<unsigned>(std::min<int64_t>(65535, E - e0)));
    if (out_bf16) nvfp4_dequant_kernel<true><<<g, kThreads, 0, stream>>>(codes, scales, s_dec, per, e0, out);
    else nvfp4_dequant_kernel<false><<<g, kThreads, 0, stream>>>(codes, scales, s_dec, per, e0, out);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace fp4qat::cuda_kernels
