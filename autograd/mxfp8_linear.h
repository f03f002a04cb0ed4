// autograd/mxfp8_linear.h — MXFP8 linear layers as torch::autograd::Functions
// (docs/spec/qat.md with MXFP8 operands, numerics.md "MXFP8 quantization"):
//   mxfp8_linear          y[*, N] = x[*, K] @ W[N, K]^T
//   mxfp8_grouped_linear  rows of x[T, K] grouped by expert (counts[E]), y[T, N], W[E, N, K]
// Forward: activations and weights MXFP8 (1x32 blocks along K, E8M0 scales, no global scale, so
// no alpha); y = dequant(x_q) @ dequant(w_q)^T with fp32 accumulation, one rounding to x's dtype.
// The dequantized values e4m3 * 2^k are exact in bf16 and fp32. Blocks never cross rows, so the
// quantization of a token does not depend on the expert grouping: x and W are quantized once.
// Backward (dY never quantized, GEMMs in x's dtype with fp32 accumulation), Backward as for NVFP4:
//   high_precision: dX = dY W,        dW = dY^T X         (saves X and W)
//   dequantized:    dX = dY W_dq,     dW = dY^T X_dq      (saves packed X and W: e4m3 data + E8M0 scales)
// Weights are always `[out, in]`.
#pragma once
#include <ATen/ATen.h>

#include "autograd/nvfp4_linear.h"  // Backward, parse_backward, to_string

namespace fp4qat::autograd {

// x: [*, K] (bf16/f16/f32), w: [N, K] same dtype and device, K % 32 == 0. Returns [*, N] in x's dtype.
at::Tensor mxfp8_linear(const at::Tensor& x, const at::Tensor& w, Backward backward);

// x: [T, K] with rows sorted by expert; w: [E, N, K]; counts: int64 [E] on the CPU (sum = T; zero
// allowed). Returns [T, N]. On CUDA with bf16 operands (and N % 8 == 0, T > 0) every GEMM is one
// at::_grouped_mm over all experts (no host synchronisation); otherwise it loops over experts.
at::Tensor mxfp8_grouped_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts, Backward backward);

}  // namespace fp4qat::autograd
