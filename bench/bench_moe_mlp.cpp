// bench/bench_moe_mlp.cpp — forward+backward of one MoE expert MLP at Qwen3-30B-A3B shapes:
// 16384 tokens x top-8 over 128 experts (uniform routing: 1024 rows per expert), H = 2048,
// I = 768: grouped gate/up [128, 1536, 2048] -> SwiGLU -> grouped down [128, 2048, 768].
// Paths: BF16 ours (the model's expert GEMMs, model::LinearPolicy::grouped: at::bmm on the
// [E, M, *] batch for equal row counts, else at::_grouped_mm; the ratios' base), BF16
// at::_grouped_mm (torch's), NVFP4 high_precision, NVFP4 dequantized (nvfp4_grouped_linear:
// with uniform routing its padded batched CUDA path, Mmax = T / E, no padding rows). CUDA-event
// median of --reps after --warmup, TFLOP/s (6 * 2 * T * H * I * 3 flops fwd+bwd), peak GPU memory
// of each path (allocated during a step, above what is live before it). The interleaved table also
// times the 2026 recipes (Four Over Six, row-scaled activations, W4A16) against their issue-20
// targets' baselines.
// Then the cost of each quantization of the step alone (weights, activations: uniform in the
// [E, M, K] batch and in place, skewed in place, by the default and the two-pass row kernels),
// and (unless --no-export) the export's cost in the training loop.
//   fp4qat_bench_moe_mlp [--reps 10] [--warmup 3] [--tokens 16384] [--no-export] [--trace PATH]...
// --trace PATH (a path's name, repeatable): only a Kineto timeline of those paths' steps.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "autograd/nvfp4_linear.h"
#include "kernels/bench_hooks.h"
#include "kernels/common/cuda_check.h"
#include "kernels/gemm/scaled_bmm.h"
#include "qat/export.h"
#include "io/fs.h"
#include "model/qwen3_moe.h"
#include "trainer/timeline.h"

namespace {

double median_ms(const std::function<void()>& fn, int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  cudaEvent_t a, b;
  FP4QAT_CUDA_CHECK(cudaEventCreate(&a));
  FP4QAT_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    FP4QAT_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    FP4QAT_CUDA_CHECK(cudaEventRecord(b, stream));
    FP4QAT_CUDA_CHECK(cudaEventSynchronize(b));
    float t;
    FP4QAT_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The timeline (trainer/timeline.h) of `steps` steps after 3 warm-up steps.
void trace_steps(const std::string& name, const std::function<void()>& step, int steps) {
  for (int i = 0; i < 3; ++i) step();
  fp4qat::train::Timeline t(at::Device(at::kCUDA));
  for (int i = 0; i < steps; ++i) step();
  std::printf("\n%s", t.stop(steps, "\"" + name + "\"").c_str());
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 10, warmup = 3;
  int64_t tokens = 16384;
  bool with_export = true;
  std::vector<std::string> traced;  // --trace PATH (repeatable): timelines of these paths only
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--no-export") with_export = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--no-export") {
      --i;
      continue;
    }
    if (k == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (k == "--warmup")
      warmup = std::atoi(argv[i + 1]);
    else if (k == "--tokens")
      tokens = std::atoll(argv[i + 1]);
    else if (k == "--trace")
      traced.push_back(argv[i + 1]);
  }
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  const int64_t E = 128, topk = 8, H = 2048, I = 768, T = tokens * topk;
  torch::manual_seed(0);
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor counts = at::full({E}, T / E, at::kLong);
  const at::Tensor offs = at::cumsum(counts, 0).to(at::kInt).cuda();
  at::Tensor x = (at::randn({T, H}, opt)).requires_grad_(true);
  at::Tensor w13 = (at::randn({E, 2 * I, H}, opt) * 0.02).requires_grad_(true);
  at::Tensor w2 = (at::randn({E, H, I}, opt) * 0.02).requires_grad_(true);
  const at::Tensor gy = at::randn({T, H}, opt);
  const double flops = 3.0 * 2.0 * T * H * (2.0 * I) + 3.0 * 2.0 * T * I * H;  // fwd + 2x bwd, both GEMMs

  auto swiglu = [&](const at::Tensor& h) {
    auto parts = h.chunk(2, 1);  // rows of w13: gate first, then up
    return at::silu(parts[0]) * parts[1];
  };
  struct Path {
    std::string name;
    std::function<at::Tensor()> fwd;
  };
  // One MLP step of each kind: BF16 on the given offsets; NVFP4 with the given counts, mode and
  // (optionally) pre-quantized weights; `fused` / `grouped` set the diagnostic switches for it.
  auto bf16_mlp = [&](const at::Tensor& offsets) {
    at::Tensor h = at::_grouped_mm(x, w13.transpose(1, 2), offsets);
    return at::_grouped_mm(swiglu(h), w2.transpose(1, 2), offsets);
  };
  // Our BF16 path: the model's expert GEMMs (model::LinearPolicy::grouped: one batched GEMM each
  // way when every expert has the same row count, as the NVFP4 path then runs; else at::_grouped_mm).
  fp4qat::model::LinearPolicy plain;
  auto bf16_ours = [&](const at::Tensor& c) {
    at::Tensor h = plain.grouped("w13", x, w13, c);
    return plain.grouped("w2", swiglu(h), w2, c);
  };
  auto nvfp4_mlp_with = [&](const at::Tensor& c, const fp4qat::autograd::NVFP4LinearOptions& o,
                            const fp4qat::NVFP4Operand* q13, const fp4qat::NVFP4Operand* q2, bool fused = true,
                            bool grouped = true) {
    fp4qat::gemm::set_fused_epilogue(fused);
    fp4qat::gemm::set_grouped_gemm(grouped);
    at::Tensor h = fp4qat::autograd::nvfp4_grouped_linear(x, w13, c, o, std::nullopt, q13);
    at::Tensor y = fp4qat::autograd::nvfp4_grouped_linear(swiglu(h), w2, c, o, std::nullopt, q2);
    fp4qat::gemm::set_fused_epilogue(true);
    fp4qat::gemm::set_grouped_gemm(true);
    return y;
  };
  auto nvfp4_mlp = [&](const at::Tensor& c, fp4qat::autograd::Backward mode, const fp4qat::NVFP4Operand* q13,
                       const fp4qat::NVFP4Operand* q2, bool fused = true, bool grouped = true) {
    return nvfp4_mlp_with(c, fp4qat::autograd::NVFP4LinearOptions{fp4qat::Blocks::k1D, mode}, q13, q2, fused, grouped);
  };
  // The 2026 recipes (issue 20; qat.md): Four Over Six on weights and activations, row-scaled
  // activations, W4A16 — high_precision backward, weights quantized in the step.
  auto recipe = [&](bool four, bool rows, bool w4a16) {
    fp4qat::autograd::NVFP4LinearOptions o{fp4qat::Blocks::k1D, fp4qat::autograd::Backward::kHighPrecision};
    const fp4qat::NVFP4Rule four_rule{true, 256.0f, false, false};
    if (four) o.rules.weights = o.rules.activations = four_rule;
    o.rules.activations.row_scaled = rows;
    o.rules.w4a16 = w4a16;
    return o;
  };
  const fp4qat::autograd::NVFP4LinearOptions r_rows = recipe(false, true, false), r_four = recipe(true, false, false),
                                             r_four_rows = recipe(true, true, false),
                                             r_w4a16 = recipe(false, false, true);
  // Routings beside the uniform one: skewed (expert e's share proportional to 1 + 0.75 sin(e);
  // max/mean ~1.7) and a hot expert (expert 0 takes a quarter of the rows, far past the padding
  // limit); row counts multiples of 8, the remainder to expert 0.
  auto routing = [&](const std::function<double(int64_t)>& share) {
    double tot = 0;
    for (int64_t e = 0; e < E; ++e) tot += share(e);
    std::vector<int64_t> c(E);
    int64_t used = 0;
    for (int64_t e = 0; e < E; ++e) used += c[e] = static_cast<int64_t>(T * share(e) / tot) / 8 * 8;
    c[0] += T - used;
    return at::tensor(c, at::kLong);
  };
  const at::Tensor skewed = routing([](int64_t e) { return 1.0 + 0.75 * std::sin(static_cast<double>(e)); });
  const at::Tensor hot = routing([&](int64_t e) { return e == 0 ? (E - 1) / 3.0 : 1.0; });
  auto offsets_of = [](const at::Tensor& c) { return at::cumsum(c, 0).to(at::kInt).cuda(); };
  const at::Tensor skewed_offs = offsets_of(skewed), hot_offs = offsets_of(hot);
  // The weights' quantization reused (qat.cache_weights: the second and later micro-batches of an
  // optimizer step with grad_accum > 1; and every step when the export's quantization is shared).
  fp4qat::NVFP4Operand pq13, pq2;
  {
    torch::NoGradGuard ng;
    pq13 = fp4qat::nvfp4_quantize_and_fake(w13.detach(), fp4qat::Blocks::k1D);
    pq2 = fp4qat::nvfp4_quantize_and_fake(w2.detach(), fp4qat::Blocks::k1D);
  }
  using fp4qat::autograd::Backward;
  const Backward hp = Backward::kHighPrecision, dq = Backward::kDequantized;
  // An NVFP4 step whose forward GEMM of equal counts uses batched tile t (-1: the grouped GEMM).
  auto with_tile = [&](int t, const at::Tensor& c, Backward mode) {
    const int before = fp4qat::gemm::batched_gemm_tile();
    fp4qat::gemm::set_batched_gemm_tile(t);
    at::Tensor y = nvfp4_mlp(c, mode, nullptr, nullptr);
    fp4qat::gemm::set_batched_gemm_tile(before);
    return y;
  };
  std::vector<Path> paths = {
      {"bf16 (ours)", [&] { return bf16_ours(counts); }},
      {"bf16 (at::_grouped_mm)", [&] { return bf16_mlp(offs); }},
      {"nvfp4 high_precision", [&] { return nvfp4_mlp(counts, hp, nullptr, nullptr); }},
      {"nvfp4 dequantized", [&] { return nvfp4_mlp(counts, dq, nullptr, nullptr); }},
      {"nvfp4 high_precision, cached w", [&] { return nvfp4_mlp(counts, hp, &pq13, &pq2); }},
      {"nvfp4 dequantized, cached w", [&] { return nvfp4_mlp(counts, dq, &pq13, &pq2); }},
      // Diagnostic: without the Hopper grouped GEMM (batched cuBLAS GEMM + fused epilogue pass).
      {"nvfp4 high_precision, cached w, bmm", [&] { return nvfp4_mlp(counts, hp, &pq13, &pq2, true, false); }},
      {"bf16 skewed routing", [&] { return bf16_mlp(skewed_offs); }},
      {"nvfp4 high_precision skewed", [&] { return nvfp4_mlp(skewed, hp, nullptr, nullptr); }},
      {"nvfp4 high_precision skewed, cached w", [&] { return nvfp4_mlp(skewed, hp, &pq13, &pq2); }},
      {"bf16 hot expert", [&] { return bf16_mlp(hot_offs); }},
      {"nvfp4 high_precision hot expert", [&] { return nvfp4_mlp(hot, hp, nullptr, nullptr); }},
      // Diagnostic: the unfused ATen epilogue (fp32 result scaled in place, cast, rows gathered:
      // three passes) and no grouped GEMM: what the fused epilogue kernel saves.
      {"nvfp4 high_precision, unfused epi", [&] { return nvfp4_mlp(counts, hp, nullptr, nullptr, false, false); }},
  };
  if (!traced.empty()) {
    // Besides the paths above, the recipes of the interleaved table that issue 20 sets targets for.
    paths.push_back({"recipe row-scaled", [&] { return nvfp4_mlp_with(counts, r_rows, nullptr, nullptr); }});
    paths.push_back({"recipe 4over6", [&] { return nvfp4_mlp_with(counts, r_four, nullptr, nullptr); }});
    for (const std::string& want : traced) {
      const auto it = std::find_if(paths.begin(), paths.end(), [&](const Path& p) { return p.name == want; });
      if (it == paths.end()) {
        std::fprintf(stderr, "--trace: no path named \"%s\"\n", want.c_str());
        return 2;
      }
      trace_steps(
          want,
          [&] {
            x.mutable_grad() = at::Tensor();
            w13.mutable_grad() = at::Tensor();
            w2.mutable_grad() = at::Tensor();
            it->fwd().backward(gy);
          },
          5);
    }
    return 0;
  }
  std::printf("MoE MLP fwd+bwd: %lld tokens x top-%lld, %lld experts, H %lld, I %lld (%.1f TFLOP per step)\n",
              (long long)tokens, (long long)topk, (long long)E, (long long)H, (long long)I, flops / 1e12);
  std::printf("nvfp4 grouped path: %s\n",
              fp4qat::gemm::grouped_gemm_supported(x, 2 * I, H, at::kBFloat16)
                  ? "CUTLASS GEMM with alpha in its epilogue; uniform routing: x is the [E, M, K] batch (batched "
                    "GEMM unless FP4QAT_BATCHED_GEMM=-1); "
                    "skewed, high_precision: in place (row-range quantization, at::_grouped_mm backward)"
                  : "padded batch, batched GEMMs and a fused epilogue");
  std::printf("%-36s %10s %10s %12s %14s\n", "path", "ms", "TFLOP/s", "vs bf16", "peak GiB");
  double bf16_ms = 0, qat_ms = 0;
  for (const auto& p : paths) {
    auto step = [&] {
      x.mutable_grad() = at::Tensor();
      w13.mutable_grad() = at::Tensor();
      w2.mutable_grad() = at::Tensor();
      p.fwd().backward(gy);
    };
    step();
    FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    const double base = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
    const double ms = median_ms(step, reps, warmup);
    const double peak = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak - base;
    if (bf16_ms == 0) bf16_ms = ms;  // "bf16 (ours)", the first path
    if (p.name == "nvfp4 high_precision") qat_ms = ms;
    std::printf("%-36s %10.3f %10.1f %11.2fx %14.2f\n", p.name.c_str(), ms, flops / (ms * 1e9), ms / bf16_ms,
                peak / (1024.0 * 1024 * 1024));
  }

  // The ratios to BF16 from interleaved rounds: the BF16 step moves by a few percent between
  // runs and over a run (clocks, temperature), so each round times `steps` steps of every path
  // back to back and the ratio is taken within the round; median over the rounds.
  {
    const int rounds = 7, steps = 20;
    struct Timed {
      std::string name;
      std::function<at::Tensor()> fwd;
      std::vector<double> ms, ratio;
    };
    std::vector<Timed> ts = {
        {"bf16 (ours)", [&] { return bf16_ours(counts); }, {}, {}},
        {"bf16 (at::_grouped_mm)", [&] { return bf16_mlp(offs); }, {}, {}},
        {"nvfp4 high_precision", [&] { return nvfp4_mlp(counts, hp, nullptr, nullptr); }, {}, {}},
        {"nvfp4 high_precision, cached w", [&] { return nvfp4_mlp(counts, hp, &pq13, &pq2); }, {}, {}},
        {"nvfp4 dequantized", [&] { return nvfp4_mlp(counts, dq, nullptr, nullptr); }, {}, {}},
        // The forward GEMM of equal counts: the grouped GEMM, the other batched tile.
        {"nvfp4 high_precision, grouped fwd", [&] { return with_tile(-1, counts, hp); }, {}, {}},
        {"nvfp4 high_precision, batched 256x128 c1x2", [&] { return with_tile(1, counts, hp); }, {}, {}},
        {"bf16 skewed routing", [&] { return bf16_mlp(skewed_offs); }, {}, {}},
        {"nvfp4 high_precision skewed", [&] { return nvfp4_mlp(skewed, hp, nullptr, nullptr); }, {}, {}},
        // The 2026 recipes (issue 20): targets row-scaled <= 1.03x "nvfp4 high_precision", W4A16
        // <= 1.05x "bf16 (ours)" (printed below the table); Four Over Six for the record.
        {"recipe row-scaled", [&] { return nvfp4_mlp_with(counts, r_rows, nullptr, nullptr); }, {}, {}},
        {"recipe 4over6", [&] { return nvfp4_mlp_with(counts, r_four, nullptr, nullptr); }, {}, {}},
        {"recipe 4over6 + row-scaled", [&] { return nvfp4_mlp_with(counts, r_four_rows, nullptr, nullptr); }, {}, {}},
        {"recipe W4A16", [&] { return nvfp4_mlp_with(counts, r_w4a16, nullptr, nullptr); }, {}, {}},
        // W4A16 with the weights' quantization reused (qat.cache_weights: micro-batches 2.. of an
        // optimizer step with train.grad_accum > 1); its weights' rule is max6, pq13 / pq2's.
        {"recipe W4A16, cached w", [&] { return nvfp4_mlp_with(counts, r_w4a16, &pq13, &pq2); }, {}, {}},
        {"recipe row-scaled skewed", [&] { return nvfp4_mlp_with(skewed, r_rows, nullptr, nullptr); }, {}, {}},
        {"recipe W4A16 skewed", [&] { return nvfp4_mlp_with(skewed, r_w4a16, nullptr, nullptr); }, {}, {}}};
    auto stream = at::cuda::getCurrentCUDAStream().stream();
    cudaEvent_t a, b;
    FP4QAT_CUDA_CHECK(cudaEventCreate(&a));
    FP4QAT_CUDA_CHECK(cudaEventCreate(&b));
    for (int r = 0; r < rounds; ++r)
      for (auto& t : ts) {
        auto step = [&] {
          x.mutable_grad() = at::Tensor();
          w13.mutable_grad() = at::Tensor();
          w2.mutable_grad() = at::Tensor();
          t.fwd().backward(gy);
        };
        step();  // warm-up of this path after the previous one
        FP4QAT_CUDA_CHECK(cudaEventRecord(a, stream));
        for (int i = 0; i < steps; ++i) step();
        FP4QAT_CUDA_CHECK(cudaEventRecord(b, stream));
        FP4QAT_CUDA_CHECK(cudaEventSynchronize(b));
        float ms;
        FP4QAT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        t.ms.push_back(ms / steps);
      }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::printf(
        "\ninterleaved: %d rounds x %d steps per path; ratio within each round (uniform paths to bf16 (ours), skewed "
        "to bf16 skewed)\n",
        rounds, steps);
    std::printf("%-40s %10s %12s %18s\n", "path", "ms (med)", "ratio (med)", "ratio range");
    const size_t skewed_base = static_cast<size_t>(
        std::find_if(ts.begin(), ts.end(), [](const Timed& t) { return t.name == "bf16 skewed routing"; }) -
        ts.begin());
    for (size_t i = 0; i < ts.size(); ++i) {
      const size_t base = ts[i].name.find("skewed") != std::string::npos ? skewed_base : 0;
      for (int r = 0; r < rounds; ++r) ts[i].ratio.push_back(ts[i].ms[r] / ts[base].ms[r]);
      std::printf("%-40s %10.3f %11.3fx %10.3f..%.3f\n", ts[i].name.c_str(), med(ts[i].ms), med(ts[i].ratio),
                  *std::min_element(ts[i].ratio.begin(), ts[i].ratio.end()),
                  *std::max_element(ts[i].ratio.begin(), ts[i].ratio.end()));
    }
    // The recipes against their targets' baselines, ratio within each round, median over rounds.
    auto index_of = [&](const std::string& n) {
      return static_cast<size_t>(std::find_if(ts.begin(), ts.end(), [&](const Timed& t) { return t.name == n; }) -
                                 ts.begin());
    };
    std::printf("\nrecipes (issue 20 targets: row-scaled <= 1.03x per-tensor NVFP4, W4A16 <= 1.05x bf16)\n");
    for (const auto& [name, base] :
         std::vector<std::pair<std::string, std::string>>{{"recipe row-scaled", "nvfp4 high_precision"},
                                                          {"recipe 4over6", "nvfp4 high_precision"},
                                                          {"recipe 4over6 + row-scaled", "nvfp4 high_precision"},
                                                          {"recipe W4A16", "bf16 (ours)"},
                                                          {"recipe W4A16, cached w", "bf16 (ours)"},
                                                          {"recipe row-scaled skewed", "nvfp4 high_precision skewed"},
                                                          {"recipe W4A16 skewed", "bf16 skewed routing"}}) {
      const size_t i = index_of(name), j = index_of(base);
      std::vector<double> ratio;
      for (int r = 0; r < rounds; ++r) ratio.push_back(ts[i].ms[r] / ts[j].ms[r]);
      std::printf("%-30s / %-30s %8.3fx (%.3f..%.3f)\n", name.c_str(), base.c_str(), med(ratio),
                  *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()));
    }
    // W4A16 per optimizer step with train.grad_accum = A: one micro-batch quantizes the weights,
    // A - 1 reuse them (qat.cache_weights), against A BF16 micro-batches; per round.
    for (int A : {1, 2, 4, 8}) {
      const size_t u = index_of("recipe W4A16"), c = index_of("recipe W4A16, cached w"), b = index_of("bf16 (ours)");
      std::vector<double> ratio;
      for (int r = 0; r < rounds; ++r) ratio.push_back((ts[u].ms[r] + (A - 1) * ts[c].ms[r]) / (A * ts[b].ms[r]));
      std::printf("W4A16 per optimizer step, grad_accum %d / bf16 %31s %8.3fx (%.3f..%.3f)\n", A, "", med(ratio),
                  *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()));
    }
  }

  // The quantizations of one NVFP4 step alone (no autograd): what each costs.
  {
    torch::NoGradGuard ng;
    const at::Tensor a13 = w13.detach(), a2 = w2.detach(), xa = x.detach();
    const at::Tensor h = at::randn({T, I}, opt);       // the down projection's input [T, I]
    const at::Tensor hu = at::randn({T, 2 * I}, opt);  // gate/up output [T, 2I]
    const at::Tensor dy13 = at::randn({T, 2 * I}, opt), dy2 = at::randn({T, H}, opt);  // output gradients
    auto offv = [](const at::Tensor& c) {
      std::vector<int64_t> o = {0};
      for (int64_t e = 0; e < c.numel(); ++e) o.push_back(o.back() + c[e].item<int64_t>());
      return o;
    };
    const std::vector<int64_t> uni = offv(counts), skw = offv(skewed);
    const at::Tensor ones = at::ones({E}, at::TensorOptions().device(at::kCUDA));  // alpha of the CUTLASS GEMM rows
    using fp4qat::Blocks;
    auto two_pass = [&](const std::function<void()>& f) {
      return [f] {
        const fp4qat::tuning::ScopedNvfp4Tuning knobs(
            fp4qat::tuning::nvfp4_tuning().with("FP4QAT_NVFP4_KERNEL", "fused"));
        f();
      };
    };
    // The forward GEMM for equal counts with a given batched tile (-1: the grouped GEMM), then
    // the tile this run started with.
    const int tile0 = fp4qat::gemm::batched_gemm_tile();
    auto tile = [tile0](int t, const std::function<void()>& f) {
      return [t, tile0, f] {
        fp4qat::gemm::set_batched_gemm_tile(t);
        f();
        fp4qat::gemm::set_batched_gemm_tile(tile0);
      };
    };
    const std::vector<std::pair<std::string, std::function<void()>>> parts = {
        {"w13 [128,1536,2048] fake quant", [&] { fp4qat::nvfp4_fake_quantize(a13, Blocks::k1D); }},
        {"w13 quantize + fake", [&] { fp4qat::nvfp4_quantize_and_fake(a13, Blocks::k1D); }},
        {"w2 [128,2048,768] fake quant", [&] { fp4qat::nvfp4_fake_quantize(a2, Blocks::k1D); }},
        {"x [E,M,2048] batch fake quant",
         [&] {
           fp4qat::nvfp4_fake_quantize(xa.view({E, T / E, H}), Blocks::k1D);
         }},
        {"x rows uniform (default)", [&] { fp4qat::nvfp4_quantize_rows(xa, uni); }},
        {"x rows uniform (two-pass)", two_pass([&] { fp4qat::nvfp4_quantize_rows(xa, uni); })},
        {"x rows skewed (default)", [&] { fp4qat::nvfp4_quantize_rows(xa, skw); }},
        {"x rows skewed (two-pass)", two_pass([&] { fp4qat::nvfp4_quantize_rows(xa, skw); })},
        {"h [E,M,768] batch fake quant",
         [&] {
           fp4qat::nvfp4_fake_quantize(h.view({E, T / E, I}), Blocks::k1D);
         }},
        {"h rows skewed (default)", [&] { fp4qat::nvfp4_quantize_rows(h, skw); }},
        {"h rows skewed (two-pass)", two_pass([&] { fp4qat::nvfp4_quantize_rows(h, skw); })},
        {"swiglu (silu * up) of [T, 1536]", [&] { swiglu(hu); }},
        // The dequantized backward's operand rebuilds (packed -> bf16).
        {"w13 dequantize to bf16", [&] { fp4qat::nvfp4_dequantize(pq13.packed, at::kBFloat16); }},
        {"w2 dequantize to bf16", [&] { fp4qat::nvfp4_dequantize(pq2.packed, at::kBFloat16); }},
        // The GEMMs of uniform routing: batched (our BF16 path, and the NVFP4 backward), grouped
        // (torch's), and the NVFP4 forward's CUTLASS grouped GEMM with alpha in its epilogue.
        {"fwd w13: at::bmm",
         [&] {
           at::bmm(xa.view({E, T / E, H}), a13.transpose(1, 2));
         }},
        {"fwd w13: at::_grouped_mm", [&] { at::_grouped_mm(xa, a13.transpose(1, 2), offs); }},
        {"fwd w13: CUTLASS grouped, alpha",
         tile(-1, [&] { fp4qat::gemm::grouped_scaled_mm(xa, a13, ones, uni, at::kBFloat16); })},
        {"fwd w13: CUTLASS batched 256x128, alpha",
         tile(0, [&] { fp4qat::gemm::grouped_scaled_mm(xa, a13, ones, uni, at::kBFloat16); })},
        {"fwd w13: CUTLASS batched 256x128c12, alpha",
         tile(1, [&] { fp4qat::gemm::grouped_scaled_mm(xa, a13, ones, uni, at::kBFloat16); })},
        {"fwd w2: at::bmm",
         [&] {
           at::bmm(h.view({E, T / E, I}), a2.transpose(1, 2));
         }},
        {"fwd w2: at::_grouped_mm", [&] { at::_grouped_mm(h, a2.transpose(1, 2), offs); }},
        {"fwd w2: CUTLASS grouped, alpha",
         tile(-1, [&] { fp4qat::gemm::grouped_scaled_mm(h, a2, ones, uni, at::kBFloat16); })},
        {"fwd w2: CUTLASS batched 256x128, alpha",
         tile(0, [&] { fp4qat::gemm::grouped_scaled_mm(h, a2, ones, uni, at::kBFloat16); })},
        {"fwd w2: CUTLASS batched 256x128c12, alpha",
         tile(1, [&] { fp4qat::gemm::grouped_scaled_mm(h, a2, ones, uni, at::kBFloat16); })},
        {"bwd dX w13: at::bmm",
         [&] {
           at::bmm(dy13.view({E, T / E, 2 * I}), a13);
         }},
        {"bwd dX w13: at::_grouped_mm", [&] { at::_grouped_mm(dy13, a13, offs); }},
        {"bwd dW w13: at::bmm",
         [&] {
           at::bmm(dy13.view({E, T / E, 2 * I}).transpose(1, 2), xa.view({E, T / E, H}));
         }},
        {"bwd dW w13: at::_grouped_mm", [&] { at::_grouped_mm(dy13.t(), xa, offs); }},
        {"bwd dX w2: at::bmm",
         [&] {
           at::bmm(dy2.view({E, T / E, H}), a2);
         }},
        {"bwd dX w2: at::_grouped_mm", [&] { at::_grouped_mm(dy2, a2, offs); }},
        {"bwd dW w2: at::bmm",
         [&] {
           at::bmm(dy2.view({E, T / E, H}).transpose(1, 2), h.view({E, T / E, I}));
         }},
        {"bwd dW w2: at::_grouped_mm", [&] { at::_grouped_mm(dy2.t(), h, offs); }},
    };
    std::printf("\nparts of one step alone                         ms   %% bf16 step\n");
    for (const auto& [name, f] : parts) {
      const double ms = median_ms(f, reps, warmup);
      std::printf("%-44s %9.3f %12.1f%%\n", name.c_str(), ms, 100 * ms / bf16_ms);
    }
  }
  if (!with_export) return 0;

  // Export of this layer after an optimizer step (issue 6): the NVFP4 quantization of its expert
  // weights on the GPU (what the export computes), the same plus the copy to host memory, and the
  // whole HfFolderWriter (quantize, copy, write safetensors, fsync) into a temporary folder.
  torch::NoGradGuard ng;
  const at::Tensor a13 = w13.detach(), a2 = w2.detach();
  const double q_ms = median_ms(
      [&] {
        fp4qat::nvfp4_quantize(a13, fp4qat::Blocks::k1D);
        fp4qat::nvfp4_quantize(a2, fp4qat::Blocks::k1D);
      },
      reps, warmup);
  const double qc_ms = median_ms(
      [&] {
        for (const at::Tensor* w : {&a13, &a2}) {
          fp4qat::NVFP4Tensor q = fp4qat::nvfp4_quantize(*w, fp4qat::Blocks::k1D);
          q.codes.cpu();
          q.scales.cpu();
          q.s_dec.cpu();
        }
      },
      std::max(3, reps / 3), 1);
  // The layer's expert modules under their Hugging Face names (gate/up stacked, then down).
  std::vector<std::string> gu, dn;
  for (int64_t e = 0; e < E; ++e) {
    gu.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".gate_proj");
    gu.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj");
    dn.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".down_proj");
  }
  char tmpl[] = "/tmp/fp4qat-bench-export-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl) ? std::string(tmpl) : std::string();
  double write_ms = -1;
  if (!dir.empty()) {
    fp4qat::qat::ExportOptions eo;
    eo.config_json = "{\"model_type\": \"qwen3_moe\"}";
    const auto t0 = std::chrono::steady_clock::now();
    fp4qat::qat::HfFolderWriter w(dir, eo);
    w.add_quantized(gu, 2, a13, std::nullopt, std::vector<float>(gu.size(), 1.0f));
    w.add_quantized(dn, 1, a2, std::nullopt, std::vector<float>(dn.size(), 1.0f));
    w.finish();
    write_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    fp4qat::fs::remove_tree(dir);
  }
  // The trainer's asynchronous export (trainer/exporter.h): after each NVFP4 QAT step the layer's
  // experts are staged (quantized and copied into pinned host memory on a side stream) while the
  // next step runs; the next optimizer update is fenced after those reads. Steady state over
  // `reps` steps with and without it: the difference is what the export costs the training loop.
  // (Writing the files happens on a host thread and is measured above.)
  {
    torch::AutoGradMode grad_on(true);
    fp4qat::autograd::NVFP4LinearOptions o{fp4qat::Blocks::k1D, fp4qat::autograd::Backward::kHighPrecision};
    // q13 / q2: the weights' quantization made before the step (mode 6), else quantized in it.
    auto step = [&](const fp4qat::NVFP4Operand* q13 = nullptr, const fp4qat::NVFP4Operand* q2 = nullptr) {
      x.mutable_grad() = at::Tensor();
      w13.mutable_grad() = at::Tensor();
      w2.mutable_grad() = at::Tensor();
      at::Tensor h = fp4qat::autograd::nvfp4_grouped_linear(x, w13, counts, o, std::nullopt, q13);
      fp4qat::autograd::nvfp4_grouped_linear(swiglu(h), w2, counts, o, std::nullopt, q2).backward(gy);
    };
    const at::Tensor ia13 = at::ones({2 * E}, at::TensorOptions().device(at::kCUDA)),
                     ia2 = at::ones({E}, ia13.options());
    fp4qat::qat::ExportOptions eo;
    eo.config_json = "{\"model_type\": \"qwen3_moe\"}";
    // mode 0: no export; 1: the staged export; 2: only its quantization on a side stream (no
    // copies); 3: only copies of same-sized device buffers into fresh pinned memory on a side
    // stream; 4: the same into pinned buffers reused from step to step; 5: the staged export
    // without the fence (diagnostic only: the weights do not change in this loop).
    const at::Tensor cbuf13 =
        at::empty({E, 2 * I, H / 2 + H / 16}, at::TensorOptions().device(at::kCUDA).dtype(at::kByte));
    const at::Tensor cbuf2 = at::empty({E, H, I / 2 + I / 16}, cbuf13.options());
    struct Timing {
      double ms = 0, host_step_ms = 0, host_stage_ms = 0;
    };
    auto pool = std::make_shared<fp4qat::qat::HostBufferPool>();
    auto loop = [&](int mode, int steps = 0) {
      const int n = steps > 0 ? steps : reps;
      // The trainer destroys a staged folder only after writing it; here the one of two steps
      // ago is dropped (its copies are long done, so the drop does not wait for them).
      std::shared_ptr<fp4qat::qat::StagedFolder> prev, prev2;
      std::optional<c10::Event> prev_done;
      std::vector<at::Tensor> keep;
      at::Tensor reused[2][2];
      int flip = 0;
      const c10::Stream side = at::cuda::getStreamFromPool();
      Timing t;
      auto one = [&](bool timed) {
        const auto h0 = std::chrono::steady_clock::now();
        if (mode >= 6) {
          // The trainer's shared quantization (qat.cache_weights): after the optimizer update the
          // weights are quantized once, on the current stream; the export stages copies of that
          // quantization and the next step's forward uses it instead of quantizing again.
          // Mode 7: the same without the export (what the copies cost = mode 6 - mode 7).
          torch::NoGradGuard ng2;
          const fp4qat::NVFP4Operand q13 = fp4qat::nvfp4_quantize_and_fake(w13.detach(), fp4qat::Blocks::k1D);
          const fp4qat::NVFP4Operand q2 = fp4qat::nvfp4_quantize_and_fake(w2.detach(), fp4qat::Blocks::k1D);
          if (mode == 6) {
            auto sf = std::make_shared<fp4qat::qat::StagedFolder>(eo, pool);
            sf->add_stack(gu, 2, {q13.packed.codes, q13.packed.scales, q13.packed.s_dec}, ia13);
            sf->add_stack(dn, 1, {q2.packed.codes, q2.packed.scales, q2.packed.s_dec}, ia2);
            sf->seal();
            prev2 = prev;
            prev = sf;
          }
          torch::AutoGradMode grad_on2(true);
          step(&q13, &q2);
          if (prev) prev->fence();  // where the optimizer update would start (no wait: add_stack only)
          if (timed)
            t.host_step_ms +=
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count() / n;
          return;
        }
        step();
        const auto h1 = std::chrono::steady_clock::now();
        if (prev && mode != 5) prev->fence();  // where the optimizer update would start
        if (prev_done) prev_done->block(at::cuda::getCurrentCUDAStream());
        torch::NoGradGuard ng2;
        if (mode == 1 || mode == 5) {
          auto sf = std::make_shared<fp4qat::qat::StagedFolder>(eo, pool);
          sf->add_quantized(gu, 2, w13.detach(), std::nullopt, ia13);
          sf->add_quantized(dn, 1, w2.detach(), std::nullopt, ia2);
          sf->seal();
          prev2 = prev;
          prev = sf;
        } else if (mode >= 2) {
          c10::Event ready(c10::DeviceType::CUDA);
          ready.record(at::cuda::getCurrentCUDAStream());
          ready.block(side);
          c10::StreamGuard g(side);
          keep.clear();
          if (mode == 2) {
            keep.push_back(fp4qat::nvfp4_quantize(w13.detach(), fp4qat::Blocks::k1D).codes);
            keep.push_back(fp4qat::nvfp4_quantize(w2.detach(), fp4qat::Blocks::k1D).codes);
          } else {
            for (const at::Tensor* c : {&cbuf13, &cbuf2}) {
              at::Tensor hbuf;
              if (mode == 3) {  // fresh pinned allocations each step (what the pool avoids)
                hbuf = at::empty(c->sizes(), c->options().device(at::kCPU).pinned_memory(true));
              } else {  // mode 4: two sets of pinned buffers, alternating
                at::Tensor& slot = c == &cbuf13 ? reused[flip][0] : reused[flip][1];
                if (!slot.defined()) slot = at::empty(c->sizes(), c->options().device(at::kCPU).pinned_memory(true));
                hbuf = slot;
              }
              hbuf.copy_(*c, /*non_blocking=*/true);
              keep.push_back(hbuf);
            }
            flip ^= 1;
          }
          prev_done.emplace(c10::DeviceType::CUDA);
          prev_done->record(side);
        }
        const auto h2 = std::chrono::steady_clock::now();
        if (timed) {
          t.host_step_ms += std::chrono::duration<double, std::milli>(h1 - h0).count() / n;
          t.host_stage_ms += std::chrono::duration<double, std::milli>(h2 - h1).count() / n;
        }
      };
      for (int i = 0; i < warmup; ++i) one(false);
      FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < n; ++i) one(true);
      if (prev) prev->fence();
      FP4QAT_CUDA_CHECK(cudaDeviceSynchronize());
      t.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / n;
      return t;
    };
    const Timing t0 = loop(0), t1 = loop(1), t2 = loop(2), t3 = loop(3), t4 = loop(4), t5 = loop(5), t6 = loop(6);
    std::printf("\nasync export in the training loop (nvfp4 high_precision steps, steady state, %d steps)\n", reps);
    const char* names[] = {"no export",
                           "staged export (quantize + copies)",
                           "quantize only (side stream)",
                           "fresh pinned copies only (side stream)",
                           "reused pinned copies only (side stream)",
                           "staged export without the fence",
                           "shared quantization: quantize once, export copies it, forward uses it"};
    const Timing* ts[] = {&t0, &t1, &t2, &t3, &t4, &t5, &t6};
    for (int m = 0; m < 7; ++m)
      std::printf("  %-36s %8.3f ms/step (+%.3f ms = %.1f%%), host: step %.3f ms, staging %.3f ms\n", names[m],
                  ts[m]->ms, ts[m]->ms - t0.ms, 100 * (ts[m]->ms - t0.ms) / t0.ms, ts[m]->host_step_ms,
                  ts[m]->host_stage_ms);
    // The trainer's case (mode 6) against no export (mode 0) and against the same shared
    // quantization without the export (mode 7), in interleaved rounds so that drift of the card
    // (clocks, temperature) over the run falls on all three alike; the median round is the cost.
    {
      const int rounds = 9, steps = 3 * reps;
      std::vector<double> d60, d67, base;
      std::printf(
          "\n  export cost, %d interleaved rounds of %d steps (ms/step: no export | shared quantization "
          "without export | with export)\n",
          rounds, steps);
      for (int r = 0; r < rounds; ++r) {
        const double a = loop(0, steps).ms, b = loop(7, steps).ms, c = loop(6, steps).ms;
        base.push_back(a);
        d60.push_back(c - a);
        d67.push_back(c - b);
        std::printf("    round %d: %8.3f | %8.3f | %8.3f   export +%.3f ms (%.1f%%) vs no export, +%.3f ms vs mode 7\n",
                    r, a, b, c, c - a, 100 * (c - a) / a, c - b);
      }
      auto med = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      std::printf(
          "  export cost (median of %d rounds): +%.3f ms = %.1f%% of the NVFP4 step (range %.1f%% .. %.1f%%); "
          "copies alone (vs mode 7) +%.3f ms\n",
          rounds, med(d60), 100 * med(d60) / med(base), 100 * *std::min_element(d60.begin(), d60.end()) / med(base),
          100 * *std::max_element(d60.begin(), d60.end()) / med(base), med(d67));
    }
    // Device-to-host bandwidth into pinned memory, alone.
    const double d2h_ms = median_ms(
        [&] {
          for (const at::Tensor* c : {&cbuf13, &cbuf2}) {
            at::Tensor hbuf = at::empty(c->sizes(), c->options().device(at::kCPU).pinned_memory(true));
            hbuf.copy_(*c, /*non_blocking=*/true);
          }
        },
        reps, warmup);
    std::printf("  pinned device-to-host copy of the layer's NVFP4 bytes alone: %.3f ms (%.1f GB/s)\n", d2h_ms,
                (cbuf13.numel() + cbuf2.numel()) / (d2h_ms * 1e6));
  }

  std::printf("\nexport of this layer's experts (NVFP4 1D)       ms   %% bf16 step   %% nvfp4 step\n");
  for (const auto& [name, ms] : std::vector<std::pair<std::string, double>>{
           {"quantize on GPU", q_ms}, {"quantize + copy to host", qc_ms}, {"write folder (fsync, 1 run)", write_ms}})
    std::printf("%-40s %9.3f %12.1f%% %12.1f%%\n", name.c_str(), ms, 100 * ms / bf16_ms, 100 * ms / qat_ms);
  return 0;
}
