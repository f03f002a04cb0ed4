#!/usr/bin/env bash
# bench/gpu_run.sh — one call on the GPU machine: configure + build against its own python3's
# torch, run the GPU tests (and the CPU suite), then the quantizer benchmark and the PyTorch
# baselines. Logs go to $OUT (default ./gpu-out). Usage: bench/gpu_run.sh [build|test|sass|profile|mlp|train|rl|step|bench|dist|all]...
#   FP4QAT_GTEST_SRC: GoogleTest sources if the machine has no installed GTest (default ./.gtest)
#   ./.boost-po: Boost.Program_options sources matching the machine's Boost headers, if its
#   library is missing (the GPU machines have Boost 1.83 headers only): the .cpp files of
#   `git archive boost-1.83.0 src` of github.com/boostorg/program_options, flat in .boost-po/
#   ./.nlohmann: nlohmann-json's headers (a folder holding nlohmann/json.hpp; copy
#   /usr/include/nlohmann here) if the machine has no nlohmann-json3-dev.
#   ./.gloo: gloo's headers (a folder holding gloo/context.h) for the CPU (gloo) multi-process
#   tests, if the machine has no libgloo-dev (e.g. `apt-get download libgloo-dev` here, then
#   `dpkg -x libgloo-dev_*.deb x && mv x/usr/include .gloo`); without them those tests skip.
#   ./.cutlass: CUTLASS's include/ and tools/util/include/ (copied from the venv's nvidia-cutlass
#   package) for the Hopper grouped GEMM; without them it is left out of the build.
#   `rl`: the RL loop (fp4qat rl) on the GPU, tiny (recipes/rl-tiny.yaml) and ~110M
#   (recipes/rl-moe-100m-gpu.yaml) from short pretraining runs, batched and one sequence at a time:
#   medians of the iteration split (load / sample / score / train / export) and sampled tokens/s.
#   `step`: the whole training step against the PyTorch baseline at the ~110M (seq 2048) and the
#   Qwen3-30B-A3B 4-layer slice (seq 4096) shapes, interleaved (bench/step_bench.py; FP4QAT_STEP_ARGS, e.g.
#   "--layouts 1,dp2,ep2" on a 2-GPU machine for issue 25's EP2 / DP2 runs, "--trace" for timelines).
#   `dist` (2+ GPUs): the NCCL test, then tokens/s of the ~110M MoE on 1 GPU, 2 GPUs DP, 2 GPUs EP.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$here/gpu-out}"
mkdir -p "$out"
build="$here/build-gpu"
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
  [ -d "$here/.gloo" ] && gtest+=(-DFP4QAT_GLOO_INCLUDE_DIR="$here/.gloo")
  [ -d "$here/.nlohmann" ] && gtest+=(-DFP4QAT_NLOHMANN_INCLUDE_DIR="$here/.nlohmann")
  [ -d "$here/.cutlass/include" ] && gtest+=(-DFP4QAT_CUTLASS_DIR="$here/.cutlass")
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" "${gtest[@]}" \
    >"$here/gpu-configure.log" 2>&1 || { tail -40 "$here/gpu-configure.log"; exit 1; }
  # FP4QAT_GPU_TARGETS (space-separated CMake targets) builds only those: a short call's subset.
  targets=()
  for t in ${FP4QAT_GPU_TARGETS:-}; do targets+=(--target "$t"); done
  cmake --build "$build" -j "$(nproc)" "${targets[@]}" >"$here/gpu-build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$here/gpu-build.log" | head -60; exit 1; }
  echo "build ok"
fi
if want test; then
  (cd "$build" && ctest -L gpu --output-on-failure -j 1 --timeout 600) >"$out/ctest-gpu.log" 2>&1 || rc=1
  tail -15 "$out/ctest-gpu.log"
  if [ -z "${FP4QAT_GPU_SKIP_CPU_TESTS:-}" ]; then
    (cd "$build" && ctest -L cpu -j "$(nproc)" --timeout 600) >"$out/ctest-cpu.log" 2>&1 || rc=1
    tail -4 "$out/ctest-cpu.log"
  fi
fi
if want sass; then
  cuobjdump -sass "$build/libfp4qat_cuda_kernels.a" > "$out/kernels.sass" 2>&1 || true
  grep -c "" "$out/kernels.sass"
fi
if want profile; then
  # Nsight Compute on one MoE-layer NVFP4 1D quantization per kernel variant (bench --profile:
  # three rounds of two launches; the second round is profiled): speed of light, pipes, stalls.
  for v in fused staged2:256:32768:2 staged2:256:16384:4; do
    ncu --clock-control none --kernel-name regex:nvfp4_ --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section Occupancy --section WarpStateStats --section SchedulerStats --section InstructionStats \
      "$build/fp4qat_bench_quantize" --profile "$v" > "$out/ncu-${v//:/-}.txt" 2>&1 || true
    echo "== $v"; grep -E "^  [a-z_]+.*nvfp4|Duration|DRAM Throughput|L2 Hit Rate|Compute \(SM\) Throughput|Achieved Occupancy|Issue Slots Busy|Executed Ipc A" "$out/ncu-${v//:/-}.txt" | head -24
  done
fi
if want mlp; then
  # FP4QAT_MLP_ARGS: extra arguments, e.g. --no-export
  "$build/fp4qat_bench_moe_mlp" ${FP4QAT_MLP_ARGS:-} 2>&1 | tee "$out/bench_moe_mlp.log" || rc=1
  PYTHONUNBUFFERED=1 python3 "$here/bench/baselines/moe_mlp_grouped_mm.py" 2>&1 | tee -a "$out/bench_moe_mlp.log" || rc=1
fi
if want train; then
  # The trainer on the GPU: BF16 pretraining of the ~110M MoE (short), then expert-only NVFP4 QAT
  # with an export after every step, then the default recipe with device auto. One log.
  bin="$build/fp4qat"
  runs="$here/runs-gpu"
  rm -rf "$runs"
  {
    echo "== moe-100m BF16 pretraining (${FP4QAT_GPU_PRETRAIN_STEPS:-300} steps)"
    "$bin" train --recipe recipes/moe-100m-gpu.yaml --set train.steps=${FP4QAT_GPU_PRETRAIN_STEPS:-300} \
      --set train.eval_every=150 --set train.out_dir="$runs/moe-100m" || rc=1
    echo "== expert-only NVFP4 QAT with per-step export (${FP4QAT_GPU_QAT_STEPS:-40} steps)"
    "$bin" train --recipe recipes/expert-nvfp4-qat-gpu.yaml --set train.steps=${FP4QAT_GPU_QAT_STEPS:-40} \
      --set train.eval_every=20 --set train.log_every=5 --set train.init_from="$runs/moe-100m/hf" \
      --set train.out_dir="$runs/qat" || rc=1
    echo "== the same QAT without the mismatch probe: exports written in the background (asynchronous)"
    "$bin" train --recipe recipes/expert-nvfp4-qat-gpu.yaml --set train.steps=${FP4QAT_GPU_QAT_STEPS:-40} \
      --set train.eval_every=0 --set train.log_every=5 --set train.init_from="$runs/moe-100m/hf" \
      --set export.probe_mismatch=false --set train.out_dir="$runs/qat-async" || rc=1
    python3 - "$runs/qat/metrics.jsonl" "$runs/qat-async/metrics.jsonl" <<'PY' || rc=1
import json, sys, statistics
for f in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f) if '"export_s"' in l]
    ex = [r["export_s"] for r in rows[2:]] or [0]
    tps = [r["tokens_per_s"] for r in rows[2:]] or [0]
    print(f, "steps", len(rows), "median export_s %.4f" % statistics.median(ex), "median tok/s %.0f" % statistics.median(tps))
PY
    ls -la "$runs/qat/exports" "$runs/qat/exports/latest" "$runs/qat/exports/latest/nvfp4" 2>&1 | head -30
    du -sh "$runs/qat/exports/latest"/* 2>&1
    cat "$runs/qat/exports/latest/nvfp4/hf_quant_config.json" 2>&1
    echo "== default recipe, device auto (${FP4QAT_GPU_DEFAULT_STEPS:-300} steps)"
    "$bin" train --recipe recipes/default.yaml --set train.steps=${FP4QAT_GPU_DEFAULT_STEPS:-300} \
      --set train.out_dir="$runs/default" || rc=1
    echo "== convert (GPU) of the QAT run's BF16 export vs its NVFP4 export"
    "$bin" convert --in "$runs/qat/exports/latest/bf16" --out "$runs/conv" --device cuda || rc=1
    python3 - "$runs/qat/exports/latest/nvfp4" "$runs/conv" <<'PY' || rc=1
import json, sys, struct
def tensors(d):
    wm = json.load(open(d + "/model.safetensors.index.json"))["weight_map"]
    out = {}
    for f in set(wm.values()):
        b = open(d + "/" + f, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k != "__metadata__":
                out[k] = b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
diff = [k for k in a if "input_scale" not in k and a[k] != b.get(k)]
print("convert vs trainer export:", len(a), "tensors,", len(diff), "differ (input_scale aside)", diff[:5])
sys.exit(1 if diff else 0)
PY
  } > "$out/train.log" 2>&1
  grep -E "^==|step .*/|eval|done|differ|error|export" "$out/train.log" | tail -60
fi
if want rl; then
  bin="$build/fp4qat"
  runs="$here/runs-gpu"
  its="${FP4QAT_GPU_RL_ITERATIONS:-20}"
  {
    if [ ! -f "$runs/default/hf/config.json" ]; then
      echo "== default recipe (tiny) pretraining, ${FP4QAT_GPU_DEFAULT_STEPS:-300} steps"
      "$bin" train --recipe recipes/default.yaml --set train.steps=${FP4QAT_GPU_DEFAULT_STEPS:-300} \
        --set train.out_dir="$runs/default" --overwrite || rc=1
    fi
    if [ ! -f "$runs/moe-100m/hf/config.json" ]; then
      echo "== moe-100m BF16 pretraining, ${FP4QAT_GPU_PRETRAIN_STEPS:-300} steps"
      "$bin" train --recipe recipes/moe-100m-gpu.yaml --set train.steps=${FP4QAT_GPU_PRETRAIN_STEPS:-300} \
        --set train.eval_every=0 --set train.out_dir="$runs/moe-100m" --overwrite || rc=1
    fi
    # FP4QAT_GPU_RL_ARMS: a subset of "tiny tiny-b1 100m 100m-b64" (default all four)
    ran=()
    for name in ${FP4QAT_GPU_RL_ARMS:-tiny tiny-b1 100m 100m-b64}; do
      case "$name" in
        tiny) arm="tiny rl-tiny.yaml default 64" ;;
        tiny-b1) arm="tiny-b1 rl-tiny.yaml default 1" ;;
        100m) arm="100m rl-moe-100m-gpu.yaml moe-100m 1024" ;;
        100m-b64) arm="100m-b64 rl-moe-100m-gpu.yaml moe-100m 64" ;;
        *) echo "FP4QAT_GPU_RL_ARMS: unknown arm '$name'"; rc=1; continue ;;
      esac
      ran+=("$runs/rl-$name")
      set -- $arm
      echo "== rl $1 (recipes/$2, rl.sample_batch $4, $its iterations)"
      "$bin" rl --recipe "recipes/$2" --set train.device=cuda --set rl.iterations="$its" --set rl.sample_batch="$4" \
        --set train.init_from="$runs/$3/hf" --set train.out_dir="$runs/rl-$1" --set train.checkpoint_every=0 \
        --overwrite || rc=1
    done
    python3 "$here/bench/rl_split.py" "${ran[@]}" || rc=1
  } > "$out/rl.log" 2>&1
  grep -E "^==|^run|^ |error" "$out/rl.log" | tail -40
fi
if want step; then
  PYTHONUNBUFFERED=1 python3 "$here/bench/step_bench.py" --fp4qat "$build/fp4qat" --out "$out/step" \
    ${FP4QAT_STEP_ARGS:-} 2>&1 | tee "$out/step.log" || rc=1
fi
if want bench; then
  "$build/fp4qat_bench_quantize" --json "$out/bench_quantize.json" 2>&1 | tee "$out/bench_quantize.log" || rc=1
  PYTHONUNBUFFERED=1 python3 "$here/bench/baselines/nvfp4_quant.py" --vectors "$here/tests/data/vectors" \
    --json "$out/baselines.json" 2>&1 | grep -v Warning | tee "$out/baselines.log" || rc=1
fi
if want dist; then
  # Multi-GPU (dist/process_group.h): the NCCL test (2 GPUs vs 1), then the throughput of the ~110M MoE
  # (recipes/moe-100m-gpu.yaml, BF16) with one global batch (64 x 256 x 2 tokens per step): 1 GPU
  # with grad_accum 2, 2 GPUs data parallel (dp=2), 2 GPUs expert parallel (ep=2). tokens/s is
  # the global rate; the median over the steps after the first 5 is reported.
  bin="$build/fp4qat"
  runs="$here/runs-gpu"
  ngpu="$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)"
  {
    echo "== GPUs: $ngpu"
    (cd "$build" && ctest -R GpuDist --output-on-failure --timeout 600) || rc=1
    if [ "$ngpu" -ge 2 ]; then
      steps="${FP4QAT_DIST_STEPS:-40}"
      common=(train --recipe recipes/moe-100m-gpu.yaml --set train.steps="$steps" --set train.eval_every=0
              --set train.checkpoint_every=0 --set train.log_every=10)
      rm -rf "$runs/dist-1gpu" "$runs/dist-dp" "$runs/dist-ep"
      echo "== 1 GPU, grad_accum 2"
      CUDA_VISIBLE_DEVICES=0 "$bin" "${common[@]}" --set train.grad_accum=2 --set train.out_dir="$runs/dist-1gpu" || rc=1
      echo "== 2 GPUs, data parallel"
      "$here/scripts/launch" -n 2 --logs "$out/dist-dp-logs" -- "$bin" "${common[@]}" --set parallel.dp=2 \
        --set train.out_dir="$runs/dist-dp" || rc=1
      echo "== 2 GPUs, expert parallel"
      "$here/scripts/launch" -n 2 --logs "$out/dist-ep-logs" -- "$bin" "${common[@]}" --set parallel.ep=2 \
        --set train.out_dir="$runs/dist-ep" || rc=1
      python3 - "$runs" <<'PY' || rc=1
import json, statistics, sys
for name in ("dist-1gpu", "dist-dp", "dist-ep"):
    try:
        rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl") if l.strip()]
    except OSError as e:
        print(name, "no metrics:", e); continue
    steps = [r for r in rows if "tokens_per_s" in r]
    tps = [r["tokens_per_s"] for r in steps[5:]] or [r["tokens_per_s"] for r in steps]
    print(f"{name:10s} steps {len(steps):3d}  tokens/s median {statistics.median(tps):12.0f}  "
          f"final loss {steps[-1]['loss']:.4f}")
PY
    else
      echo "dist: fewer than 2 GPUs, throughput skipped"
    fi
  } > "$out/dist.log" 2>&1
  grep -E "^==|tests passed|Passed|Failed|SKIPPED|tokens/s|error|dist:" "$out/dist.log" | tail -30
fi
exit $rc
