// autograd/grouped_bf16.h — the experts' grouped linear in the compute dtype (no quantization),
// with autograd: what a model's linears run when no QAT policy selects them.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "autograd/expert_rows.h"

namespace fp4qat::autograd {

// x [T, in] with rows sorted by expert (rows: counts int64 [E] on the CPU, ends where made on the
// device), w [E, out, in] -> [T, out] in x's dtype. On CUDA in bf16: one batched GEMM (forward and
// backward) when every expert has the same row count, else at::_grouped_mm at rows.ends; elsewhere
// one at::linear per expert. `name` is for error messages.
at::Tensor grouped_linear(const std::string& name, const at::Tensor& x, const at::Tensor& w, const ExpertRows& rows);

// The gradients of y [T, out] = x [T, in] @ w[e]^T on every expert's rows when all E experts have
// the same M = T / E rows: dX = dY @ W [T, in] and dW = dY^T @ X [E, out, in] as batched GEMMs on
// [E, M, *] views of the row-sorted tensors (undefined where not wanted). The batched backward of
// grouped_linear and of the in-place NVFP4 recipes (nvfp4_linear.cpp).
std::pair<at::Tensor, at::Tensor> batched_expert_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                                       bool want_dx = true, bool want_dw = true);

}  // namespace fp4qat::autograd
