// tests/model/kernel_test_util.h — what the fused model kernels' tests share (elementwise and RMSNorm,
// CPU and GPU): inputs with special values, byte agreement in bf16 ulps, a misaligned CUDA copy, a
// composite's forward and input gradient, the RMSNorm reference's outputs.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/model/rms_norm_ref.h"

namespace fp4qat::test {

// Normal values times scale, about one in six replaced by +-90 (expf over- / underflows), +-0,
// +-1e-30 (products that underflow to a signed zero or a subnormal) or +-1.
inline at::Tensor values(at::IntArrayRef shape, at::ScalarType dt, double scale) {
  at::Tensor v = at::randn(shape) * scale;
  const std::vector<float> specials = {90.0f, -90.0f, 0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f};
  at::Tensor pick = at::randint(0, 6 * static_cast<int64_t>(specials.size()), shape, at::kLong);
  for (size_t k = 0; k < specials.size(); ++k) v.masked_fill_(pick == static_cast<int64_t>(k), specials[k]);
  return v.to(dt).contiguous();
}

// A contiguous CUDA copy of t whose data starts one element past a 16-byte boundary: the kernels'
// one-element-at-a-time path.
inline at::Tensor misaligned_cuda(const at::Tensor& t) {
  at::Tensor buf = at::empty({t.numel() + 1}, t.options().device(at::kCUDA));
  at::Tensor v = buf.narrow(0, 1, t.numel()).view(t.sizes());
  v.copy_(t);
  return v;
}

// How many elements, how many with identical bytes, and the largest difference among the others in
// bf16 ulps at their magnitude (2^-7 of the power of two below the larger; +0 / -0: infinitely far).
struct Agreement {
  int64_t n = 0, same = 0;
  double worst_bf16_ulps = 0;
  double fraction() const { return n == 0 ? 1.0 : static_cast<double>(same) / static_cast<double>(n); }
};
inline void accumulate(Agreement& a, const at::Tensor& got_in, const at::Tensor& want_in) {
  const at::Tensor got = got_in.cpu().contiguous(), want = want_in.cpu().contiguous();
  ASSERT_EQ(got.scalar_type(), want.scalar_type());
  ASSERT_EQ(got.sizes(), want.sizes());
  const bool bf16 = got.scalar_type() == at::kBFloat16;
  const at::Tensor gb = got.view(bf16 ? at::kShort : at::kInt).to(at::kLong);
  const at::Tensor wb = want.view(bf16 ? at::kShort : at::kInt).to(at::kLong);
  const at::Tensor gv = got.to(at::kDouble), wv = want.to(at::kDouble);
  const int64_t *gbp = gb.data_ptr<int64_t>(), *wbp = wb.data_ptr<int64_t>();
  const double *gvp = gv.data_ptr<double>(), *wvp = wv.data_ptr<double>();
  for (int64_t i = 0; i < gb.numel(); ++i) {
    ++a.n;
    if (gbp[i] == wbp[i]) {
      ++a.same;
      continue;
    }
    int e = 0;
    std::frexp(std::max(std::fabs(gvp[i]), std::fabs(wvp[i])), &e);  // magnitude in [2^(e-1), 2^e)
    const double d = std::fabs(gvp[i] - wvp[i]) / std::ldexp(1.0, e - 1 - 7);
    a.worst_bf16_ulps = std::max(a.worst_bf16_ulps, d == 0 ? INFINITY : d);
  }
}
inline Agreement agreement(const at::Tensor& got, const at::Tensor& want) {
  Agreement a;
  accumulate(a, got, want);
  return a;
}
inline void expect_identical(const Agreement& a, const char* what) {
  EXPECT_EQ(a.same, a.n) << what << ": " << a.n - a.same << " of " << a.n << " differ (worst " << a.worst_bf16_ulps
                         << " bf16 ulps)";
}
// Where expf (or an FMA) decides: at most one bf16 ulp apart anywhere; bf16 at least 99.9% of the
// bytes identical (its rounding hides nearly every float ulp); float32, where every float ulp
// shows, at least `f32_same`.
inline void expect_expf_close(const Agreement& a, bool bf16, double f32_same, const char* what) {
  EXPECT_LE(a.worst_bf16_ulps, 1.0) << what << ": " << a.n - a.same << " of " << a.n << " differ";
  EXPECT_GE(a.fraction(), bf16 ? 0.999 : f32_same) << what << ": " << a.n - a.same << " of " << a.n << " differ";
}

// A function's output and its input's gradient from g, through ATen's autograd.
struct FwdBwd {
  at::Tensor y, dx;
};
template <typename F>
FwdBwd run_autograd(const at::Tensor& x, const at::Tensor& g, F&& f) {
  const at::Tensor leaf = x.detach().clone().requires_grad_(true);
  const at::Tensor y = f(leaf);
  y.backward(g);
  return {y.detach(), leaf.grad()};
}

inline at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// The RMSNorm reference's outputs (kernels/model/rms_norm_ref.h) for x [..., D] and g like x; with
// a weight w ([D] in x's dtype) also dw.
struct RmsRef {
  at::Tensor y, rstd, dx, dw;
};
inline RmsRef rms_reference(const at::Tensor& x, const at::Tensor& g, float eps, const at::Tensor& w = {}) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const int64_t D = x.size(-1), rows = x.numel() / D;
  RmsRef r{at::empty_like(x), at::empty({rows}, at::kFloat), at::empty_like(x), at::Tensor()};
  const void* wp = w.defined() ? w.data_ptr() : nullptr;
  if (w.defined()) r.dw = at::empty({D}, x.options());
  norm::rms_norm_rows_forward_ref(x.data_ptr(), bf16, rows, D, eps, r.y.data_ptr(), r.rstd.data_ptr<float>(), wp);
  norm::rms_norm_rows_backward_ref(x.data_ptr(), g.data_ptr(), r.rstd.data_ptr<float>(), bf16, rows, D,
                                   r.dx.data_ptr(), wp, w.defined() ? r.dw.data_ptr() : nullptr);
  return r;
}

}  // namespace fp4qat::test
