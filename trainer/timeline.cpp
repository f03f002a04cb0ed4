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
  char buf[64];
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
  const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> acts = activities(device_);
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
  std::map<std::string, Sum> by_name, by_kind, runtime, ops;
  std::vector<Act> gpu;
  for (const auto& e : r->events()) {
    const double ns = static_cast<double>(e.durationNs());
    if (e.deviceType() == c10::DeviceType::CUDA) {
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
  if (gpu.empty()) {
    out += "ATen operators (inclusive time): us per step, calls per step\n" + table(ops, steps, 40);
    return out;
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
  return out;
}

}  // namespace fp4qat::train
