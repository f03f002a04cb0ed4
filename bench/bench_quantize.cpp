// bench/bench_quantize.cpp — validate-then-benchmark harness for the CUDA quantizers
// (kernels/quantize.h). For each case: check the GPU bytes against the CPU reference (a slice
// for the large cases), then time with CUDA events (median of --reps after --warmup) and report
// GB/s and the share of the one-pass floor at the device-to-device copy bandwidth measured in
// the same run. Prints a table; --json writes the numbers.
//   fp4qat_bench_quantize [--reps 20] [--warmup 5] [--json FILE] [--only SUBSTRING]
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bench/dev/nvfp4_variants.h"
#include "kernels/bench_hooks.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/env.h"
#include "kernels/cuda_kernels.h"
#include "kernels/quantize.h"
#include "io/json.h"

using fp4qat::Blocks;

namespace {

int g_reps = 20, g_warmup = 5;
std::FILE* g_trace_dump = nullptr;  // --trace-dump: every timeline's raw fields, as text

// Sets the NVFP4 tuning knob of environment variable `name`; "" resets it to the environment's
// value (its default where the variable is unset), so that a knob given on the command line holds
// for every row that does not set that knob itself (session 25's first call lost its ring and
// 48 KB runs to rows resetting the knobs to their defaults). The knobs are read once
// (kernels/common/tuning.h), so the cases below change them here. Each row prints the kernel that ran.
void set_knob(const char* name, const std::string& value) {
  std::string v = value;
  if (v.empty()) v = fp4qat::env::get(name).value_or("");
  fp4qat::tuning::set_nvfp4_tuning(fp4qat::tuning::nvfp4_tuning().with(name, v));
}
std::string g_only;                // run only cases whose name contains this (e.g. under a profiler)
std::vector<std::string> g_exact;  // --exact "A|B": run only the cases named exactly A or B

// "a:b:c" -> {"a", "b", "c"} with sep ':' (the benchmark's configuration strings; '|' for --exact).
std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> f;
  for (std::string c = s;;) {
    const auto p = c.find(sep);
    f.push_back(c.substr(0, p));
    if (p == std::string::npos) break;
    c = c.substr(p + 1);
  }
  return f;
}

double median_ms(const std::function<void()>& fn) {
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  for (int i = 0; i < g_warmup; ++i) fn();
  std::vector<float> ms;
  cudaEvent_t a, b;
  FP4QAT_CUDA_CHECK(cudaEventCreate(&a));
  FP4QAT_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < g_reps; ++i) {
    FP4QAT_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    FP4QAT_CUDA_CHECK(cudaEventRecord(b, stream));
    FP4QAT_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    FP4QAT_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  FP4QAT_CUDA_CHECK(cudaEventDestroy(a));
  FP4QAT_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.cpu().contiguous(), y = b.cpu().contiguous();
  return x.sizes() == y.sizes() && x.element_size() == y.element_size() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

struct Row {
  std::string name;
  double elems, bytes, ms;
  bool valid;
  std::string kernel;  // an NVFP4 row's last kernel, "-" for others
  int64_t ctas;        // its CTAs a SM where it is a one-read kernel (occupancy), else 0
};

// --trace: the staged2 kernel's per-slice timeline (kernels/bench_hooks.h nvfp4_trace) for one
// quantization of the MoE layer's w13 [128, 1536, 2048]: how long a slice's bytes take to land,
// wait for their expert, and take to quantize, and how many slices are in each state over time.
void trace_timeline(const char* name, const std::function<void()>& quantize) {
  constexpr int F = fp4qat::cuda_kernels::kNvfp4TraceFields;
  const int64_t cap = 1 << 16;
  at::Tensor buf = at::zeros({F * cap}, at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  quantize();
  quantize();
  FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
  fp4qat::cuda_kernels::nvfp4_trace(reinterpret_cast<unsigned long long*>(buf.data_ptr<int64_t>()), cap);
  quantize();
  FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
  fp4qat::cuda_kernels::nvfp4_trace(nullptr, 0);
  const at::Tensor h = buf.cpu();
  const int64_t* v = h.data_ptr<int64_t>();
  // it[i]: claimed, landed, complete, quantized, folded in (ns), CTA; ticket order
  std::vector<std::array<double, 6>> it;
  double t0 = 1e300, t1 = 0;
  for (int64_t t = 0; t < cap; ++t) {
    const int64_t* e = v + F * t;
    if (e[0] == 0 || e[1] == 0 || e[2] == 0 || e[3] == 0) continue;
    it.push_back({double(e[0]), double(e[1]), double(e[2]), double(e[3]), double(e[4]), double(e[5])});
    t0 = std::min(t0, double(e[0]));
    t1 = std::max(t1, double(e[3]));
  }
  if (it.empty()) {
    std::printf("%s: no trace (the staged2 kernel did not run)\n", name);
    return;
  }
  if (g_trace_dump != nullptr) {  // --trace-dump: the raw fields, ns from the first claim (fold-in -1: not recorded)
    std::fprintf(g_trace_dump, "# %s\n", name);
    for (const auto& x : it)
      std::fprintf(g_trace_dump, "%.0f %.0f %.0f %.0f %.0f %.0f\n", x[0] - t0, x[1] - t0, x[2] - t0, x[3] - t0,
                   x[4] > 0 ? x[4] - t0 : -1.0, x[5]);
  }
  // Mean and percentiles of durations (us; not empty).
  auto summary = [](std::vector<double> d) {
    std::sort(d.begin(), d.end());
    double mean = 0;
    for (double y : d) mean += y;
    mean /= d.size();
    char out[160];
    std::snprintf(out, sizeof out, "mean %6.2f  p10 %6.2f  p50 %6.2f  p90 %6.2f  max %7.2f us", mean, d[d.size() / 10],
                  d[d.size() / 2], d[d.size() * 9 / 10], d.back());
    return std::string(out);
  };
  auto stats = [&](int a, int b) {  // from field a to field b of each slice
    std::vector<double> d;
    for (const auto& x : it) d.push_back((x[b] - x[a]) / 1000.0);
    return summary(std::move(d));
  };
  std::printf("\n%s: %zu slices, %.1f us (first claim to last quantized)\n", name, it.size(), (t1 - t0) / 1000.0);
  std::printf("  claim -> landed        %s\n", stats(0, 1).c_str());
  std::printf("  landed -> complete     %s\n", stats(1, 2).c_str());
  std::printf("  complete -> quantized  %s\n", stats(2, 3).c_str());
  std::printf("  claim -> quantized     %s\n", stats(0, 3).c_str());
  if (it.front()[4] > 0) std::printf("  landed -> folded in    %s\n", stats(1, 4).c_str());
  {  // a CTA's idle time: from its last slice quantized to its next head's expert found complete
    std::map<int, std::vector<std::pair<double, double>>> per_cta;  // CTA -> (complete, quantized)
    for (const auto& x : it) per_cta[static_cast<int>(x[5])].push_back({x[2], x[3]});
    std::vector<double> idle;
    for (auto& [cta, v2] : per_cta) {
      std::sort(v2.begin(), v2.end());
      for (size_t i = 1; i < v2.size(); ++i) idle.push_back((v2[i].first - v2[i - 1].second) / 1000.0);
    }
    if (!idle.empty())
      std::printf("  head done -> next head complete (a CTA idle)  %s  (%zu CTAs)\n", summary(std::move(idle)).c_str(),
                  per_cta.size());
  }
  // Slices in each state, averaged over 20 us windows.
  const double bin = 20000.0;
  const int nb = static_cast<int>((t1 - t0) / bin) + 1;
  std::vector<std::array<double, 3>> occ(nb, {0, 0, 0});
  std::vector<double> landed(nb, 0);
  for (const auto& x : it) {
    for (int k = 0; k < 3; ++k) {
      const double a = x[k] - t0, b = x[k + 1] - t0;
      for (int i = static_cast<int>(a / bin); i <= static_cast<int>(b / bin) && i < nb; ++i) {
        const double lo = std::max(a, i * bin), hi = std::min(b, (i + 1) * bin);
        if (hi > lo) occ[i][k] += (hi - lo) / bin;
      }
    }
    landed[static_cast<int>((x[1] - t0) / bin)] += 1;
  }
  std::printf("  window (us)   loading  waiting  quantizing  slices landed\n");
  for (int i = 0; i < nb; ++i)
    std::printf("  %5.0f-%-5.0f %8.1f %8.1f %11.1f %14.0f\n", i * bin / 1000, (i + 1) * bin / 1000, occ[i][0],
                occ[i][1], occ[i][2], landed[i]);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_out, profile;
  bool trace = false, profile_4over6 = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc)
      g_reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--warmup" && i + 1 < argc)
      g_warmup = std::max(0, std::atoi(argv[++i]));
    else if (a == "--json" && i + 1 < argc)
      json_out = argv[++i];
    else if (a == "--profile-4over6")
      profile_4over6 = true;
    else if (a == "--only" && i + 1 < argc)
      g_only = argv[++i];
    else if (a == "--exact" && i + 1 < argc)
      g_exact = split_on(argv[++i], '|');
    else if (a == "--profile" && i + 1 < argc)
      profile = argv[++i];
    else if (a == "--trace")
      trace = true;
    else if (a == "--trace-dump" && i + 1 < argc) {
      trace = true;
      g_trace_dump = std::fopen(argv[++i], "w");
      if (g_trace_dump == nullptr) {
        std::fprintf(stderr, "fp4qat_bench_quantize: cannot write --trace-dump file %s\n", argv[i]);
        return 2;
      }
    }
    else {
      std::fprintf(stderr,
                   "usage: %s [--reps N] [--warmup N] [--json FILE] [--only SUBSTRING] [--exact \"NAME|NAME\"] "
                   "[--profile KERNEL[:THREADS[:SLOT_BYTES[:SLOTS]]] [--profile-4over6]] [--trace] [--trace-dump FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "fp4qat_bench_quantize: no CUDA device\n");
    return 1;
  }
  fp4qat::dev::register_nvfp4_variants();  // the shapes only the knobs below select (bench/dev/)
  cudaDeviceProp prop;
  FP4QAT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs, L2 %d MB)\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  auto cuda_bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::manual_seed(0);
  if (trace) {
    const at::Tensor w13 = at::randn({128, 1536, 2048}, cuda_bf16) * 0.02;
    const at::Tensor a13 = fp4qat::global_amax(w13);
    trace_timeline("nvfp4 w13, amax computed", [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D); });
    set_knob("FP4QAT_NVFP4_KERNEL", "staged2");
    trace_timeline("nvfp4 w13, given amax", [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D, a13); });
    set_knob("FP4QAT_NVFP4_KERNEL", "");
    trace_timeline("fake quant w13, amax computed", [&] { fp4qat::nvfp4_fake_quantize(w13, Blocks::k1D); });
    const fp4qat::NVFP4Rule four_over_six{true, 256.0f, false, false};  // M 256, MAE (issue 20's speed row)
    trace_timeline("nvfp4 w13 4over6 (M 256, MAE), amax computed",
                   [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D, std::nullopt, four_over_six); });
    trace_timeline("nvfp4 w13 4over6 (M 256, MAE), given amax",
                   [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D, a13, four_over_six); });
    set_knob("FP4QAT_NVFP4_KERNEL", "park");
    trace_timeline("nvfp4 w13, amax computed, park (256 threads x 48 KB x 2 + registers)",
                   [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D); });
    set_knob("FP4QAT_NVFP4_KERNEL", "");
    set_knob("FP4QAT_NVFP4_SLOTS", "3");
    set_knob("FP4QAT_NVFP4_SLOT_BYTES", "32768");
    set_knob("FP4QAT_NVFP4_THREADS", "256");
    trace_timeline("nvfp4 w13, amax computed, 256 x 32 KB x 3", [&] { fp4qat::nvfp4_quantize(w13, Blocks::k1D); });
    for (const char* k : {"FP4QAT_NVFP4_SLOTS", "FP4QAT_NVFP4_SLOT_BYTES", "FP4QAT_NVFP4_THREADS"}) set_knob(k, "");
    if (g_trace_dump != nullptr && std::fclose(g_trace_dump) != 0) {
      std::fprintf(stderr, "fp4qat_bench_quantize: writing the --trace-dump file failed\n");
      return 1;
    }
    return 0;
  }

  // Device-to-device copy bandwidth (bytes read + written), on a buffer of the MoE layer's size.
  const int64_t layer_elems = 128LL * (1536 * 2048 + 2048 * 768);  // 604 M
  double copy_gbs = 0;
  {
    at::Tensor src = at::empty({layer_elems}, cuda_bf16).uniform_(), dst = at::empty_like(src);
    const double ms = median_ms([&] { dst.copy_(src); });
    copy_gbs = 2.0 * layer_elems * 2 / (ms * 1e6);
    std::printf("d2d copy: %.3f ms for %.2f GB moved -> %.0f GB/s\n", ms, 4.0 * layer_elems / 1e9, copy_gbs);
  }

  // --profile: only the MoE layer's NVFP4 1D quantization with the given kernel settings, three
  // times (two launches each; under a profiler skip the first two launches), nothing validated;
  // --profile-4over6: with Four Over Six (M 256, MAE) instead of max6.
  if (!profile.empty()) {
    const std::vector<std::string> f = split_on(profile, ':');
    const char* names[] = {"FP4QAT_NVFP4_KERNEL", "FP4QAT_NVFP4_THREADS", "FP4QAT_NVFP4_SLOT_BYTES",
                           "FP4QAT_NVFP4_SLOTS"};
    for (size_t i = 0; i < f.size() && i < 4; ++i) set_knob(names[i], f[i].c_str());
    at::Tensor w13 = at::randn({128, 1536, 2048}, cuda_bf16) * 0.02, w2 = at::randn({128, 2048, 768}, cuda_bf16) * 0.02;
    const fp4qat::NVFP4Rule rule = profile_4over6 ? fp4qat::NVFP4Rule{true, 256.0f, false, false} : fp4qat::NVFP4Rule{};
    for (int i = 0; i < 3; ++i) {
      fp4qat::nvfp4_quantize(w13, Blocks::k1D, std::nullopt, rule);
      fp4qat::nvfp4_quantize(w2, Blocks::k1D, std::nullopt, rule);
    }
    FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
    return 0;
  }
  std::vector<Row> rows;
  // valid: a bool, or a callable returning one (evaluated only for the cases that run: the CPU
  // reference of a filtered-out case is not computed).
  auto add = [&](const std::string& name, double elems, double bytes_per_elem, const auto& valid_of,
                 const std::function<void()>& fn) {
    if (!g_only.empty() && name.find(g_only) == std::string::npos) return;
    if (!g_exact.empty() && std::find(g_exact.begin(), g_exact.end(), name) == g_exact.end()) return;
    bool valid;
    if constexpr (std::is_same_v<std::decay_t<decltype(valid_of)>, bool>)
      valid = valid_of;
    else
      valid = valid_of();
    const double ms = median_ms(fn);
    // NVFP4 rows: the kernel the last launch used, and a one-read kernel's CTAs a SM (a register count
    // that halves them shows here: bench/RESULTS.md session 25).
    const bool nvfp4 = name.rfind("nvfp4", 0) == 0 || name.rfind("fake-quant", 0) == 0;
    const std::string k = nvfp4 ? fp4qat::cuda_kernels::nvfp4_last_kernel() : "-";
    const bool one_read = k == "staged2" || k == "park" || k.rfind("staged2-", 0) == 0;
    rows.push_back({name, elems, elems * bytes_per_elem, ms, valid, k,
                    one_read ? fp4qat::cuda_kernels::nvfp4_last_ctas_per_sm() : 0});
  };
  const double nv_b = 2.0 + 0.5 + 1.0 / 16, mx_b = 2.0 + 1.0 + 1.0 / 32, fq_b = 2.0 + 2.0;

  // One 8192 x 8192 bf16 tensor (validated in full against the CPU reference).
  {
    at::Tensor x = at::randn({8192, 8192}, cuda_bf16);
    const at::Tensor xc = x.cpu();
    for (auto b : {Blocks::k1D, Blocks::k2D}) {
      const auto ok = [&] {
        const auto g = fp4qat::nvfp4_quantize(x, b);
        const auto c = fp4qat::nvfp4_quantize(xc, b);
        return same_bytes(g.codes, c.codes) && same_bytes(g.scales, c.scales) && same_bytes(g.s_dec, c.s_dec);
      };
      add(std::string("nvfp4 ") + fp4qat::to_string(b) + " 8192x8192", 8192.0 * 8192, nv_b, ok,
          [&] { fp4qat::nvfp4_quantize(x, b); });
    }
    {
      const auto ok = [&] {
        const auto g = fp4qat::mxfp8_quantize(x);
        const auto c = fp4qat::mxfp8_quantize(xc);
        return same_bytes(g.data, c.data) && same_bytes(g.scales, c.scales);
      };
      add("mxfp8 8192x8192", 8192.0 * 8192, mx_b, ok, [&] { fp4qat::mxfp8_quantize(x); });
    }
    {
      const auto ok = [&] {
        return same_bytes(fp4qat::nvfp4_fake_quantize(x, Blocks::k1D).values,
                          fp4qat::nvfp4_fake_quantize(xc, Blocks::k1D).values);
      };
      add("fake-quant 1d 8192x8192", 8192.0 * 8192, fq_b, ok, [&] { fp4qat::nvfp4_fake_quantize(x, Blocks::k1D); });
    }
    // The single tensor runs the fused two-pass kernel (one amax over 128 MB: more than the
    // chip holds). Its knobs: threads:chunk elements (rows = chunk / K, one at least; 131072:
    // 16 rows, as before session 8):L2 hint:unroll.
    for (const char* cfg : {"256:32768:0:1", "256:16384:0:1", "256:131072:0:1", "512:32768:0:1", "512:131072:0:1"}) {
      const std::vector<std::string> f = split_on(cfg, ':');
      set_knob("FP4QAT_NVFP4_KERNEL", "fused");
      set_knob("FP4QAT_NVFP4_THREADS", f[0].c_str());
      set_knob("FP4QAT_NVFP4_CHUNK_ELEMS", f[1].c_str());
      set_knob("FP4QAT_NVFP4_L2HINT", f[2].c_str());
      set_knob("FP4QAT_NVFP4_UNROLL", f[3].c_str());
      const auto ok = [&] {
        const auto g = fp4qat::nvfp4_quantize(x, Blocks::k1D);
        const auto c = fp4qat::nvfp4_quantize(xc, Blocks::k1D);
        return same_bytes(g.codes, c.codes) && same_bytes(g.scales, c.scales) && same_bytes(g.s_dec, c.s_dec);
      };
      add(std::string("nvfp4 1d 8192x8192 fused ") + cfg, 8192.0 * 8192, nv_b, ok,
          [&] { fp4qat::nvfp4_quantize(x, Blocks::k1D); });
      for (const char* v : {"FP4QAT_NVFP4_KERNEL", "FP4QAT_NVFP4_THREADS", "FP4QAT_NVFP4_CHUNK_ELEMS",
                            "FP4QAT_NVFP4_L2HINT", "FP4QAT_NVFP4_UNROLL"})
        set_knob(v, "");
    }
  }

  // One Qwen3-30B-A3B MoE layer: 128 experts, gate+up fused [128, 2*768, 2048] (one amax per
  // expert shared by gate and up: the fused rows), down [128, 2048, 768]. Two launches.
  {
    at::Tensor w13 = at::randn({128, 1536, 2048}, cuda_bf16) * 0.02;
    at::Tensor w2 = at::randn({128, 2048, 768}, cuda_bf16) * 0.02;
    auto check_experts = [&](const auto& quant, const auto& cpu_quant, const auto& eq) {
      // Experts are independent: validate experts 0, 1 and 127 against the CPU reference.
      bool ok = true;
      for (int64_t e : {0, 1, 127}) {
        ok &= eq(quant(w13)[e], cpu_quant(w13[e].cpu()));
        ok &= eq(quant(w2)[e], cpu_quant(w2[e].cpu()));
      }
      return ok;
    };
    // The layer's NVFP4 codes and scales, and its fake-quant values, with the current settings equal
    // the CPU reference.
    auto nvfp4_valid = [&](Blocks b) {
      return check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b).codes; },
                           [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b).codes; }, same_bytes) &&
             check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b).scales; },
                           [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b).scales; }, same_bytes);
    };
    auto fake_valid = [&] {
      return check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k1D).values; },
                           [&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k1D).values; },
                           same_bytes);
    };
    for (auto b : {Blocks::k1D, Blocks::k2D})
      for (const char* variant : {"default", "staged", "fused", "staged2"}) {
        if (b == Blocks::k2D && std::string(variant) == "staged2") continue;  // 1D only (falls back to fused)
        if (std::string(variant) != "default") set_knob("FP4QAT_NVFP4_KERNEL", variant);
        const auto ok = [&] { return nvfp4_valid(b); };
        add(std::string("nvfp4 ") + fp4qat::to_string(b) + " MoE layer [" + variant + "]", double(layer_elems), nv_b,
            ok, [&] {
              fp4qat::nvfp4_quantize(w13, b);
              fp4qat::nvfp4_quantize(w2, b);
            });
        set_knob("FP4QAT_NVFP4_KERNEL", "");
      }
    // 2D fake quant (the QAT forward's weights with weight_blocks: 2d): the default (staged, one
    // read) and the fused two-pass kernel.
    for (const char* variant : {"default", "fused"}) {
      if (std::string(variant) != "default") set_knob("FP4QAT_NVFP4_KERNEL", variant);
      const auto ok = [&] {
        return check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k2D).values; },
                             [&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k2D).values; },
                             same_bytes);
      };
      add(std::string("fake-quant 2d MoE layer [") + variant + "]", double(layer_elems), fq_b, ok, [&] {
        fp4qat::nvfp4_fake_quantize(w13, Blocks::k2D);
        fp4qat::nvfp4_fake_quantize(w2, Blocks::k2D);
      });
      set_knob("FP4QAT_NVFP4_KERNEL", "");
    }
    // A given amax (a gated pair's shared amax; weights whose amax is known): one streaming pass,
    // by the default (the fused kernel) and by staged2.
    {
      const at::Tensor a13 = fp4qat::global_amax(w13), a2 = fp4qat::global_amax(w2);
      for (const char* variant : {"default", "staged2"}) {
        if (std::string(variant) != "default") set_knob("FP4QAT_NVFP4_KERNEL", variant);
        const auto ok = [&] {
          return check_experts(
              [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, Blocks::k1D, fp4qat::global_amax(w)).codes; },
              [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, Blocks::k1D, fp4qat::global_amax(w)).codes; },
              same_bytes);
        };
        add(std::string("nvfp4 1d MoE layer, given amax [") + variant + "]", double(layer_elems), nv_b, ok, [&] {
          fp4qat::nvfp4_quantize(w13, Blocks::k1D, a13);
          fp4qat::nvfp4_quantize(w2, Blocks::k1D, a2);
        });
        add(std::string("fake-quant 1d MoE, given amax [") + variant + "]", double(layer_elems), fq_b, ok, [&] {
          fp4qat::nvfp4_fake_quantize(w13, Blocks::k1D, a13);
          fp4qat::nvfp4_fake_quantize(w2, Blocks::k1D, a2);
        });
        set_knob("FP4QAT_NVFP4_KERNEL", "");
      }
    }
    // Sweep of the fused kernel's knobs, 1D: threads:chunk elements:CTAs per SM (0 = occupancy):
    // lag MB:L2 hint (0 cg/cs, 1 evict-last then demote, 2 evict-last then streaming):unroll.
    // (The L2-hint and unroll variants were measured slower twice, bench/RESULTS.md; one of each kept.)
    for (const char* cfg : {"256:32768:0:12:0:1", "256:32768:0:24:0:1", "256:32768:0:24:1:1", "256:32768:0:12:0:2",
                            "512:32768:0:24:0:1"}) {
      const std::vector<std::string> f = split_on(cfg, ':');
      set_knob("FP4QAT_NVFP4_KERNEL", "fused");
      set_knob("FP4QAT_NVFP4_THREADS", f[0].c_str());
      set_knob("FP4QAT_NVFP4_CHUNK_ELEMS", f[1].c_str());
      if (f[2] != "0") set_knob("FP4QAT_NVFP4_CTAS_PER_SM", f[2].c_str());
      set_knob("FP4QAT_NVFP4_LAG_BYTES", std::to_string(std::stoll(f[3]) << 20).c_str());
      set_knob("FP4QAT_NVFP4_L2HINT", f[4].c_str());
      set_knob("FP4QAT_NVFP4_UNROLL", f[5].c_str());
      const auto ok = [&] { return nvfp4_valid(Blocks::k1D); };
      add(std::string("nvfp4 1d MoE fused ") + cfg, double(layer_elems), nv_b, ok, [&] {
        fp4qat::nvfp4_quantize(w13, Blocks::k1D);
        fp4qat::nvfp4_quantize(w2, Blocks::k1D);
      });
      for (const char* v :
           {"FP4QAT_NVFP4_KERNEL", "FP4QAT_NVFP4_THREADS", "FP4QAT_NVFP4_CHUNK_ELEMS", "FP4QAT_NVFP4_CTAS_PER_SM",
            "FP4QAT_NVFP4_LAG_BYTES", "FP4QAT_NVFP4_L2HINT", "FP4QAT_NVFP4_UNROLL"})
        set_knob(v, "");
    }
    // The multi-buffered one-read kernel: threads:bytes per slot:slots per CTA.
    for (const char* kcfg : {"staged2:512:49152:2", "park:256:49152:2", "staged2:256:32768:3", "park:256:32768:2",
                             "park:256:49152:2", "staged2:512:49152:2", "park:256:24576:2", "staged2:256:32768:3"}) {
      const std::vector<std::string> f = split_on(kcfg, ':');
      const std::string cfg = f[0] + " " + f[1] + ":" + f[2] + " x" + f[3];
      set_knob("FP4QAT_NVFP4_KERNEL", f[0].c_str());
      set_knob("FP4QAT_NVFP4_THREADS", f[1].c_str());
      set_knob("FP4QAT_NVFP4_SLOT_BYTES", f[2].c_str());
      set_knob("FP4QAT_NVFP4_SLOTS", f[3].c_str());
      const auto ok = [&] { return nvfp4_valid(Blocks::k1D); };
      add("nvfp4 1d MoE " + cfg, double(layer_elems), nv_b, ok, [&] {
        fp4qat::nvfp4_quantize(w13, Blocks::k1D);
        fp4qat::nvfp4_quantize(w2, Blocks::k1D);
      });
      const auto okf = [&] { return fake_valid(); };
      add("fake-quant 1d MoE " + cfg, double(layer_elems), fq_b, okf, [&] {
        fp4qat::nvfp4_fake_quantize(w13, Blocks::k1D);
        fp4qat::nvfp4_fake_quantize(w2, Blocks::k1D);
      });
      for (const char* v :
           {"FP4QAT_NVFP4_KERNEL", "FP4QAT_NVFP4_THREADS", "FP4QAT_NVFP4_SLOT_BYTES", "FP4QAT_NVFP4_SLOTS"})
        set_knob(v, "");
    }
    // The 2026 rules (issue 20: Four Over Six at most 1.3x the max6 quantizer's time on this layer):
    // 4over6 M 256 MAE (TransformerEngine's default) and MSE, 1D and 2D; row-scaled max6 and 4over6.
    for (const auto& [label, rule] :
         std::vector<std::pair<std::string, fp4qat::NVFP4Rule>>{{"4over6-256-mae", {true, 256.0f, false, false}},
                                                                {"4over6-256-mse", {true, 256.0f, true, false}},
                                                                {"4over6-448-mae", {true, 448.0f, false, false}},
                                                                {"rows-max6", {false, 256.0f, false, true}},
                                                                {"rows-4over6-256-mae", {true, 256.0f, false, true}}})
      for (auto b : {Blocks::k1D, Blocks::k2D}) {
        if (rule.row_scaled && b == Blocks::k2D) continue;
        const auto r = rule;  // a structured binding cannot be captured before C++20
        const auto ok = [&] {
          return check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b, std::nullopt, r).codes; },
                               [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b, std::nullopt, r).codes; },
                               same_bytes) &&
                 check_experts(
                     [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b, std::nullopt, r).scales; },
                     [&](const at::Tensor& w) { return fp4qat::nvfp4_quantize(w, b, std::nullopt, r).scales; },
                     same_bytes);
        };
        add(std::string("nvfp4 ") + fp4qat::to_string(b) + " MoE layer " + label, double(layer_elems), nv_b, ok, [&] {
          fp4qat::nvfp4_quantize(w13, b, std::nullopt, r);
          fp4qat::nvfp4_quantize(w2, b, std::nullopt, r);
        });
      }
    // Four Over Six's one-read kernel under other slot sizes (its shared memory sets the CTAs a SM).
    for (const char* slot : {"24576", "32768", "40960", "49152"}) {
      const fp4qat::NVFP4Rule r{true, 256.0f, false, false};
      add(std::string("nvfp4 1d MoE layer 4over6-256-mae, slot ") + slot, double(layer_elems), nv_b, true, [&, slot] {
        set_knob("FP4QAT_NVFP4_SLOT_BYTES", slot);
        fp4qat::nvfp4_quantize(w13, Blocks::k1D, std::nullopt, r);
        fp4qat::nvfp4_quantize(w2, Blocks::k1D, std::nullopt, r);
        set_knob("FP4QAT_NVFP4_SLOT_BYTES", "");
      });
    }
    // ... with 384 threads a CTA (12 warps; two CTAs a SM within 80 registers: ncu showed the
    // kernel latency bound at 4 warps a scheduler, session 23) ...
    for (const char* threads : {"384"}) {
      const fp4qat::NVFP4Rule r{true, 256.0f, false, false};
      add(std::string("nvfp4 1d MoE layer 4over6-256-mae, ") + threads + " threads", double(layer_elems), nv_b, true,
          [&, threads] {
            set_knob("FP4QAT_NVFP4_THREADS", threads);
            fp4qat::nvfp4_quantize(w13, Blocks::k1D, std::nullopt, r);
            fp4qat::nvfp4_quantize(w2, Blocks::k1D, std::nullopt, r);
            set_knob("FP4QAT_NVFP4_THREADS", "");
          });
    }
    // ... with the amax given (no wait for each expert's amax: what is left is the compute) ...
    {
      const fp4qat::NVFP4Rule r{true, 256.0f, false, false};
      const at::Tensor a13 = fp4qat::global_amax(w13), a2 = fp4qat::global_amax(w2);
      add("nvfp4 1d MoE layer 4over6-256-mae, given amax", double(layer_elems), nv_b, true, [&, r] {
        fp4qat::nvfp4_quantize(w13, Blocks::k1D, a13, r);
        fp4qat::nvfp4_quantize(w2, Blocks::k1D, a2, r);
      });
    }
    // ... and with three slots a CTA (the head older by a slot: its expert's amax more often ready; with
    // 2-byte block maxima, bf16, three of 32 KB still leave two CTAs a SM).
    for (const char* slot : {"24576", "28672", "32768"}) {
      const fp4qat::NVFP4Rule r{true, 256.0f, false, false};
      add(std::string("nvfp4 1d MoE layer 4over6-256-mae, 3 slots of ") + slot, double(layer_elems), nv_b, true,
          [&, slot] {
            set_knob("FP4QAT_NVFP4_SLOT_BYTES", slot);
            set_knob("FP4QAT_NVFP4_SLOTS", "3");
            fp4qat::nvfp4_quantize(w13, Blocks::k1D, std::nullopt, r);
            fp4qat::nvfp4_quantize(w2, Blocks::k1D, std::nullopt, r);
            set_knob("FP4QAT_NVFP4_SLOT_BYTES", "");
            set_knob("FP4QAT_NVFP4_SLOTS", "");
          });
    }
    {
      const auto ok = [&] {
        return check_experts([&](const at::Tensor& w) { return fp4qat::mxfp8_quantize(w).data; },
                             [&](const at::Tensor& w) { return fp4qat::mxfp8_quantize(w).data; }, same_bytes);
      };
      add("mxfp8 MoE layer (128 experts)", double(layer_elems), mx_b, ok, [&] {
        fp4qat::mxfp8_quantize(w13);
        fp4qat::mxfp8_quantize(w2);
      });
      // The kernel before session 13: one block a thread an iteration.
      add("mxfp8 MoE layer (128 experts), 1 block a thread", double(layer_elems), mx_b, ok, [&] {
        fp4qat::cuda_kernels::set_mxfp8_units(1);
        fp4qat::mxfp8_quantize(w13);
        fp4qat::mxfp8_quantize(w2);
        fp4qat::cuda_kernels::set_mxfp8_units(0);
      });
    }
    {
      const auto ok = [&] {
        return check_experts([&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k1D).values; },
                             [&](const at::Tensor& w) { return fp4qat::nvfp4_fake_quantize(w, Blocks::k1D).values; },
                             same_bytes);
      };
      add("fake-quant 1d MoE layer", double(layer_elems), fq_b, ok, [&] {
        fp4qat::nvfp4_fake_quantize(w13, Blocks::k1D);
        fp4qat::nvfp4_fake_quantize(w2, Blocks::k1D);
      });
    }
  }

  std::printf("\n%-40s %6s %10s %10s %10s %9s  %s\n", "case", "valid", "ms", "GB/s", "floor ms", "% floor",
              "kernel (CTAs a SM)");
  fp4qat::json::Value out = fp4qat::json::Value::object();
  out.set("device", prop.name);
  out.set("copy_gbs", copy_gbs);
  fp4qat::json::Value cases = fp4qat::json::Value::array();
  bool all_valid = true;
  for (const auto& r : rows) {
    const double gbs = r.bytes / (r.ms * 1e6), floor_ms = r.bytes / (copy_gbs * 1e6);
    std::printf("%-40s %6s %10.4f %10.0f %10.4f %8.1f%%  %s", r.name.c_str(), r.valid ? "yes" : "NO", r.ms, gbs,
                floor_ms, 100.0 * floor_ms / r.ms, r.kernel.c_str());
    if (r.ctas > 0) std::printf(" (%lld)", static_cast<long long>(r.ctas));
    std::printf("\n");
    all_valid &= r.valid;
    cases.push_back(fp4qat::json::Value::object(
        {{"name", r.name}, {"valid", r.valid}, {"ms", r.ms}, {"gbs", gbs}, {"floor_ms", floor_ms}, {"kernel", r.kernel},
         {"ctas_per_sm", r.ctas}}));
  }
  out.set("cases", cases);
  if (!json_out.empty()) {
    FILE* f = std::fopen(json_out.c_str(), "w");
    if (f) {
      std::fputs(out.dump(2).c_str(), f);
      std::fclose(f);
    }
  }
  return all_valid ? 0 : 1;
}
