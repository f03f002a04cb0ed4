#!/usr/bin/env bash
# Session 26 call 4: the autograd GPU tests after moving close_bf16 / randn_cuda into tests/common;
# one round of the MoE-layer quantizer rows on this card.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -20
echo "build done in $(( $(date +%s) - t0 )) s"
b=build-gpu
timeout 150 $b/tests/fp4qat_gpu_tests --gtest_filter='GpuNVFP4Linear*:GpuNVFP4Recipes*:GpuMXFP8*:GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.FourOverSixOneReadSpecialValues' > "$OUT/gtest.log" 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" "$OUT/gtest.log" | head -40; grep -B2 -A8 "Failure" "$OUT/gtest.log" | head -40
echo "elapsed $(( $(date +%s) - t0 )) s"
if [ $(( $(date +%s) - t0 )) -lt ${LIMIT:-300} ]; then
  $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-1.json" > "$OUT/bq-1.log" 2>&1; echo "bench rc=$?"
  cat "$OUT/bq-1.log"
fi
echo "total $(( $(date +%s) - t0 )) s"
