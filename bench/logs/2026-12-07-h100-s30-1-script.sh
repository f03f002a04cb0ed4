#!/usr/bin/env bash
# Session 30 (planned) call: main (work tree, b52cb68) against the branch trial/4over6-early-claim:
#   ec  = + .gpudata/s30-early-claim.patch (the head slot refilled when every warp reads it no more)
#   ec2 = ec + .gpudata/s30-fold-every-block.patch (the eager fold test after every bf16 block)
# Each: build, the one-read GPU byte tests; then the MoE-layer rows main, ec, ec2, ec2, ec, main.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu; mkdir -p /tmp/bins
F="GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes:GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantize.ConcurrentQuantizationsOnTwoStreams"
for v in main ec ec2; do
  [ "$v" = ec ] && { patch -p1 < .gpudata/s30-early-claim.patch || { echo "patch ec failed"; break; }; }
  [ "$v" = ec2 ] && { patch -p1 < .gpudata/s30-fold-every-block.patch || { echo "patch ec2 failed"; break; }; }
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
  echo "== $v built at $(( $(date +%s) - t0 )) s"
  if true; then
    timeout 120 $b/tests/fp4qat_gpu_tests --gtest_filter="$F" > /tmp/gtest-$v.log 2>&1; echo "gtest $v rc=$?"
    grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest-$v.log | head -20; grep -B2 -A12 "Failure" /tmp/gtest-$v.log | head -40
  fi
  cp $b/fp4qat_bench_quantize /tmp/bins/bq-$v
done
echo "builds and tests done at $(( $(date +%s) - t0 )) s"
for v in main ec ec2 ec2 ec main; do
  echo "== $v" >> "$OUT/bench.log"
  timeout 60 /tmp/bins/bq-$v --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $v rc=$? at $(( $(date +%s) - t0 )) s"
done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
