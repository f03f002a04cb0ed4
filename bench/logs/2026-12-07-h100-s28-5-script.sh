#!/usr/bin/env bash
# Session 28 call 5: v3 (.gpudata/v3.patch: Four Over Six's slim tables in one shared array read by a 32-bit shared
# address held in a register, instead of a generic pointer rebuilt from the CTA's cluster rank at every block)
# against the tree (v1), interleaved; v3's Four Over Six byte tests.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu; mkdir -p /tmp/bins
for v in v1 v3; do
  [ "$v" = v3 ] && { patch -p1 < .gpudata/v3.patch || { echo "patch failed"; break; }; }
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -1
  echo "== $v built at $(( $(date +%s) - t0 )) s"
  cp $b/fp4qat_bench_quantize /tmp/bins/bq-$v
done
timeout 100 $b/tests/fp4qat_gpu_tests --gtest_filter="GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes" > /tmp/gtest.log 2>&1; echo "gtest v3 rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest.log | head; grep -B2 -A8 "Failure" /tmp/gtest.log | head -30
for r in 1 2; do for v in v1 v3; do
  echo "== $v run $r" >> "$OUT/bench.log"
  timeout 60 /tmp/bins/bq-$v --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $v $r rc=$? at $(( $(date +%s) - t0 )) s"
done; done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
