// autograd/elementwise.cpp — see elementwise.h.
#include "autograd/elementwise.h"

#include <torch/torch.h>

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

namespace fp4qat::autograd {

namespace {

bool fusable(const at::Tensor& x) {
  return x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}

// bf16 / float32 h on CUDA: one kernel forward, one backward. Saved: h alone (silu and its
// sigmoid are recomputed: an expf an element is cheaper than a [T, I] tensor kept to the backward).
class FusedSwigluFn : public torch::autograd::Function<FusedSwigluFn> {
 public:
  // h [T, 2I] contiguous -> [T, I]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h) {
    ctx->save_for_backward({h});
    return cuda::swiglu_forward(h);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    const at::Tensor h = ctx->get_saved_variables()[0];
    return {cuda::swiglu_backward(h, grads[0].to(h.scalar_type()).contiguous())};  // [T, 2I]
  }
};

// bf16 / float32 x on CUDA: one kernel forward, one backward (the backward needs only cos and sin).
class FusedRopeFn : public torch::autograd::Function<FusedRopeFn> {
 public:
  // x [B, T, H, D], cos / sin [T, D] or [B, T, D], all contiguous -> [B, T, H, D]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return cuda::rope_forward(x, cos, sin);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {cuda::rope_backward(grads[0].to(saved[0].scalar_type()).contiguous(), saved[0], saved[1]), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

}  // namespace

at::Tensor swiglu(const at::Tensor& h) {
  FP4QAT_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "swiglu: h must be [T, 2I] (2-D, an even number of columns), got ",
               h.sizes());
  const int64_t I = h.size(1) / 2;
  if (fusable(h)) return FusedSwigluFn::apply(h.contiguous());
  return at::silu(h.narrow(1, 0, I)) * h.narrow(1, I, I);
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  FP4QAT_CHECK(x.dim() == 4, "rope: x must be [B, T, H, D], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), D = x.size(3);
  FP4QAT_CHECK(D % 2 == 0, "rope: x's head dim D must be even, got ", D);
  auto check_table = [&](const at::Tensor& t, const char* name) {
    FP4QAT_CHECK((t.dim() == 2 && t.size(0) == T && t.size(1) == D) ||
                     (t.dim() == 3 && t.size(0) == B && t.size(1) == T && t.size(2) == D),
                 "rope: ", name, " must be [T, D] = [", T, ", ", D, "] or [B, T, D] = [", B, ", ", T, ", ", D,
                 "] for x ", x.sizes(), ", got ", t.sizes());
    FP4QAT_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "rope: ", name,
                 " must have x's dtype and device (", x.scalar_type(), " on ", x.device(), "), got ", t.scalar_type(),
                 " on ", t.device());
    FP4QAT_CHECK(!t.requires_grad(), "rope: ", name, " must not require grad (rope gives no gradient for the tables)");
  };
  check_table(cos, "cos");
  check_table(sin, "sin");
  FP4QAT_CHECK(cos.sizes() == sin.sizes(), "rope: cos and sin must have one shape, got ", cos.sizes(), " and ",
               sin.sizes());
  if (fusable(x)) return FusedRopeFn::apply(x.contiguous(), cos.contiguous(), sin.contiguous());
  // cos / sin broadcast over the heads: [T, 1, D] or [B, T, 1, D].
  const at::Tensor c = cos.unsqueeze(-2), s = sin.unsqueeze(-2);
  return (x * c + rotate_half(x) * s).contiguous();
}

}  // namespace fp4qat::autograd
