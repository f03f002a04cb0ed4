// trainer/dist.h — the process groups the trainer is written against, backed by LibTorch's c10d:
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

// dp x ep over a world group (see the layout above). Groups of one are SingleProcess.
struct Topology {
  ProcessGroup* world = nullptr;
  ProcessGroup* dp = nullptr;  // ranks holding the same expert shard
  ProcessGroup* ep = nullptr;  // ranks sharing one model replica's experts
  int dp_size = 1, ep_size = 1, dp_index = 0, ep_index = 0;
  std::vector<std::unique_ptr<ProcessGroup>> owned;
};
// dp: -1 = world_size / ep. Throws naming parallel.dp / parallel.ep when dp * ep != world size
// (check_topology: the same check before any process group exists).
void check_topology(int world_size, int64_t dp, int64_t ep);
std::unique_ptr<Topology> make_topology(ProcessGroup& world, int64_t dp, int64_t ep);

// Bucketed gradient all-reduce for data parallelism: gradients are packed into flat buckets of
// about `bucket_bytes` (per group and dtype, in reverse parameter order, i.e. roughly the order
// backward produces them), each bucket's all-reduce (sum) is started, then each is waited for,
// divided by its divisor and unpacked.
//
// Overlap with backward: arm() before the last micro-batch's backward installs (once) a
// post-accumulate-grad hook on every parameter; when the last gradient of bucket k has been
// accumulated, buckets are started in index order (bucket k only after buckets < k, so every
// rank issues the same collectives in the same order), while backward goes on. reduce() after
// backward starts what is left (parameters that got no gradient in this backward, zero-filled by
// the caller), then waits for all. The result is the same sums as without overlap.
class GradReducer {
 public:
  struct Entry {
    at::Tensor param;   // its .grad() is reduced in place (must be defined when reduce() runs)
    ProcessGroup* group;
    double divisor;     // the sum is divided by this (the number of ranks whose losses it averages)
  };
  GradReducer(std::vector<Entry> entries, int64_t bucket_bytes);
  ~GradReducer();
  void arm();     // the next backward is the last before reduce(): start buckets as they fill
  void reduce();  // finish: start the rest, wait, average, unpack
  size_t buckets() const { return buckets_.size(); }
  size_t started_during_backward() const { return started_in_backward_; }  // of the last reduce()

 private:
  void ready(size_t entry);  // from a parameter's hook
  void start(size_t bucket);
  std::vector<Entry> entries_;
  std::vector<std::vector<size_t>> buckets_;  // indices into entries_
  std::vector<size_t> bucket_of_;             // entry -> bucket
  std::vector<size_t> pending_;               // per bucket: gradients not yet accumulated
  std::vector<at::Tensor> flats_;
  std::vector<std::function<void()>> waits_;
  size_t next_ = 0;                           // the next bucket to start
  size_t started_in_backward_ = 0;
  bool hooks_ = false, armed_ = false;
  std::mutex mu_;
};

}  // namespace fp4qat::dist
