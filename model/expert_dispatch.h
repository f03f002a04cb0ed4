// model/expert_dispatch.h — how a MoE layer reaches experts held by other ranks (expert
// parallelism). The model computes routing and calls run(); an implementation over process groups
// (dist/expert_dispatch.h: all-to-alls) sends each routed row to its expert's owner and back.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace fp4qat::model {

class ExpertDispatch {
 public:
  virtual ~ExpertDispatch() = default;
  virtual int64_t ranks() const = 0;  // ranks sharing the experts (E divisible by it)
  virtual int64_t rank() const = 0;   // this one: it holds experts [rank * E/ranks, (rank + 1) * E/ranks)
  // The local experts' MLP on rows sorted by local expert: rows [R, H], counts int64 [El] (CPU).
  using Experts = std::function<at::Tensor(const at::Tensor& rows, const at::Tensor& counts)>;
  // xs [N*k, H]: this rank's routed rows sorted by global expert, counts int64 [E] on the CPU.
  // Returns [N*k, H]: each row's expert output, in xs's order (differentiable). Every rank of the
  // group calls it for the same layers in the same order.
  virtual at::Tensor run(const at::Tensor& xs, const at::Tensor& counts, const Experts& experts) = 0;
};

}  // namespace fp4qat::model
