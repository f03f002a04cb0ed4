#!/usr/bin/env bash
# Planned for the next session (issue 20): the third form of fold ahead, written in session 34 and not measured
# (the session's device time ran out). It applies 2026-12-08-s34-fold-ahead.patch to the device's copy of the work
# tree (main keeps no fold ahead: its first two forms measured 15-20% slower than main, bench/RESULTS.md session 34),
# builds, runs the Four Over Six byte tests (two fold-ahead shapes among them) and three rounds of the MoE-layer rows.
# Use: cp this file .gpudata/next.sh; run `bash .gpudata/next.sh` with carry [".nlohmann", ".boost-po", ".gpudata"]
# (~3 min: the build ~116 s on a fresh H100 machine). Keep it only if the fold-ahead rows beat the plain 4over6 row.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u; } > "$OUT/machine.txt" 2>&1
git apply bench/logs/patches/2026-12-08-s34-fold-ahead.patch || { echo "the patch does not apply"; exit 1; }
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2; echo "built at $(el) s"
bq=build-gpu/fp4qat_bench_quantize; gtb=build-gpu/tests/fp4qat_gpu_tests
timeout 120 $gtb --gtest_filter="GpuQuantizeRules.FourOverSix*" > "$OUT/gtest.log" 2>&1; echo "gtest rc=$? at $(el) s"
grep -E "^\[ +(FAILED|PASSED) |tests ran" "$OUT/gtest.log"; grep -B2 -A12 "Failure" "$OUT/gtest.log" | head -30
M="nvfp4 1d MoE layer 4over6-256-mae"
R="nvfp4 1d MoE layer [default]|$M|$M, given amax|$M, fold ahead 396|$M, fold ahead 528|$M, fold ahead 792|$M, fold ahead 528, slot 49152|nvfp4 1d MoE layer 4over6-256-mse|nvfp4 1d MoE layer 4over6-256-mse, fold ahead 528"
for r in 1 2 3; do
  [ "$(el)" -lt "${LIMIT:-400}" ] || break
  echo "== round $r" >> "$OUT/bench.log"
  timeout 120 $bq --exact "$R" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench round $r rc=$? at $(el) s"
done
grep -E "^== |MoE layer" "$OUT/bench.log"
timeout 90 $bq --trace > "$OUT/trace.log" 2>&1; echo "trace rc=$? at $(el) s"; grep -E "^nvfp4 w13 4over6|idle" "$OUT/trace.log"
echo "total $(el) s"
