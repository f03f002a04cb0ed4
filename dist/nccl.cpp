// dist/nccl.cpp — the NCCL backend of dist::from_environment (CUDA builds that found
// nccl.h): c10d::ProcessGroupNCCL on device cuda:LOCAL_RANK over the group's store. Collectives
// are waited for with a timeout (blocking wait), so a dead peer is an error, not a hang.
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdlib>

namespace fp4qat::dist {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, int device) {
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  // Blocking wait: Work::wait() returns only when the collective finished and throws after the
  // timeout (the watchdog would otherwise abort the process without a message of ours).
  ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
  pg->eagerConnectSingleDevice(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  return pg;
}

}  // namespace fp4qat::dist
