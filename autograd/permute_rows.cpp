// autograd/permute_rows.cpp — see permute_rows.h.
#include "autograd/permute_rows.h"

#include <torch/torch.h>

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

namespace fp4qat::autograd {

namespace {

class PermuteRowsFn : public torch::autograd::Function<PermuteRowsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& perm,
                            const at::Tensor& inverse) {
    ctx->save_for_backward({inverse});
    return x.index_select(0, perm);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor inverse = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    return {g.defined() ? g.index_select(0, inverse) : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ReplicateRowsFn : public torch::autograd::Function<ReplicateRowsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t k,
                            const at::Tensor& source, const at::Tensor& inverse) {
    ctx->save_for_backward({inverse});
    ctx->saved_data["k"] = k;
    return x.index_select(0, source);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor inverse = ctx->get_saved_variables()[0];
    const int64_t k = ctx->saved_data["k"].toInt();
    const at::Tensor& g = grads[0];  // [N * k, *]
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    std::vector<int64_t> split = {g.size(0) / k, k};  // [N, k, *]
    for (int64_t d = 1; d < g.dim(); ++d) split.push_back(g.size(d));
    return {g.index_select(0, inverse).view(split).sum(1), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class CombineSlotsFn : public torch::autograd::Function<CombineSlotsFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& y, const at::Tensor& w,
                            const at::Tensor& slot_row) {
    ctx->save_for_backward({y, w, slot_row});
    return cuda::moe_combine_forward(y, w, slot_row);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    auto [dy, dw] = cuda::moe_combine_backward(saved[0], saved[1], saved[2],
                                               grads[0].to(saved[0].scalar_type()).contiguous());
    return {dy, dw, at::Tensor()};
  }
};

}  // namespace

at::Tensor combine_slots(const at::Tensor& y, const at::Tensor& w, const at::Tensor& slot_row, const at::Tensor& order) {
  FP4QAT_CHECK(y.dim() == 2 && w.dim() == 2 && w.size(1) >= 1 && y.size(0) == w.numel() &&
                   slot_row.numel() == y.size(0) && order.numel() == y.size(0),
               "combine_slots: y must be [N k, H], w [N, k], slot_row and order [N k]; got ", y.sizes(), ", ",
               w.sizes(), ", ", slot_row.sizes(), ", ", order.sizes());
  const int64_t N = w.size(0), k = w.size(1), H = y.size(1);
  if (y.is_cuda() && (y.scalar_type() == at::kBFloat16 || y.scalar_type() == at::kFloat) &&
      w.scalar_type() == y.scalar_type() && H % 8 == 0 && N > 0)
    return CombineSlotsFn::apply(y.contiguous(), w.contiguous(), slot_row.contiguous());
  return (permute_rows(y, slot_row, order).view({N, k, H}) * w.unsqueeze(2)).sum(1);
}

at::Tensor replicate_rows(const at::Tensor& x, int64_t k, const at::Tensor& perm, const at::Tensor& inverse) {
  FP4QAT_CHECK(k >= 1 && x.dim() >= 1 && perm.dim() == 1 && inverse.dim() == 1 && perm.numel() == x.size(0) * k &&
                   inverse.numel() == perm.numel() && perm.scalar_type() == at::kLong &&
                   inverse.scalar_type() == at::kLong,
               "replicate_rows: perm and inverse must be int64 [N * k = ", x.dim() >= 1 ? x.size(0) * k : 0,
               "] (k = ", k, "), got ", perm.sizes(), " and ", inverse.sizes());
  const at::Tensor source = k == 1 ? perm : at::floor_divide(perm, k);  // [N * k] the x row of each output row
  if (!x.requires_grad() || !at::GradMode::is_enabled()) return x.index_select(0, source);
  return ReplicateRowsFn::apply(x, k, source, inverse);
}

at::Tensor permute_rows(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& inverse) {
  FP4QAT_CHECK(x.dim() >= 1 && perm.dim() == 1 && inverse.dim() == 1 && perm.numel() == x.size(0) &&
                   inverse.numel() == x.size(0) && perm.scalar_type() == at::kLong &&
                   inverse.scalar_type() == at::kLong,
               "permute_rows: perm and inverse must be int64 [", x.dim() >= 1 ? x.size(0) : 0, "], got ", perm.sizes(),
               " and ", inverse.sizes());
  if (!x.requires_grad() || !at::GradMode::is_enabled()) return x.index_select(0, perm);
  return PermuteRowsFn::apply(x, perm, inverse);
}

at::Tensor inverse_permutation(const at::Tensor& perm) {
  return at::empty_like(perm).index_copy_(0, perm, at::arange(perm.numel(), perm.options()));
}

}  // namespace fp4qat::autograd
