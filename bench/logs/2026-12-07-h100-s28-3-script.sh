#!/usr/bin/env bash
# Session 28 call 3 (H200): the MoE-layer rows with the session's Four Over Six change (raw pairs to the emitter,
# `between` after every second block), twice; the Four Over Six GPU byte tests first.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
echo "built at $(( $(date +%s) - t0 )) s"
timeout 120 $b/tests/fp4qat_gpu_tests --gtest_filter="GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes:GpuQuantize.OneReadDefaultsKeepTwoCtasASm" > /tmp/gtest.log 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest.log | head -20; grep -B2 -A8 "Failure" /tmp/gtest.log | head -30
for r in 1 2; do
  echo "== run $r" >> "$OUT/bench.log"
  timeout 80 $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $r rc=$? at $(( $(date +%s) - t0 )) s"
done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax|fake-quant" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
