#!/usr/bin/env bash
# Session 26 call 3: Four Over Six bf16 with chunks taken from a CTA counter; byte tests; two bench
# rounds; the compiled PyTorch 4over6 in the same call.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -20
echo "build done in $(( $(date +%s) - t0 )) s"
b=build-gpu
$b/tests/fp4qat_gpu_tests --gtest_filter='GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.*:GpuQuantize.NVFP4*' > "$OUT/gtest.log" 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) " "$OUT/gtest.log" | head -30; grep -B2 -A8 "Failure" "$OUT/gtest.log" | head -60
for r in 1 2; do
  $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-$r.json" > "$OUT/bq-$r.log" 2>&1; echo "bench $r rc=$?"
done
cat "$OUT/bq-1.log"; echo ====; grep -E "MoE" "$OUT/bq-2.log"
echo "elapsed $(( $(date +%s) - t0 )) s"
timeout 200 python3 bench/baselines/nvfp4_quant.py --only "nvfp4 1d MoE layer 4over6-256-mae" --reps 10 --warmup 3 > "$OUT/baseline.log" 2>&1; echo "baseline rc=$?"; tail -8 "$OUT/baseline.log"
echo "elapsed $(( $(date +%s) - t0 )) s"
if [ $(( $(date +%s) - t0 )) -lt ${LIMIT:-420} ] && command -v ncu >/dev/null; then
  timeout 100 ncu --clock-control none --kernel-name regex:nvfp4_staged2 --launch-skip 2 --launch-count 1 \
    --section SchedulerStats --section WarpStateStats \
    --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio \
    $b/fp4qat_bench_quantize --profile-4over6 --profile staged2 > "$OUT/ncu-4o6-details.txt" 2>&1
  grep -E "stalled_.*ratio|Issued Warp|Eligible Warps|Duration" "$OUT/ncu-4o6-details.txt" | awk '$NF+0 > 0.05 || /Duration|Issued|Eligible/' | head -30
fi
echo "total $(( $(date +%s) - t0 )) s"
