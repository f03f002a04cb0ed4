// autograd/logprobs.cpp — see logprobs.h.
#include "autograd/logprobs.h"

#include <torch/torch.h>

#include <algorithm>

#include "kernels/common/check.h"
#include "kernels/cuda_api.h"

namespace fp4qat::autograd {

namespace {

// ATen reads 16-bit logits straight into a float32 log-softmax (half_to_float) for fp16 on CUDA
// only: bf16 (and the CPU) go through a float32 copy of the chunk.
bool reads_16bit_directly(const at::Tensor& x) { return x.is_cuda() && x.scalar_type() == at::kHalf; }

// The float32 log-softmax of rows [r0, r0 + n) of x [N, V].
at::Tensor chunk_log_softmax(const at::Tensor& x, int64_t r0, int64_t n) {
  const at::Tensor c = x.narrow(0, r0, n);
  if (c.scalar_type() == at::kFloat) return at::_log_softmax(c, 1, false);
  if (reads_16bit_directly(c)) return at::_log_softmax(c, 1, true);
  return at::_log_softmax(c.to(at::kFloat), 1, false);
}

class TargetLogprobsFn : public torch::autograd::Function<TargetLogprobsFn> {
 public:
  // logits [N, V] contiguous, targets int64 [N] -> float32 [N]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                            int64_t chunk) {
    const int64_t N = logits.size(0);
    at::Tensor out = at::empty({N}, logits.options().dtype(at::kFloat));
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t n = std::min(chunk, N - r0);
      const at::Tensor lp = chunk_log_softmax(logits, r0, n);  // [n, V]
      out.narrow(0, r0, n).copy_(lp.gather(1, targets.narrow(0, r0, n).unsqueeze(1)).squeeze(1));
    }
    ctx->save_for_backward({logits, targets});
    ctx->saved_data["chunk"] = chunk;
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &targets = saved[1];
    const int64_t chunk = ctx->saved_data["chunk"].toInt(), N = logits.size(0);
    const at::Tensor g = grads[0].to(at::kFloat).contiguous();  // [N]
    at::Tensor out = at::empty_like(logits, at::MemoryFormat::Contiguous);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t n = std::min(chunk, N - r0);
      const at::Tensor lp = chunk_log_softmax(logits, r0, n);  // [n, V], recomputed
      // d lp[target] / d lp: the row's gradient at its target (gather's backward), then through the
      // log-softmax: g - exp(lp) * sum(g).
      const at::Tensor gl = at::zeros_like(lp).scatter_(1, targets.narrow(0, r0, n).unsqueeze(1),
                                                        g.narrow(0, r0, n).unsqueeze(1));
      at::Tensor dst = out.narrow(0, r0, n);
      if (logits.scalar_type() == at::kFloat || reads_16bit_directly(logits))
        at::_log_softmax_backward_data_out(dst, gl, lp, 1, logits.scalar_type());
      else
        dst.copy_(at::_log_softmax_backward_data(gl, lp, 1, at::kFloat));
    }
    return {out, at::Tensor(), at::Tensor()};
  }
};

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

at::Tensor target_logprobs(const at::Tensor& logits, const at::Tensor& targets, int64_t chunk_rows) {
  FP4QAT_CHECK(logits.dim() >= 1 && targets.dim() == logits.dim() - 1 &&
                   targets.sizes() == logits.sizes().slice(0, logits.dim() - 1) && targets.scalar_type() == at::kLong,
               "target_logprobs: targets must be int64 of the logits' leading sizes, got logits ", logits.sizes(),
               " and targets ", targets.scalar_type(), " ", targets.sizes());
  FP4QAT_CHECK(chunk_rows >= 0, "target_logprobs: chunk_rows must be >= 0, got ", chunk_rows);
  if (chunk_rows == 0 && !logits.is_cuda())
    return at::log_softmax(logits.to(at::kFloat), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
  const int64_t V = logits.size(-1), N = V > 0 ? logits.numel() / V : 0;
  if (N == 0 || V == 0) return at::log_softmax(logits.to(at::kFloat), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
  const at::Tensor flat = logits.reshape({N, V}).contiguous(), t = targets.reshape({N}).contiguous();
  if (chunk_rows == 0 && (logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kFloat))
    return FusedTargetLogprobsFn::apply(flat, t).view(targets.sizes());  // CUDA
  const int64_t chunk = chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, (int64_t{1} << 26) / V);
  return TargetLogprobsFn::apply(flat, t, chunk).view(targets.sizes());
}

}  // namespace fp4qat::autograd
