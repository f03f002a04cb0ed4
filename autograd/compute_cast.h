// autograd/compute_cast.h — a master weight's compute copy (the fp32 master cast to the compute
// dtype, bf16 in GPU training) with autograd: the one cast every linear and grouped expert linear
// takes of its weight.
#pragma once
#include <ATen/ATen.h>

namespace fp4qat::autograd {

// master.to(dtype), differentiable. The backward casts the gradient back to master's dtype: on
// CUDA, a bf16 gradient of a contiguous float32 master is widened in one vectorized pass into a
// contiguous gradient (cuda::widen_bf16), where ATen's casting copy runs an unvectorized kernel and
// keeps a transposed gradient's strides (which AccumulateGrad then copies again); elsewhere
// grad.to(master's dtype). Widening is exact: the same values either way. master itself when the
// dtypes agree.
at::Tensor compute_cast(const at::Tensor& master, at::ScalarType dtype);

}  // namespace fp4qat::autograd
