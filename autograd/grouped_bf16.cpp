// autograd/grouped_bf16.cpp — see grouped_bf16.h.
#include "autograd/grouped_bf16.h"

#include <torch/torch.h>

#include <vector>

#include "autograd/compute_cast.h"
#include "kernels/common/check.h"

namespace fp4qat::autograd {

namespace {

// Experts with equal row counts on CUDA: y [T, N] = x [E, M, K] @ w [E, N, K]^T as one batched
// GEMM, and in the backward dX = dY @ W and dW = dY^T @ X as two more, on [E, M, *] views of the
// row-sorted tensors — the GEMMs of the NVFP4 path's batched backward (autograd/nvfp4_linear.cpp),
// each straight into its final layout.
class BatchedExpertsFn : public torch::autograd::Function<BatchedExpertsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    const int64_t E = w.size(0), T = x.size(0);
    const at::Tensor xc = x.contiguous();
    ctx->save_for_backward({xc, w});
    return at::bmm(xc.view({E, T / E, x.size(1)}), w.transpose(1, 2)).view({T, w.size(1)});  // [T, N]
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dw] =
        batched_expert_grads(grads[0], saved[0], saved[1], ctx->needs_input_grad(0), ctx->needs_input_grad(1));
    return {dx, dw};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> batched_expert_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                                       bool want_dx, bool want_dw) {
  const int64_t E = w.size(0), T = x.size(0), M = T / E;
  const at::Tensor dy3 = dy.contiguous().view({E, M, w.size(1)});  // [E, M, N]
  at::Tensor dx, dw;
  if (want_dx) dx = at::bmm(dy3, w.contiguous()).view({T, x.size(1)});                                  // [T, K]
  if (want_dw) dw = at::bmm(dy3.transpose(1, 2), x.contiguous().view({E, M, x.size(1)}));            // [E, N, K]
  return {dx, dw};
}

at::Tensor grouped_linear(const std::string& name, const at::Tensor& x, const at::Tensor& w, const ExpertRows& rows) {
  const at::Tensor& counts = rows.counts;
  const at::Tensor wc = compute_cast(w, x.scalar_type());
  const int64_t E = wc.size(0), T = x.size(0);
  FP4QAT_CHECK(!counts.is_cuda() && counts.scalar_type() == at::kLong && counts.numel() == E, "grouped linear ", name,
               ": counts must be int64 [", E, "] on the CPU, got ", counts.scalar_type(), " ", counts.sizes(), " on ",
               counts.device());
  const at::Tensor cc = counts.contiguous();
  const int64_t* c = cc.data_ptr<int64_t>();
  if (x.is_cuda() && x.scalar_type() == at::kBFloat16) {
    // Every expert with the same row count: x is the [E, M, in] batch, batched GEMMs forward and
    // backward (BatchedExpertsFn) — on H100 faster than at::_grouped_mm for these shapes, and what
    // the NVFP4 path's backward runs then (bench/RESULTS.md, session 7).
    bool equal = E > 0 && T > 0 && T % E == 0;
    for (int64_t e = 0; equal && e < E; ++e) equal = c[e] == T / E;
    if (equal) return BatchedExpertsFn::apply(x, wc);
    // Else one grouped GEMM for all experts (LibTorch's at::_grouped_mm, with autograd): [E, in, out]
    // views of the [E, out, in] weights, int32 end offsets of each expert's rows.
    return at::_grouped_mm(x.contiguous(), wc.transpose(1, 2), rows.ends_on(x.device()));
  }
  std::vector<at::Tensor> outs;
  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (c[e] == 0) continue;
    outs.push_back(at::linear(x.narrow(0, row, c[e]), wc[e]));
    row += c[e];
  }
  if (outs.empty()) return at::zeros({0, wc.size(1)}, x.options());
  return at::cat(outs, 0);
}

}  // namespace fp4qat::autograd
