// kernels/model/rms_norm_ref.cpp — the CPU reference of the short-row RMSNorm (see rms_norm_ref.h):
// each row's 32 lanes simulated, their pieces summed in element order, then the xor butterfly.
#include "kernels/model/rms_norm_ref.h"

#include <vector>

#include "kernels/common/check.h"

namespace fp4qat::norm {

namespace {

// The butterfly over the 32 lane sums: afterwards every lane holds the row's sum (lane 0's taken).
float butterfly(float lane[kRowLanes]) {
  for (int o = kRowLanes / 2; o > 0; o /= 2) {
    float next[kRowLanes];
    for (int l = 0; l < kRowLanes; ++l) next[l] = lane_add(lane[l], lane[l ^ o]);
    for (int l = 0; l < kRowLanes; ++l) lane[l] = next[l];
  }
  return lane[0];
}

template <bool kBf16>
void forward_t(const void* x, int64_t rows, int64_t D, float eps, void* y, float* rstd, const void* w) {
  const int64_t P = D / kRowLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * D;
    float lane[kRowLanes];
    for (int l = 0; l < kRowLanes; ++l) {
      float s = 0.0f;
      for (int64_t i = 0; i < P; ++i) s = sumsq_add(s, load_elem<kBf16>(x, row + l * P + i));
      lane[l] = s;
    }
    const float rs = rstd_of(butterfly(lane), D, eps);
    rstd[r] = rs;
    for (int64_t i = 0; i < D; ++i) {
      const float n = normalized(load_elem<kBf16>(x, row + i), rs);
      store_elem<kBf16>(y, row + i, w ? weighted(load_elem<kBf16>(w, i), in_dtype<kBf16>(n)) : n);
    }
  }
}

template <bool kBf16>
void backward_t(const void* x, const void* g, const float* rstd, int64_t rows, int64_t D, void* dx, const void* w,
                void* dw) {
  const int64_t P = D / kRowLanes;
  // The formula's g at element e: g itself, or gn = dtype(g * w) with a weight.
  auto g_at = [&](int64_t e) {
    const float gv = load_elem<kBf16>(g, e);
    return w ? in_dtype<kBf16>(weighted(gv, load_elem<kBf16>(w, e % D))) : gv;
  };
  // dw: the groups' sum, this group's, this chunk's (rms_norm_ref.h's order).
  std::vector<float> total(w ? D : 0, 0.0f), group(w ? D : 0, 0.0f), chunk(w ? D : 0, 0.0f);
  const int64_t group_size = weight_group_size(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * D;
    const float rs = rstd[r];
    float lane[kRowLanes];
    for (int l = 0; l < kRowLanes; ++l) {
      float s = 0.0f;
      for (int64_t i = 0; i < P; ++i) {
        const int64_t e = row + l * P + i;
        s = dot_add(s, g_at(e), normalized(load_elem<kBf16>(x, e), rs));
      }
      lane[l] = s;
    }
    const float m = grad_mean(butterfly(lane), D);
    for (int64_t i = 0; i < D; ++i) {
      const float xh = normalized(load_elem<kBf16>(x, row + i), rs);
      store_elem<kBf16>(dx, row + i, grad_of(g_at(row + i), xh, m, rs));
      if (w) chunk[i] = chunk[i] + in_dtype<kBf16>(weighted(load_elem<kBf16>(g, row + i), in_dtype<kBf16>(xh)));
    }
    if (!w || !((r + 1) % kWeightChunkRows == 0 || r + 1 == rows)) continue;
    const int64_t c = r / kWeightChunkRows;  // the chunk just ended
    for (int64_t i = 0; i < D; ++i) {
      group[i] = group[i] + chunk[i];
      chunk[i] = 0.0f;
    }
    if ((c + 1) % group_size == 0 || r + 1 == rows)
      for (int64_t i = 0; i < D; ++i) {
        total[i] = total[i] + group[i];
        group[i] = 0.0f;
      }
  }
  if (w) {
    // Empty groups past the chunks add their 0.0f (a -0.0f total becomes +0.0f, as on the GPU).
    const int64_t used = rows == 0 ? 0 : (weight_chunks(rows) + group_size - 1) / group_size;
    for (int64_t k = used; k < kWeightGroups; ++k)
      for (int64_t i = 0; i < D; ++i) total[i] = total[i] + 0.0f;
    for (int64_t i = 0; i < D; ++i) store_elem<kBf16>(dw, i, total[i]);
  }
}

void check_shape(int64_t rows, int64_t D, const char* who, bool weighted) {
  FP4QAT_CHECK(rows >= 0, who, ": rows must be >= 0, got ", rows);
  const int64_t most = weighted ? kMaxWeightedRowLen : kMaxRowLen;
  FP4QAT_CHECK(rows_supported(D) && D <= most, who, ": the row length D must be a positive multiple of 32, at most ",
               most, weighted ? " with a weight" : "", ", got ", D);
}

}  // namespace

void rms_norm_rows_forward_ref(const void* x, bool bf16, int64_t rows, int64_t D, float eps, void* y, float* rstd,
                               const void* w) {
  check_shape(rows, D, "rms_norm_rows_forward_ref", w != nullptr);
  bf16 ? forward_t<true>(x, rows, D, eps, y, rstd, w) : forward_t<false>(x, rows, D, eps, y, rstd, w);
}

void rms_norm_rows_backward_ref(const void* x, const void* g, const float* rstd, bool bf16, int64_t rows, int64_t D,
                                void* dx, const void* w, void* dw) {
  check_shape(rows, D, "rms_norm_rows_backward_ref", w != nullptr);
  FP4QAT_CHECK(!w == !dw, "rms_norm_rows_backward_ref: w and dw go together");
  bf16 ? backward_t<true>(x, g, rstd, rows, D, dx, w, dw) : backward_t<false>(x, g, rstd, rows, D, dx, w, dw);
}

}  // namespace fp4qat::norm
