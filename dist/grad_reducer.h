// dist/grad_reducer.h — data parallelism's gradient all-reduce, bucketed and overlapped with backward.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "dist/process_group.h"

namespace fp4qat::dist {

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
    at::Tensor param;  // its .grad() is reduced in place (must be defined when reduce() runs)
    ProcessGroup* group;
    double divisor;  // the sum is divided by this (the number of ranks whose losses it averages)
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
  size_t next_ = 0;  // the next bucket to start
  size_t started_in_backward_ = 0;
  bool hooks_ = false, armed_ = false;
  std::mutex mu_;
};

}  // namespace fp4qat::dist
