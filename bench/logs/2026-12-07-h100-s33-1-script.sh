#!/usr/bin/env bash
# Session 32, one call, prebuilt: .gpubin/ holds fp4qat_bench_quantize and fp4qat_gpu_tests built on
# the CPU machine from branch trial/s32 (torch 2.11.0+cu130, nvcc 13.0, sm_90); they run against this
# machine's torch. Falls back to building here if they do not start. Then as run_s32.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
TL=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
NV=$(python3 -c 'import nvidia,os,glob;print(":".join(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p,"*","lib"))))' 2>/dev/null)
export LD_LIBRARY_PATH="$TL:$NV:/usr/local/cuda/lib64:$PWD/.gpubin/lib:${LD_LIBRARY_PATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; date -u; } > "$OUT/machine.txt" 2>&1; cat "$OUT/machine.txt"
bq=.gpubin/fp4qat_bench_quantize; gtb=.gpubin/fp4qat_gpu_tests
if ! $bq --bad-arg 2>&1 | grep -q usage || ! $gtb --gtest_list_tests > /dev/null 2>&1; then
  echo "prebuilt binaries do not start:"; ldd $bq $gtb | grep "not found"; $bq --bad-arg 2>&1 | tail -3
  unset LD_LIBRARY_PATH
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -3
  bq=build-gpu/fp4qat_bench_quantize; gtb=build-gpu/tests/fp4qat_gpu_tests
fi
echo "ready at $(el) s"
F="GpuQuantizeRules.FourOverSix*:GpuQuantize.OneReadDefaultsKeepTwoCtasASm:GpuQuantizeRules.MatchReferenceOnRandomShapes"
gt() {
  FP4QAT_TRIAL=$1 timeout 120 $gtb --gtest_filter="$F" > "$OUT/gtest-T$1.log" 2>&1; echo "gtest T$1 rc=$? at $(el) s"
  grep -E "^\[ +(FAILED|PASSED) |tests ran" "$OUT/gtest-T$1.log" | head -8; grep -B2 -A12 "Failure" "$OUT/gtest-T$1.log" | head -30
}
gt 111
FP4QAT_TRIALS=0,1,3,5,7,9,15,32,47,79,111 FP4QAT_TRIAL_ROUNDS=3 timeout 200 $bq --exact none --reps 10 --warmup 3 \
  > "$OUT/trials.log" 2>&1; echo "trials rc=$? at $(el) s"; grep -E "trial|device|copy" "$OUT/trials.log"
gt 15
prof() {
  [ "$(el)" -lt "${PLIMIT:-500}" ] || { echo "skip ncu T$1"; return; }
  FP4QAT_TRIAL=$1 timeout 90 ncu --clock-control none --kernel-name regex:staged2_kernel --launch-skip 2 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SchedulerStats -f -o "$OUT/ncu-T$1" \
    $bq --profile staged2 --profile-4over6 > "$OUT/ncu-T$1.txt" 2>&1
  echo "ncu T$1 rc=$? at $(el) s"; tail -2 "$OUT/ncu-T$1.txt"
  ncu -i "$OUT/ncu-T$1.ncu-rep" --page details > "$OUT/ncu-details-T$1.txt" 2>&1
  ncu -i "$OUT/ncu-T$1.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu-src-T$1.csv" 2>&1
  echo "src rows: $(wc -l < "$OUT/ncu-src-T$1.csv")"; grep -E "Duration|Warp Cycles Per Issued|Issue Slots|No Eligible" "$OUT/ncu-details-T$1.txt" | head -6
}
if [ "$(el)" -lt "${PLIMIT:-500}" ]; then
  timeout 60 $bq --trace > "$OUT/trace.log" 2>&1; echo "trace rc=$? at $(el) s"; grep -E "slices|->" "$OUT/trace.log"
fi
prof 0
prof 15
echo "total $(el) s"
