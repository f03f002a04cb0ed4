// trainer/dist.cpp — see dist.h. The c10d backends: gloo is created here (when the build found
// gloo's headers: FP4QAT_WITH_GLOO), NCCL in trainer/dist_nccl.cpp (FP4QAT_WITH_NCCL).
#include "trainer/dist.h"

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

namespace fp4qat::dist {

#ifdef FP4QAT_WITH_NCCL
// trainer/dist_nccl.cpp
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
  FP4QAT_CHECK(ranks.size() == 1, "this process group cannot make the subgroup '", tag, "' of ", ranks.size(), " ranks");
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
      : store_(std::move(store)), rank_(rank), size_(size), device_(device), timeout_(timeout),
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

  at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) override {
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

int env_int(const char* name, const char* value, int lo, int hi) {
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  FP4QAT_CHECK(*value && end && *end == '\0' && n >= lo && n <= hi, name, "='", value, "' is not an integer in [", lo,
               ", ", hi, "]");
  return static_cast<int>(n);
}

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
  const char* ws = std::getenv("WORLD_SIZE");
  if (!ws || !*ws) return e;
  e.world_size = env_int("WORLD_SIZE", ws, 1, 1 << 20);
  if (e.world_size == 1) return e;
  auto need = [](const char* n) {
    const char* v = std::getenv(n);
    FP4QAT_CHECK(v && *v, "WORLD_SIZE is set but ", n, " is not (torchrun-style launch: RANK, WORLD_SIZE, LOCAL_RANK, ",
                 "MASTER_ADDR, MASTER_PORT; see scripts/launch)");
    return v;
  };
  e.rank = env_int("RANK", need("RANK"), 0, e.world_size - 1);
  const char* lr = std::getenv("LOCAL_RANK");
  e.local_rank = (lr && *lr) ? env_int("LOCAL_RANK", lr, 0, e.world_size - 1) : e.rank;
  e.master_addr = need("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", need("MASTER_PORT"), 1, 65535);
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
    FP4QAT_FAIL("WORLD_SIZE=", e.world_size, " on CUDA needs NCCL, but this build has no NCCL backend (nccl.h was not found)");
#endif
  } else {
#ifdef FP4QAT_WITH_GLOO
    factory = [timeout](const c10::intrusive_ptr<c10d::Store>& s, int r, int n) {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupGloo>(s, r, n, o));
    };
#else
    FP4QAT_FAIL("WORLD_SIZE=", e.world_size, " on the CPU needs gloo, but this build has no gloo backend (gloo's headers were ",
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
                " MASTER_PORT=", e.master_port, " failed within ", timeout.count() / 1000, " s: ",
                ex.what_without_backtrace());
  } catch (const std::exception& ex) {
    FP4QAT_FAIL("rank ", e.rank, " of ", e.world_size, ": rendezvous at MASTER_ADDR=", e.master_addr,
                " MASTER_PORT=", e.master_port, " failed within ", timeout.count() / 1000, " s: ", ex.what());
  }
  return std::make_unique<C10dGroup>(c10::make_intrusive<c10d::PrefixStore>("world", store), e.rank, e.world_size,
                                     device, timeout, factory);
}

// ---- topology -----------------------------------------------------------------------------------
void check_topology(int W, int64_t dp, int64_t ep) {
  FP4QAT_CHECK(ep >= 1 && ep <= W && W % ep == 0, "parallel.ep (", ep, ") must divide the world size WORLD_SIZE=", W);
  if (dp == -1) dp = W / ep;
  FP4QAT_CHECK(dp * ep == W, "parallel.dp x parallel.ep (", dp, " x ", ep, ") must equal the world size WORLD_SIZE=", W);
}

std::unique_ptr<Topology> make_topology(ProcessGroup& world, int64_t dp, int64_t ep) {
  const int W = world.world_size();
  check_topology(W, dp, ep);
  if (dp == -1) dp = W / ep;
  auto t = std::make_unique<Topology>();
  t->world = &world;
  t->dp_size = static_cast<int>(dp);
  t->ep_size = static_cast<int>(ep);
  t->dp_index = world.rank() / t->ep_size;
  t->ep_index = world.rank() % t->ep_size;
  std::vector<int> dp_ranks, ep_ranks;
  for (int i = 0; i < t->dp_size; ++i) dp_ranks.push_back(i * t->ep_size + t->ep_index);
  for (int j = 0; j < t->ep_size; ++j) ep_ranks.push_back(t->dp_index * t->ep_size + j);
  if (t->ep_size == W) {
    t->ep = &world;
  } else {
    t->owned.push_back(world.subgroup("ep" + std::to_string(t->dp_index), ep_ranks));
    t->ep = t->owned.back().get();
  }
  if (t->dp_size == W) {
    t->dp = &world;
  } else {
    t->owned.push_back(world.subgroup("dp" + std::to_string(t->ep_index), dp_ranks));
    t->dp = t->owned.back().get();
  }
  return t;
}

// ---- bucketed gradient all-reduce ---------------------------------------------------------------
GradReducer::GradReducer(std::vector<Entry> entries, int64_t bucket_bytes) : entries_(std::move(entries)) {
  // Reverse parameter order; a bucket holds one group and one dtype.
  std::vector<std::vector<size_t>> open;
  std::vector<int64_t> open_bytes;
  for (size_t k = entries_.size(); k-- > 0;) {
    const Entry& e = entries_[k];
    size_t b = open.size();
    for (size_t i = 0; i < open.size(); ++i) {
      const Entry& f = entries_[open[i][0]];
      if (f.group == e.group && f.divisor == e.divisor && f.param.scalar_type() == e.param.scalar_type()) b = i;
    }
    if (b == open.size()) {
      open.emplace_back();
      open_bytes.push_back(0);
    }
    open[b].push_back(k);
    open_bytes[b] += e.param.numel() * e.param.element_size();
    if (open_bytes[b] >= bucket_bytes) {
      buckets_.push_back(std::move(open[b]));
      open.erase(open.begin() + static_cast<std::ptrdiff_t>(b));
      open_bytes.erase(open_bytes.begin() + static_cast<std::ptrdiff_t>(b));
    }
  }
  for (auto& b : open) buckets_.push_back(std::move(b));
}

namespace {
// Calls back into the reducer after the parameter's gradient has been accumulated.
class ReadyHook final : public torch::autograd::PostAccumulateGradHook {
 public:
  explicit ReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  void operator()(const torch::autograd::Variable&) override { fn_(); }

 private:
  std::function<void()> fn_;
};
}  // namespace

GradReducer::~GradReducer() {
  if (!hooks_) return;
  for (auto& e : entries_) torch::autograd::impl::set_post_acc_grad_hooks(e.param, nullptr);
}

void GradReducer::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!hooks_) {
    bucket_of_.assign(entries_.size(), 0);
    for (size_t b = 0; b < buckets_.size(); ++b)
      for (size_t k : buckets_[b]) bucket_of_[k] = b;
    for (size_t k = 0; k < entries_.size(); ++k)
      torch::autograd::impl::set_post_acc_grad_hooks(entries_[k].param,
                                                     std::make_unique<ReadyHook>([this, k] { ready(k); }));
    hooks_ = true;
  }
  pending_.clear();
  for (const auto& b : buckets_) pending_.push_back(b.size());
  flats_.assign(buckets_.size(), at::Tensor());
  waits_.assign(buckets_.size(), nullptr);
  next_ = 0;
  started_in_backward_ = 0;
  armed_ = true;
}

void GradReducer::ready(size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;  // an earlier micro-batch's backward: gradients still accumulate
  const size_t b = bucket_of_[k];
  if (pending_[b] > 0) --pending_[b];
  while (next_ < buckets_.size() && pending_[next_] == 0) {
    start(next_++);
    ++started_in_backward_;
  }
}

void GradReducer::start(size_t b) {
  torch::NoGradGuard ng;
  std::vector<at::Tensor> parts;
  for (size_t k : buckets_[b]) {
    const at::Tensor& g = entries_[k].param.grad();
    FP4QAT_CHECK(g.defined(), "GradReducer: a parameter has no gradient");
    parts.push_back(g.reshape({-1}));
  }
  flats_[b] = at::cat(parts);
  waits_[b] = entries_[buckets_[b][0]].group->all_reduce_start(flats_[b], ReduceOp::kSum);
}

void GradReducer::reduce() {
  std::lock_guard<std::mutex> lock(mu_);
  torch::NoGradGuard ng;
  if (!armed_) {  // not armed: nothing started yet
    flats_.assign(buckets_.size(), at::Tensor());
    waits_.assign(buckets_.size(), nullptr);
    next_ = 0;
    started_in_backward_ = 0;
  }
  armed_ = false;
  while (next_ < buckets_.size()) start(next_++);
  for (size_t i = 0; i < buckets_.size(); ++i) {
    waits_[i]();
    const auto& b = buckets_[i];
    at::Tensor flat = flats_[i].div_(entries_[b[0]].divisor);
    int64_t off = 0;
    for (size_t k : b) {
      at::Tensor g = entries_[k].param.mutable_grad();
      g.copy_(flat.narrow(0, off, g.numel()).view(g.sizes()));
      off += g.numel();
    }
  }
  flats_.clear();
  waits_.clear();
}

}  // namespace fp4qat::dist
