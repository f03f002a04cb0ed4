// dist/process_group.h — the process groups the trainer is written against, backed by LibTorch's c10d:
// gloo for CPU tensors, NCCL for CUDA tensors (device cuda:LOCAL_RANK), with a TCPStore
// rendezvous. Launched torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
// (scripts/launch on one machine; torchrun, srun or mpirun wrappers that set them elsewhere).
//
// Layout of dp x ep = WORLD_SIZE ranks: rank r = dp_index * ep + ep_index. An expert-parallel
// group is `ep` consecutive ranks (one replica of the model, experts sharded over them); a
// data-parallel group is the ranks with the same ep_index (every `ep`-th rank), which hold the
// same expert shard. Every rank reads its own data (batch index * world + rank).
//
// Collectives that exchange model tensors (all_reduce, all_gather, all_to_all) take tensors on
// any device; a group copies them to its own device (the GPU for NCCL) and back when needed.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace fp4qat::dist {

enum class ReduceOp { kSum, kMax };

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  bool is_main() const { return rank() == 0; }
  virtual void barrier() = 0;

  // In place: each tensor becomes the mean over ranks (sum, then divided by world_size()).
  virtual void all_reduce_mean(std::vector<at::Tensor>& tensors);
  // In place: element-wise sum or max over ranks. The default serves a group of one.
  virtual void all_reduce(std::vector<at::Tensor>& tensors, ReduceOp op);
  // Starts an in-place all-reduce of one contiguous tensor; the returned function waits for it.
  virtual std::function<void()> all_reduce_start(at::Tensor& t, ReduceOp op);
  // Concatenation along dim 0 of every rank's `t` (same shape on all ranks), in rank order.
  virtual at::Tensor all_gather(const at::Tensor& t);
  // Rows of x [sum(send), ...]: send[r] rows go to rank r (in order); returns [sum(recv), ...]
  // holding recv[r] rows from each rank r, in rank order. Not differentiable: see all_to_all_rows.
  virtual at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send,
                                const std::vector<int64_t>& recv);
  // A group of `ranks` (sorted ranks of this group that include this rank), named `tag` (every
  // member passes the same tag). A group of one needs no communication.
  virtual std::unique_ptr<ProcessGroup> subgroup(const std::string& tag, const std::vector<int>& ranks);
};

class SingleProcess final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_mean(std::vector<at::Tensor>&) override {}
  void barrier() override {}
};

// The launch environment (torchrun names). world_size 1 when WORLD_SIZE is unset.
struct Env {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};
// Reads and checks RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (errors name the variable).
Env read_env();

// From the environment: WORLD_SIZE unset or 1 -> SingleProcess; larger -> a c10d group over a
// TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 hosts it): NCCL on cuda:LOCAL_RANK when `cuda`,
// else gloo. `timeout` bounds the rendezvous (a missing peer is an error) and every collective.
std::unique_ptr<ProcessGroup> from_environment(bool cuda = false,
                                               std::chrono::milliseconds timeout = std::chrono::seconds(300));

// Whether this build has the gloo (CPU) / NCCL (GPU) backends.
bool have_gloo();
bool have_nccl();

// Differentiable all-to-all of rows (x [sum(send), D] -> [sum(recv), D]): the backward sends the
// gradient rows back the way they came (the all-to-all with send and recv swapped). Expert
// parallelism's token dispatch is one; its combine is the same function with the splits swapped.
at::Tensor all_to_all_rows(ProcessGroup& g, const at::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv);

}  // namespace fp4qat::dist
