// dist/process_group.cpp — see process_group.h. The c10d backends: gloo is created here (when the build found
// gloo's headers: FP4QAT_WITH_GLOO), NCCL in dist/nccl.cpp (FP4QAT_WITH_NCCL).
#include "dist/process_group.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#ifdef FP4QAT_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <algorithm>
#include <cstdlib>
#include <string>

#include "kernels/common/check.h"
#include "kernels/common/env.h"

namespace fp4qat::dist {

#ifdef FP4QAT_WITH_NCCL
// dist/nccl.cpp
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, int device);
#endif

bool have_gloo() {
#ifdef FP4QAT_WITH_GLOO
  return true;
#else
  return false;
#endif
}

bool have_nccl() {
#ifdef FP4QAT_WITH_NCCL
  return true;
#else
  return false;
#endif
}

// ---- defaults: a group of one -----------------------------------------------------------------
void ProcessGroup::all_reduce_mean(std::vector<at::Tensor>& tensors) {
  if (world_size() == 1) return;
  all_reduce(tensors, ReduceOp::kSum);
  for (auto& t : tensors) t.div_(static_cast<double>(world_size()));
}

void ProcessGroup::all_reduce(std::vector<at::Tensor>&, ReduceOp) {
  FP4QAT_CHECK(world_size() == 1, "this process group has no all_reduce");
}

std::function<void()> ProcessGroup::all_reduce_start(at::Tensor& t, ReduceOp op) {
  std::vector<at::Tensor> v{t};
  all_reduce(v, op);
  return [] {};
}

at::Tensor ProcessGroup::all_gather(const at::Tensor& t) {
  FP4QAT_CHECK(world_size() == 1, "this process group has no all_gather");
  return t;
}

at::Tensor ProcessGroup::all_to_all(const at::Tensor& x, const std::vector<int64_t>&, const std::vector<int64_t>&) {
  FP4QAT_CHECK(world_size() == 1, "this process group has no all_to_all");
  return x;
}

std::unique_ptr<ProcessGroup> ProcessGroup::subgroup(const std::string& tag, const std::vector<int>& ranks) {
  FP4QAT_CHECK(ranks.size() == 1, "this process group cannot make the subgroup '", tag, "' of ", ranks.size(),
               " ranks");
  return std::make_unique<SingleProcess>();
}

// ---- c10d -------------------------------------------------------------------------------------
namespace {

using Factory = std::function<c10::intrusive_ptr<c10d::Backend>(const c10::intrusive_ptr<c10d::Store>&, int, int)>;

c10d::ReduceOp to_c10d(ReduceOp op) { return op == ReduceOp::kSum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX; }

class C10dGroup final : public ProcessGroup {
 public:
  C10dGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int size, at::Device device,
            std::chrono::milliseconds timeout, Factory factory)
      : store_(std::move(store)),
        rank_(rank),
        size_(size),
        device_(device),
        timeout_(timeout),
        factory_(std::move(factory)) {
    backend_ = factory_(store_, rank_, size_);
  }
  // An orderly shutdown of the backend (NCCL communicators), as destroy_process_group() does.
  ~C10dGroup() override {
    try {
      if (backend_) backend_->shutdown();
    } catch (const std::exception&) {
      // Shutting down after a failed collective: nothing more to release cleanly.
    }
  }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }

  void barrier() override {
    c10d::BarrierOptions o;
    o.timeout = timeout_;
    if (device_.is_cuda()) o.device_ids = {device_.index()};
    wait(backend_->barrier(o), "barrier");
  }

  void all_reduce(std::vector<at::Tensor>& tensors, ReduceOp op) override {
    for (auto& t : tensors) all_reduce_start(t, op)();
  }

  std::function<void()> all_reduce_start(at::Tensor& t, ReduceOp op) override {
    const bool moved = t.device() != device_ || !t.is_contiguous();
    std::vector<at::Tensor> v{moved ? t.to(device_).contiguous() : t};
    c10d::AllreduceOptions o;
    o.reduceOp = to_c10d(op);
    o.timeout = timeout_;
    auto work = backend_->allreduce(v, o);
    at::Tensor dst = t;  // shares storage with the caller's tensor
    return [this, work, v, dst, moved]() mutable {
      wait(work, "all_reduce");
      if (moved) dst.copy_(v[0]);
    };
  }

  at::Tensor all_gather(const at::Tensor& t) override {
    at::Tensor in = t.to(device_).contiguous();
    std::vector<int64_t> shape = in.sizes().vec();
    FP4QAT_CHECK(!shape.empty(), "all_gather needs a tensor with a first dimension");
    shape[0] *= size_;
    at::Tensor out = at::empty(shape, in.options());
    c10d::AllgatherOptions o;
    o.timeout = timeout_;
    wait(backend_->_allgather_base(out, in, o), "all_gather");
    return out.to(t.device());
  }

  at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send,
                        const std::vector<int64_t>& recv) override {
    FP4QAT_CHECK(static_cast<int>(send.size()) == size_ && static_cast<int>(recv.size()) == size_,
                 "all_to_all: one split per rank expected");
    int64_t ns = 0, nr = 0;
    for (auto v : send) ns += v;
    for (auto v : recv) nr += v;
    FP4QAT_CHECK(x.dim() >= 1 && x.size(0) == ns, "all_to_all: ", x.size(0), " rows, splits sum to ", ns);
    at::Tensor in = x.to(device_).contiguous();
    std::vector<int64_t> shape = in.sizes().vec();
    shape[0] = nr;
    at::Tensor out = at::empty(shape, in.options());
    std::vector<int64_t> s = send, r = recv;
    c10d::AllToAllOptions o;
    o.timeout = timeout_;
    wait(backend_->alltoall_base(out, in, r, s, o), "all_to_all");
    return out.to(x.device());
  }

  std::unique_ptr<ProcessGroup> subgroup(const std::string& tag, const std::vector<int>& ranks) override {
    const auto it = std::find(ranks.begin(), ranks.end(), rank_);
    FP4QAT_CHECK(it != ranks.end(), "subgroup '", tag, "' does not contain rank ", rank_);
    if (ranks.size() == 1) return std::make_unique<SingleProcess>();
    auto store = c10::make_intrusive<c10d::PrefixStore>(tag, store_);
    return std::make_unique<C10dGroup>(store, static_cast<int>(it - ranks.begin()), static_cast<int>(ranks.size()),
                                       device_, timeout_, factory_);
  }

 private:
  void wait(const c10::intrusive_ptr<c10d::Work>& w, const char* what) {
    try {
      w->wait(timeout_);
    } catch (const c10::Error& e) {
      FP4QAT_FAIL("rank ", rank_, " of ", size_, ": ", what, " failed (a peer died or timed out after ",
                  timeout_.count() / 1000, " s): ", e.what_without_backtrace());
    } catch (const std::exception& e) {
      FP4QAT_FAIL("rank ", rank_, " of ", size_, ": ", what, " failed (a peer died or timed out after ",
                  timeout_.count() / 1000, " s): ", e.what());
    }
  }
  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, size_;
  at::Device device_;
  std::chrono::milliseconds timeout_;
  Factory factory_;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

// ---- autograd all-to-all ------------------------------------------------------------------------
struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, ProcessGroup* g,
                            std::vector<int64_t> send, std::vector<int64_t> recv) {
    ctx->saved_data["g"] = reinterpret_cast<int64_t>(g);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    return g->all_to_all(x, send, recv);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto* g = reinterpret_cast<ProcessGroup*>(ctx->saved_data["g"].toInt());
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    return {g->all_to_all(grad[0], recv, send), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor all_to_all_rows(ProcessGroup& g, const at::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv) {
  if (g.world_size() == 1) return x;
  return AllToAllRows::apply(x, &g, send, recv);
}

Env read_env() {
  Env e;
  const auto ws = env::get_int("WORLD_SIZE", 1, 1 << 20);
  if (!ws) return e;
  e.world_size = static_cast<int>(*ws);
  if (e.world_size == 1) return e;
  auto need = [](const char* n) {
    const auto v = env::get(n);
    FP4QAT_CHECK(v.has_value(), "WORLD_SIZE is set but ", n, " is not (torchrun-style launch: RANK, WORLD_SIZE, ",
                 "LOCAL_RANK, MASTER_ADDR, MASTER_PORT; see scripts/launch)");
    return *v;
  };
  e.rank = static_cast<int>(env::parse_int("RANK", need("RANK"), 0, e.world_size - 1));
  e.local_rank = static_cast<int>(env::get_int("LOCAL_RANK", 0, e.world_size - 1).value_or(e.rank));
  e.master_addr = need("MASTER_ADDR");
  e.master_port = static_cast<int>(env::parse_int("MASTER_PORT", need("MASTER_PORT"), 1, 65535));
  return e;
}

std::unique_ptr<ProcessGroup> from_environment(bool cuda, std::chrono::milliseconds timeout) {
  const Env e = read_env();
  if (e.world_size == 1) return std::make_unique<SingleProcess>();
  Factory factory;
  at::Device device = at::kCPU;
  if (cuda) {
#ifdef FP4QAT_WITH_NCCL
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(e.local_rank));
    const int dev = e.local_rank;
    factory = [timeout, dev](const c10::intrusive_ptr<c10d::Store>& s, int r, int n) {
      return make_nccl_backend(s, r, n, timeout, dev);
    };
#else
    FP4QAT_FAIL("WORLD_SIZE=", e.world_size,
                " on CUDA needs NCCL, but this build has no NCCL backend (nccl.h was not found)");
#endif
  } else {
#ifdef FP4QAT_WITH_GLOO
    factory = [timeout](const c10::intrusive_ptr<c10d::Store>& s, int r, int n) {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupGloo>(s, r, n, o));
    };
#else
    FP4QAT_FAIL("WORLD_SIZE=", e.world_size,
                " on the CPU needs gloo, but this build has no gloo backend (gloo's headers were ",
                "not found: scripts/setup installs libgloo-dev)");
#endif
  }
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(e.master_port);
  so.isServer = e.rank == 0;
  so.numWorkers = e.world_size;
  so.waitWorkers = true;
  so.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(e.master_addr, so);
  } catch (const c10::Error& ex) {
    FP4QAT_FAIL("rank ", e.rank, " of ", e.world_size, ": rendezvous at MASTER_ADDR=", e.master_addr,
                " MASTER_PORT=", e.master_port, " failed within ", timeout.count() / 1000,
                " s: ", ex.what_without_backtrace());
  } catch (const std::exception& ex) {
    FP4QAT_FAIL("rank ", e.rank, " of ", e.world_size, ": rendezvous at MASTER_ADDR=", e.master_addr,
                " MASTER_PORT=", e.master_port, " failed within ", timeout.count() / 1000, " s: ", ex.what());
  }
  return std::make_unique<C10dGroup>(c10::make_intrusive<c10d::PrefixStore>("world", store), e.rank, e.world_size,
                                     device, timeout, factory);
}

}  // namespace fp4qat::dist
