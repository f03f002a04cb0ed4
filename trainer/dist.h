// trainer/dist.h — the process-group abstraction the trainer is written against: rank, world
// size, gradient all-reduce, barrier. Data is sharded by rank (batch index * world + rank),
// checkpoints, metrics and exports are written by rank 0 after a barrier. This build provides
// the single-process group; the multi-GPU issue adds c10d (NCCL on GPUs, gloo on CPUs) behind the
// same interface, launched torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <vector>

namespace fp4qat::dist {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place: each tensor becomes the mean over ranks.
  virtual void all_reduce_mean(std::vector<at::Tensor>& tensors) = 0;
  virtual void barrier() = 0;
  bool is_main() const { return rank() == 0; }
};

class SingleProcess final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_mean(std::vector<at::Tensor>&) override {}
  void barrier() override {}
};

// From the environment: WORLD_SIZE unset or 1 -> SingleProcess; larger -> a clear error until the
// c10d backend lands (it names the variable).
std::unique_ptr<ProcessGroup> from_environment();

}  // namespace fp4qat::dist
