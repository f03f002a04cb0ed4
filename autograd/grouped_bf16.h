// autograd/grouped_bf16.h — the experts' grouped linear in the compute dtype (no quantization),
// with autograd: what a model's linears run when no QAT policy selects them.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "autograd/expert_rows.h"

namespace fp4qat::autograd {

// x [T, in] with rows sorted by expert (rows: counts int64 [E] on the CPU, ends where made on the
// device), w [E, out, in] -> [T, out] in x's dtype. On CUDA in bf16: one batched GEMM (forward and
// backward) when every expert has the same row count, else at::_grouped_mm at rows.ends; elsewhere
// one at::linear per expert. `name` is for error messages.
at::Tensor grouped_linear(const std::string& name, const at::Tensor& x, const at::Tensor& w, const ExpertRows& rows);

}  // namespace fp4qat::autograd
