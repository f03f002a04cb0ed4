// tests/kernels/test_cross_entropy_ref.cpp — the fused cross-entropy's CPU reference
// (kernels/loss/cross_entropy_ref.h), the GPU kernels' arithmetic, against the definitions in
// double: log-sum-exp and target log-probability to float32 rounding, the gradient
// g * (onehot - softmax) to one rounding of its dtype; rows shorter than a piece, ragged pieces,
// lanes with nothing, a dominant logit, -inf logits, a NaN logit and a target outside [0, V).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/loss/cross_entropy_ref.h"

using namespace fp4qat::loss;

namespace {

double lse_double(const std::vector<float>& x, int64_t r, int64_t V) {
  double m = -INFINITY;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, static_cast<double>(x[r * V + j]));
  double s = 0;
  for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(x[r * V + j]) - m);
  return m + std::log(s);
}

// Runs the reference on float32 logits (and on their bf16 roundings) and checks every row.
void check(int64_t N, int64_t V, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(N * V);
  for (auto& v : x) v = nd(rng);
  std::vector<uint16_t> xb(N * V);
  std::vector<float> xr(N * V);  // the bf16 values as floats
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]), xr[i] = bf16_to_float(xb[i]);
  std::vector<int64_t> t(N);
  for (auto& v : t) v = static_cast<int64_t>(rng() % V);
  std::vector<float> g(N);
  for (auto& v : g) v = nd(rng);
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "N " << N << " V " << V << (bf16 ? " bf16" : " f32"));
    const std::vector<float>& xv = bf16 ? xr : x;
    std::vector<float> lse(N), lp(N);
    ce_forward_ref(bf16 ? static_cast<const void*>(xb.data()) : x.data(), bf16, N, V, t.data(), lse.data(), lp.data());
    std::vector<float> gf(N * V);
    std::vector<uint16_t> gb(N * V);
    ce_backward_ref(bf16 ? static_cast<const void*>(xb.data()) : x.data(), bf16, N, V, t.data(), lse.data(), g.data(),
                    bf16 ? static_cast<void*>(gb.data()) : gf.data());
    for (int64_t r = 0; r < N; ++r) {
      const double L = lse_double(xv, r, V);
      ASSERT_NEAR(lse[r], L, 4e-6 * std::max(1.0, std::fabs(L))) << "row " << r;
      ASSERT_NEAR(lp[r], xv[r * V + t[r]] - L, 8e-6 * std::max(1.0, std::fabs(L))) << "row " << r;
      for (int64_t j = 0; j < V; ++j) {
        const double p = std::exp(static_cast<double>(xv[r * V + j]) - L);
        const double want = g[r] * ((j == t[r] ? 1.0 : 0.0) - p);
        const double got = bf16 ? bf16_to_float(gb[r * V + j]) : gf[r * V + j];
        // float32 rounding of x - lse (relative error |x - lse| * 2^-23 in exp), then of the result
        const double d = std::fabs(static_cast<double>(xv[r * V + j]) - L);
        const double tol = ((bf16 ? 8e-3 : 0.0) + 4e-6 + 2.4e-7 * d) * std::fabs(want) + 1e-30;
        ASSERT_NEAR(got, want, tol) << "row " << r << " col " << j;
      }
    }
  }
}

}  // namespace

TEST(CrossEntropyRef, MatchesTheDefinitionsInDouble) {
  check(3, 1, 1, 1.0f);        // one logit: lse = x, log p = 0, gradient 0
  check(4, 5, 2, 3.0f);        // a row shorter than a piece: lanes 1..255 empty
  check(5, 37, 3, 3.0f);       // a ragged last piece
  check(2, 8 * 256 + 3, 4, 8.0f);  // every lane, then a ragged second round
  check(2, 20000, 5, 20.0f);   // wide, spread-out logits: rescaling of the running sums
}

TEST(CrossEntropyRef, NonFiniteLogitsAndBadTargets) {
  const int64_t V = 12;
  std::vector<float> x(3 * V, 0.5f);
  x[0] = 30.0f;                 // row 0: one dominant logit
  x[V + 3] = -INFINITY;         // row 1: a -inf logit adds nothing
  x[2 * V + 7] = NAN;           // row 2: NaN spreads
  const std::vector<int64_t> t = {0, 3, 1};
  std::vector<float> lse(3), lp(3);
  ce_forward_ref(x.data(), false, 3, V, t.data(), lse.data(), lp.data());
  EXPECT_NEAR(lp[0], 0.0f, 1e-6f);
  EXPECT_NEAR(lse[1], 0.5 + std::log(11.0), 1e-6);
  EXPECT_EQ(lp[1], -INFINITY);
  EXPECT_TRUE(std::isnan(lse[2]));
  std::vector<int64_t> bad = {V, -1, 2};
  ce_forward_ref(x.data(), false, 3, V, bad.data(), lse.data(), lp.data());
  EXPECT_TRUE(std::isnan(lp[0]));
  EXPECT_TRUE(std::isnan(lp[1]));
  std::vector<float> g = {1.0f, 1.0f, 1.0f}, grad(3 * V);
  ce_backward_ref(x.data(), false, 3, V, t.data(), lse.data(), g.data(), grad.data());
  for (int64_t j = 0; j < V; ++j) EXPECT_FALSE(std::isnan(grad[j]));  // a bad target: no onehot term, no NaN
  EXPECT_EQ(grad[V + 3], 1.0f);                                      // the -inf target: 1 - 0
  EXPECT_NEAR(grad[V + 5], -1.0 / 11.0, 1e-7);                       // the others share the rest
}

TEST(CrossEntropyRef, Bf16RoundingIsNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(bf16_to_float(0x3F80) + std::ldexp(1.0f, -8)), 0x3F80);   // a tie: to even
  EXPECT_EQ(float_to_bf16(bf16_to_float(0x3F81) + std::ldexp(1.0f, -8)), 0x3F82);   // a tie: to even, up
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(float_to_bf16(NAN) & 0x7FFF, 0x7FFF);
}
