// kernels/nvfp4/quantize_onepass.cuh — the multi-buffered one-read NVFP4 quantize kernel
// ("staged2", sm_90: bulk copies into shared memory), the pieces it shares with the register-slot
// variant (park, kernels/nvfp4/quantize_onepass.cu), and their common launcher. staged2 is
// templated on its shape (threads x slots): quantize_onepass.cu instantiates the shapes the
// defaults choose, bench/dev/nvfp4_variants.cu the others. Include only from .cu.
#pragma once
#include <algorithm>
#include <type_traits>

#include "kernels/nvfp4/quantize_4over6.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

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
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ bool mbar_test(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
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

__device__ __forceinline__ void trace_event(const Slices& sl, long long t, int k) {
  if (sl.trace != nullptr && t < sl.trace_items) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    sl.trace[kNvfp4TraceFields * t + k] = now;
  }
}
// The claiming CTA into the trace's field 5 (not a time).
__device__ __forceinline__ void trace_cta(const Slices& sl, long long t) {
  if (sl.trace != nullptr && t < sl.trace_items) sl.trace[kNvfp4TraceFields * t + 5] = blockIdx.x;
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

// A slot's block maxima in shared memory: float32 each, or, where the kernel keeps them in 2 bytes
// (block_max_bytes: Four Over Six on bf16), the bf16 bits of each — exact, a bf16 block's max |x|
// is a bf16 value — so that a bigger slice fits the same shared memory.
__host__ __device__ constexpr int block_max_bytes(InType t, int rule) { return rule != 0 && t == InType::BF16 ? 2 : 4; }
__device__ __forceinline__ void put_block_max(float* p, int64_t u, float m) { p[u] = m; }
__device__ __forceinline__ void put_block_max(uint16_t* p, int64_t u, float m) {
  p[u] = static_cast<uint16_t>(__float_as_uint(m) >> 16);
}
__device__ __forceinline__ float block_max_at(const float* p, int64_t u) { return p[u]; }
__device__ __forceinline__ float block_max_at(const uint16_t* p, int64_t u) {
  return __uint_as_float(static_cast<uint32_t>(p[u]) << 16);
}

// Each thread: the 16-element block maxima of its blocks of a landed slice (units blocks at base;
// blocks threadIdx.x, + kTh, ...) into bmax (float, or uint16_t: bf16 input only); returns their max.
template <InType T, int kTh, typename BMax = float>
__device__ __forceinline__ float fold_block_maxima(const unsigned char* base, BMax* bmax, int64_t units) {
  static_assert(sizeof(BMax) == 4 || T == InType::BF16, "2-byte block maxima hold bf16 values only");
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
    put_block_max(bmax, u, bm);
    m = fmaxf(m, bm);
  }
  return m;
}

// All threads: the block maxima of a landed slice into bmax, and, unless the amax is given, the
// slice max folded into amax[g] followed by the arrival.
template <InType T, int kTh>
__device__ __forceinline__ void fold_slice(const Nvfp4Args& a, const unsigned char* base, float* bmax, int64_t units,
                                           int g, float* red, uint32_t* amax_bits, int* arrived, const Slices& sl,
                                           long long t) {
  float m = fold_block_maxima<T, kTh>(base, bmax, units);
  if (a.given_amax != nullptr) return;
  m = block_max<kTh>(m, red);
  if (threadIdx.x == 0) {
    atomic_max_nonneg(amax_bits + g, m);
    red_release_add(arrived + g, 1);  // ordered after the max, without waiting for it
    trace_event(sl, t, 4);
  }
}

// One warp (all lanes): its share of fold_slice — the block maxima of its threads' blocks — with
// no barrier, so a warp folds a slice that lands while the others compute. The warps' maxima
// meet in the slot's shared word slot_max (bits; nonnegative floats order as their bits), the
// last of the kTh / 32 warps (slot_warps) folds it into amax[g] and arrives. slot_max and
// slot_warps are zeroed when the slot is claimed.
template <InType T, int kTh, typename BMax>
__device__ __forceinline__ void fold_slice_warp(const Nvfp4Args& a, const unsigned char* base, BMax* bmax,
                                                int64_t units, int g, uint32_t* slot_max, int* slot_warps,
                                                uint32_t* amax_bits, int* arrived, const Slices& sl, long long t) {
  float m = fold_block_maxima<T, kTh, BMax>(base, bmax, units);
  if (a.given_amax == nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) {
      atomicMax(slot_max, __float_as_uint(m));
      __threadfence_block();  // the max before the count
      if (atomicAdd(slot_warps, 1) == kTh / 32 - 1) {
        __threadfence_block();  // every warp's max after its count
        atomic_max_nonneg(amax_bits + g, __uint_as_float(atomicOr(slot_max, 0u)));
        red_release_add(arrived + g, 1);
        trace_event(sl, t, 4);
      }
    }
  }
  __syncwarp();
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
    if (((candidates >> s) & 1u) && item[s] < total && !((folded >> s) & 1u) &&
        mbar_test(bar0 + 8 * s, (parity >> s) & 1u)) {
      landed |= 1 << s;
      trace_event(sl, item[s], 1);
    }
  return landed;
}

// All threads: fold in the slots of `landed` (their bytes have arrived: each wait returns at once,
// and every thread acquires the bytes).
template <typename Fold>
__device__ __forceinline__ void fold_landed(int landed, uint32_t bar0, uint32_t& parity, uint32_t& folded,
                                            Fold&& fold) {
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
  trace_cta(sl, t);
  if (t >= sl.total) return;
  const SliceInfo si = decode_slice(sl, tab, a.N, t);
  item_group[s] = static_cast<int>(si.g);
  item_row[s] = si.row;
  item_rows[s] = static_cast<int>(si.rows);
  item_need[s] = static_cast<int>(si.need);
  item_first[s] = si.first;
  // Generic-proxy reads of this slot's previous bytes come before the async-proxy writes.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  bulk_load(smem_addr(dst), static_cast<const char*>(a.x) + si.row * row_bytes,
            static_cast<uint32_t>(si.rows * row_bytes), bar);
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

// The smallest positive value of an input type (four_over_six_block_lut's `tiny`).
template <InType T>
__host__ __device__ constexpr float smallest_positive() {
  return T == InType::BF16 ? 0x1p-133f : T == InType::F16 ? 0x1p-24f : 0x1p-149f;
}

// A slice's Four Over Six parameters: S_enc, the slim tables of its amax (prepare_head_4over6<..,
// true>: enc, one), and the amax and 6M the rare exact path makes its reconstructions from.
struct Head4over6 {
  float s_enc, amax, six_m;
  SlimLut lut;
};

// One block of Four Over Six from a slice in shared memory (float32 and float16 input; bf16 goes
// through quantize_slice_4over6's pipelined loop).
template <InType T, bool kMse>
__device__ __forceinline__ void quantize_block_4over6(const Nvfp4Args& a, const unsigned char* base, const float* bmax,
                                                      int64_t u, int64_t unit0, const Head4over6& hd) {
  static_assert(T != InType::BF16, "bf16: quantize_slice_4over6's pipelined loop");
  float v[16];
  load16<T, Src::kShared>(base, u * 16, v);
  four_over_six_block_est<kMse>(v, bmax[u], hd.s_enc, hd.lut, hd.amax, hd.six_m, unit0 + u, a.codes, a.scales,
                                a.fake, smallest_positive<T>());
}

// All threads: Four Over Six on a slice held in shared memory, with the tables of its amax.
// Iterations are warp-uniform; after each, `between()` runs with the warp's lanes converged (the
// staged2 kernel folds slots that have landed meanwhile). An expert completes only when the slowest
// warp of every CTA holding one of its slices has folded it, so a slice's fold waits at most one
// block of the head. After every block instead of every second: 1.42-1.43x -> 1.38-1.40x max6 on the
// MoE layer (bf16, M 256 MAE, with the claimer below; H100, bench/RESULTS.md session 33).
// bf16: software-pipelined — the next block's words and maximum are loaded from shared memory
// before this block's arithmetic (the head slot is not written until the slice is done; `between`
// folds other slots), taking two shared-memory latencies off each block's dependent chain; the
// raw words go to the emitter too (the codes' signs, no repacking of the float values).
template <InType T, int kTh, bool kMse, typename BMax, typename Between>
__device__ __forceinline__ void quantize_slice_4over6(const Nvfp4Args& a, const unsigned char* base, const BMax* bmax,
                                                      int64_t units, int64_t unit0, const Head4over6& hd,
                                                      Between&& between) {
  if constexpr (T == InType::BF16) {
    const int n = static_cast<int>(units);  // a slice's blocks: a slot's bytes / 32
    int u = threadIdx.x;
    uint32_t next[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
    float next_max = 0.0f;
    if (u < n) load_raw16(base, u, next), next_max = block_max_at(bmax, u);
    for (int u0 = threadIdx.x & ~31; u0 < n; u0 += kTh, u += kTh) {
      float v[16];
      uint32_t raw[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        raw[i] = next[i];
        v[2 * i] = __uint_as_float(next[i] << 16);
        v[2 * i + 1] = __uint_as_float(next[i] & 0xffff0000u);
      }
      const float m = next_max;
      if (u + kTh < n) load_raw16(base, u + kTh, next), next_max = block_max_at(bmax, u + kTh);
      if (u < n)
        four_over_six_block_est<kMse, true>(v, m, hd.s_enc, hd.lut, hd.amax, hd.six_m, unit0 + u, a.codes,
                                            a.scales, a.fake, smallest_positive<T>(), raw);
      between();
    }
  } else {
    for (int64_t u0 = threadIdx.x & ~31; u0 < units; u0 += kTh) {
      const int64_t u = u0 + (threadIdx.x & 31);
      if (u < units) quantize_block_4over6<T, kMse>(a, base, bmax, u, unit0, hd);
      between();
    }
  }
}

// One thread: initialize n mbarriers (one arrival each) at bar0, bar0 + 8, ...
__device__ __forceinline__ void init_bars(uint32_t bar0, int n) {
  for (int s = 0; s < n; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar0 + 8 * s) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Roles: thread 0 polls the head's group and the landed slots; thread kClaimer (another warp)
// claims tickets, decodes them and starts the bulk copies, so the two round trips to memory overlap.
// kRule: 0 max6; Four Over Six (a.rule) 1 MAE, 2 MSE. kMinCtas: the CTAs a SM the registers must
// allow (__launch_bounds__'s second argument); 0, the max6 shapes', leaves the register count to ptxas
// as without the argument (the same SASS). An explicit 1 is not that: ptxas then took up to 128
// registers a thread (57 -> 96 at 512 threads: one CTA a SM instead of two, max6 on the MoE layer
// 0.76 -> 1.03 ms on the H100; bench/RESULTS.md session 25).
template <InType T, int kTh, int kSlots, int kRule = 0, int kMinCtas = 0>
__global__ void __launch_bounds__(kTh, kMinCtas)
    nvfp4_staged2_kernel(Nvfp4Args a, Slices sl, int64_t data_bytes, int64_t slot_stride, uint32_t* amax_bits,
                         int* arrived, unsigned long long* ticket) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Slot s: the bytes of its item at smem + s * slot_stride (data_bytes), then its 16-element
  // block maxima, BMax [rows * K/16] (computed once, when the slot lands, for both the group
  // amax and the block scales; block_max_bytes each); completion of the bulk copy on bars[s].
  // After the slots: the row-group table, if any.
  using BMax = std::conditional_t<block_max_bytes(T, kRule) == 2, uint16_t, float>;
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  __shared__ __align__(8) uint64_t bars[kSlots];
  __shared__ long long item[kSlots];      // ticket
  __shared__ long long item_row[kSlots];  // first row of the slice in x viewed as [rows, K]
  __shared__ int item_group[kSlots], item_rows[kSlots], item_need[kSlots], item_first[kSlots];
  __shared__ float red[kTh / 32];
  __shared__ int flag[2];  // [0]: the head's group is complete; [1]: slots that have landed (bits)
  __shared__ float shared_amax;
  // max6: nvfp4_block_enc(sb, S_dec) of the head's group, per scale byte. Four Over Six: the slim
  // tables of the head's amax, enc (entries 0 .. kLutEnc - 1) and one (the reconstructions of code 1.0).
  __shared__ float enc_lut[256];
  static_assert(2 * kLutEnc <= 256, "Four Over Six's slim tables share enc_lut");
  uint32_t lut_tag = 0xFFFFFFFFu;       // Four Over Six: the amax bits of the tables (a NaN's: none)
  const uint32_t lut_base = smem_addr(enc_lut);  // Four Over Six: SlimLut's base
  const int64_t K = a.K, nb = K / 16, total = sl.total;
  const uint32_t bar0 = smem_addr(&bars[0]);
  int32_t* tab = reinterpret_cast<int32_t*>(smem + kSlots * slot_stride);  // [2 * (groups + 1)] if row groups
  // Four Over Six folds eagerly: its compute is long (a slice takes several microseconds), and a
  // slice that landed in a CTA's other slot while it computed was folded only after, holding back
  // every CTA waiting for that slice's expert (bench/RESULTS.md session 22: 220-250 of ~520 slices
  // in flight waiting for their expert's amax). Each warp folds its share of a slot as soon as it
  // sees the slot landed — between its blocks of the head, and while it waits — without barriers
  // (fold_slice_warp); `folded` and `parity` are then per warp, not per CTA.
  constexpr bool kEager = kRule != 0;
  // The claimer's work (a contended global atomic, the ticket's decode, the bulk copy) comes after
  // the barrier that ends a slice, so it delays its warp's next block. Four Over Six's blocks are
  // long: there it is a thread of warp kTh / 32 - 2, one of those with a block fewer than the first
  // warps when a slice's blocks do not divide evenly (blocks threadIdx.x, + kTh, ...), and not the
  // poller's warp (kTh - 32). Measured alone: 1.44x -> 1.42-1.43x max6 on the MoE layer (H100,
  // session 33). max6 keeps thread 32.
  static_assert(kTh >= 128, "the claimer and the poller are threads of different warps");
  constexpr int kClaimer = kEager ? kTh - 64 : 32;
  __shared__ uint32_t slot_max[kSlots];  // eager: the warps' maxima of each slot's slice (bits)
  __shared__ int slot_warps[kSlots];     // eager: the warps that have folded each slot's slice
  // Eager, with the amax given: the next head's amax read ahead by thread kPoller, the first of the
  // last warp — its threads have the fewest blocks of a slice (blocks threadIdx.x, + kTh, ...), so it
  // is idle while the first warps finish their last block — and published (pre_amax[s], then
  // pre_ticket[s] = the slot's ticket) before the barrier that ends the slice. That head then starts
  // without a poll round (a barrier: 2% of the MoE layer's time on the H100, session 29). With the
  // amax computed, testing the next group there (group_complete's round trips) measured 1% slower:
  // it is mostly not complete yet, and the poll round stays.
  constexpr int kPoller = kTh - 32;
  __shared__ float pre_amax[kSlots];
  __shared__ long long pre_ticket[kSlots];
  if (kEager && threadIdx.x < kSlots) pre_ticket[threadIdx.x] = -1;  // ordered by the barrier below
  auto claim = [&](int s) {  // thread kClaimer only
    if (kEager) slot_max[s] = 0u, slot_warps[s] = 0;  // released to the folding warps by the bulk copy's arrive
    claim_slot(s, ticket, sl, tab, a, K * kElem, smem + s * slot_stride, bar0 + 8 * s, item, item_row, item_group,
               item_rows, item_need, item_first);
  };

  // Block maxima of slot s into its bmax array; the slice max folded into amax[group]. All threads
  // (eager: one warp, its share).
  auto contribute = [&](int s) {
    BMax* bm = reinterpret_cast<BMax*>(smem + s * slot_stride + data_bytes);
    if constexpr (kEager)
      fold_slice_warp<T, kTh>(a, smem + s * slot_stride, bm, item_rows[s] * nb, item_group[s], &slot_max[s],
                              &slot_warps[s], amax_bits, arrived, sl, item[s]);
    else
      fold_slice<T, kTh>(a, smem + s * slot_stride, bm, item_rows[s] * nb, item_group[s], red, amax_bits, arrived, sl,
                         item[s]);
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
  // Eager: one warp (lanes converged) folds the other slots that have landed and it has not folded
  // (lane 0's test decides for the warp; every lane then acquires the bytes by its own wait).
  auto fold_early = [&] {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (s == h || ((folded >> s) & 1u)) continue;
      if (__shfl_sync(0xffffffffu, mbar_test(bar0 + 8 * s, (parity >> s) & 1u) ? 1 : 0, 0) == 0) continue;
      mbar_wait(bar0 + 8 * s, (parity >> s) & 1u);
      if (threadIdx.x == 0) trace_event(sl, item[s], 1);
      parity ^= 1u << s;
      contribute(s);
      folded |= 1u << s;
    }
  };
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
    bool prepolled = false;  // eager: the head's amax was published during the last slice (uniform)
    if constexpr (kEager) {
      prepolled = pre_ticket[h] == item[h];  // written before the barrier that ended the last slice
      for (; !prepolled;) {  // every warp folds what lands while thread 0 tests the group
        fold_early();
        if (threadIdx.x == 0) {
          float am = 0.0f;
          flag[0] = group_complete(a, arrived, amax_bits, g, need, &am);
          if (flag[0]) {
            shared_amax = am;
            trace_event(sl, item[h], 2);
          }
        }
        __syncthreads();
        if (flag[0]) break;
        if (threadIdx.x == 0) __nanosleep(64);
        __syncthreads();  // flag is rewritten next round
      }
    } else {
      while (!poll_round<kSlots>(a, arrived, amax_bits, g, need, item[h], ~(1u << h), item, total, folded, parity,
                                 bar0, sl, flag, shared_amax, contribute)) {
        if (flag[1] == 0 && threadIdx.x == 0) __nanosleep(64);
        __syncthreads();  // flag is rewritten next round
      }
    }
    const int64_t unit0 = item_row[h] * nb, units = item_rows[h] * nb;
    const BMax* head_bmax = reinterpret_cast<const BMax*>(smem + h * slot_stride + data_bytes);
    if constexpr (kRule == 0) {
      const float factor = prepare_head<kTh>(shared_amax, item_first[h], g, a, enc_lut);
      quantize_slice<T, kTh>(a, smem + h * slot_stride, head_bmax, units, unit0, factor, enc_lut);
    } else {
      const float amax = prepolled ? pre_amax[h] : shared_amax;
      const Head4over6 hd{
          prepare_head_4over6<kTh, true>(amax, item_first[h], g, a, enc_lut, enc_lut + kLutEnc, lut_tag), amax,
          a.rule.e4m3_max * kE2M1Max, SlimLut{lut_base}};
      quantize_slice_4over6<T, kTh, kRule == 2>(a, smem + h * slot_stride, head_bmax, units, unit0, hd, fold_early);
      if (threadIdx.x == kPoller && a.given_amax != nullptr) {
        // The next slot's item fields are this warp's to read once it has seen the slot land (the
        // claimer's writes are released by the bulk copy's mbarrier).
        const int n = h + 1 < kSlots ? h + 1 : 0;
        const long long t = ((folded >> n) & 1u) ? item[n] : total;
        if (t < total && pre_ticket[n] != t) {
          pre_amax[n] = a.given_amax[item_group[n]];
          pre_ticket[n] = t;
          trace_event(sl, t, 2);
        }
      }
    }
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

// The launch of a one-read kernel (staged2, park: the same parameters) with `shared_slots` slots
// of R rows in shared memory (+ the row-group table) and a ring of `ring` items a CTA: 16-byte
// aligned rows, the deadlock-freedom condition G <= ring x CTAs (all resident: a cooperative
// launch), the workspace cleared; false to fall back (also when the cooperative launch is refused).
template <typename Kernel>
bool launch_one_read(Kernel kernel, int threads, int shared_slots, int ring, const Nvfp4Args& a, const Slices& sl,
                     int64_t row_bytes, cudaStream_t stream, int bmax_bytes = 4) {
  if (reinterpret_cast<uintptr_t>(a.x) % 16 != 0 || row_bytes % 16 != 0) return false;
  const int64_t data_bytes = (sl.R * row_bytes + 127) / 128 * 128;
  // + the block maxima, bmax_bytes each (the kernel's block_max_bytes)
  const int64_t slot_stride = data_bytes + (sl.R * (a.K / 16) * bmax_bytes + 127) / 128 * 128;
  const int64_t table_bytes = sl.table ? 2 * (sl.groups + 1) * 4 : 0;
  const size_t smem = static_cast<size_t>(shared_slots * slot_stride + table_bytes);
  const int64_t resident = resident_ctas(kernel, threads, smem);
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(sl.total, resident));
  if (resident < 1 || sl.G > ring * grid) return false;  // the deadlock-freedom condition
  set_last_ctas_per_sm(resident / num_sms());
  const Workspace w = clear_workspace(a.workspace, sl.groups, stream);
  Slices slt = sl;
  apply_trace(slt);
  // Cooperative: the deadlock-freedom condition counts on all CTAs being resident.
  void* args[] = {const_cast<Nvfp4Args*>(&a),
                  &slt,
                  const_cast<int64_t*>(&data_bytes),
                  const_cast<int64_t*>(&slot_stride),
                  const_cast<uint32_t**>(&w.amax_bits),
                  const_cast<int**>(&w.counter),
                  const_cast<unsigned long long**>(&w.ticket)};
  return launch_cooperative(reinterpret_cast<const void*>(kernel), grid, threads, args, smem, stream);
}

template <InType T, int kTh, int kSlots>
bool launch_staged2_t(const Nvfp4Args& a, const Slices& sl, cudaStream_t stream) {
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  if (a.two_d || sl.total == 0 || sl.R < 1) return false;
  const bool ok =
      launch_one_read(nvfp4_staged2_kernel<T, kTh, kSlots>, kTh, kSlots, kSlots, a, sl, a.K * kElem, stream);
  if (ok) set_last_kernel("staged2");
  return ok;
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
