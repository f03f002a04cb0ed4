// autograd/compute_cast.cpp — see compute_cast.h.
#include "autograd/compute_cast.h"

#include <torch/torch.h>

#include "kernels/cuda_api.h"

namespace fp4qat::autograd {

namespace {

class ComputeCastFn : public torch::autograd::Function<ComputeCastFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& master, at::ScalarType dtype) {
    ctx->saved_data["from"] = static_cast<int64_t>(master.scalar_type());
    ctx->saved_data["contiguous"] = master.is_contiguous();
    return master.to(dtype);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto from = static_cast<at::ScalarType>(ctx->saved_data["from"].toInt());
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor()};
    if (g.is_cuda() && g.scalar_type() == at::kBFloat16 && from == at::kFloat && ctx->saved_data["contiguous"].toBool())
      return {cuda::widen_bf16(g.contiguous()), at::Tensor()};
    return {g.to(from), at::Tensor()};
  }
};

}  // namespace

at::Tensor compute_cast(const at::Tensor& master, at::ScalarType dtype) {
  if (master.scalar_type() == dtype) return master;
  if (!master.requires_grad() || !at::GradMode::is_enabled()) return master.to(dtype);
  return ComputeCastFn::apply(master, dtype);
}

}  // namespace fp4qat::autograd
