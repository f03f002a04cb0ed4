// kernels/nvfp4/quantize_rows.cu — NVFP4 row groups in two passes (the groups' amax, then
// quantization): nvfp4_quantize_rows where the one-read kernel (staged2 over the groups' slices,
// quantize_onepass.cu) does not apply; and the row-group table (nvfp4_rows_table).
#include <algorithm>

#include "kernels/nvfp4/quantize_common.cuh"

namespace fp4qat::cuda_kernels {
namespace nvfp4 {
namespace {

// ---- Row groups: rows of x [T, K] sorted by group (an expert's tokens), one amax per group ----
// Default on sm_90+ (1D): the staged2 kernel over the groups' slices (one read). Else, or when
// that kernel does not apply, two passes over x:
// Pass 1: rows_amax_kernel (quantize_common.cuh) folds max |row| into amax[group of the row].
// Pass 2: every 16-element block quantized with its row's group scale — the arithmetic of the
// fused kernel's 1D quantize step (emit_block), with S_enc taken per block from the group amax.
template <InType T>
__global__ void __launch_bounds__(kThreads)
    rows_quantize_kernel(const void* x, int64_t units, int64_t nb, const int32_t* row_off, int64_t groups,
                         const uint32_t* amax_bits, uint8_t* codes, uint8_t* scales, uint16_t* fake) {
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float amax = __uint_as_float(amax_bits[last_at_most(row_off, groups, u / nb)]);
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

}  // namespace

template <InType T>
void rows_two_pass(const void* x, int64_t rows, int64_t K, const int32_t* row_off, int64_t groups, void* workspace,
                   uint8_t* codes, uint8_t* scales, uint16_t* fake, float* s_dec, cudaStream_t stream) {
  set_last_kernel("two-pass");
  auto* amax_bits = static_cast<uint32_t*>(workspace);
  FP4QAT_CUDA_CHECK(cudaMemsetAsync(amax_bits, 0, sizeof(uint32_t) * std::max<int64_t>(groups, 1), stream));
  if (rows > 0) {
    const int64_t nb = K / 16, units = rows * nb;
    const unsigned g2 = static_cast<unsigned>(std::min<int64_t>((units + kThreads - 1) / kThreads, 1 << 18));
    rows_amax_kernel<T><<<rows_amax_grid(rows), kThreads, 0, stream>>>(x, rows, K, row_off, groups,
                                                                       reinterpret_cast<float*>(amax_bits));
    FP4QAT_CUDA_CHECK(cudaGetLastError());
    rows_quantize_kernel<T><<<g2, kThreads, 0, stream>>>(x, units, nb, row_off, groups, amax_bits, codes, scales, fake);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
  if (groups > 0) {
    rows_s_dec_kernel<<<static_cast<unsigned>((groups + 255) / 256), 256, 0, stream>>>(amax_bits, groups, s_dec);
    FP4QAT_CUDA_CHECK(cudaGetLastError());
  }
}

#define FP4QAT_ROWS_TWO_PASS(TY)                                                                                     \
  template void rows_two_pass<TY>(const void*, int64_t, int64_t, const int32_t*, int64_t, void*, uint8_t*, uint8_t*, \
                                  uint16_t*, float*, cudaStream_t);
FP4QAT_ROWS_TWO_PASS(InType::BF16)
FP4QAT_ROWS_TWO_PASS(InType::F16)
FP4QAT_ROWS_TWO_PASS(InType::F32)
#undef FP4QAT_ROWS_TWO_PASS

}  // namespace nvfp4

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

}  // namespace fp4qat::cuda_kernels
