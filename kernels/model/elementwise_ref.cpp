// kernels/model/elementwise_ref.cpp — the CPU references of the fused SwiGLU and RoPE (see
// elementwise_ref.h): plain loops over the elements, the shared arithmetic of the header.
#include "kernels/model/elementwise_ref.h"

namespace fp4qat::elementwise {

namespace {

template <bool kBf16>
void swiglu_forward_t(const void* h, int64_t T, int64_t I, void* out) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i)
      store_elem<kBf16>(out, t * I + i,
                        swiglu_out<kBf16>(load_elem<kBf16>(h, t * 2 * I + i), load_elem<kBf16>(h, t * 2 * I + I + i)));
}

template <bool kBf16>
void swiglu_backward_t(const void* h, const void* g, int64_t T, int64_t I, void* dh) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const SwigluGrad d = swiglu_grad<kBf16>(load_elem<kBf16>(h, t * 2 * I + i), load_elem<kBf16>(h, t * 2 * I + I + i),
                                              load_elem<kBf16>(g, t * I + i));
      store_elem<kBf16>(dh, t * 2 * I + i, d.dgate);
      store_elem<kBf16>(dh, t * 2 * I + I + i, d.du);
    }
}

// Row r of x ([B * T * H] rows of D) takes cos / sin row (r / H) ([B, T, D]) or (r / H) % T ([T, D]).
int64_t table_row(int64_t r, const RopeShape& s) { return s.per_batch ? r / s.H : (r / s.H) % s.T; }

template <bool kBf16>
void rope_forward_t(const void* x, const void* cos, const void* sin, const RopeShape& s, void* out) {
  const int64_t rows = s.B * s.T * s.H, h = s.D / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t xr = r * s.D, cr = table_row(r, s) * s.D;
    for (int64_t d = 0; d < h; ++d) {
      const float lo = load_elem<kBf16>(x, xr + d), hi = load_elem<kBf16>(x, xr + h + d);
      store_elem<kBf16>(out, xr + d,
                        rope_out<kBf16>(lo, load_elem<kBf16>(cos, cr + d), -hi, load_elem<kBf16>(sin, cr + d)));
      store_elem<kBf16>(out, xr + h + d,
                        rope_out<kBf16>(hi, load_elem<kBf16>(cos, cr + h + d), lo, load_elem<kBf16>(sin, cr + h + d)));
    }
  }
}

template <bool kBf16>
void rope_backward_t(const void* g, const void* cos, const void* sin, const RopeShape& s, void* dx) {
  const int64_t rows = s.B * s.T * s.H, h = s.D / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t xr = r * s.D, cr = table_row(r, s) * s.D;
    for (int64_t d = 0; d < h; ++d) {
      const float lo = load_elem<kBf16>(g, xr + d), hi = load_elem<kBf16>(g, xr + h + d);
      const float s_lo = load_elem<kBf16>(sin, cr + d), s_hi = load_elem<kBf16>(sin, cr + h + d);
      store_elem<kBf16>(dx, xr + d, rope_grad<kBf16>(lo, load_elem<kBf16>(cos, cr + d), hi, s_hi));
      store_elem<kBf16>(dx, xr + h + d, rope_grad<kBf16>(hi, load_elem<kBf16>(cos, cr + h + d), -lo, s_lo));
    }
  }
}

}  // namespace

void swiglu_forward_ref(const void* h, bool bf16, int64_t T, int64_t I, void* out) {
  bf16 ? swiglu_forward_t<true>(h, T, I, out) : swiglu_forward_t<false>(h, T, I, out);
}

void swiglu_backward_ref(const void* h, const void* g, bool bf16, int64_t T, int64_t I, void* dh) {
  bf16 ? swiglu_backward_t<true>(h, g, T, I, dh) : swiglu_backward_t<false>(h, g, T, I, dh);
}

void rope_forward_ref(const void* x, const void* cos, const void* sin, bool bf16, const RopeShape& s, void* out) {
  bf16 ? rope_forward_t<true>(x, cos, sin, s, out) : rope_forward_t<false>(x, cos, sin, s, out);
}

void rope_backward_ref(const void* g, const void* cos, const void* sin, bool bf16, const RopeShape& s, void* dx) {
  bf16 ? rope_backward_t<true>(g, cos, sin, s, dx) : rope_backward_t<false>(g, cos, sin, s, dx);
}

namespace {

template <bool kBf16>
void combine_forward_t(const void* y, const void* w, const int64_t* slot_row, int64_t N, int64_t k, int64_t H,
                       void* out) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float p = combine_term<kBf16>(load_elem<kBf16>(y, slot_row[n * k + j] * H + h), load_elem<kBf16>(w, n * k + j));
        acc = j == 0 ? p : acc + p;
      }
      store_elem<kBf16>(out, n * H + h, acc);
    }
}

template <bool kBf16>
void combine_backward_t(const void* y, const void* w, const int64_t* slot_row, const void* g, int64_t N, int64_t k,
                        int64_t H, void* dy, void* dw) {
  const int64_t pieces = H / kCombinePiece;
  for (int64_t s = 0; s < N * k; ++s) {
    const int64_t n = s / k, r = slot_row[s];
    const float ws = load_elem<kBf16>(w, s);
    float lane[kCombineLanes];
    for (int l = 0; l < kCombineLanes; ++l) {
      float acc = 0.0f;
      for (int64_t p = l; p < pieces; p += kCombineLanes)
        for (int e = 0; e < kCombinePiece; ++e) {
          const int64_t h = p * kCombinePiece + e;
          const float gv = load_elem<kBf16>(g, n * H + h);
          store_elem<kBf16>(dy, r * H + h, combine_term<kBf16>(gv, ws));
          acc = acc + combine_term<kBf16>(gv, load_elem<kBf16>(y, r * H + h));
        }
      lane[l] = acc;
    }
    for (int o = kCombineLanes / 2; o > 0; o /= 2) {
      float next[kCombineLanes];
      for (int l = 0; l < kCombineLanes; ++l) next[l] = lane[l] + lane[l ^ o];
      for (int l = 0; l < kCombineLanes; ++l) lane[l] = next[l];
    }
    store_elem<kBf16>(dw, s, lane[0]);
  }
}

}  // namespace

void moe_combine_forward_ref(const void* y, const void* w, const int64_t* slot_row, bool bf16, int64_t N, int64_t k,
                             int64_t H, void* out) {
  bf16 ? combine_forward_t<true>(y, w, slot_row, N, k, H, out) : combine_forward_t<false>(y, w, slot_row, N, k, H, out);
}

void moe_combine_backward_ref(const void* y, const void* w, const int64_t* slot_row, const void* g, bool bf16,
                              int64_t N, int64_t k, int64_t H, void* dy, void* dw) {
  bf16 ? combine_backward_t<true>(y, w, slot_row, g, N, k, H, dy, dw)
       : combine_backward_t<false>(y, w, slot_row, g, N, k, H, dy, dw);
}

}  // namespace fp4qat::elementwise
