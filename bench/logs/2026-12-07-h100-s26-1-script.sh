#!/usr/bin/env bash
# Session 26 call 1: build, the CTAs-a-SM guard test, special values over the ring shapes,
# two rounds of the MoE-layer quantizer rows (max6 default after the register fix, ring rows), ncu.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s)
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -20
echo "build done in $(( $(date +%s) - t0 )) s"
b=build-gpu
$b/tests/fp4qat_gpu_tests --gtest_filter='GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.FourOverSixOneReadSpecialValues:GpuQuantizeRules.MatchReferenceOnRandomShapes' > "$OUT/gtest.log" 2>&1; echo "gtest rc=$?"
grep -E "^\[ +(OK|FAILED|PASSED) " "$OUT/gtest.log" | head -20; grep -B2 -A8 "Failure" "$OUT/gtest.log" | head -60
for r in 1 2; do
  $b/fp4qat_bench_quantize --only "1d MoE layer" --reps 10 --warmup 3 --json "$OUT/bq-$r.json" > "$OUT/bq-$r.log" 2>&1; echo "bench $r rc=$?"
done
cat "$OUT/bq-1.log"; echo ====; grep -E "MoE" "$OUT/bq-2.log"
echo "elapsed $(( $(date +%s) - t0 )) s"
if [ $(( $(date +%s) - t0 )) -lt ${LIMIT:-420} ] && command -v ncu >/dev/null; then
  for v in staged2 ring; do
    timeout 90 ncu --clock-control none --kernel-name regex:nvfp4_ --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      $b/fp4qat_bench_quantize --profile-4over6 --profile "$v" > "$OUT/ncu-4o6-$v.txt" 2>&1
    echo "== 4over6 $v"; grep -E "^  [a-z_]+.*nvfp4|Duration|DRAM Throughput|Achieved Occupancy|Issue Slots Busy|Registers Per|Stall|Warp Cycles Per Issued" "$OUT/ncu-4o6-$v.txt" | head -30
  done
fi
echo "total $(( $(date +%s) - t0 )) s"
