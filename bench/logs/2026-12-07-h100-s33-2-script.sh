#!/usr/bin/env bash
# Session 33, call 2: main with C (the claimer in warp kTh/32 - 2) and F (the fold test after every
# bf16 block) landed in the Four Over Six kernel. Prebuilt binaries in .gpubin/ (built on the CPU
# machine from the work tree; fallback: build here). All of fp4qat_gpu_tests, then the MoE-layer rows
# three times, then the trace.
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
  { echo "prebuilt binaries do not start:"; ldd $bq $gtb | grep "not found"; $bq --bad-arg 2>&1 | tail -3; $gtb --gtest_list_tests 2>&1 | tail -3; } | tee "$OUT/prebuilt.txt"; unset LD_LIBRARY_PATH
  FP4QAT_GPU_TARGETS="fp4qat_bench_quantize fp4qat_gpu_tests" bench/gpu_run.sh build 2>&1 | tail -3
  bq=build-gpu/fp4qat_bench_quantize; gtb=build-gpu/tests/fp4qat_gpu_tests
fi
echo "ready at $(el) s"
timeout 240 $gtb --gtest_filter="-GpuDist.*" > "$OUT/gtest.log" 2>&1; echo "gtest rc=$? at $(el) s"
grep -E "^\[ +(FAILED|PASSED) |tests ran|SKIPPED \]" "$OUT/gtest.log" | head -20; grep -B2 -A12 "Failure" "$OUT/gtest.log" | head -40
R="nvfp4 1d MoE layer [default]|nvfp4 1d MoE layer 4over6-256-mae|nvfp4 1d MoE layer 4over6-256-mse|nvfp4 1d MoE layer 4over6-448-mae|nvfp4 1d MoE layer 4over6-256-mae, given amax|nvfp4 1d MoE layer, given amax [default]"
for r in 1 2 3; do
  [ "$(el)" -lt "${LIMIT:-420}" ] || break
  echo "== round $r" >> "$OUT/bench.log"
  timeout 90 $bq --exact "$R" --reps 10 --warmup 3 >> "$OUT/bench.log" 2>&1; echo "bench round $r rc=$? at $(el) s"
done
grep -E "^== |device|MoE layer" "$OUT/bench.log"
if [ "$(el)" -lt "${LIMIT:-420}" ]; then
  timeout 60 $bq --trace > "$OUT/trace.log" 2>&1; echo "trace rc=$? at $(el) s"; grep -E "slices|->" "$OUT/trace.log" | sed -n 1,5p; grep -A5 "4over6 (M 256, MAE), amax computed" "$OUT/trace.log"
fi
echo "total $(el) s"
