// trainer/timeline.h — where a step's time goes: a Kineto timeline (CUPTI on CUDA) of a few
// training steps, as a Chrome trace (open in Perfetto or chrome://tracing) and a text summary.
// `fp4qat train --trace PATH [--trace-steps A:B]` records steps A..B (1-based, inclusive); the
// benchmarks (bench/bench_moe_mlp.cpp) record their own step functions with it.
//
// The summary (per recorded step, so steps of different runs compare):
//  - on a GPU: each GPU activity (kernel, copy, set) summed by name; the same by kind (GEMM,
//    attention, optimizer, NVFP4/MXFP8 quantization, elementwise, reduction / norm / softmax, copy, memset,
//    NCCL, other); the GPU's busy time against the span from the first activity to the last one
//    (span - busy: the GPU idle, waiting for the host); the gaps over 20 us between activities;
//    the host's CUDA runtime calls by time (a synchronising call or an allocation shows there);
//    the same GPU time by the host op that launched it (its scope: the backward node, a fp4qat::
//    region or the outermost ATen op; its first inputs' sizes);
//  - on the CPU (no GPU activity): the ATen operators by total time;
//  - both: the recorded steps' peak of allocated memory and the op whose allocation reached it.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace fp4qat::train {

class Timeline {
 public:
  // Starts recording the host's operators and, on a CUDA device, the GPU's activities; the
  // device's queued work is finished first, so nothing earlier is counted.
  explicit Timeline(const at::Device& device);
  ~Timeline();  // stops recording if stop() was not called (nothing written)
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Finishes the device's work, stops recording and returns the summary of `steps` recorded steps
  // (steps >= 1), headed by `title`. With a non-empty `chrome_trace`, the timeline is also written
  // there (the file is replaced atomically; its folder must exist).
  std::string stop(int steps, const std::string& title, const std::string& chrome_trace = "");

  // The kind of a GPU activity from its name (the summary's second table): "gemm", "attention",
  // "optimizer", "quantize", "elementwise", "reduce", "copy", "memset", "nccl" or "other".
  static std::string kind_of(const std::string& activity);

 private:
  at::Device device_;
  bool running_ = false;
  int64_t allocated_at_start_ = 0;  // the device allocator's count (0 on the CPU: the peak is then relative)
};

}  // namespace fp4qat::train
