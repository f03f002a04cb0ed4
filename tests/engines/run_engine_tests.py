"""ctest entry of the loader conformance tests (label `engines`): stdlib only, any python.

    run_engine_tests.py --engine vllm|sglang --fp4qat BUILD/fp4qat --work DIR

1. Finds the engines venv (scripts/setup --engines): $FP4QAT_ENGINES_VENV, else
   ~/.cache/fp4qat/venv-engines-vllm<V>-sglang<V> with the versions of tests/engines/engines.txt.
   Absent: prints "skipped: ..." and exits 77 (ctest SKIP_RETURN_CODE), so CI without it stays green.
2. Makes the exports with our binary (seconds on the CPU): a 1-step BF16 run of the tiny model
   (recipes/default.yaml), then `convert` of its hf/ to NVFP4 (--keep-first-n 1: layer 0's experts
   stay BF16, so the exclusion list has a fused-expert entry), W4A16 (--activations bf16), MXFP8 with
   --engine vllm and --engine sglang, and a 1-step NVFP4 QAT run's per-step trainer export.
3. Runs tests/engines/engine_check.py with the engines venv's python on them (see its header for
   what is checked and what is stubbed).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def engines_venv():
    if os.environ.get("FP4QAT_ENGINES_VENV"):
        return os.environ["FP4QAT_ENGINES_VENV"]
    pins = dict(re.findall(r"^(\w+)==(\S+)", open(os.path.join(HERE, "engines.txt")).read(), re.M))
    return os.path.expanduser(f"~/.cache/fp4qat/venv-engines-vllm{pins['vllm']}-sglang{pins['sglang']}")


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.stdout.write(r.stdout[-4000:] + r.stderr[-4000:])
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}")
    return r


def make_exports(fp4qat, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    small = ["--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "train.seq_len=16",
             "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0"]
    run([fp4qat, "train", "--recipe", os.path.join(REPO, "recipes/default.yaml"), *small,
         "--set", f"train.out_dir={work}/bf16-run"])
    hf = f"{work}/bf16-run/hf"
    conv = [fp4qat, "convert", "--in", hf, "--device", "cpu"]
    run(conv + ["--out", f"{work}/nvfp4", "--format", "nvfp4", "--keep-first-n", "1", "--calib-batches", "1"])
    run(conv + ["--out", f"{work}/w4a16", "--format", "nvfp4", "--activations", "bf16"])
    run(conv + ["--out", f"{work}/mxfp8-vllm", "--format", "mxfp8", "--engine", "vllm"])
    run(conv + ["--out", f"{work}/mxfp8-sglang", "--format", "mxfp8", "--engine", "sglang"])
    run([fp4qat, "train", "--recipe", os.path.join(REPO, "recipes/expert-nvfp4-qat-tiny.yaml"), *small,
         "--set", f"train.init_from={hf}", "--set", f"train.out_dir={work}/qat-run"])
    os.symlink(f"{work}/qat-run/exports/latest/nvfp4", f"{work}/nvfp4-train")
    run([fp4qat, "train", "--recipe", os.path.join(REPO, "recipes/expert-nvfp4-qat-tiny.yaml"), *small,
         "--set", f"train.init_from={hf}", "--set", f"train.out_dir={work}/qat-static",
         "--set", "qat.serving=flashinfer_static"])
    os.symlink(f"{work}/qat-static/exports/latest/nvfp4", f"{work}/nvfp4-static")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True, choices=["vllm", "sglang"])
    ap.add_argument("--fp4qat", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    ev = engines_venv()
    py = os.path.join(ev, "bin", "python")
    if not os.access(py, os.X_OK):
        print(f"skipped: engines venv not installed ({ev}); run scripts/setup --engines")
        sys.exit(SKIP)
    make_exports(a.fp4qat, a.work)
    sys.stdout.flush()
    r = subprocess.run([py, os.path.join(HERE, "engine_check.py"), "--engine", a.engine, "--exports", a.work])
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
