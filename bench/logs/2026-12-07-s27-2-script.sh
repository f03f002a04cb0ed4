#!/usr/bin/env bash
# Session 27 call 2: Four Over Six with the next head's group tested by thread 0 during the current
# head's last two blocks (no poll round at the head when complete) — GPU byte tests, the MoE-layer rows
# twice, ncu stall reasons of the default Four Over Six launch.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/machine.txt" 2>&1; cat "$OUT/machine.txt"
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -20
echo "build done in $(( $(date +%s) - t0 )) s"
b=build-gpu
timeout 200 $b/tests/fp4qat_gpu_tests --gtest_filter="GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.FourOverSix*:GpuQuantizeRules.MatchReferenceOnRandomShapes:GpuQuantize.NVFP4*" > "$OUT/gtest.log" 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) |tests ran" "$OUT/gtest.log" | head -60; grep -B2 -A8 "Failure" "$OUT/gtest.log" | head -40
echo "elapsed $(( $(date +%s) - t0 )) s"
for r in 1 2; do
  timeout 120 $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-$r.json" > "$OUT/bq-$r.log" 2>&1; echo "bench $r rc=$?"
done
cat "$OUT/bq-1.log"; echo ====; grep -E "MoE" "$OUT/bq-2.log"
echo "elapsed $(( $(date +%s) - t0 )) s"
if command -v ncu >/dev/null && [ $(( $(date +%s) - t0 )) -lt ${LIMIT:-420} ]; then
  timeout 120 ncu --clock-control none --kernel-name regex:nvfp4_staged2 --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio \
    $b/fp4qat_bench_quantize --profile-4over6 --profile staged2 > "$OUT/ncu-default.txt" 2>&1
  grep -E "stalled_.*ratio|Issued Warp|Eligible Warps|Registers Per|Duration|Achieved Occ|Theoretical Occ|Block Limit" "$OUT/ncu-default.txt" | awk '$NF+0 > 0.05 || /Duration|Registers|Issued|Eligible|Occ|Limit/' | head -40
fi
echo "total $(( $(date +%s) - t0 )) s"
