// autograd/logprobs.h — the log-probability of each target under its row of logits, with autograd:
// the next-token loss and the policy's token log-probs (GRPO, the mismatch probe) at any vocabulary.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace fp4qat::autograd {

// logits [..., V] (float32, bf16 or fp16), targets int64 [...] in [0, V) -> float32 [...]:
// log_softmax(float32(logits))[target], row by row.
// - chunk_rows 0 on the CPU: the composite log_softmax(logits.to(float32)).gather(...) (the CPU's
//   numbers as they always were).
// - On CUDA with bf16 or float32 logits and chunk_rows 0: the fused rows of
//   kernels/loss/cross_entropy.cu. The forward reads the logits once and keeps each row's
//   log-sum-exp; the backward reads them once more and writes their gradient: 6 bytes of traffic a
//   bf16 logit, and nothing the size of the logits but their gradient. Its exp and log are the
//   device's (within 2 ulp of the host's): values agree with the composite to float32 rounding.
// - Otherwise on CUDA (fp16; chunk_rows 0: about 2^26 logits a chunk) or with chunk_rows > 0: rows
//   a chunk at a time. A chunk's float32 copy and log-softmax live only while that chunk is gathered, and are
//   recomputed in the backward, which writes the logits' gradient in their dtype chunk by chunk.
//   Saved for the backward: the logits themselves. At Qwen3's vocabulary (151,936) and 4,096
//   tokens that is 1.2 GB of bf16 instead of the 2.3 GB float32 log-softmax, with no float32
//   gradient of the whole logits either (bench/RESULTS.md, session 20); the recomputation costs
//   about 14 bytes of traffic a logit. Rows are independent: a row's value does not depend on
//   the chunking.
at::Tensor target_logprobs(const at::Tensor& logits, const at::Tensor& targets, int64_t chunk_rows = 0);

}  // namespace fp4qat::autograd
