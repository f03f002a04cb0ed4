// tests/model/gpu_rms_norm.cpp — (label gpu) the short-row RMSNorm kernels (kernels/model/rms_norm.cu)
// against their CPU reference (kernels/model/rms_norm_ref.h): no transcendental besides IEEE sqrt and
// division, so every byte of y, rstd and dx equal; bf16 and float32, D from 32 to 1024 (the 16-byte
// vector path where D / 32 % 8 == 0, one element at a time otherwise and for misaligned views), odd
// row counts and more rows than the grid has warps; with the weight's product fused, dw too.
// autograd::rms_norm_rows on CUDA gives the
// kernels' bytes forward and backward (and stays within an ulp of ATen's fused RMSNorm); a row's
// bits do not depend on the batch around it; bad inputs name the argument.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
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
using test::misaligned_cuda;
using test::run_autograd;

constexpr float kEps = 1e-6f;

// [rows, D] normals, rows scaled by 1e-3, 1, 30 in turn, about one element in eight replaced by +-0;
// row 3 (when there) all zeros, row 4 at 1e30 (x * x overflows: rstd 0, y 0, no NaN).
at::Tensor rows_of(int64_t rows, int64_t D, at::ScalarType dt) {
  const at::Tensor scale = at::tensor({1e-3f, 1.0f, 30.0f}).index_select(0, at::arange(rows, at::kLong) % 3);
  at::Tensor v = at::randn({rows, D}) * scale.unsqueeze(1);
  const at::Tensor pick = at::randint(0, 16, {rows, D}, at::kLong);
  v.masked_fill_(pick == 0, 0.0f);
  v.masked_fill_(pick == 1, -0.0f);
  if (rows > 3) v[3].zero_();
  if (rows > 4) v[4].fill_(1e30f);
  return v.to(dt).contiguous();
}

}  // namespace

TEST(GpuRmsNorm, KernelsMatchTheirCpuReferenceBytes) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(41);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {32, 64, 96, 128, 256, 384, 768, 1024})
      for (const int64_t rows : {1, 7, 33, 1001})
        for (const bool aligned : {true, false}) {
          SCOPED_TRACE(::testing::Message() << dt << " D " << D << " rows " << rows << (aligned ? "" : " misaligned"));
          const at::Tensor x = rows_of(rows, D, dt), g = rows_of(rows, D, dt);
          const test::RmsRef r = test::rms_reference(x, g, kEps);
          const at::Tensor xd = aligned ? x.cuda() : misaligned_cuda(x), gd = aligned ? g.cuda() : misaligned_cuda(g);
          ASSERT_TRUE(xd.is_contiguous() && gd.is_contiguous());
          const auto [y, rstd] = cuda::rms_norm_rows_forward(xd, kEps);
          EXPECT_TRUE(test::bytes_equal(y, r.y));
          EXPECT_TRUE(test::bytes_equal(rstd, r.rstd));
          EXPECT_TRUE(test::bytes_equal(cuda::rms_norm_rows_backward(xd, gd, rstd), r.dx));
        }
  // More rows than the grid's warps (each warp takes several rows), the q / k norm's head dims.
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {64, 128}) {
      SCOPED_TRACE(::testing::Message() << dt << " D " << D << " rows 40000");
      const at::Tensor x = rows_of(40000, D, dt), g = rows_of(40000, D, dt);
      const test::RmsRef r = test::rms_reference(x, g, kEps);
      const auto [y, rstd] = cuda::rms_norm_rows_forward(x.cuda(), kEps);
      EXPECT_TRUE(test::bytes_equal(y, r.y));
      EXPECT_TRUE(test::bytes_equal(rstd, r.rstd));
      EXPECT_TRUE(test::bytes_equal(cuda::rms_norm_rows_backward(x.cuda(), g.cuda(), rstd), r.dx));
    }
  // No rows: nothing launched.
  const auto [y0, r0] =
      cuda::rms_norm_rows_forward(at::empty({0, 64}, at::device(at::kCUDA).dtype(at::kBFloat16)), kEps);
  EXPECT_EQ(y0.numel(), 0);
  EXPECT_EQ(r0.numel(), 0);
}

// autograd::rms_norm_rows on CUDA: the kernels' bytes (forward y; backward dx from the kernels'
// rstd), for the model's q / k layout [B, T, heads, hd] and for a non-contiguous view; within one
// bf16 ulp (bf16) / 1e-5 relative (float32) of ATen's fused RMSNorm; other shapes and dtypes take
// ATen's fused RMSNorm itself, with its autograd.
TEST(GpuRmsNorm, AutogradUsesTheKernels) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(43);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t hd : {64, 128}) {
      SCOPED_TRACE(::testing::Message() << dt << " hd " << hd);
      const at::Tensor x = at::randn({2, 5, 3, hd}).to(dt).cuda(), g = at::randn({2, 5, 3, hd}).to(dt).cuda();
      const FwdBwd got = run_autograd(x, g, [](const at::Tensor& v) { return autograd::rms_norm_rows(v, 1e-6); });
      const auto [y, rstd] = cuda::rms_norm_rows_forward(x, 1e-6);
      EXPECT_TRUE(test::bytes_equal(got.y, y));
      EXPECT_TRUE(test::bytes_equal(got.dx, cuda::rms_norm_rows_backward(x, g, rstd)));
      const at::Tensor aten = std::get<0>(at::_fused_rms_norm(x, {hd}, std::nullopt, 1e-6));
      const at::Tensor a = got.y.to(at::kDouble), b = aten.to(at::kDouble);
      const double tol = dt == at::kBFloat16 ? 0x1p-7 : 1e-5;
      EXPECT_TRUE(((a - b).abs() <= at::maximum(a.abs(), b.abs()) * tol + 1e-30).all().item<bool>())
          << (a - b).abs().max();
      // A transposed view ([B, heads, T, hd] -> [B, T, heads, hd]): the contiguous copy's bytes.
      const at::Tensor q = x.view({2, 3, 5, hd}).transpose(1, 2), gq = g.view({2, 5, 3, hd});
      const FwdBwd view = run_autograd(q, gq, [](const at::Tensor& v) { return autograd::rms_norm_rows(v, 1e-6); });
      const auto [yq, rq] = cuda::rms_norm_rows_forward(q.contiguous(), 1e-6);
      EXPECT_TRUE(test::bytes_equal(view.y, yq));
      EXPECT_TRUE(test::bytes_equal(view.dx, cuda::rms_norm_rows_backward(q.contiguous(), gq.contiguous(), rq)));
    }
  // Not the kernels' rows (D = 48, D = 2048) or dtype (f16): ATen's fused RMSNorm, same bytes.
  for (const auto& c :
       std::vector<std::pair<int64_t, at::ScalarType>>{{48, at::kBFloat16}, {2048, at::kFloat}, {128, at::kHalf}}) {
    const int64_t D = c.first;
    const at::ScalarType dt = c.second;
    SCOPED_TRACE(::testing::Message() << dt << " D " << D);
    const at::Tensor x = at::randn({6, D}).to(dt).cuda(), g = at::randn({6, D}).to(dt).cuda();
    const FwdBwd got = run_autograd(x, g, [](const at::Tensor& v) { return autograd::rms_norm_rows(v, 1e-6); });
    const FwdBwd want = run_autograd(
        x, g, [&](const at::Tensor& v) { return std::get<0>(at::_fused_rms_norm(v, {D}, std::nullopt, 1e-6)); });
    EXPECT_TRUE(test::bytes_equal(got.y, want.y));
    EXPECT_TRUE(test::bytes_equal(got.dx, want.dx));
  }
}

// With a weight (the product fused, D <= 512): every byte of y, rstd, dx and dw equals the CPU
// reference's, rows around dw's 64-row chunks and more chunks than the grid has warps; the weighted
// autograd function gives those bytes (a float32 weight as the model's: its gradient is dw widened)
// and the same bits on a second run; a row longer than 512 with a weight is the composite.
TEST(GpuRmsNorm, WeightedKernelsMatchTheirCpuReferenceBytes) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(53);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {32, 64, 96, 128, 256, 512})
      for (const int64_t rows : {1, 63, 64, 65, 1001, 70000})
        for (const bool aligned : {true, false}) {
          if (rows == 70000 && (!aligned || (D != 64 && D != 512))) continue;
          SCOPED_TRACE(::testing::Message() << dt << " D " << D << " rows " << rows << (aligned ? "" : " misaligned"));
          const at::Tensor x = rows_of(rows, D, dt), g = rows_of(rows, D, dt);
          const at::Tensor w = (at::rand({D}) * 2.0 + 0.25).to(dt);
          const test::RmsRef r = test::rms_reference(x, g, kEps, w);
          const at::Tensor xd = aligned ? x.cuda() : misaligned_cuda(x), gd = aligned ? g.cuda() : misaligned_cuda(g);
          const at::Tensor wd = w.cuda();
          const auto [y, rstd] = cuda::rms_norm_rows_forward(xd, kEps, wd);
          EXPECT_TRUE(test::bytes_equal(y, r.y));
          EXPECT_TRUE(test::bytes_equal(rstd, r.rstd));
          const auto [dx, dw] = cuda::rms_norm_rows_backward_weighted(xd, gd, rstd, wd);
          EXPECT_TRUE(test::bytes_equal(dx, r.dx));
          EXPECT_TRUE(test::bytes_equal(dw, r.dw));
        }
}

TEST(GpuRmsNorm, WeightedAutogradUsesTheKernels) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(59);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {64, 512}) {
      SCOPED_TRACE(::testing::Message() << dt << " D " << D);
      const at::Tensor x0 = at::randn({4, 7, 3, D}).to(dt), g = at::randn({4, 7, 3, D}).to(dt);
      const at::Tensor w0 = at::rand({D}) + 0.5;  // float32, as the model's parameters
      const test::RmsRef r = test::rms_reference(x0, g, 1e-6f, w0.to(dt));
      auto run = [&] {
        const at::Tensor x = x0.cuda().requires_grad_(true), w = w0.cuda().requires_grad_(true);
        const at::Tensor y = autograd::rms_norm_rows(x, 1e-6, w);
        y.backward(g.cuda());
        return std::vector<at::Tensor>{y.detach().cpu(), x.grad().cpu(), w.grad().cpu()};
      };
      const auto a = run(), b = run();
      EXPECT_TRUE(test::bytes_equal(a[0], r.y));
      EXPECT_TRUE(test::bytes_equal(a[1], r.dx));
      EXPECT_TRUE(test::bytes_equal(a[2], r.dw.to(at::kFloat)));
      for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(test::bytes_equal(a[i], b[i])) << "run-to-run, output " << i;
    }
  // D = 1024 with a weight: w.to(dtype) * the unweighted kernels' norm.
  const at::Tensor x = at::randn({6, 1024}).to(at::kBFloat16).cuda(), w = at::rand({1024}).cuda() + 0.5;
  EXPECT_TRUE(
      test::bytes_equal(autograd::rms_norm_rows(x, 1e-6, w), w.to(at::kBFloat16) * autograd::rms_norm_rows(x, 1e-6)));
  EXPECT_NE(test::error_of([&] {
              cuda::rms_norm_rows_forward(x, kEps, w.to(at::kBFloat16));
            }).find("at most 512"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              cuda::rms_norm_rows_forward(x.narrow(1, 0, 64).contiguous(), kEps, w.narrow(0, 0, 64));
            }).find("rms_norm_rows_forward: w must be contiguous [D = 64] BFloat16"),
            std::string::npos);
}

// A row's bits (y, rstd, dx) are the same in a batch of 7 (row 5: another warp of the block) and of
// 40000 (row 30001: another block, a warp's later row) as alone.
TEST(GpuRmsNorm, BatchInvariant) {
  FP4QAT_REQUIRE_GPU();
  at::manual_seed(47);
  for (const auto dt : {at::kBFloat16, at::kFloat})
    for (const int64_t D : {64, 128, 1024})
      for (const auto& [rows, row] : std::vector<std::pair<int64_t, int64_t>>{{7, 5}, {40000, 30001}}) {
        SCOPED_TRACE(::testing::Message() << dt << " D " << D << " row " << row << " of " << rows);
        const auto on_gpu = at::device(at::kCUDA);
        const at::Tensor x = at::randn({rows, D}, on_gpu).to(dt), g = at::randn({rows, D}, on_gpu).to(dt);
        const auto [y, rstd] = cuda::rms_norm_rows_forward(x, kEps);
        const at::Tensor dx = cuda::rms_norm_rows_backward(x, g, rstd);
        const at::Tensor x1 = x.narrow(0, row, 1).clone(), g1 = g.narrow(0, row, 1).clone();
        const auto [y1, rstd1] = cuda::rms_norm_rows_forward(x1, kEps);
        EXPECT_TRUE(test::bytes_equal(y.narrow(0, row, 1), y1));
        EXPECT_TRUE(test::bytes_equal(rstd.narrow(0, row, 1), rstd1));
        EXPECT_TRUE(test::bytes_equal(dx.narrow(0, row, 1), cuda::rms_norm_rows_backward(x1, g1, rstd1)));
      }
}

TEST(GpuRmsNorm, BadInputsNameTheArgument) {
  FP4QAT_REQUIRE_GPU();
  using test::error_of;
  const auto opt = at::device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({4, 64}, opt), g = at::randn({4, 64}, opt);
  const at::Tensor rstd = cuda::rms_norm_rows_forward(x, kEps).second;
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_forward(at::zeros({4, 48}, opt), kEps);
            }).find("rms_norm_rows_forward: x must be [..., D] with D a positive multiple of 32"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_forward(at::zeros({4, 2048}, opt), kEps);
            }).find("rms_norm_rows_forward: x must be [..., D]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_forward(at::zeros({64, 4}, opt).t(), kEps);
            }).find("rms_norm_rows_forward: x must be a contiguous bf16 or float32 CUDA tensor"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_forward(at::zeros({4, 64}, opt.dtype(at::kHalf)), kEps);
            }).find("rms_norm_rows_forward: x must be a contiguous bf16 or float32 CUDA tensor"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cuda::rms_norm_rows_forward(x, -1.0); }).find("rms_norm_rows_forward: eps must be"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_backward(x, g.to(at::kFloat), rstd);
            }).find("rms_norm_rows_backward: g must have x's dtype"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_backward(x, g.view({2, 128}), rstd);
            }).find("rms_norm_rows_backward: g must have x's shape"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cuda::rms_norm_rows_backward(x, g, rstd.narrow(0, 0, 3));
            }).find("rms_norm_rows_backward: rstd must be contiguous float32 with 4 elements"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { cuda::rms_norm_rows_backward(x, g, rstd.cpu()); }).find("rms_norm_rows_backward: rstd must be"),
      std::string::npos);
}
