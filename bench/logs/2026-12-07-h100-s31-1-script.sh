#!/usr/bin/env bash
# Session 31 call, short form (device time ran low after failed starts): work tree = branch
# trial/4over6-512-threads. A = the work tree (default rows = main's kernel; "512 threads" and
# "128 threads" rows = the new shapes); BC = A + .gpudata/s30-fold-acq-rel.patch +
# .gpudata/s30-claimer-slack-warp.patch. Each: build, byte tests, a bench round; then BC, A again.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
b=build-gpu; mkdir -p /tmp/bins
F="GpuQuantizeRules.FourOverSix*:GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.MatchReferenceOnRandomShapes"
row() {
  echo "== $1" >> "$OUT/bench.log"
  timeout 70 /tmp/bins/bq-$1 --only "1d MoE layer" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1
  echo "bench $1 rc=$? at $(( $(date +%s) - t0 )) s"
}
for v in A BC; do
  if [ "$v" = BC ]; then
    [ $(( $(date +%s) - t0 )) -lt "${BC_BEFORE:-240}" ] || { echo "no time for BC"; break; }
    patch -p1 < .gpudata/s30-fold-acq-rel.patch && patch -p1 < .gpudata/s30-claimer-slack-warp.patch || { echo "patch failed"; break; }
  fi
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2
  echo "== $v built at $(( $(date +%s) - t0 )) s"
  cp $b/fp4qat_bench_quantize /tmp/bins/bq-$v
  timeout 120 $b/tests/fp4qat_gpu_tests --gtest_filter="$F" > "$OUT/gtest-$v.log" 2>&1; echo "gtest $v rc=$?"
  grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" "$OUT/gtest-$v.log" | head -20; grep -B2 -A12 "Failure" "$OUT/gtest-$v.log" | head -40
  row $v
done
for v in BC A; do [ $(( $(date +%s) - t0 )) -lt "${LIMIT:-420}" ] && row $v; done
grep -E "^== |\[default\]|4over6-256-mae|4over6-256-mse|4over6-448" "$OUT/bench.log"
echo "total $(( $(date +%s) - t0 )) s"
