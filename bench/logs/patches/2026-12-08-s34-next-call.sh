#!/usr/bin/env bash
# Planned for the next session (issue 20), two trials of session 34 on main's Four Over Six kernel, each measured
# against main in the same call (bench/RESULTS.md session 34 says why):
#  A. 2026-12-08-s34-trial-relaxed-arrive.patch: the last folding warp's arrival without release semantics (no
#     MEMBAR.GPU waiting for the warp's outstanding code stores). Not correct by the memory model: it measures what
#     the fence costs an expert's completion. If it gains, the correct form is a fence-free publication (e.g. one
#     word a slice, a sentinel until written, checked by the poller's warp).
#  B. 2026-12-08-s34-fold-ahead.patch: fold ahead's third form (whole-sector copies), unmeasured in session 34.
#  C. 2026-12-08-s34-slice-words.patch: the correct fence-free form of A — one word a slice in the rule workspace,
#     0xFFFFFFFF until the slice's last folding warp stores its max (relaxed, no atomics, no fence); the poller's
#     warp reads its expert's words. Byte tests first (its default shape takes it wherever the words fit).
# Use: cp this file .gpudata/next.sh; run `bash .gpudata/next.sh` with carry [".nlohmann", ".boost-po", ".gpudata"]
# (~6-7 min: the build ~116 s on a fresh H100 machine, three incremental rebuilds).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u; } > "$OUT/machine.txt" 2>&1
P=bench/logs/patches
build() { FP4QAT_GPU_TARGETS="$1" bench/gpu_run.sh build 2>&1 | tail -1; echo "built ($2) at $(el) s"; }
bq=build-gpu/fp4qat_bench_quantize; gtb=build-gpu/tests/fp4qat_gpu_tests
M="nvfp4 1d MoE layer 4over6-256-mae"
R0="nvfp4 1d MoE layer [default]|$M|$M, given amax|nvfp4 1d MoE layer 4over6-256-mse"
rows() {  # $1: label, $2: rows
  for r in 1 2 3; do
    echo "== $1 round $r" >> "$OUT/bench.log"
    timeout 120 $bq --exact "$2" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "$1 round $r rc=$? at $(el) s"
  done
}
build "fp4qat_bench_quantize fp4qat_gpu_tests" main
rows main "$R0"
timeout 90 $bq --trace > "$OUT/trace-main.log" 2>&1; echo "trace main rc=$? at $(el) s"
git apply $P/2026-12-08-s34-trial-relaxed-arrive.patch && build fp4qat_bench_quantize relaxed && rows relaxed "$R0" &&
  { timeout 90 $bq --trace > "$OUT/trace-relaxed.log" 2>&1; echo "trace relaxed rc=$? at $(el) s"; }
git apply -R $P/2026-12-08-s34-trial-relaxed-arrive.patch
git apply $P/2026-12-08-s34-fold-ahead.patch && build "fp4qat_bench_quantize fp4qat_gpu_tests" fold-ahead && {
  timeout 120 $gtb --gtest_filter="GpuQuantizeRules.FourOverSix*" > "$OUT/gtest-fold-ahead.log" 2>&1
  echo "gtest rc=$? at $(el) s"; grep -E "^\[ +(FAILED|PASSED) |tests ran" "$OUT/gtest-fold-ahead.log"
  rows fold-ahead "$R0|$M, fold ahead 396|$M, fold ahead 528|$M, fold ahead 792|nvfp4 1d MoE layer 4over6-256-mse, fold ahead 528"; }
git apply -R $P/2026-12-08-s34-fold-ahead.patch
git apply $P/2026-12-08-s34-slice-words.patch && build "fp4qat_bench_quantize fp4qat_gpu_tests" slice-words && {
  timeout 150 $gtb --gtest_filter="GpuQuantizeRules.FourOverSix*:*MatchReferenceOnRandomShapes*:*OneRead*" > "$OUT/gtest-words.log" 2>&1
  echo "gtest rc=$? at $(el) s"; grep -E "^\[ +(FAILED|PASSED) |tests ran" "$OUT/gtest-words.log"
  rows slice-words "$R0"; timeout 90 $bq --trace > "$OUT/trace-words.log" 2>&1; echo "trace words rc=$? at $(el) s"; }
git apply -R $P/2026-12-08-s34-slice-words.patch
grep -E "^== |MoE layer" "$OUT/bench.log"; grep -E "^nvfp4 w13 4over6|idle" "$OUT"/trace-*.log
echo "total $(el) s"
