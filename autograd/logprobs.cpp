// autograd/logprobs.cpp — see logprobs.h.
#include "autograd/logprobs.h"

#include <torch/torch.h>

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

namespace fp4qat::autograd {

namespace {

// bf16 / float32 logits on CUDA: the fused rows (kernels/loss/cross_entropy.cu), one read of the
// logits forward (their log-sum-exp and target logit), one read and one write backward. Saved:
// the logits and the log-sum-exps.
class FusedTargetLogprobsFn : public torch::autograd::Function<FusedTargetLogprobsFn> {
 public:
  // logits [N, V] contiguous, targets int64 [N] -> float32 [N]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets) {
    auto [lse, lp] = cuda::ce_forward(logits, targets);
    ctx->save_for_backward({logits, targets, lse});
    return lp;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor g = grads[0].to(at::kFloat).contiguous();  // [N]
    return {cuda::ce_backward(saved[0], saved[1], saved[2], g), at::Tensor()};
  }
};

}  // namespace

at::Tensor target_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  FP4QAT_CHECK(logits.dim() >= 1 && targets.dim() == logits.dim() - 1 &&
                   targets.sizes() == logits.sizes().slice(0, logits.dim() - 1) && targets.scalar_type() == at::kLong,
               "target_logprobs: targets must be int64 of the logits' leading sizes, got logits ", logits.sizes(),
               " and targets ", targets.scalar_type(), " ", targets.sizes());
  const int64_t V = logits.size(-1), N = V > 0 ? logits.numel() / V : 0;
  if (logits.is_cuda() && N > 0 && (logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kFloat))
    return FusedTargetLogprobsFn::apply(logits.reshape({N, V}).contiguous(), targets.reshape({N}).contiguous())
        .view(targets.sizes());
  return at::log_softmax(logits.to(at::kFloat), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
}

}  // namespace fp4qat::autograd
