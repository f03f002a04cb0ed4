#!/usr/bin/env bash
# Session 28 call 4: the GPU autograd tests after the review (per-expert checks through
# expect_grouped_equals_per_expert), the Four Over Six byte tests, and the MoE-layer rows twice.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
echo "built at $(( $(date +%s) - t0 )) s"
timeout 150 $b/tests/fp4qat_gpu_tests --gtest_filter="GpuNVFP4Linear*:GpuNVFP4GroupedLinear*:GpuNVFP4Recipes*:GpuMXFP8*:GpuQuantizeRules.FourOverSix*:GpuQuantize.OneReadDefaultsKeepTwoCtasASm" > /tmp/gtest.log 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest.log | head -30; grep -B2 -A8 "Failure" /tmp/gtest.log | head -40
for r in 1 2; do
  echo "== run $r" >> "$OUT/bench.log"
  timeout 80 $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $r rc=$? at $(( $(date +%s) - t0 )) s"
done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax|fake-quant" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
