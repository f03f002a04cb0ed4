// autograd/rms_norm.h — RMSNorm over the last dim without a weight, with autograd: the attention's
// per-head q / k norms (rows of the head dim, 64 or 128 elements), where ATen's fused RMSNorm is
// far from memory speed. On CUDA one kernel each way (kernels/model/rms_norm.cu, a warp a row; its
// arithmetic and CPU reference in kernels/model/rms_norm_ref.h).
#pragma once
#include <ATen/ATen.h>

namespace fp4qat::autograd {

// x [..., D] (floating point, at least 1-D), eps finite and >= 0 -> x's shape and dtype:
// x / sqrt(mean(x^2 over the last dim) + eps) in float32, cast to x's dtype.
// - On CUDA with bf16 or float32 x, D % 32 == 0, 32 <= D <= 1024: the fused kernels (saved: x and
//   the rows' float32 rstd); contiguous result.
// - Other CUDA tensors: std::get<0>(at::_fused_rms_norm(x, {D}, nullopt, eps)) (ATen's autograd).
// - On the CPU: the composite (x.float() * rsqrt(x.float().pow(2).mean(-1, true) + eps)).to(x's
//   dtype) (ATen's autograd).
at::Tensor rms_norm_rows(const at::Tensor& x, double eps);
// The same times a weight: w.to(x's dtype) * rms_norm_rows(x, eps), w [D] floating point on x's
// device. On CUDA where the fused kernels take x and D <= 512, one kernel each way with the
// product fused (the forward's bits equal the composite's; the weight's gradient summed in a fixed
// order, kernels/model/rms_norm_ref.h); elsewhere that composite.
at::Tensor rms_norm_rows(const at::Tensor& x, double eps, const at::Tensor& w);

}  // namespace fp4qat::autograd
