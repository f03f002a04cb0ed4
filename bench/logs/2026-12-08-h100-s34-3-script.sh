#!/usr/bin/env bash
# Session 34, call 1: build; the Four Over Six byte tests (fold ahead among the shapes); the trace with
# its raw dump; rounds of the MoE-layer rows with the fold-ahead rows; then ncu source counters if time is left.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; date -u; git log --oneline -1; } > "$OUT/machine.txt" 2>&1; cat "$OUT/machine.txt"
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -2; echo "built at $(el) s"
bq=build-gpu/fp4qat_bench_quantize; gtb=build-gpu/tests/fp4qat_gpu_tests
timeout 150 $gtb --gtest_filter="${GT:-GpuQuantizeRules.FourOverSix*:*OneRead*:*MatchReferenceOnRandomShapes*}" > "$OUT/gtest.log" 2>&1; echo "gtest rc=$? at $(el) s"
grep -E "^\[ +(FAILED|PASSED|OK) |tests ran|SKIPPED \]" "$OUT/gtest.log" | head -20; grep -B2 -A12 "Failure" "$OUT/gtest.log" | head -30
[ -n "${NOTRACE:-}" ] || timeout 90 $bq --trace-dump /tmp/trace-dump.txt > "$OUT/trace.log" 2>&1; echo "trace rc=$? at $(el) s"
gzip -c /tmp/trace-dump.txt > "$OUT/trace-dump.txt.gz"
grep -E "^nvfp4 w13 4over6|idle|folded in|landed -> complete" "$OUT/trace.log" | head -30
M="nvfp4 1d MoE layer 4over6-256-mae"
R="nvfp4 1d MoE layer [default]|$M|$M, given amax|$M, fold ahead 396|$M, fold ahead 528|$M, fold ahead 792|$M, fold ahead 528, slot 49152|nvfp4 1d MoE layer 4over6-256-mse|nvfp4 1d MoE layer 4over6-256-mse, fold ahead 528"
for r in 1 2 3; do
  [ "$(el)" -lt "${LIMIT:-400}" ] || break
  echo "== round $r" >> "$OUT/bench.log"
  timeout 120 $bq --exact "$R" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench round $r rc=$? at $(el) s"
done
grep -E "^== |MoE layer" "$OUT/bench.log"
if [ -n "${NCU:-}" ] && [ "$(el)" -lt "${LIMIT:-400}" ]; then
  timeout 120 ncu --clock-control none --kernel-name regex:staged2_kernel --launch-skip 2 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SchedulerStats -f -o /tmp/n \
    $bq --profile staged2 --profile-4over6 > /tmp/ncu.txt 2>&1; echo "ncu rc=$? at $(el) s"; tail -3 /tmp/ncu.txt
  ncu -i /tmp/n.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > "$OUT/src-sass.csv.gz"
  ncu -i /tmp/n.ncu-rep --page details --print-details all > "$OUT/details.txt" 2>&1
  echo "rows $(zcat "$OUT/src-sass.csv.gz" | wc -l)"
fi
echo "total $(el) s"
