// kernels/nvfp4/quantize_ring.cuh — Four Over Six's one-read 1D kernel with per-warp progress
// ("ring"): staged2's slot ring (kernels/nvfp4/quantize_onepass.cuh) without the CTA's barriers
// inside the loop. staged2's warps meet at three barriers a slice (the poll for the head's expert
// amax, the tables of that amax, the end of the slice before its slot is refilled); Four Over Six is
// compute bound, its warps progress at different rates, and at 256 threads 20% of a warp's cycles
// were barrier stalls (bench/RESULTS.md session 24, ncu). Here each warp walks the ring on its own:
//   - its share of a slot (blocks threadIdx.x, + kTh, ...) is folded as soon as the warp sees the
//     slot's bytes landed (fold_slice_warp, as staged2's eager form); the last warp to fold a slice
//     folds the slice max into amax[g] and arrives;
//   - per slot, the first warp to find the head's group complete makes the slot's slim tables
//     (enc, the code-1.0 reconstructions: 256 entries, 8 a lane) and publishes them (slot_state 2,
//     release); the others wait for that (acquire), folding landed slots meanwhile;
//   - the last warp to finish quantizing a slot's slice refills the slot (the next ticket and its
//     bulk copy; past the last ticket, a plain arrive completes the slot's phase so that waiting
//     warps wake and see the end).
// Deadlock-free under staged2's condition (G <= kSlots x CTAs, all CTAs resident): a warp waits only
// for a slot's bytes, for its head's group (folding every other slot that lands meanwhile) or for
// tables being made by a running warp; refills happen in ring order (the last warp out of item k
// left item k - 1 earlier), so each CTA's tickets still increase along its ring.
// Include only from .cu.
#pragma once

#include "kernels/nvfp4/quantize_onepass.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

__device__ __forceinline__ int ld_acquire_shared(const int* p) {
  int v;
  asm volatile("ld.acquire.cta.shared::cta.s32 %0, [%1];\n" : "=r"(v) : "r"(smem_addr(p)) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_shared(int* p, int v) {
  asm volatile("st.release.cta.shared::cta.s32 [%0], %1;\n" ::"r"(smem_addr(p)), "r"(v) : "memory");
}
// One thread: complete the current phase of an mbarrier expecting one arrival, with no bytes.
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// All lanes of a warp: lane 0's value.
__device__ __forceinline__ int warp_bcast(int v) { return __shfl_sync(0xffffffffu, v, 0); }

// kRule: Four Over Six 1 MAE, 2 MSE (a.rule). Launched as staged2 (launch_one_read).
template <InType T, int kTh, int kSlots, int kRule, int kMinCtas = 0>
__global__ void __launch_bounds__(kTh, kMinCtas)
    nvfp4_ring_kernel(Nvfp4Args a, Slices sl, int64_t data_bytes, int64_t slot_stride, uint32_t* amax_bits,
                      int* arrived, unsigned long long* ticket) {
  static_assert(kRule == 1 || kRule == 2, "the ring kernel is Four Over Six's");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Slot s as staged2's: its item's bytes at smem + s * slot_stride, then the block maxima (each
  // thread's own entries). After the slots: the row-group table, if any.
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int64_t kElem = T == InType::F32 ? 4 : 2;
  constexpr int kWarps = kTh / 32;
  __shared__ __align__(8) uint64_t bars[kSlots];
  __shared__ long long item[kSlots];      // ticket
  __shared__ long long item_row[kSlots];  // first row of the slice in x viewed as [rows, K]
  __shared__ int item_group[kSlots], item_rows[kSlots], item_need[kSlots], item_first[kSlots];
  __shared__ uint32_t slot_max[kSlots];  // the warps' maxima of the slot's slice (bits)
  __shared__ int slot_warps[kSlots];     // warps that have folded the slot's slice
  __shared__ int slot_done[kSlots];      // warps that have quantized it
  __shared__ int slot_state[kSlots];     // its tables: 0 not made, 1 being made, 2 made (released)
  __shared__ float slot_amax[kSlots], slot_s_enc[kSlots];
  __shared__ uint32_t slot_tag[kSlots];  // the amax bits its tables were made for (a NaN's: none)
  __shared__ float slot_enc[kSlots][kLutEnc], slot_one[kSlots][kLutEnc];
  const int64_t K = a.K, nb = K / 16, total = sl.total;
  const uint32_t bar0 = smem_addr(&bars[0]);
  int32_t* tab = reinterpret_cast<int32_t*>(smem + kSlots * slot_stride);  // [2 * (groups + 1)] if row groups
  const int lane = threadIdx.x & 31;
  const float six_m = a.rule.e4m3_max * kE2M1Max;

  auto claim = [&](int s) {  // one thread
    slot_max[s] = 0u, slot_warps[s] = 0, slot_done[s] = 0, slot_state[s] = 0;
    claim_slot(s, ticket, sl, tab, a, K * kElem, smem + s * slot_stride, bar0 + 8 * s, item, item_row, item_group,
               item_rows, item_need, item_first);
    if (item[s] >= total) mbar_arrive(bar0 + 8 * s);  // no bytes: the phase completes, waiting warps see the end
  };
  auto contribute = [&](int s) {  // one warp, its share
    fold_slice_warp<T, kTh>(a, smem + s * slot_stride, reinterpret_cast<float*>(smem + s * slot_stride + data_bytes),
                            item_rows[s] * nb, item_group[s], &slot_max[s], &slot_warps[s], amax_bits, arrived);
  };

  stage_row_groups<kTh>(sl, tab, a);
  if (threadIdx.x < kSlots) slot_tag[threadIdx.x] = 0xFFFFFFFFu;
  if (threadIdx.x == 32) {
    init_bars(bar0, kSlots);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) claim(s);
  }
  __syncthreads();  // the only CTA barrier after the row-group table's
  // Per warp (the same in every lane): the phase each slot waits for next, and whether the warp has
  // taken the slot's current phase (folded its share, or seen the end).
  uint32_t parity = 0u, taken = 0u;
  int h = 0;
  // Take slot s's phase if it has landed (lane 0 tests, every lane acquires by its own wait); fold
  // the warp's share unless it is past the last ticket. Returns whether it was taken.
  auto take = [&](int s) {
    if (warp_bcast(lane == 0 && mbar_test(bar0 + 8 * s, (parity >> s) & 1u) ? 1 : 0) == 0) return false;
    mbar_wait(bar0 + 8 * s, (parity >> s) & 1u);
    parity ^= 1u << s;
    taken |= 1u << s;
    if (item[s] < total) {
      if (threadIdx.x == 0) trace_event(sl, item[s], 1);
      contribute(s);
    }
    return true;
  };
  auto fold_early = [&] {  // lanes converged
#pragma unroll
    for (int s = 0; s < kSlots; ++s)
      if (s != h && !((taken >> s) & 1u)) take(s);
  };
  for (;;) {
    while (!((taken >> h) & 1u)) {
      if (!take(h)) fold_early();
    }
    if (item[h] >= total) return;  // tickets increase along the ring: no later slot holds an item
    const int g = item_group[h];
    // The head's tables: made by the first warp to find its group complete.
    for (;;) {
      const int st = warp_bcast(lane == 0 ? ld_acquire_shared(&slot_state[h]) : 0);
      if (st == 2) break;
      if (st == 0) {
        int mine = 0;
        if (lane == 0) {
          float am = 0.0f;
          if (group_complete(a, arrived, amax_bits, g, item_need[h], &am) && atomicCAS(&slot_state[h], 0, 1) == 0) {
            slot_amax[h] = am;
            mine = 1;
            trace_event(sl, item[h], 2);
          }
        }
        if (warp_bcast(mine)) {
          __syncwarp();
          const float am = slot_amax[h];
          const float s_enc = nvfp4_4over6_s_enc(am, a.rule.e4m3_max);
          const float s_dec = nvfp4_s_dec(s_enc);
          if (lane == 0) {
            slot_s_enc[h] = s_enc;
            if (item_first[h]) a.s_dec[g] = s_dec;
          }
          if (slot_tag[h] != __float_as_uint(am)) {
#pragma unroll
            for (int j = 0; j < kLutEnc / 32; ++j) {
              const int b = lane + 32 * j;
              slot_enc[h][b] = lut_entry(b, am, s_dec, six_m);
              slot_one[h][b] = lut_entry(kLutEnc + 8 * b + 2, am, s_dec, six_m);
            }
          }
          __threadfence_block();
          __syncwarp();
          if (lane == 0) {
            slot_tag[h] = __float_as_uint(am);
            st_release_shared(&slot_state[h], 2);
          }
          __syncwarp();
          break;
        }
      }
      fold_early();
      if (lane == 0 && st == 0) __nanosleep(64);
      __syncwarp();
    }
    __syncwarp();  // lane 0's acquire of the tables (or its own writes) ordered before every lane's reads
    const float* bmax = reinterpret_cast<const float*>(smem + h * slot_stride + data_bytes);
    const Head4over6 hd{slot_s_enc[h], slot_amax[h], six_m, slot_enc[h], slot_one[h]};
    quantize_slice_4over6<T, kTh, kRule == 2>(a, smem + h * slot_stride, bmax, item_rows[h] * nb, item_row[h] * nb, hd,
                                              fold_early);
    // Out of the slot: the last warp refills it (every warp's reads of its bytes ordered before).
    __syncwarp();
    if (lane == 0) {
      __threadfence_block();
      if (atomicAdd(&slot_done[h], 1) == kWarps - 1) {
        __threadfence_block();
        trace_event(sl, item[h], 3);
        claim(h);
      }
    }
    __syncwarp();
    taken &= ~(1u << h);
    h = h + 1 < kSlots ? h + 1 : 0;
  }
#endif
}

}  // namespace
}  // namespace fp4qat::cuda_kernels::nvfp4
