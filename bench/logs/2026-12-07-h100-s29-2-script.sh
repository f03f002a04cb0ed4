#!/usr/bin/env bash
# Session 29 call 2: the next head's group tested ahead by the last warp's first thread (idle while the first
# warps finish their last block), its amax published before the slice's end barrier: the next head then
# starts without a poll round. Work tree = new; .gpudata/s29b.patch reversed = HEAD 8fe6c19.
# New: build, the GPU byte tests; HEAD: build; then the MoE-layer rows HEAD, new, HEAD, new.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu; mkdir -p /tmp/bins
F="GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes:GpuQuantize.NVFP4*:GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantize.ConcurrentQuantizationsOnTwoStreams"
for v in new main; do
  [ "$v" = main ] && { patch -p1 -R < .gpudata/s29b.patch > /dev/null || { echo "reverse patch failed"; break; }; }
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
  echo "== $v built at $(( $(date +%s) - t0 )) s"
  if [ "$v" = new ]; then
    timeout 150 $b/tests/fp4qat_gpu_tests --gtest_filter="$F" > /tmp/gtest-$v.log 2>&1; echo "gtest $v rc=$?"
    grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" /tmp/gtest-$v.log | head -20; grep -B2 -A12 "Failure" /tmp/gtest-$v.log | head -40
  fi
  cp $b/fp4qat_bench_quantize /tmp/bins/bq-$v
done
echo "builds and tests done at $(( $(date +%s) - t0 )) s"
for r in 1 2; do for v in main new; do
  echo "== $v run $r" >> "$OUT/bench.log"
  timeout 80 /tmp/bins/bq-$v --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench $v $r rc=$? at $(( $(date +%s) - t0 )) s"
done; done
grep -E "^== |\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|4over6-256-mae, given amax|slot 49152|slot 40960" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
