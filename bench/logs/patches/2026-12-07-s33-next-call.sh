#!/usr/bin/env bash
# Planned for the next session (issue 20): where the Four Over Six kernel's warps stall, per SASS instruction.
# Session 33's ncu source export came back empty-handed: the call wrote too many files under $OUT and the CSVs
# were left out ("count"), and the CPU machine has no ncu to read the reports. This call writes four files only.
# Use: cp this file .gpudata/next.sh; run `bash .gpudata/next.sh` with carry [".nlohmann", ".boost-po"] (~3 min:
# the build ~108 s on a fresh H100 machine, the ncu pass ~10 s, its export ~20 s).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u; } > "$OUT/machine.txt" 2>&1
FP4QAT_GPU_TARGETS="fp4qat_bench_quantize" bench/gpu_run.sh build 2>&1 | tail -2; echo "built at $(el) s"
bq=build-gpu/fp4qat_bench_quantize
# One w13 launch of main's Four Over Six kernel (M 256 MAE, amax computed): source counters (warp-stall
# samples a SASS instruction), warp states, scheduler.
timeout 120 ncu --clock-control none --kernel-name regex:staged2_kernel --launch-skip 2 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SchedulerStats -f -o /tmp/n \
  $bq --profile staged2 --profile-4over6 > /tmp/ncu.txt 2>&1; echo "ncu rc=$? at $(el) s"; tail -3 /tmp/ncu.txt
ncu -i /tmp/n.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > "$OUT/src-sass.csv.gz"
ncu -i /tmp/n.ncu-rep --page details --print-details all > "$OUT/details.txt" 2>&1
timeout 60 $bq --trace > "$OUT/trace.log" 2>&1; echo "trace rc=$? at $(el) s"
echo "rows $(zcat "$OUT/src-sass.csv.gz" | wc -l); total $(el) s"
