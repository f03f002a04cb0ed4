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

// Each row of x [N, *] k times (row j of the repetition is x's row j / k: a token's k slots), in
// the order of a permutation perm of those N * k rows, given its inverse: the bits of
// permute_rows(x.unsqueeze(1).expand(N, k, *).reshape(N * k, *), perm, inverse), without the
// repeated copy. Forward: one gather of x's rows (perm / k). Backward: the gradient's rows gathered
// by the inverse, viewed [N, k, *] and summed over the k slots (the expand's own backward: the same
// reduction, the same bits).
at::Tensor replicate_rows(const at::Tensor& x, int64_t k, const at::Tensor& perm, const at::Tensor& inverse);

// The MoE combine: y [N k, H] (the experts' rows, sorted by expert), w [N, k] (the router's weights
// of each token's k slots), slot_row int64 [N k] (slot n k + j -> its row of y) and its inverse
// order -> [N, H], token n's sum over j of y[slot_row[n k + j]] * w[n, j].
// - On CUDA with bf16 / float32 of one dtype and H % 8 == 0: one kernel forward, one backward
//   (kernels/model/elementwise_ref.h: each product rounded, the k products summed in float32 in
//   slot order; w's gradient summed over H in a fixed warp order).
// - Elsewhere: the composite (permute_rows(y, slot_row, order).view(N, k, H) * w.unsqueeze(2)).sum(1),
//   the CPU's bits as they were.
at::Tensor combine_slots(const at::Tensor& y, const at::Tensor& w, const at::Tensor& slot_row, const at::Tensor& order);

// The inverse of a permutation perm (int64 [R]): inverse[perm[i]] = i.
at::Tensor inverse_permutation(const at::Tensor& perm);

}  // namespace fp4qat::autograd
