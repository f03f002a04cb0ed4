#!/usr/bin/env bash
# Session 28 call 1: on main, the owed GPU byte tests (FourOverSixOneReadManyHeadsPerCta final form, the other
# Four Over Six / NVFP4 quantizer tests) and the MoE-layer rows; then the pre-poll trial (.gpudata/prepoll.patch:
# thread 0 tests the next head's group during the current head's last two blocks) built on top, its byte tests,
# and the MoE-layer rows of main and trial interleaved (main, trial, main, trial).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -5
echo "build done in $(( $(date +%s) - t0 )) s"
b=build-gpu
F="GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes:GpuQuantize.NVFP4*"
timeout 150 $b/tests/fp4qat_gpu_tests --gtest_filter="$F" > "$OUT/gtest-main.log" 2>&1; echo "gtest main rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" "$OUT/gtest-main.log" | head -40; grep -B2 -A8 "Failure" "$OUT/gtest-main.log" | head -30
mkdir -p /tmp/main-bin && cp $b/fp4qat_bench_quantize /tmp/main-bin/
timeout 90 /tmp/main-bin/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-main-1.json" > "$OUT/bq-main-1.log" 2>&1; echo "bench main 1 rc=$?"
echo "elapsed $(( $(date +%s) - t0 )) s"
patch -p1 < .gpudata/prepoll.patch && \
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -3
echo "trial build done at $(( $(date +%s) - t0 )) s"
timeout 150 $b/tests/fp4qat_gpu_tests --gtest_filter="GpuQuantizeRules.FourOverSix*:GpuQuantize.NVFP4*" > "$OUT/gtest-trial.log" 2>&1; echo "gtest trial rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" "$OUT/gtest-trial.log" | head -40; grep -B2 -A8 "Failure" "$OUT/gtest-trial.log" | head -30
for r in 1 2; do
  timeout 90 $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-trial-$r.json" > "$OUT/bq-trial-$r.log" 2>&1; echo "bench trial $r rc=$?"
  [ $r = 1 ] && { timeout 90 /tmp/main-bin/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-main-2.json" > "$OUT/bq-main-2.log" 2>&1; echo "bench main 2 rc=$?"; }
  echo "elapsed $(( $(date +%s) - t0 )) s"
done
for f in main-1 trial-1 main-2 trial-2; do echo "== $f"; grep -E "\[default\]|4over6-256-mae  |4over6-256-mse|4over6-448|given amax " "$OUT/bq-$f.log"; done
echo "total $(( $(date +%s) - t0 )) s"
