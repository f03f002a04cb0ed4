// autograd/elementwise.h — the model's fused elementwise functions with autograd: the experts'
// SwiGLU and the attention's RoPE. The training step at 110M parameters is launch-bound, and ATen
// runs each as several small kernels forward and backward; on CUDA these are one kernel each way
// (kernels/model/elementwise.cu), with the same bits as ATen's composite (kernels/model/
// elementwise_ref.h says where they can differ: silu's expf).
#pragma once
#include <ATen/ATen.h>

namespace fp4qat::autograd {

// h [T, 2I] (gate = columns 0..I-1, up = columns I..2I-1) -> act [T, I] = silu(gate) * up.
// - On CUDA with bf16 or float32 h: the fused kernels; the backward recomputes silu from h (the only
//   tensor saved) and writes dh [T, 2I] = [dgate | du] in one pass.
// - Elsewhere: the composite at::silu(gate) * up (ATen's autograd; the CPU's bits as they were).
at::Tensor swiglu(const at::Tensor& h);

// Rotary embedding, rotate-half convention (Hugging Face Qwen / Llama): x [B, T, H, D] (D even),
// cos and sin [T, D] or [B, T, D] of x's dtype, not requiring grad -> [B, T, H, D] contiguous:
// x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]), cos / sin
// broadcast over the heads.
// - On CUDA with bf16 or float32 x: the fused kernels; saved: cos and sin (not x).
// - Elsewhere: that composite (ATen's autograd).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace fp4qat::autograd
