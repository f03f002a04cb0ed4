// autograd/permute_rows.cpp — see permute_rows.h.
#include "autograd/permute_rows.h"

#include <torch/torch.h>

#include "kernels/common/check.h"

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

}  // namespace

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
