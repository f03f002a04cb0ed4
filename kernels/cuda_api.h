// kernels/cuda_api.h — CUDA implementations behind kernels/quantize.h, on at::Tensor: declared
// here, defined in kernels/cuda_api.cpp over the raw-pointer launchers of kernels/cuda_kernels.h
// (kernels/nvfp4/, kernels/mxfp8/). Without CUDA support compiled in, kernels/cuda_stubs.cpp
// defines each to throw a clear error.
#pragma once
#include <utility>

#include "kernels/optim/adamw_ref.h"
#include "kernels/quantize.h"

namespace fp4qat::cuda {

at::Tensor global_amax(const at::Tensor& x);
at::Tensor row_amax(const at::Tensor& x);
NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                           const NVFP4Rule& rule);
at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype);
NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                   const NVFP4Rule& rule);
NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                     const NVFP4Rule& rule);
NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x, const std::vector<int64_t>& off, bool packed,
                                 const NVFP4Rule& rule);
MXFP8Tensor mxfp8_quantize(const at::Tensor& x);
at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype);
// The fused AdamW step on one parameter (kernels/optim/adamw_ref.h): p, m, v float32 contiguous
// CUDA tensors of g's shape, updated in place on the current stream.
void adamw_step(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const optim::AdamWScalars& s);
// The same step on many parameters in few launches (64 parameters a launch): p[i], g[i], m[i],
// v[i] as adamw_step's, one device, decay[i] parameter i's (s.decay is not read).
void adamw_step_many(const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& m,
                     const std::vector<at::Tensor>& v, const std::vector<float>& decay, const optim::AdamWScalars& s);
// A contiguous bf16 CUDA tensor widened to float32 (kernels/optim/widen.cu): a new contiguous
// tensor of its shape, the exact values (the bytes of x.to(float32)), on the current stream.
at::Tensor widen_bf16(const at::Tensor& x);
// The fused cross-entropy rows (kernels/loss/cross_entropy.cu) on contiguous CUDA logits [N, V]
// (bf16 or float32) and int64 targets [N]: {lse, target_lp}, float32 [N] each; and the logits'
// gradient of sum(g * target_lp) in the logits' dtype.
std::pair<at::Tensor, at::Tensor> ce_forward(const at::Tensor& logits, const at::Tensor& targets);
at::Tensor ce_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& g);
// The fused SwiGLU and RoPE (kernels/model/elementwise.cu; arithmetic and CPU reference in
// kernels/model/elementwise_ref.h), on contiguous CUDA tensors of one dtype, bf16 or float32, on
// the current stream; new contiguous results.
// SwiGLU: h [T, 2I] -> act [T, I]; backward: h, g [T, I] -> dh [T, 2I].
at::Tensor swiglu_forward(const at::Tensor& h);
at::Tensor swiglu_backward(const at::Tensor& h, const at::Tensor& g);
// RoPE (rotate half): x [B, T, H, D] (D even), cos / sin [T, D] or [B, T, D] -> [B, T, H, D];
// backward: g [B, T, H, D] -> dx [B, T, H, D].
at::Tensor rope_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rope_backward(const at::Tensor& g, const at::Tensor& cos, const at::Tensor& sin);
// The MoE combine (kernels/model/elementwise.cu): y [N k, H] (rows sorted by expert), w [N, k],
// slot_row int64 [N k] (slot n k + j -> its row of y) -> [N, H]; the backward from g [N, H] ->
// dy [N k, H], dw [N, k]. Contiguous bf16 / float32 CUDA tensors of one dtype, H % 8 == 0.
at::Tensor moe_combine_forward(const at::Tensor& y, const at::Tensor& w, const at::Tensor& slot_row);
std::pair<at::Tensor, at::Tensor> moe_combine_backward(const at::Tensor& y, const at::Tensor& w,
                                                       const at::Tensor& slot_row, const at::Tensor& g);
// RMSNorm over the last dim without a weight (kernels/model/rms_norm.cu; arithmetic and CPU
// reference in kernels/model/rms_norm_ref.h): x [..., D] a contiguous bf16 / float32 CUDA tensor,
// D % 32 == 0, 32 <= D <= 1024, eps finite and >= 0 -> {y of x's shape and dtype, rstd float32
// [rows = numel / D]}; the backward from g (x's shape and dtype) and the forward's rstd -> dx.
// With a weight w ([D] in x's dtype, contiguous, on x's device; D <= 512): y = dtype(w * norm(x)),
// and the weighted backward -> {dx, dw [D] in x's dtype} (rms_norm_ref.h: dw summed in a fixed order).
std::pair<at::Tensor, at::Tensor> rms_norm_rows_forward(const at::Tensor& x, double eps, const at::Tensor& w = {});
at::Tensor rms_norm_rows_backward(const at::Tensor& x, const at::Tensor& g, const at::Tensor& rstd);
std::pair<at::Tensor, at::Tensor> rms_norm_rows_backward_weighted(const at::Tensor& x, const at::Tensor& g,
                                                                  const at::Tensor& rstd, const at::Tensor& w);

}  // namespace fp4qat::cuda
