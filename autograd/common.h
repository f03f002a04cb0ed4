// autograd/common.h — internal helpers shared by the quantized linear Functions
// (nvfp4_linear.cpp, mxfp8_linear.cpp); not part of the public API.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/common/check.h"

namespace fp4qat::autograd::detail {

// x [*, K] against a weight [.., out, in] of `w_dim` dimensions: same K, dtype and device.
inline void check_operands(const at::Tensor& x, const at::Tensor& w, int64_t w_dim, const char* op) {
  FP4QAT_CHECK(w.dim() == w_dim, op, ": weight must be ", w_dim, "-D, got ", w.sizes());
  FP4QAT_CHECK(x.size(-1) == w.size(-1), op, ": x has K = ", x.size(-1),
               " but the weight [.., out, in] has in = ", w.size(-1));
  FP4QAT_CHECK(x.scalar_type() == w.scalar_type(), op, ": x is ", x.scalar_type(), " but the weight is ",
               w.scalar_type());
  FP4QAT_CHECK(x.device() == w.device(), op, ": x is on ", x.device(), " but the weight on ", w.device());
}

// a[M, K] @ b[N, K]^T with fp32 accumulation and a float32 [M, N] result. On CUDA a and b are
// bf16/f16 (the exact operand values); on the CPU they are widened to fp32 exactly first.
inline at::Tensor mm_fp32_acc(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_cuda()) return at::mm(a, b.t(), at::kFloat);   // bf16 operands, fp32 accumulation and output
  return at::mm(a.to(at::kFloat), b.to(at::kFloat).t());  // the bf16 values are exact in fp32
}

// dX = dY B and dW = (A^T dY)^T, the same calls torch's own linear backward makes.
inline std::pair<at::Tensor, at::Tensor> linear_grads(const at::Tensor& dy, const at::Tensor& a, const at::Tensor& b) {
  return {dy.mm(b), a.t().mm(dy).t()};
}

// Row offsets of each expert from host counts: off[E + 1], off[e] = first row of expert e.
inline std::vector<int64_t> offsets_of(const at::Tensor& counts, int64_t T, int64_t E, const char* op) {
  FP4QAT_CHECK(
      counts.device().is_cpu() && counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == E, op,
      ": counts must be a CPU int64 tensor [E = ", E, "], got ", counts.sizes());
  std::vector<int64_t> off(static_cast<size_t>(E) + 1, 0);
  const at::Tensor c = counts.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) {
    FP4QAT_CHECK(p[e] >= 0, op, ": negative count for expert ", e);
    off[e + 1] = off[e] + p[e];
  }
  FP4QAT_CHECK(off[E] == T, op, ": counts sum to ", off[E], " but x has ", T, " rows");
  return off;
}

// Whether the grouped GEMMs run as at::_grouped_mm: CUDA, bf16 operands and output (its dtype
// rule), 16-byte aligned rows of dY^T (N % 8; K % 32 already holds), a non-empty int32 row range.
inline bool uses_grouped_mm(const at::Tensor& x, int64_t N) {
  const int64_t T = x.size(0);
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && N % 8 == 0 && T > 0 &&
         T <= std::numeric_limits<int32_t>::max();
}

// at::_grouped_mm's offsets: int32 [E] on `dev`, the end row of each expert (the cumulative sum of
// counts), built in pinned host memory and copied asynchronously (no host synchronisation).
inline at::Tensor device_offsets(const std::vector<int64_t>& off, const at::Device& dev) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  at::Tensor o = at::empty({E}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  int32_t* p = o.data_ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) p[e] = static_cast<int32_t>(off[e + 1]);
  return o.to(dev, /*non_blocking=*/true);
}

}  // namespace fp4qat::autograd::detail
