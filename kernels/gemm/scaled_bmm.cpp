// kernels/gemm/scaled_bmm.cpp — see scaled_bmm.h.
#include "kernels/gemm/scaled_bmm.h"

#include <atomic>

#include "kernels/common/check.h"

#ifdef FP4QAT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_kernels.h"
#endif

namespace fp4qat::gemm {

namespace {
std::atomic<bool> g_fused{true};

// The unfused epilogue: fp32 result [B, M, N] times alpha[b], one cast, then the selected rows.
at::Tensor epilogue_aten(at::Tensor y32, const at::Tensor& alpha, at::ScalarType out, const at::Tensor& rows) {
  const int64_t B = y32.size(0), N = y32.size(2);
  at::Tensor y = y32.mul_(alpha.reshape({B, 1, 1})).to(out);
  return rows.defined() ? y.reshape({-1, N}).index_select(0, rows) : y;
}
}  // namespace

void set_fused_epilogue(bool on) { g_fused = on; }
bool fused_epilogue() { return g_fused.load(); }

at::Tensor scaled_bmm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out,
                      const at::Tensor& rows) {
  FP4QAT_CHECK(a.dim() == 3 && w.dim() == 3 && a.size(0) == w.size(0) && a.size(2) == w.size(2),
               "scaled_bmm: a [B, M, K] and w [B, N, K] do not fit: ", a.sizes(), " and ", w.sizes());
  FP4QAT_CHECK(a.scalar_type() == w.scalar_type() && a.device() == w.device(),
               "scaled_bmm: a and w must have one dtype and device, got ", a.scalar_type(), " on ", a.device(), " and ",
               w.scalar_type(), " on ", w.device());
  FP4QAT_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == a.size(0) && alpha.device() == a.device(),
               "scaled_bmm: alpha must be float32 [B = ", a.size(0), "] on ", a.device(), ", got ", alpha.sizes(), " ",
               alpha.scalar_type(), " on ", alpha.device());
  FP4QAT_CHECK(out == at::kFloat || out == at::kBFloat16 || out == at::kHalf, "scaled_bmm: unsupported output dtype ",
               out);
  FP4QAT_CHECK(!rows.defined() || (rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.device() == a.device()),
               "scaled_bmm: rows must be int64 [T] on ", a.device());
  const int64_t B = a.size(0), M = a.size(1), N = w.size(1);
  if (!a.is_cuda()) {  // the reference: widen the exact operands to fp32 first
    return epilogue_aten(at::bmm(a.to(at::kFloat), w.to(at::kFloat).transpose(1, 2)), alpha, out, rows);
  }
  at::Tensor y32 = at::bmm(a, w.transpose(1, 2), at::kFloat);  // [B, M, N], fp32 accumulation and output
#ifdef FP4QAT_WITH_CUDA
  if (fused_epilogue()) {
    namespace ck = fp4qat::cuda_kernels;
    const c10::cuda::CUDAGuard guard(a.device());
    const int64_t T = rows.defined() ? rows.size(0) : B * M;
    at::Tensor y = at::empty({T, N}, a.options().dtype(out));
    const at::Tensor al = alpha.reshape({B}).contiguous();
    const ck::OutType o = out == at::kFloat ? ck::OutType::F32 : out == at::kBFloat16 ? ck::OutType::BF16 : ck::OutType::F16;
    ck::scale_rows_cast(y32.data_ptr<float>(), al.data_ptr<float>(), rows.defined() ? rows.data_ptr<int64_t>() : nullptr,
                        T, M, N, y.data_ptr(), o, at::cuda::getCurrentCUDAStream().stream());
    return rows.defined() ? y : y.view({B, M, N});
  }
#endif
  return epilogue_aten(std::move(y32), alpha, out, rows);
}

}  // namespace fp4qat::gemm
