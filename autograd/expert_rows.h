// autograd/expert_rows.h — the rows of each expert in a batch sorted by expert, as the grouped
// linears (BF16, NVFP4, MXFP8) and the policies take them.
#pragma once
#include <ATen/ATen.h>

#include <utility>

#include "kernels/common/check.h"

namespace fp4qat::autograd {

// counts: int64 [E] on the CPU, for the host's decisions (per-expert loops, padding, equal splits).
// ends: where the caller made them on the rows' device, int32 [E] = the inclusive prefix sums of
// counts (expert e's rows end at ends[e]), else undefined. The GEMMs and per-expert reductions on
// a GPU take them there: a host-to-device copy of counts made from the host synchronises the
// stream (ATen's blocking copy), one stall of the launch queue for every grouped linear.
struct ExpertRows {
  ExpertRows(at::Tensor counts_, at::Tensor ends_ = {})  // NOLINT: a counts tensor alone is ExpertRows
      : counts(std::move(counts_)), ends(std::move(ends_)) {}
  at::Tensor counts;
  at::Tensor ends;
  // ends on `device` (int32 [E]): the given ones, or made from counts (one blocking copy).
  at::Tensor ends_on(const at::Device& device) const {
    if (ends.defined() && ends.device() == device) {
      FP4QAT_CHECK(ends.scalar_type() == at::kInt && ends.dim() == 1 && ends.size(0) == counts.numel(),
                   "expert rows: ends must be int32 [E = ", counts.numel(), "], got ", ends.scalar_type(), " ",
                   ends.sizes());
      return ends;
    }
    return at::cumsum(counts, 0).to(at::kInt).to(device);
  }
};

}  // namespace fp4qat::autograd
