// tests/autograd/gpu_step_functions.cpp — (label gpu) the CUDA paths of autograd/logprobs.h,
// compute_cast.h and permute_rows.h: the bf16 -> float32 widening kernel against the CPU's cast for
// every bf16 bit pattern; compute_cast's gradient on CUDA; target_logprobs (the fused rows) on CUDA
// against the CPU composite;
// permute_rows' gradient against the CPU's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "autograd/compute_cast.h"
#include "autograd/logprobs.h"
#include "autograd/permute_rows.h"
#include "kernels/cuda_api.h"
#include "tests/common/test_util.h"

using namespace fp4qat;

namespace {
bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.cpu().contiguous().view(at::kByte), b.cpu().contiguous().view(at::kByte));
}
}  // namespace

// Every one of the 65,536 bf16 patterns (zeros, subnormals, infinities, NaNs), at an aligned start
// (the 8-a-thread kernel) and at odd offsets and lengths (the scalar tail and the unaligned path).
TEST(GpuComputeCast, WideningEqualsTheCpuCastForEveryPattern) {
  FP4QAT_REQUIRE_GPU();
  const at::Tensor bits = at::arange(65536, at::kInt).to(at::kShort).view(at::kBFloat16);  // [65536]
  const at::Tensor ref = bits.to(at::kFloat);
  const at::Tensor d = bits.cuda();
  EXPECT_TRUE(same_bytes(cuda::widen_bf16(d), ref));
  for (const int64_t start : {1, 3, 8}) {
    for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{9}, int64_t{65536} - 8 - 3}) {
      SCOPED_TRACE(::testing::Message() << "start " << start << " n " << n);
      EXPECT_TRUE(same_bytes(cuda::widen_bf16(d.narrow(0, start, n)), ref.narrow(0, start, n)));
    }
  }
  EXPECT_THROW(cuda::widen_bf16(d.to(at::kFloat)), std::exception);
}

// compute_cast on CUDA: the forward is Tensor::to; a transposed bf16 gradient (as a GEMM's weight
// gradient may come) arrives as the contiguous float32 gradient of the master, with the CPU's values.
TEST(GpuComputeCast, GradientOfAMasterIsItsContiguousWidenedGradient) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(5);
  const at::Tensor m0 = at::randn({3, 40, 24});
  at::Tensor m = m0.cuda().requires_grad_(true);
  const at::Tensor y = autograd::compute_cast(m, at::kBFloat16);
  EXPECT_TRUE(same_bytes(y.detach(), m0.to(at::kBFloat16)));
  const at::Tensor g = at::randn({3, 24, 40}).to(at::kBFloat16);  // [E, in, out]: the transposed layout
  y.backward(g.cuda().transpose(1, 2));
  ASSERT_TRUE(m.grad().defined());
  EXPECT_TRUE(m.grad().is_contiguous());
  EXPECT_TRUE(same_bytes(m.grad(), g.transpose(1, 2).to(at::kFloat)));
}

// target_logprobs on CUDA with bf16 logits (the fused rows) against the CPU composite on the same
// values. Float32 accumulation order and the device's exp differ, so within 1e-4 (values) and one
// bf16 rounding (gradients); a small vocabulary and a wide one.
TEST(GpuTargetLogprobs, FusedOnCudaMatchesTheCpuComposite) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(11);
  for (const int64_t V : {int64_t{300}, int64_t{50000}}) {
    SCOPED_TRACE(::testing::Message() << "V " << V);
    const at::Tensor logits = (at::randn({3, 17, V}) * 3).to(at::kBFloat16);
    const at::Tensor targets = at::randint(0, V, {3, 17}, at::kLong);
    const at::Tensor w = at::randn({3, 17});
    at::Tensor lc = logits.clone().requires_grad_(true);
    const at::Tensor rc = at::log_softmax(lc.to(at::kFloat), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
    (rc * w).sum().backward();
    at::Tensor l = logits.cuda().requires_grad_(true);
    const at::Tensor r = autograd::target_logprobs(l, targets.cuda());
    (r * w.cuda()).sum().backward();
    const at::Tensor rd = r.detach().cpu(), gd = l.grad().cpu(), gr = lc.grad().to(at::kFloat);
    EXPECT_TRUE(at::allclose(rd, rc.detach(), 1e-5, 1e-4)) << (rd - rc.detach()).abs().max();
    EXPECT_EQ(gd.scalar_type(), at::kBFloat16);
    const at::Tensor gf = gd.to(at::kFloat);
    EXPECT_TRUE(at::allclose(gf, gr, 1e-2, 1e-6)) << (gf - gr).abs().max();
  }
}

// The MoE dispatch's row permutation on CUDA: forward and gradient bytes as on the CPU (rows moved,
// never summed), at the slice's row width.
TEST(GpuPermuteRows, MatchesTheCpuBitForBit) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(13);
  const at::Tensor perm = at::randperm(4099, at::kLong), inv = autograd::inverse_permutation(perm);
  const at::Tensor x0 = at::randn({4099, 2048}).to(at::kBFloat16), g = at::randn({4099, 2048}).to(at::kBFloat16);
  at::Tensor c = x0.clone().requires_grad_(true), d = x0.cuda().requires_grad_(true);
  const at::Tensor yc = autograd::permute_rows(c, perm, inv), yd = autograd::permute_rows(d, perm.cuda(), inv.cuda());
  EXPECT_TRUE(same_bytes(yd.detach(), yc.detach()));
  yc.backward(g);
  yd.backward(g.cuda());
  EXPECT_TRUE(same_bytes(d.grad(), c.grad()));
}
