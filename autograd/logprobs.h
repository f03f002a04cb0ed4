// autograd/logprobs.h — the log-probability of each target under its row of logits, with autograd:
// the next-token loss and the policy's token log-probs (GRPO, the mismatch probe) at any vocabulary.
#pragma once
#include <ATen/ATen.h>

namespace fp4qat::autograd {

// logits [..., V] (float32, bf16 or fp16), targets int64 [...] in [0, V) -> float32 [...]:
// log_softmax(float32(logits))[target], row by row.
// - On CUDA with bf16 or float32 logits: the fused rows of kernels/loss/cross_entropy.cu. The
//   forward reads the logits once and keeps each row's log-sum-exp; the backward reads them once
//   more and writes their gradient: 6 bytes of traffic a bf16 logit, and no float32 copy of the
//   logits or of their gradient (at Qwen3's vocabulary and 4,096 tokens, 2.3 GB each; bench/
//   RESULTS.md, session 20). Its exp and log are the device's (within 2 ulp of the host's):
//   values agree with the composite to float32 rounding.
// - Elsewhere: the composite log_softmax(logits.to(float32)).gather(...) (the CPU's numbers as they
//   always were).
at::Tensor target_logprobs(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace fp4qat::autograd
