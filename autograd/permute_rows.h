// autograd/permute_rows.h — rows of a tensor in another order, with autograd: the MoE dispatch and
// combine (model/qwen3_moe.cpp, dist/expert_dispatch.cpp) move each (token, slot) row to its
// expert's group and back.
#pragma once
#include <ATen/ATen.h>

namespace fp4qat::autograd {

// x.index_select(0, perm) for a permutation perm of x's rows (int64 [R], each row once), given its
// inverse (inverse[perm[i]] = i). The backward is the gradient's rows gathered by the inverse, where
// index_select's own backward is an index_add into zeros (atomic adds on CUDA, several times the
// gather's time). The same values, rows being moved and never summed, except that a -0 gradient
// stays -0 (index_add's 0 + -0 gives +0).
at::Tensor permute_rows(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& inverse);

// The inverse of a permutation perm (int64 [R]): inverse[perm[i]] = i.
at::Tensor inverse_permutation(const at::Tensor& perm);

}  // namespace fp4qat::autograd
