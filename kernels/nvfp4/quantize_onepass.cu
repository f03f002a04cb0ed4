// kernels/nvfp4/quantize_onepass.cu — the one-read NVFP4 quantize kernels (sm_90+, 1D blocks,
// every input byte read from HBM once): staged2 (quantize_onepass.cuh) in the shapes the defaults
// choose, and its bf16 variant with a register slot (park), the default when fake values are
// written; the choice of the two and of their shape; uniform experts and row groups.
#include <algorithm>

#include "kernels/nvfp4/quantize_onepass.cuh"

namespace fp4qat::cuda_kernels::nvfp4 {
namespace {

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
__global__ void __launch_bounds__(kTh, 2)
    nvfp4_park_kernel(Nvfp4Args a, Slices sl, int64_t data_bytes, int64_t slot_stride, uint32_t* amax_bits,
                      int* arrived, unsigned long long* ticket) {
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
    claim_slot(s, ticket, sl, tab, a, K * 2, smem + s * slot_stride, bar0 + 8 * s, item, item_row, item_group,
               item_rows, item_need, item_first);
  };

  auto contribute = [&](int s) {  // all threads; s = 0 or 1
    fold_slice<InType::BF16, kTh>(a, smem + s * slot_stride,
                                  reinterpret_cast<float*>(smem + s * slot_stride + data_bytes), item_rows[s] * nb,
                                  item_group[s], red, amax_bits, arrived, sl, item[s]);
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
  if (ok) set_last_kernel("park");
  return ok;
}

// Which one-read kernel runs, and its shape: threads per CTA (256 or 512), bytes per slot, shared
// slots per CTA (2, 3 or 4). Defaults measured on H100 (bench/RESULTS.md), two CTAs a SM each:
// bf16 with fake values: the register-slot variant (park), 256 x 48 KB x 2 + registers; other
// fake outputs: staged2 256 x 32 KB x 3; packed outputs only: staged2 512 x 48 KB x 2.
// FP4QAT_NVFP4_KERNEL=park|staged2 forces one; FP4QAT_NVFP4_THREADS, FP4QAT_NVFP4_SLOT_BYTES and
// FP4QAT_NVFP4_SLOTS override the shape (benchmarks; shapes no default chooses are in bench/dev/).
struct Staged2Shape {
  bool park;
  int64_t threads, slot_bytes, slots;
};
Staged2Shape staged2_shape(InType t, bool fake, const tuning::Nvfp4Tuning& tu) {
  const bool forced_park = tu.kernel == tuning::Nvfp4Kernel::kPark,
             forced_staged2 = tu.kernel == tuning::Nvfp4Kernel::kStaged2;
  const bool park = t == InType::BF16 && (forced_park || (!forced_staged2 && fake));
  const bool narrow = park || fake;
  return {park, tu.threads > 0 ? tu.threads : (narrow ? 256 : 512),
          tu.slot_bytes > 0 ? tu.slot_bytes : (park || !fake ? 49152 : 32768),
          tu.slots > 0 ? tu.slots : (park ? 2 : (fake ? 3 : 2))};
}

}  // namespace

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

int64_t staged2_slot_bytes(InType t, bool fake, const tuning::Nvfp4Tuning& tu) {
  return staged2_shape(t, fake, tu).slot_bytes;
}

template <InType T>
bool launch_staged2_slices(const Nvfp4Args& a, const Slices& sl, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  const Staged2Shape sh = staged2_shape(T, a.fake != nullptr, tu);
  if (sh.park && launch_park_t<256>(a, sl, stream)) return true;
  // Compiled here: the shapes the defaults choose — 512 x 2 (packed outputs only), 256 x 3 (fake
  // values, f16 / f32), 256 x 2 (bf16: where park does not apply). The others: bench/dev/.
  if (sh.threads == 512 && sh.slots == 2) return launch_staged2_t<T, 512, 2>(a, sl, stream);
  if constexpr (T == InType::BF16) {
    if (sh.threads == 256 && sh.slots == 2) return launch_staged2_t<T, 256, 2>(a, sl, stream);
  } else {
    if (sh.threads == 256 && sh.slots == 3) return launch_staged2_t<T, 256, 3>(a, sl, stream);
  }
  return dev_variants("staged2 with this FP4QAT_NVFP4_KERNEL / FP4QAT_NVFP4_THREADS / FP4QAT_NVFP4_SLOTS shape")
      .staged2(a, sl, sh.threads, sh.slots, stream);
}

template <InType T>
int64_t row_bytes(int64_t K) {
  return K * (T == InType::F32 ? 4 : 2);
}
// x[E, N, K] as E uniform groups of slices of at most `rows` rows (R < 1: a row does not fit a slot).
static Slices uniform_slices(const Nvfp4Args& a, int64_t rows) {
  Slices sl;
  sl.groups = a.E;
  sl.R = std::min(a.N, rows);
  if (sl.R < 1) return sl;
  sl.G = (a.N + sl.R - 1) / sl.R;
  sl.total = a.E * sl.G;
  return sl;
}

// One one-read shape of Four Over Six (kTh threads x kSlots slots; registers for two CTAs a SM: the
// shared memory is sized for two), MAE or MSE as the rule says.
template <InType T, int kTh, int kSlots>
bool launch_4over6_shape(const Nvfp4Args& a, const Slices& sl, int64_t row_bytes, cudaStream_t stream) {
  constexpr int kBmax = block_max_bytes(T, 1);
  return a.rule.mse ? launch_one_read(nvfp4_staged2_kernel<T, kTh, kSlots, 2, 2>, kTh, kSlots, kSlots, a, sl,
                                      row_bytes, stream, kBmax)
                    : launch_one_read(nvfp4_staged2_kernel<T, kTh, kSlots, 1, 2>, kTh, kSlots, kSlots, a, sl,
                                      row_bytes, stream, kBmax);
}

// Four Over Six: one shape, 256 threads x 2 slots (+ 1 KB of slim tables), two CTAs a SM (the
// candidates' registers leave no room for 512 threads). Compute bound, and waiting for each
// expert's amax: the bigger the slots, the more experts in flight (H100, session 26: 16 / 24 / 32 /
// 40 / 48 KB slots 2.19 / 1.55 / 1.37 / 1.21 / 1.12 ms on the MoE layer). bf16: slots of 52 KB, each
// + 3.25 KB of 2-byte block maxima (block_max_bytes); f16, f32: 48 KB + 6 KB of float maxima — the
// most that leaves two CTAs a SM (2 x ~112 KB). With the full tables (5 KB, until session 25) 48 KB
// slots left one CTA a SM. FP4QAT_NVFP4_SLOT_BYTES overrides the slot (benchmarks).
template <InType T>
bool launch_staged2_4over6(const Nvfp4Args& a, cudaStream_t stream) {
  const tuning::Nvfp4Tuning tu = tuning::nvfp4_tuning();
  if (tu.kernel != tuning::Nvfp4Kernel::kDefault && tu.kernel != tuning::Nvfp4Kernel::kStaged2) return false;
  if (!a.rule.four_over_six || a.rule.row_scaled || a.two_d || a.N == 0 || !staged2_available(stream)) return false;
  const int64_t slot = tu.slot_bytes > 0 ? tu.slot_bytes : T == InType::BF16 ? 53248 : 49152;
  const Slices sl = uniform_slices(a, slot / row_bytes<T>(a.K));
  if (sl.R < 1) return false;
  const int64_t rb = row_bytes<T>(a.K);
  // Benchmark shapes, both measured slower (bench/RESULTS.md sessions 23-26): FP4QAT_NVFP4_THREADS=384
  // (12 warps a CTA, two CTAs a SM within 80 registers) and FP4QAT_NVFP4_SLOTS=3 (a deeper ring of
  // smaller slots). Removed after measuring slower: 512 threads (with spills) and two lanes a block
  // (session 24); a per-warp kernel without CTA barriers in its loop (`ring`, sessions 25-26: 8-50%
  // slower than staged2 in each of eight shapes); three CTAs of 256 threads a SM within 80 registers
  // (28-30 KB slots: 1.31-1.35 ms against 1.12-1.14 at 2 x 48 KB; session 26). All in git history.
  const bool ok = tu.threads == 384 ? launch_4over6_shape<T, 384, 2>(a, sl, rb, stream)
                  : tu.slots == 3   ? launch_4over6_shape<T, 256, 3>(a, sl, rb, stream)
                                    : launch_4over6_shape<T, 256, 2>(a, sl, rb, stream);
  if (ok) set_last_kernel("staged2-4over6");
  return ok;
}

// x[E, N, K] as E uniform groups.
template <InType T>
bool launch_staged2_uniform(const Nvfp4Args& a, const tuning::Nvfp4Tuning& tu, cudaStream_t stream) {
  if (a.N == 0 || !staged2_available(stream)) return false;
  const Slices sl = uniform_slices(a, staged2_shape(T, a.fake != nullptr, tu).slot_bytes / row_bytes<T>(a.K));
  if (sl.R < 1) return false;
  return launch_staged2_slices<T>(a, sl, tu, stream);
}

template bool launch_staged2_slices<InType::BF16>(const Nvfp4Args&, const Slices&, const tuning::Nvfp4Tuning&,
                                                  cudaStream_t);
template bool launch_staged2_slices<InType::F16>(const Nvfp4Args&, const Slices&, const tuning::Nvfp4Tuning&,
                                                 cudaStream_t);
template bool launch_staged2_slices<InType::F32>(const Nvfp4Args&, const Slices&, const tuning::Nvfp4Tuning&,
                                                 cudaStream_t);
template bool launch_staged2_uniform<InType::BF16>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template bool launch_staged2_uniform<InType::F16>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template bool launch_staged2_uniform<InType::F32>(const Nvfp4Args&, const tuning::Nvfp4Tuning&, cudaStream_t);
template bool launch_staged2_4over6<InType::BF16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged2_4over6<InType::F16>(const Nvfp4Args&, cudaStream_t);
template bool launch_staged2_4over6<InType::F32>(const Nvfp4Args&, cudaStream_t);

}  // namespace fp4qat::cuda_kernels::nvfp4
