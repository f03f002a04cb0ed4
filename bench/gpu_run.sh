#!/usr/bin/env bash
# bench/gpu_run.sh — one call on the GPU machine: configure + build against its own python3's
# torch, run the GPU tests (and the CPU suite), then the quantizer benchmark and the PyTorch
# baselines. Logs go to $OUT (default ./gpu-out). Usage: bench/gpu_run.sh [build|test|bench|all]...
#   FP4QAT_SHARED: the shared/ folder with vectors (default ./.shared, carried by the caller)
#   FP4QAT_GTEST_SRC: GoogleTest sources if the machine has no installed GTest (default ./.gtest)
#   ./.boost-po: Boost.Program_options sources matching the machine's Boost headers, if its
#   library is missing (the GPU machines have Boost 1.83 headers only)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$here/gpu-out}"
mkdir -p "$out"
build="$here/build-gpu"
export FP4QAT_SHARED="${FP4QAT_SHARED:-$here/.shared}"
steps=("${@:-all}")
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
rc=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
  nvcc --version | tail -1
  date -u
} 2>&1 | tee "$out/machine.txt"
if want build; then
  prefix="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')"
  gtest=()
  [ -d "${FP4QAT_GTEST_SRC:-$here/.gtest}" ] && gtest=(-DFP4QAT_GTEST_SOURCE_DIR="${FP4QAT_GTEST_SRC:-$here/.gtest}")
  [ -d "$here/.boost-po" ] && gtest+=(-DFP4QAT_BOOST_PO_SOURCE_DIR="$here/.boost-po")
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" "${gtest[@]}" \
    >"$here/gpu-configure.log" 2>&1 || { tail -40 "$here/gpu-configure.log"; exit 1; }
  cmake --build "$build" -j "$(nproc)" >"$here/gpu-build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$here/gpu-build.log" | head -60; exit 1; }
  echo "build ok"
fi
if want test; then
  (cd "$build" && ctest -L gpu --output-on-failure -j 1 --timeout 600) >"$out/ctest-gpu.log" 2>&1 || rc=1
  tail -15 "$out/ctest-gpu.log"
  (cd "$build" && ctest -L cpu -j "$(nproc)" --timeout 600) >"$out/ctest-cpu.log" 2>&1 || rc=1
  tail -4 "$out/ctest-cpu.log"
fi
if want sass; then
  cuobjdump -sass "$build/libfp4qat_cuda_kernels.a" > "$out/kernels.sass" 2>&1 || true
  grep -c "" "$out/kernels.sass"
fi
if want profile; then
  # Nsight Compute on one MoE-layer NVFP4 1D quantization (both variants): DRAM bytes, L2 hit rate.
  # Skip the validation launches that precede the timed ones (15 fused / 12 staged, see the bench).
  for vs in fused:15 staged:12; do
    v=${vs%:*}
    ncu --kernel-name regex:nvfp4_$v --launch-skip ${vs#*:} --launch-count 2 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
      "$build/fp4qat_bench_quantize" --only "1d MoE layer [$v]" --reps 1 --warmup 1 > "$out/ncu-$v.txt" 2>&1 || true
    grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit Rate|Compute \(SM\) Throughput|Achieved Occupancy|dram__bytes" "$out/ncu-$v.txt" | head -20
  done
fi
if want mlp; then
  "$build/fp4qat_bench_moe_mlp" 2>&1 | tee "$out/bench_moe_mlp.log" || rc=1
  PYTHONUNBUFFERED=1 python3 "$here/bench/baselines/moe_mlp_grouped_mm.py" 2>&1 | tee -a "$out/bench_moe_mlp.log" || rc=1
fi
if want bench; then
  "$build/fp4qat_bench_quantize" --json "$out/bench_quantize.json" 2>&1 | tee "$out/bench_quantize.log" || rc=1
  PYTHONUNBUFFERED=1 python3 "$here/bench/baselines/nvfp4_quant.py" --vectors "$FP4QAT_SHARED/vectors" \
    --json "$out/baselines.json" 2>&1 | grep -v Warning | tee "$out/baselines.log" || rc=1
fi
exit $rc
