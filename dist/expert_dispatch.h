// dist/expert_dispatch.h — expert parallelism's token dispatch and combine over a process group:
// the model::ExpertDispatch that Qwen3Moe::shard_experts takes (model/expert_dispatch.h).
#pragma once
#include "dist/process_group.h"
#include "model/expert_dispatch.h"

namespace fp4qat::dist {

// The rows of experts [q*El, (q+1)*El) go to rank q of `g` (dispatch, an all-to-all), are
// regrouped by local expert, run, and come back in the same order (combine, the all-to-all with
// the splits swapped). `g` must outlive it.
class AllToAllDispatch final : public model::ExpertDispatch {
 public:
  explicit AllToAllDispatch(ProcessGroup& g) : g_(g) {}
  int64_t ranks() const override { return g_.world_size(); }
  int64_t rank() const override { return g_.rank(); }
  at::Tensor run(const at::Tensor& xs, const at::Tensor& counts, const Experts& experts) override;

 private:
  ProcessGroup& g_;
};

}  // namespace fp4qat::dist
