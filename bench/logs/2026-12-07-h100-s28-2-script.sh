#!/usr/bin/env bash
# Session 28 call 2: Four Over Six bf16 loop variants against main, interleaved on one machine.
#   v1 (.gpudata/v1.patch): the raw bf16 pairs go to the emitter (no repacking for the signs); `between` after
#      every second block.
#   v2 (.gpudata/v2.patch): v1's emitter, plus two word buffers taking turns (no copies of the next block's
#      words), `between` after every second block.
# Each variant: build, the Four Over Six GPU byte tests; then the MoE-layer rows main, v1, v2, main, v1, v2.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu; mkdir -p /tmp/bins
F="GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes"
for v in main v1 v2; do
  git_free_reset() { patch -p1 -R < ".gpudata/$1.patch" > /dev/null; }
  [ "$v" = v2 ] && git_free_reset v1
  [ "$v" != main ] && { patch -p1 < ".gpudata/$v.patch" || { echo "patch $v failed"; continue; }; }
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
  echo "== $v built at $(( $(date +%s) - t0 )) s"
  timeout 120 $b/tests/fp4qat_gpu_tests --gtest_filter="$F" > /tmp/gtest-$v.log 2>&1; echo "gtest $v rc=$?"
  grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest-$v.log | head -20; grep -B2 -A8 "Failure" /tmp/gtest-$v.log | head -30
  cp $b/fp4qat_bench_quantize /tmp/bins/bq-$v
done
echo "builds and tests done at $(( $(date +%s) - t0 )) s"
for r in 1 2; do for v in main v1 v2; do
  echo "== $v run $r" >> "$OUT/bench.log"
  timeout 80 /tmp/bins/bq-$v --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $v $r rc=$? at $(( $(date +%s) - t0 )) s"
done; done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
