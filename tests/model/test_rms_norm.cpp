// tests/model/test_rms_norm.cpp — the short-row RMSNorm's CPU reference (kernels/model/rms_norm_ref.h,
// the CUDA kernels' arithmetic bit for bit) against double-precision math and ATen's autograd of the
// composite, forward and backward, bf16 and float32; the 32-lane summation tree by hand on one row
// (bytes); rows of zeros; autograd::rms_norm_rows on the CPU is the composite; bad inputs refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/rms_norm.h"
#include "kernels/cuda_api.h"
#include "kernels/model/rms_norm_ref.h"
#include "tests/common/test_util.h"
#include "tests/model/kernel_test_util.h"

using namespace fp4qat;

namespace {

using test::FwdBwd;
using test::run_autograd;

constexpr float kEps = 1e-6f;
const std::vector<int64_t> kLens = {32, 64, 96, 128, 256, 384, 768, 1024};

// [rows, D] normals, each row scaled by one of 1e-3, 1, 30 (rows at the scale of eps, ordinary,
// large), in dt.
at::Tensor rows_of(int64_t rows, int64_t D, at::ScalarType dt) {
  const at::Tensor scale = at::tensor({1e-3f, 1.0f, 30.0f}).index_select(0, at::arange(rows, at::kLong) % 3);
  return (at::randn({rows, D}) * scale.unsqueeze(1)).to(dt).contiguous();
}

// The composite autograd::rms_norm_rows takes on the CPU, and ATen's autograd of it.
at::Tensor composite(const at::Tensor& x, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

// The count of elements where got and want differ by more than bound (all double tensors of one shape).
int64_t outside(const at::Tensor& got, const at::Tensor& want, const at::Tensor& bound) {
  return ((got - want).abs() > bound).sum().item<int64_t>();
}

}  // namespace

// Forward: rstd within (P + 10) float ulps (relative) of double math on the same inputs (the float
// sum of P squares a lane, then the tree, the division, sqrt and reciprocal each round); y within
// one bf16 ulp (bf16) / those ulps plus one (float32) of x * the exact rstd. Backward: within the
// float rounding of g - xh m (a cancellation: bounded by the terms' magnitudes) plus the cast.
TEST(RmsNormRef, MatchesDoublePrecision) {
  at::manual_seed(17);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : kLens) {
      SCOPED_TRACE(::testing::Message() << dt << " D " << D);
      const bool bf16 = dt == at::kBFloat16;
      const int64_t rows = 9, P = D / 32;
      const at::Tensor x = rows_of(rows, D, dt), g = rows_of(rows, D, dt);
      const test::RmsRef r = test::rms_reference(x, g, kEps);
      const at::Tensor xd = x.to(at::kDouble), gd = g.to(at::kDouble);
      const at::Tensor rstd = at::rsqrt(xd.pow(2).mean(-1, true) + static_cast<double>(kEps));  // [rows, 1]
      const double u = 0x1p-24, rel = static_cast<double>(P + 10) * u;
      EXPECT_EQ(outside(r.rstd.to(at::kDouble).unsqueeze(1), rstd, rstd * rel), 0);
      const at::Tensor y = xd * rstd;
      const at::Tensor y_bound = y.abs() * (bf16 ? 0x1p-8 + rel : rel + u);  // bf16: half an ulp (2^-8 relative)
      EXPECT_EQ(outside(r.y.to(at::kDouble), y, y_bound), 0) << (r.y.to(at::kDouble) - y).abs().max();
      // Backward in double: dx = rstd (g - xh m), m = mean(g xh).
      const at::Tensor xh = xd * rstd, m = (gd * xh).mean(-1, true), dx = rstd * (gd - xh * m);
      const at::Tensor s = (gd * xh).abs().sum(-1, true) / static_cast<double>(D);  // |d| / D bound
      const at::Tensor dx_bound =
          2.0 * rstd * ((gd.abs() + (xh * m).abs()) * (rel + 4 * u) + xh.abs() * s * (rel + 4 * u)) +
          dx.abs() * (bf16 ? 0x1p-8 : u);
      EXPECT_EQ(outside(r.dx.to(at::kDouble), dx, dx_bound), 0) << (r.dx.to(at::kDouble) - dx).abs().max();
    }
}

// Against ATen's autograd of the composite (float32 math in another summation order, one cast):
// y and dx within one bf16 ulp (bf16) or a few float ulps of the terms (float32).
TEST(RmsNormRef, MatchesAtenCompositeAutograd) {
  at::manual_seed(19);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : kLens) {
      SCOPED_TRACE(::testing::Message() << dt << " D " << D);
      const bool bf16 = dt == at::kBFloat16;
      const at::Tensor x = rows_of(7, D, dt), g = rows_of(7, D, dt);
      const test::RmsRef r = test::rms_reference(x, g, kEps);
      const FwdBwd want = run_autograd(x, g, [](const at::Tensor& v) { return composite(v, kEps); });
      const at::Tensor a = r.y.to(at::kDouble), b = want.y.to(at::kDouble);
      const double tol = bf16 ? 0x1p-7 : 64 * 0x1p-24;
      EXPECT_EQ(outside(a, b, at::maximum(a.abs(), b.abs()) * tol), 0) << (a - b).abs().max();
      // dx: relative to the magnitude of the terms rstd |g| and rstd |xh m| it is computed from.
      const at::Tensor xd = x.to(at::kDouble), gd = g.to(at::kDouble);
      const at::Tensor rstd = r.rstd.to(at::kDouble).unsqueeze(1), xh = xd * rstd;
      const at::Tensor m = (gd * xh).mean(-1, true);
      const at::Tensor scale = rstd * (gd.abs() + (xh * m).abs());
      const at::Tensor da = r.dx.to(at::kDouble), db = want.dx.to(at::kDouble);
      EXPECT_EQ(outside(da, db, at::maximum(da.abs(), db.abs()) * tol + scale * 1e-5), 0) << (da - db).abs().max();
    }
}

// Rows by hand (D = 64: P = 2, lane l owns elements 2l and 2l + 1): the lane sums, the xor
// butterfly over 32 simulated lanes, the rstd, y, and the backward, bytes equal to the reference.
// Magnitudes over many binades, so the summation order shows in the bits: another partition
// (e.g. lane l owning l and l + 32) changes about half of the rows' sums.
TEST(RmsNormRef, ReproducesTheLaneTreeByHand) {
  at::manual_seed(23);
  const int64_t rows = 16, D = 64;
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(::testing::Message() << dt);
    const at::Tensor x = (at::randn({rows, D}) * at::exp2(at::randint(-6, 7, {rows, D}).to(at::kFloat))).to(dt);
    const at::Tensor g = at::randn({rows, D}).to(dt);
    const test::RmsRef r = test::rms_reference(x, g, kEps);
    const at::Tensor xf = x.to(at::kFloat).contiguous(), gf = g.to(at::kFloat).contiguous();
    auto tree = [](float lane[32]) {
      for (int o = 16; o > 0; o /= 2) {
        float next[32];
        for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ o];
        std::copy(next, next + 32, lane);
      }
      for (int l = 1; l < 32; ++l) EXPECT_EQ(fmt::f2u(lane[l]), fmt::f2u(lane[0])) << "lane " << l;
      return lane[0];
    };
    at::Tensor rstd = at::empty({rows}, at::kFloat), y = at::empty({rows, D}, at::kFloat), dx = at::empty_like(y);
    for (int64_t row = 0; row < rows; ++row) {
      const float* xp = xf.data_ptr<float>() + row * D;
      const float* gp = gf.data_ptr<float>() + row * D;
      float lane[32];
      for (int l = 0; l < 32; ++l) {
        const float a = xp[2 * l] * xp[2 * l], b = xp[2 * l + 1] * xp[2 * l + 1];
        lane[l] = (0.0f + a) + b;
      }
      const float s = tree(lane);
      const float var = s / 64.0f, rs = 1.0f / std::sqrt(var + kEps);
      rstd.data_ptr<float>()[row] = rs;
      for (int i = 0; i < D; ++i) y.data_ptr<float>()[row * D + i] = xp[i] * rs;
      for (int l = 0; l < 32; ++l) {
        const float a = gp[2 * l] * (xp[2 * l] * rs), b = gp[2 * l + 1] * (xp[2 * l + 1] * rs);
        lane[l] = (0.0f + a) + b;
      }
      const float m = tree(lane) / 64.0f;
      for (int i = 0; i < D; ++i) {
        const float xh = xp[i] * rs, t = xh * m, u = gp[i] - t;
        dx.data_ptr<float>()[row * D + i] = rstd.data_ptr<float>()[row] * u;
      }
    }
    EXPECT_TRUE(test::bytes_equal(r.rstd, rstd));
    EXPECT_TRUE(test::bytes_equal(r.y, y.to(dt)));  // ATen's float -> bf16 cast rounds to nearest even
    EXPECT_TRUE(test::bytes_equal(r.dx, dx.to(dt)));
  }
}

// A row of zeros: s = 0, rstd = 1 / sqrt(eps) exactly as float computes it, y = +0; the backward
// is rstd g (xh = 0, so d = 0).
TEST(RmsNormRef, ZeroRows) {
  for (const auto dt : {at::kFloat, at::kBFloat16})
    for (const int64_t D : {32, 128, 1024}) {
      SCOPED_TRACE(::testing::Message() << dt << " D " << D);
      const at::Tensor x = at::zeros({3, D}, dt), g = at::randn({3, D}).to(dt);
      const test::RmsRef r = test::rms_reference(x, g, kEps);
      const float want = 1.0f / std::sqrt(kEps);
      for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(fmt::f2u(r.rstd[i].item<float>()), fmt::f2u(want));
      EXPECT_TRUE(test::bytes_equal(r.y, at::zeros({3, D}, dt)));
      EXPECT_TRUE(test::bytes_equal(r.dx, (g.to(at::kFloat) * want).to(dt)));
      // eps = 0: 1 / sqrt(0) = inf, as the composite's rsqrt(0).
      at::Tensor y = at::empty_like(x), rstd = at::empty({3}, at::kFloat);
      norm::rms_norm_rows_forward_ref(x.data_ptr(), dt == at::kBFloat16, 3, D, 0.0f, y.data_ptr(),
                                      rstd.data_ptr<float>());
      EXPECT_TRUE(std::isinf(rstd[0].item<float>()));
    }
}

// autograd::rms_norm_rows on the CPU is the composite, bytes equal forward and backward, for any
// last dim (the kernels' D % 32 == 0 rule does not apply there) and for views.
TEST(RmsNorm, AutogradOnCpuIsTheComposite) {
  at::manual_seed(29);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{5, 64}, {2, 3, 4, 128}, {3, 48}, {2, 7}, {1, 1024}}) {
      SCOPED_TRACE(::testing::Message() << dt << " " << at::IntArrayRef(shape));
      const at::Tensor x = at::randn(shape).to(dt), g = at::randn(shape).to(dt);
      const FwdBwd want = run_autograd(x, g, [](const at::Tensor& v) { return composite(v, 1e-6); });
      const FwdBwd got = run_autograd(x, g, [](const at::Tensor& v) { return autograd::rms_norm_rows(v, 1e-6); });
      EXPECT_TRUE(test::bytes_equal(got.y, want.y));
      EXPECT_TRUE(test::bytes_equal(got.dx, want.dx));
    }
  // The model's layout: [B, H, T, hd] transposed (not contiguous).
  const at::Tensor q = at::randn({2, 3, 5, 64}).to(at::kBFloat16).transpose(1, 2);
  EXPECT_TRUE(test::bytes_equal(autograd::rms_norm_rows(q, 1e-6), composite(q, 1e-6)));
}

// With a weight (the model's w.to(dtype) * norm(x), fused): the reference's y is the bf16 / float32
// product of w and its own unweighted y (bytes), and its dx the unweighted backward of
// gn = dtype(g * w) (bytes); dw within the float summation's rounding of the double sum of
// dtype(g * n) over the rows (bf16: plus half an ulp), and bytes equal to ATen's sum where every term
// and partial sum is exact (small integers: any order gives the same value). Row counts around
// the 8-row chunks of dw's sum and past 256 chunks (groups of two chunks, some groups empty).
TEST(RmsNormRef, WeightedIsTheProductAndItsGradients) {
  at::manual_seed(23);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {32, 64, 96, 128, 512})
      for (const int64_t rows : {1, 7, 8, 9, 200, 2049}) {
        SCOPED_TRACE(::testing::Message() << dt << " D " << D << " rows " << rows);
        const bool bf16 = dt == at::kBFloat16;
        const at::Tensor x = rows_of(rows, D, dt), g = rows_of(rows, D, dt);
        const at::Tensor w = (at::rand({D}) * 2.0 + 0.25).to(dt);
        const test::RmsRef plain = test::rms_reference(x, g, kEps);
        const at::Tensor gn = (g * w).contiguous();  // dtype(g * w): ATen's mul in the dtype
        const test::RmsRef gnr = test::rms_reference(x, gn, kEps);
        const test::RmsRef r = test::rms_reference(x, g, kEps, w);
        EXPECT_TRUE(test::bytes_equal(r.y, (w * plain.y).contiguous()));
        EXPECT_TRUE(test::bytes_equal(r.rstd, plain.rstd));
        EXPECT_TRUE(test::bytes_equal(r.dx, gnr.dx));
        const at::Tensor terms = (g * plain.y).to(at::kDouble);  // dtype(g * n), widened
        const at::Tensor want = terms.sum(0), bound = terms.abs().sum(0) * (static_cast<double>(rows) + 2) * 0x1p-24 +
                                                          want.abs() * (bf16 ? 0x1p-8 : 0.0);
        EXPECT_EQ(outside(r.dw.to(at::kDouble), want, bound), 0) << (r.dw.to(at::kDouble) - want).abs().max();
      }
  // Exact terms: x rows of +-1 and eps 0 (mean square 1, rstd 1, n = x exactly), g small integers,
  // w 1: every term and partial sum of dw is an integer well inside float's and bf16's exact range,
  // so the sum is the same in any order.
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    const int64_t rows = 150, D = 64;
    const at::Tensor x = (at::randint(0, 2, {rows, D}) * 2 - 1).to(dt);
    const at::Tensor g = at::randint(-3, 4, {rows, D}).to(dt), w = at::ones({D}, dt);
    const test::RmsRef r = test::rms_reference(x, g, 0.0f, w);
    EXPECT_TRUE(test::bytes_equal(r.dw, (g.to(at::kFloat) * x.to(at::kFloat)).sum(0).to(dt)));
  }
}

// autograd::rms_norm_rows with a weight on the CPU is w.to(dtype) * rms_norm_rows(x): bytes of y and
// of the gradients of x and w (a float32 weight, as the model's parameters).
TEST(RmsNorm, WeightedAutogradOnCpuIsTheComposite) {
  at::manual_seed(31);
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    SCOPED_TRACE(::testing::Message() << dt);
    const at::Tensor x0 = at::randn({2, 5, 64}).to(dt), g = at::randn({2, 5, 64}).to(dt), w0 = at::rand({64}) + 0.5;
    auto run = [&](bool fused) {
      const at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      const at::Tensor y =
          fused ? autograd::rms_norm_rows(x, 1e-6, w) : w.to(dt) * autograd::rms_norm_rows(x, 1e-6);
      y.backward(g);
      return std::vector<at::Tensor>{y.detach(), x.grad(), w.grad()};
    };
    const auto got = run(true), want = run(false);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(test::bytes_equal(got[i], want[i])) << "output " << i;
  }
}

TEST(RmsNorm, BadInputsAreRefused) {
  using test::error_of;
  std::vector<float> buf(2048, 1.0f), out(2048), rstd(2);
  for (const int64_t D : {0, 16, 48, 1056, 2048}) {
    SCOPED_TRACE(::testing::Message() << "D " << D);
    EXPECT_NE(error_of([&] {
                norm::rms_norm_rows_forward_ref(buf.data(), false, 1, D, kEps, out.data(), rstd.data());
              }).find("rms_norm_rows_forward_ref: the row length D must be a positive multiple of 32"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                norm::rms_norm_rows_backward_ref(buf.data(), buf.data(), rstd.data(), false, 1, D, out.data());
              }).find("rms_norm_rows_backward_ref: the row length D must be a positive multiple of 32"),
              std::string::npos);
  }
  EXPECT_NE(error_of([&] {
              norm::rms_norm_rows_forward_ref(buf.data(), false, -1, 32, kEps, out.data(), rstd.data());
            }).find("rows must be >= 0"),
            std::string::npos);
  EXPECT_NO_THROW(norm::rms_norm_rows_forward_ref(buf.data(), false, 0, 32, kEps, out.data(), rstd.data()));
  EXPECT_NE(error_of([] {
              autograd::rms_norm_rows(at::scalar_tensor(1.0), 1e-6);
            }).find("rms_norm_rows: x must be at least 1-D"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              autograd::rms_norm_rows(at::ones({2, 32}, at::kInt), 1e-6);
            }).find("rms_norm_rows: x must be floating point"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              autograd::rms_norm_rows(at::ones({2, 32}), -1.0);
            }).find("rms_norm_rows: eps must be finite and >= 0"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              autograd::rms_norm_rows(at::ones({2, 32}), NAN);
            }).find("rms_norm_rows: eps must be finite and >= 0"),
            std::string::npos);
  // A weight: [D] on x's device; the reference refuses rows longer than 512 with one.
  EXPECT_NE(error_of([] {
              autograd::rms_norm_rows(at::ones({2, 32}), 1e-6, at::ones({16}));
            }).find("rms_norm_rows: w must be floating point [D = 32]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              norm::rms_norm_rows_forward_ref(buf.data(), false, 1, 1024, kEps, out.data(), rstd.data(), buf.data());
            }).find("at most 512 with a weight"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              norm::rms_norm_rows_backward_ref(buf.data(), buf.data(), rstd.data(), false, 1, 32, out.data(),
                                               buf.data(), nullptr);
            }).find("w and dw go together"),
            std::string::npos);
  // The tensor-level kernels take CUDA tensors only (without CUDA kernels: the stubs' error).
  EXPECT_THROW(cuda::rms_norm_rows_forward(at::ones({2, 32}), 1e-6), Error);
  EXPECT_THROW(cuda::rms_norm_rows_backward(at::ones({2, 32}), at::ones({2, 32}), at::ones({2})), Error);
}
