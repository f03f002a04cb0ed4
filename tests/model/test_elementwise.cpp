// tests/model/test_elementwise.cpp — the fused SwiGLU and RoPE on the CPU: their reference
// (kernels/model/elementwise_ref.h, the CUDA kernels' arithmetic) against ATen's composite autograd,
// byte for byte, forward and backward, bf16 and float32, with odd shapes and values where expf
// over- and underflows (+-90), zeros, -0 and products that underflow. RoPE has no transcendental:
// every byte equal. SwiGLU's silu takes expf, and glibc's can differ from the CPU ATen's vectorized
// exp by an ulp: bf16 at least 99.9% of the bytes equal, the rest one ulp apart (float32: see
// expect_expf_close). autograd::swiglu /
// rope on the CPU are the composite (the model's bits unchanged); bad inputs name the argument.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/permute_rows.h"
#include "kernels/common/formats.h"
#include "kernels/model/elementwise_ref.h"
#include "tests/common/test_util.h"
#include "tests/model/kernel_test_util.h"

using namespace fp4qat;

namespace {

using test::accumulate;
using test::agreement;
using test::Agreement;
using test::expect_identical;
using test::FwdBwd;
using test::rotate_half;
using test::run_autograd;
using test::values;

// Where expf decides (silu): at most one bf16 ulp apart anywhere. bf16: at least 99.9% of the bytes
// identical (the rounding to bf16 hides nearly every ulp of expf). float32: every float ulp shows,
// and the CPU's ATen takes a vectorized exp (Sleef's, within an ulp, about 4% of results differing
// from glibc's expf) and contracts silu_backward's 1 + x * (1 - sig) into an FMA: at least 85%
// identical (97% forward, 91% backward seen on an AVX-512 CPU); the reference's float32 arithmetic is
// pinned by the bf16 comparison, which rounds at the same places.
void expect_expf_close(const Agreement& a, bool bf16, const char* what) {
  test::expect_expf_close(a, bf16, 0.85, what);
}

at::Tensor swiglu_composite(const at::Tensor& h) {
  const int64_t I = h.size(1) / 2;
  return at::silu(h.narrow(1, 0, I)) * h.narrow(1, I, I);
}
at::Tensor rope_composite(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos.unsqueeze(-2) + rotate_half(x) * sin.unsqueeze(-2);
}

const std::vector<std::pair<int64_t, int64_t>> kSwigluShapes = {{1, 1}, {3, 5}, {7, 8}, {33, 24}, {5, 13}, {257, 136}};

struct RopeCase {
  int64_t B, T, H, D;
  bool per_batch;
};
const std::vector<RopeCase> kRopeCases = {{1, 1, 1, 2, false}, {2, 3, 2, 6, true},   {2, 5, 3, 16, false},
                                          {1, 7, 4, 24, true}, {3, 9, 2, 64, false}, {2, 11, 4, 128, true}};

}  // namespace

TEST(SwiGluRef, MatchesAtenCompositeAutogradOnCpu) {
  at::manual_seed(3);
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    SCOPED_TRACE(::testing::Message() << dt);
    const bool bf16 = dt == at::kBFloat16;
    Agreement fwd, bwd;
    for (const auto& [T, I] : kSwigluShapes) {
      SCOPED_TRACE(::testing::Message() << "T " << T << " I " << I);
      const at::Tensor h = values({T, 2 * I}, dt, 4.0), g = values({T, I}, dt, 1.0);
      const FwdBwd want = run_autograd(h, g, swiglu_composite);
      at::Tensor out = at::empty({T, I}, dt), dh = at::empty({T, 2 * I}, dt);
      elementwise::swiglu_forward_ref(h.data_ptr(), bf16, T, I, out.data_ptr());
      elementwise::swiglu_backward_ref(h.data_ptr(), g.data_ptr(), bf16, T, I, dh.data_ptr());
      accumulate(fwd, out, want.y);
      accumulate(bwd, dh, want.dx);
    }
    expect_expf_close(fwd, bf16, "forward");
    expect_expf_close(bwd, bf16, "backward");
  }
}

TEST(RopeRef, MatchesAtenCompositeAutogradOnCpu) {
  at::manual_seed(5);
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    const bool bf16 = dt == at::kBFloat16;
    for (const RopeCase& c : kRopeCases) {
      SCOPED_TRACE(::testing::Message() << dt << " x [" << c.B << ", " << c.T << ", " << c.H << ", " << c.D << "] "
                                        << (c.per_batch ? "cos [B, T, D]" : "cos [T, D]"));
      const std::vector<int64_t> table =
          c.per_batch ? std::vector<int64_t>{c.B, c.T, c.D} : std::vector<int64_t>{c.T, c.D};
      const at::Tensor x = values({c.B, c.T, c.H, c.D}, dt, 3.0), g = values({c.B, c.T, c.H, c.D}, dt, 1.0);
      const at::Tensor cos = values(table, dt, 1.0), sin = values(table, dt, 1.0);
      const FwdBwd want = run_autograd(x, g, [&](const at::Tensor& v) { return rope_composite(v, cos, sin); });
      at::Tensor out = at::empty_like(x), dx = at::empty_like(x);
      const elementwise::RopeShape s{c.B, c.T, c.H, c.D, c.per_batch};
      elementwise::rope_forward_ref(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), bf16, s, out.data_ptr());
      elementwise::rope_backward_ref(g.data_ptr(), cos.data_ptr(), sin.data_ptr(), bf16, s, dx.data_ptr());
      expect_identical(agreement(out, want.y), "forward");
      expect_identical(agreement(dx, want.dx), "backward");
    }
  }
}

// The reference's zero signs: the gradient of a -0 product is +0 (ATen accumulates the slice
// gradients into zeros), a forward -0 stays -0.
TEST(Elementwise, ReferenceSignedZeros) {
  const float gate = -90.0f, up = 1.0f;  // silu(-90) = -90 / inf = -0; act = -0 * 1 = -0
  EXPECT_TRUE(std::signbit(elementwise::swiglu_out<true>(gate, up)));
  const elementwise::SwigluGrad d = elementwise::swiglu_grad<true>(1.0f, 1.0f, -0.0f);  // g = -0
  EXPECT_EQ(d.du, 0.0f);
  EXPECT_FALSE(std::signbit(d.du));
  EXPECT_FALSE(std::signbit(d.dgate));
  // A float product of about -5e-43 (silu(1e-30) * -1e-12) rounds to a bf16 -0: + 0 after rounding.
  EXPECT_FALSE(std::signbit(elementwise::swiglu_grad<true>(1e-30f, 1.0f, -1e-12f).du));
  EXPECT_FALSE(std::signbit(elementwise::rope_grad<true>(-0.0f, 1.0f, -0.0f, 1.0f)));
  EXPECT_TRUE(std::signbit(elementwise::rope_out<true>(-0.0f, 1.0f, -0.0f, 1.0f)));
}

TEST(Elementwise, AutogradOnCpuIsTheComposite) {
  at::manual_seed(7);
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    SCOPED_TRACE(::testing::Message() << dt);
    for (const auto& [T, I] : kSwigluShapes) {
      const at::Tensor h = values({T, 2 * I}, dt, 4.0), g = values({T, I}, dt, 1.0);
      const FwdBwd want = run_autograd(h, g, swiglu_composite);
      const FwdBwd got = run_autograd(h, g, [](const at::Tensor& v) { return autograd::swiglu(v); });
      expect_identical(agreement(got.y, want.y), "swiglu forward");
      expect_identical(agreement(got.dx, want.dx), "swiglu backward");
    }
    for (const RopeCase& c : kRopeCases) {
      const std::vector<int64_t> table =
          c.per_batch ? std::vector<int64_t>{c.B, c.T, c.D} : std::vector<int64_t>{c.T, c.D};
      const at::Tensor x = values({c.B, c.T, c.H, c.D}, dt, 3.0), g = values({c.B, c.T, c.H, c.D}, dt, 1.0);
      const at::Tensor cos = values(table, dt, 1.0), sin = values(table, dt, 1.0);
      const FwdBwd want = run_autograd(x, g, [&](const at::Tensor& v) { return rope_composite(v, cos, sin); });
      const FwdBwd got = run_autograd(x, g, [&](const at::Tensor& v) { return autograd::rope(v, cos, sin); });
      EXPECT_TRUE(got.y.is_contiguous());
      expect_identical(agreement(got.y, want.y), "rope forward");
      expect_identical(agreement(got.dx, want.dx), "rope backward");
    }
  }
  // The model's layout: q [B, H, T, D] transposed to [B, T, H, D] (not contiguous).
  const at::Tensor q = values({2, 3, 5, 8}, at::kBFloat16, 2.0), cos = values({5, 8}, at::kBFloat16, 1.0),
                   sin = values({5, 8}, at::kBFloat16, 1.0);
  const at::Tensor got = autograd::rope(q.transpose(1, 2), cos, sin);
  expect_identical(agreement(got, rope_composite(q.transpose(1, 2), cos, sin).contiguous()), "rope of a view");
  EXPECT_TRUE(got.is_contiguous());
}

TEST(Elementwise, BadInputsNameTheArgument) {
  using test::error_of;
  const at::Tensor x = at::zeros({2, 3, 4, 8}), cos = at::zeros({3, 8}), sin = at::zeros({3, 8});
  EXPECT_NE(error_of([&] { autograd::swiglu(at::zeros({6})); }).find("swiglu: h must be [T, 2I]"), std::string::npos);
  EXPECT_NE(error_of([&] { autograd::swiglu(at::zeros({2, 5})); }).find("swiglu: h must be [T, 2I]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(at::zeros({3, 4, 8}), cos, sin); }).find("rope: x must be [B, T, H, D]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(at::zeros({2, 3, 4, 7}), at::zeros({3, 7}), at::zeros({3, 7})); })
                .find("rope: x's head dim D must be even"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(x, at::zeros({4, 8}), sin); }).find("rope: cos must be [T, D]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(x, cos, at::zeros({3, 3, 8})); }).find("rope: sin must be [T, D]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(x, cos, at::zeros({2, 3, 8})); }).find("rope: cos and sin must have one shape"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(x, cos.to(at::kBFloat16), sin); }).find("rope: cos must have x's dtype"),
            std::string::npos);
  EXPECT_NE(error_of([&] { autograd::rope(x, cos, at::zeros({3, 8}).requires_grad_(true)); })
                .find("rope: sin must not require grad"),
            std::string::npos);
  EXPECT_NO_THROW(autograd::rope(x, at::zeros({2, 3, 8}), at::zeros({2, 3, 8})));
}

namespace {

// A routing of N tokens to k slots each: a random permutation of the N k rows (slot -> row), its
// inverse, y [N k, H] and w [N, k] in dt.
struct Combine {
  at::Tensor y, w, slot_row, order;
};
Combine combine_case(int64_t N, int64_t k, int64_t H, at::ScalarType dt) {
  Combine c;
  c.order = at::randperm(N * k, at::kLong);  // sorted row -> slot
  c.slot_row = autograd::inverse_permutation(c.order);
  c.y = values({N * k, H}, dt, 1.0);
  c.w = at::softmax(at::randn({N, k}), 1).to(dt).contiguous();
  return c;
}

}  // namespace

// The MoE combine's reference (kernels/model/elementwise_ref.h) against the composite it replaces:
// the output and dy byte for byte (each product rounds once; for k <= 2 the slot sum has one order);
// dw within the rounding of a sum in another order (the reference's warp tree against ATen's
// reduction over H). A hand check of the tree on one slot; autograd::combine_slots on the CPU is the
// composite itself; bad shapes are refused.
TEST(Elementwise, MoeCombineReferenceMatchesTheComposite) {
  at::manual_seed(31);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const auto& [N, k, H] : std::vector<std::array<int64_t, 3>>{{1, 1, 8}, {5, 2, 16}, {7, 3, 264}, {9, 8, 512}}) {
      SCOPED_TRACE(::testing::Message() << dt << " N " << N << " k " << k << " H " << H);
      const bool bf16 = dt == at::kBFloat16;
      const Combine c = combine_case(N, k, H, dt);
      const at::Tensor g = values({N, H}, dt, 1.0);
      at::Tensor y = c.y.clone().requires_grad_(true), w = c.w.clone().requires_grad_(true);
      const at::Tensor want = autograd::combine_slots(y, w, c.slot_row, c.order);  // the composite on the CPU
      want.backward(g);
      at::Tensor out = at::empty({N, H}, dt), dy = at::empty({N * k, H}, dt), dw = at::empty({N, k}, dt);
      elementwise::moe_combine_forward_ref(c.y.data_ptr(), c.w.data_ptr(), c.slot_row.data_ptr<int64_t>(), bf16, N, k, H,
                                           out.data_ptr());
      elementwise::moe_combine_backward_ref(c.y.data_ptr(), c.w.data_ptr(), c.slot_row.data_ptr<int64_t>(),
                                            g.data_ptr(), bf16, N, k, H, dy.data_ptr(), dw.data_ptr());
      if (k <= 2) {
        expect_identical(agreement(out, want.detach()), "out");
      } else {
        const Agreement a = agreement(out, want.detach());
        EXPECT_LE(a.worst_bf16_ulps, bf16 ? 1.0 : 0.01) << "out";
      }
      expect_identical(agreement(dy, y.grad()), "dy");
      // dw: the products as both round them (a tensor of the dtype), summed exactly; the two sums
      // differ from it by float32 summation error and one final rounding.
      const at::Tensor terms = (c.y.index_select(0, c.slot_row).view({N, k, H}) * g.unsqueeze(1)).to(at::kDouble);
      const at::Tensor exact = terms.sum(2), bound = exact.abs() * (bf16 ? 0x1p-8 : 0x1p-23) + terms.abs().sum(2) * 1e-6;
      EXPECT_TRUE(((dw.to(at::kDouble) - exact).abs() <= bound).all().item<bool>())
          << (dw.to(at::kDouble) - exact).abs().max();
      EXPECT_TRUE(((w.grad().to(at::kDouble) - exact).abs() <= bound).all().item<bool>());
    }
  // One slot by hand (float32, H = 512: 64 pieces, so lanes 0..31 take two pieces each): the lane
  // sums in piece order, the butterfly.
  const Combine c = combine_case(1, 1, 512, at::kFloat);
  const at::Tensor g = at::randn({1, 512});
  at::Tensor dy = at::empty({1, 512}), dw = at::empty({1, 1});
  elementwise::moe_combine_backward_ref(c.y.data_ptr(), c.w.data_ptr(), c.slot_row.data_ptr<int64_t>(), g.data_ptr(),
                                        false, 1, 1, 512, dy.data_ptr(), dw.data_ptr());
  const float* yp = c.y.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float lane[32];
  for (int l = 0; l < 32; ++l) {
    float a = 0.0f;
    for (int p : {l, l + 32})
      for (int e = 0; e < 8; ++e) a = a + gp[p * 8 + e] * yp[p * 8 + e];
    lane[l] = a;
  }
  for (int o = 16; o > 0; o /= 2) {
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ o];
    std::copy(next, next + 32, lane);
  }
  EXPECT_EQ(fmt::f2u(dw.item<float>()), fmt::f2u(lane[0]));
  EXPECT_THROW(autograd::combine_slots(at::zeros({6, 8}), at::zeros({2, 2}), at::arange(6, at::kLong),
                                       at::arange(6, at::kLong)),
               std::exception);
}
