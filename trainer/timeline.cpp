// trainer/timeline.cpp — see timeline.h.
#include "trainer/timeline.h"

#include <ATen/DeviceAccelerator.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <vector>

#include "io/fs.h"
#include "kernels/common/check.h"

namespace fp4qat::train {

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;

namespace {

void finish_device_work(const at::Device& d) {
  if (!d.is_cpu()) at::accelerator::synchronizeDevice(d.index() < 0 ? 0 : d.index());
}

std::set<ActivityType> activities(const at::Device& d) {
  std::set<ActivityType> a = {ActivityType::CPU};
  if (d.is_cuda()) a.insert(ActivityType::CUDA);
  return a;
}

struct Sum {
  double ns = 0;
  int64_t n = 0;
};

std::string fmt(const char* f, double a, double b, const std::string& s) {
  char buf[256];  // the longest format here with two numbers fits; snprintf truncates, never overruns
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf + s + "\n";
}

// Rows of `by` sorted by time, largest first: "us per step, calls per step, name".
std::string table(const std::map<std::string, Sum>& by, int steps, size_t max_rows) {
  std::vector<std::pair<std::string, Sum>> rows(by.begin(), by.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::string out;
  for (size_t i = 0; i < rows.size() && i < max_rows; ++i)
    out += fmt("%12.1f %8.1f  ", rows[i].second.ns / 1e3 / steps, static_cast<double>(rows[i].second.n) / steps,
               rows[i].first);
  if (rows.size() > max_rows) out += "  (" + std::to_string(rows.size() - max_rows) + " more)\n";
  return out;
}

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / static_cast<double>(1ll << 30));
  return b;
}

// The device allocator's allocated bytes now (0 on the CPU, whose allocator keeps no count).
int64_t allocated_now(const at::Device& d) {
  if (!d.is_cuda()) return 0;
  return at::accelerator::getDeviceStats(d.index() < 0 ? 0 : d.index())
      .allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .current;
}

// The host side of a recorded timeline: each operator's enclosing operators (by time, on its
// thread), so that a GPU activity or an allocation can be charged to where the step was.
class HostOps {
 public:
  struct Op {
    uint64_t start, end, thread, corr;
    std::string name, dims;
    int parent;  // index of the enclosing op on the same thread, -1 at the top
  };
  explicit HostOps(const std::vector<prof::KinetoEvent>& events) {
    for (const auto& e : events) {
      if (e.deviceType() != c10::DeviceType::CPU || e.name() == "[memory]" || e.name().rfind("cuda", 0) == 0) continue;
      Op o{e.startNs(), e.endNs(), e.startThreadId(), e.correlationId(), e.name(), "", -1};
      if (e.hasShapes()) {  // the first two inputs' sizes: enough to tell a weight from an activation
        const auto sh = e.shapes();
        for (size_t i = 0; i < sh.size() && i < 2; ++i) {
          o.dims += i ? "," : "";
          o.dims += "[";
          for (size_t j = 0; j < sh[i].size(); ++j) o.dims += (j ? "," : "") + std::to_string(sh[i][j]);
          o.dims += "]";
        }
      }
      ops_.push_back(std::move(o));
    }
    std::sort(ops_.begin(), ops_.end(), [](const Op& a, const Op& b) {
      return a.thread != b.thread ? a.thread < b.thread : a.start != b.start ? a.start < b.start : a.end > b.end;
    });
    std::vector<int> stack;
    for (size_t i = 0; i < ops_.size(); ++i) {
      while (!stack.empty() && (ops_[stack.back()].thread != ops_[i].thread || ops_[stack.back()].end <= ops_[i].start))
        stack.pop_back();
      ops_[i].parent = stack.empty() ? -1 : stack.back();
      stack.push_back(static_cast<int>(i));
      by_corr_[ops_[i].corr] = static_cast<int>(i);
    }
  }
  // Host time by op name, exclusive of the ops nested in it (what the host spends in each op
  // itself: dispatch, autograd bookkeeping, launches), and the time of the outermost ops of each
  // thread (*top_ns).
  std::map<std::string, Sum> self_times(double* top_ns) const {
    std::vector<double> child(ops_.size(), 0.0);
    for (const Op& o : ops_)
      if (o.parent >= 0) child[static_cast<size_t>(o.parent)] += static_cast<double>(o.end - o.start);
    std::map<std::string, Sum> by;
    *top_ns = 0;
    for (size_t i = 0; i < ops_.size(); ++i) {
      const double d = static_cast<double>(ops_[i].end - ops_[i].start);
      if (ops_[i].parent < 0) *top_ns += d;
      Sum& s = by[ops_[i].name.substr(0, 110)];
      s.ns += std::max(0.0, d - child[i]);
      ++s.n;
    }
    return by;
  }
  // The op with this correlation id (a kernel's launching op), -1 if none was recorded.
  int by_correlation(uint64_t corr) const {
    const auto it = by_corr_.find(corr);
    return it == by_corr_.end() ? -1 : it->second;
  }
  // The innermost op of `thread` running at `t`, -1 if none.
  int at(uint64_t thread, uint64_t t) const {
    int best = -1;
    for (size_t i = 0; i < ops_.size(); ++i)  // a report's worth of lookups: a linear scan is fine
      if (ops_[i].thread == thread && ops_[i].start <= t && t < ops_[i].end &&
          (best < 0 || ops_[i].start >= ops_[static_cast<size_t>(best)].start))
        best = static_cast<int>(i);
    return best;
  }
  // Where op i ran: its outermost enclosing scope (a backward node "bw: ToCopyBackward0", a
  // fp4qat:: region, else the outermost ATen op), then the op itself with its input sizes.
  std::string where(int i) const {
    if (i < 0) return "(no host op)";
    const Op& self = ops_[static_cast<size_t>(i)];
    static const std::string bw_prefix = "autograd::engine::evaluate_function: ";
    std::string bw, region, outer;  // the innermost backward node, the outermost fp4qat:: region and op
    for (int j = self.parent; j >= 0; j = ops_[static_cast<size_t>(j)].parent) {
      const std::string& n = ops_[static_cast<size_t>(j)].name;
      if (bw.empty() && n.rfind(bw_prefix, 0) == 0) bw = "bw: " + n.substr(bw_prefix.size());
      if (n.rfind("fp4qat::", 0) == 0) region = n;
      outer = n;
    }
    const std::string scope = !bw.empty() ? bw : !region.empty() ? region : outer;
    return (scope.empty() ? "" : scope + " > ") + self.name + (self.dims.empty() ? "" : " " + self.dims);
  }

 private:
  std::vector<Op> ops_;
  std::map<uint64_t, int> by_corr_;
};

// Where the recorded steps' allocated memory peaked: the device's allocated bytes (the allocator's
// count when recording began plus the recorded allocations and frees) at its highest, and the host
// op that made the allocation that reached it.
template <class MemEvents>
std::string memory_peak(MemEvents mem, const HostOps& host, int64_t at_start) {
  if (mem.empty()) return "";
  std::sort(mem.begin(), mem.end(), [](const auto& a, const auto& b) { return a.t < b.t; });
  int64_t now = at_start, peak = at_start;
  size_t at = mem.size();
  for (size_t i = 0; i < mem.size(); ++i) {
    now += mem[i].bytes;
    if (now > peak) peak = now, at = i;
  }
  std::string out = "memory allocated: " + gib(static_cast<double>(at_start)) + " when recording began, " +
                    gib(static_cast<double>(now)) + " at its end, peak " + gib(static_cast<double>(peak));
  if (at < mem.size())
    out += fmt(" (%.1f ms in) reached by an allocation of %.1f MiB in: ",
               static_cast<double>(mem[at].t - mem.front().t) / 1e6, static_cast<double>(mem[at].bytes) / (1 << 20),
               host.where(host.at(mem[at].thread, mem[at].t)));
  else
    out += "\n";
  return out;
}

}  // namespace

std::string Timeline::kind_of(const std::string& activity) {
  std::string s = activity;
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (has(s, "nccl")) return "nccl";
  if (has(s, "memset")) return "memset";
  if (has(s, "memcpy") || has(s, "copy") || has(s, "catarray")) return "copy";
  if (has(s, "flash") || has(s, "fmha") || has(s, "attention") || has(s, "sdpa")) return "attention";
  if (has(s, "gemm") || has(s, "nvjet") || has(s, "cutlass") || has(s, "xmma") || has(s, "wgmma") ||
      has(s, "cublas") || has(s, "grouped_mm") || has(s, "sm90_"))
    return "gemm";
  if (has(s, "adamw") || has(s, "multi_tensor_apply") || has(s, "foreach")) return "optimizer";
  // The project's own kernels that are not quantizers (kernels/model/, kernels/loss/, widen.cu).
  if (has(s, "swiglu") || has(s, "rope_") || has(s, "widen_bf16")) return "elementwise";
  if (has(s, "ce_forward") || has(s, "ce_backward")) return "reduce";
  if (has(s, "nvfp4") || has(s, "mxfp8") || has(s, "e2m1") || has(s, "quantiz") || has(s, "fp4qat::")) return "quantize";
  if (has(s, "reduce") || has(s, "norm") || has(s, "softmax") || has(s, "sort") || has(s, "topk") || has(s, "scan") ||
      has(s, "cumsum") || has(s, "radix") || has(s, "argmax"))
    return "reduce";
  if (has(s, "elementwise") || has(s, "vectorized") || has(s, "unrolled") || has(s, "index") || has(s, "scatter") ||
      has(s, "gather") || has(s, "fill"))
    return "elementwise";
  return "other";
}

Timeline::Timeline(const at::Device& device) : device_(device) {
  finish_device_work(device_);
  // Input sizes (to tell which tensor an op worked on) and allocations (where the memory peaks).
  const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO,
                                                  /*report_input_shapes=*/true, /*profile_memory=*/true);
  const std::set<ActivityType> acts = activities(device_);
  allocated_at_start_ = allocated_now(device_);
  prof::prepareProfiler(cfg, acts);
  prof::enableProfiler(cfg, acts);
  running_ = true;
}

Timeline::~Timeline() {
  if (!running_) return;
  try {
    prof::disableProfiler();
  } catch (...) {
  }
}

std::string Timeline::stop(int steps, const std::string& title, const std::string& chrome_trace) {
  FP4QAT_CHECK(running_, "timeline: stop() called twice");
  FP4QAT_CHECK(steps >= 1, "timeline: steps must be >= 1, got ", steps);
  finish_device_work(device_);
  running_ = false;
  const std::unique_ptr<prof::ProfilerResult> r = prof::disableProfiler();
  if (!chrome_trace.empty()) {
    const std::string tmp = fs::temp_name_beside(chrome_trace);
    try {
      r->save(tmp);
      fs::rename_atomic(tmp, chrome_trace);
    } catch (...) {
      fs::remove_tree(tmp);
      throw;
    }
  }
  struct Act {
    uint64_t start, end;
    std::string name;
  };
  std::map<std::string, Sum> by_name, by_kind, runtime, ops, by_op;
  std::vector<Act> gpu;
  struct Mem {
    uint64_t t, thread;
    int64_t bytes;
  };
  std::vector<Mem> mem;  // the device's allocations (+) and frees (-)
  const HostOps host(r->events());
  const c10::DeviceType dev_type = device_.is_cuda() ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  for (const auto& e : r->events()) {
    const double ns = static_cast<double>(e.durationNs());
    if (e.name() == "[memory]") {
      if (e.deviceType() == dev_type) mem.push_back({e.startNs(), e.startThreadId(), e.nBytes()});
    } else if (e.deviceType() == c10::DeviceType::CUDA) {
      Sum& o = by_op[host.where(host.by_correlation(e.linkedCorrelationId())).substr(0, 150)];
      o.ns += ns;
      ++o.n;
      Sum& s = by_name[e.name().substr(0, 110)];
      s.ns += ns;
      ++s.n;
      Sum& k = by_kind[kind_of(e.name())];
      k.ns += ns;
      ++k.n;
      gpu.push_back({e.startNs(), e.endNs(), e.name().substr(0, 60)});
    } else if (e.name().rfind("cuda", 0) == 0) {
      Sum& s = runtime[e.name()];
      s.ns += ns;
      ++s.n;
    } else if (e.name().rfind("aten::", 0) == 0) {
      Sum& s = ops[e.name()];
      s.ns += ns;
      ++s.n;
    }
  }
  std::string out = "timeline of " + title + ", " + std::to_string(steps) + " step(s) (Kineto)\n";
  out += memory_peak(mem, host, allocated_at_start_);
  double top_ns = 0;  // host time in the outermost ops; self time by op (exclusive of nested ops)
  const std::map<std::string, Sum> self = host.self_times(&top_ns);
  const std::string host_self =
      fmt("host ops: %.1f us per step in outermost ops (all threads)", top_ns / 1e3 / steps, 0, "") +
      "host self time by op (exclusive of nested ops): us per step, calls per step\n" + table(self, steps, 25);
  if (gpu.empty()) {
    out += "ATen operators (inclusive time): us per step, calls per step\n" + table(ops, steps, 40);
    return out + host_self;
  }
  std::sort(gpu.begin(), gpu.end(), [](const Act& a, const Act& b) { return a.start < b.start; });
  double busy = 0;
  uint64_t last = 0;
  for (const auto& a : gpu) {
    busy += static_cast<double>(a.end - a.start);
    last = std::max(last, a.end);
  }
  const double span = static_cast<double>(last - gpu.front().start);
  out += "GPU activity by kind: us per step, activities per step\n" + table(by_kind, steps, 20);
  out += fmt("GPU busy %.1f us per step, span %.1f us per step", busy / 1e3 / steps, span / 1e3 / steps,
             fmt(", idle %.1f us per step (%.1f%%)", (span - busy) / 1e3 / steps,
                 span > 0 ? 100.0 * (span - busy) / span : 0.0, ""));
  out += "GPU activities by name: us per step, calls per step\n" + table(by_name, steps, 40);
  out += "GPU activities by the host op that launched them (scope > op [input sizes]): us per step, activities "
         "per step\n" + table(by_op, steps, 50);
  // Where the GPU waits: the largest gaps between consecutive activities.
  std::vector<std::pair<double, std::string>> gaps;
  for (size_t i = 1; i < gpu.size(); ++i) {
    const double g = (static_cast<double>(gpu[i].start) - static_cast<double>(gpu[i - 1].end)) / 1e3;
    if (g > 20) gaps.emplace_back(g, gpu[i - 1].name + " -> " + gpu[i].name);
  }
  std::sort(gaps.begin(), gaps.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  double gap_total = 0;
  for (const auto& g : gaps) gap_total += g.first;
  out += fmt("gaps over 20 us between GPU activities: %.0f, %.1f us per step in all; the largest:\n",
             static_cast<double>(gaps.size()), gap_total / steps, "");
  for (size_t i = 0; i < gaps.size() && i < 12; ++i) out += fmt("%12.1f  ", gaps[i].first, 0, gaps[i].second);
  out += "host CUDA runtime calls: us per step, calls per step\n" + table(runtime, steps, 10);
  // Where the host's time goes when the GPU waits for it (a small model's step is host bound).
  return out + host_self;
}

}  // namespace fp4qat::train
