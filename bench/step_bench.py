#!/usr/bin/env python3
"""bench/step_bench.py — the whole training step (issue 25): fp4qat against the PyTorch baseline
(bench/baselines/qwen3_moe_train.py) at real shapes, interleaved in one call.

For each shape and each of --rounds rounds, in this order: fp4qat BF16 (qat.format none), the
baseline (torch.compile, BF16 autocast over fp32 masters, fused AdamW), fp4qat with expert-only NVFP4
QAT (the trainer's default: weights quantized once per weight change), the same with the weights
re-quantized in every forward (qat.cache_weights false), and the default with the per-step NVFP4
export on; on request (--variants) issue 20's recipes: W4A16 (qat-w4a16, qat.activations bf16) and
row-scaled activations (qat-rowscaled, qat.activation_scale row). Every run starts from the same
random initialisation (train.seed 1) and reads the same random token file. Reported per variant:
the median tokens/s of the steps after --warmup, MFU and the peak GPU memory; ratios against our
BF16 step. For the export variant the
tokens/s count the time the export held the loop (metrics' export_s: staging it, and waiting for
the previous one's write where the disk is slower than the steps), and export_s is reported.

MFU counts the FLOPs of the matrix products a token goes through, x3 for training (forward, and
backward for the inputs and the weights): per layer 2 * H * (nH + 2 nKV + nH) * hd for q, k, v, o,
2 * H * E for the router and k * 2 * 3 * H * I for its experts (a dense layer 2 * 3 * H * I), the
LM head 2 * H * V, and causal attention 2 * 2 * T/2 * nH * hd per layer (QK^T and AV over the mean
context T/2). The embedding lookup, norms and activations are left out. Peak: --peak-tflops (989,
the H100 / H200 SXM dense BF16 number).

No command line is built through a shell: every run is a subprocess with an argument list.
With --layouts dp2,ep2 our variants also run on two GPUs (scripts/launch, parallel.dp=2 or
parallel.ep=2; each rank its own batch, tokens/s global, MFU over both GPUs); the baseline runs on one.
Usage: bench/step_bench.py --fp4qat BUILD/fp4qat --out DIR [--shapes moe-100m,qwen3-30b-a3b-4l] [--layouts 1,dp2,ep2]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "baselines"))

# name -> (model config, seq_len, batch_size)
SHAPES = {
    "moe-100m": (os.path.join(ROOT, "configs/moe-100m.yaml"), 2048, 8),
    "qwen3-30b-a3b-4l": (os.path.join(HERE, "step/qwen3-30b-a3b-4l.yaml"), 4096, 1),
    "tiny": (os.path.join(ROOT, "configs/tiny.yaml"), 64, 4),  # the driver's own check, on the CPU
}


def read_shape(path):
    """The model YAML's scalar keys (the configs/ files are flat key: value lines)."""
    out = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if ":" in line:
            k, v = (x.strip() for x in line.split(":", 1))
            if not v or v.startswith("["):
                continue
            if v in ("true", "false"):
                out[k] = v == "true"
            else:
                out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return out


def flops_per_token(m, seq):
    H, hd, nH, nKV = m["hidden_size"], m["head_dim"], m["num_attention_heads"], m["num_key_value_heads"]
    E, k, I, V, L = m["num_experts"], m["num_experts_per_tok"], m["moe_intermediate_size"], m["vocab_size"], \
        m["num_hidden_layers"]
    per_layer = 2 * H * (nH + 2 * nKV + nH) * hd + 2 * H * E + k * 2 * 3 * H * I + 2 * 2 * (seq / 2) * nH * hd
    return 3 * (L * per_layer + 2 * H * V)


def run(args, log, env=None):
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    return p.returncode, time.time() - t0


def ours(a, shape, variant, tokens, out, layout="1"):
    """One fp4qat run; layout "1" (one process), "dp2" or "ep2" (two ranks through scripts/launch,
    data or expert parallel; tokens/s is then the global rate, peak memory rank 0's)."""
    cfg, seq, bs = SHAPES[shape]
    sets = {"model_config": cfg, "train.steps": a.steps, "train.seq_len": seq, "train.batch_size": bs,
            "train.eval_every": 0, "train.checkpoint_every": 0, "train.log_every": 1, "train.seed": 1,
            "train.device": a.device, "train.dtype": "bf16" if a.device == "cuda" else "fp32",
            "train.out_dir": out, "train.init_from": '""', "data.kind": "tokens", "data.path": tokens,
            "data.val_fraction": 0, "optim.warmup_steps": 2, "train.final_checkpoint": "false"}
    if variant == "bf16":
        sets.update({"qat.format": "none", "export.every": 0})
    else:
        sets.update({"qat.format": "nvfp4", "qat.modules": '["model.layers.*.mlp.experts.*"]',
                     "qat.train": "all", "export.every": 1 if variant == "qat-export" else 0,
                     "qat.cache_weights": "false" if variant == "qat-requant" else "true",
                     "export.formats": "[nvfp4]", "export.keep": 2, "export.probe_mismatch": "false"})
        if variant == "qat-w4a16":  # issue 20: W4A16 (weights NVFP4, activations BF16)
            sets["qat.activations"] = "bf16"
        if variant == "qat-rowscaled":  # issue 20: one global scale per activation row
            sets["qat.activation_scale"] = "row"
    argv = [a.fp4qat, "train", "--recipe", os.path.join(ROOT, "recipes/default.yaml"), "--overwrite"]
    if layout != "1":
        sets["parallel.dp" if layout == "dp2" else "parallel.ep"] = 2
        argv = [os.path.join(ROOT, "scripts/launch"), "-n", "2", "--logs", out + "-ranks", "--"] + argv
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    if a.trace:  # a timeline of two steps after the warm-up (fp4qat train --trace)
        argv += ["--trace", out + "-trace.json", "--trace-steps", f"{a.warmup + 1}:{a.warmup + 2}"]
    rc, secs = run(argv, out + ".log")
    rows = []
    if rc == 0:
        rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"tokens_per_s"' in l]
    if rc != 0:  # the run's last lines say why
        with open(out + ".log", errors="replace") as f:
            print("".join(f.readlines()[-6:]), end="", flush=True)
    if a.trace and os.path.exists(out + "-trace.json.txt"):  # where the timeline's memory peaked
        with open(out + "-trace.json.txt", errors="replace") as f:
            print("".join(l for l in f if l.startswith("memory allocated:")), end="", flush=True)
    for d in ("exports", "checkpoints", "hf"):  # the run's outputs: a 30B slice's would fill the disk
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    return rc, secs, rows


def baseline(a, shape, tokens, recipe, out):
    cfg, seq, bs = SHAPES[shape]
    argv = [sys.executable, os.path.join(HERE, "baselines/qwen3_moe_train.py"), "--model", cfg, "--init-seed", "1",
            "--tokens", tokens, "--recipe", recipe, "--steps", str(a.steps), "--device", a.device,
            "--timing-warmup", str(a.warmup), "--json", out + ".json"]
    argv += ["--compile"] if a.compile else ["--no-compile"]
    rc, secs = run(argv, out + ".log")
    rows = []
    if rc == 0:
        j = json.load(open(out + ".json"))
        rows = j.get("steps", [])
    return rc, secs, rows


def summarise(rows, warmup, key="tokens_per_s"):
    vals = [r[key] for r in rows[warmup:] if key in r] or [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp4qat", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="moe-100m,qwen3-30b-a3b-4l")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--variants", default="bf16,baseline,qat,qat-requant,qat-export",
                    help="comma-separated subset, run in this order (the baseline reads bf16's config.yaml)")
    ap.add_argument("--layouts", default="1",
                    help="comma-separated: 1 (one GPU), dp2 / ep2 (our variants on two GPUs, data or expert "
                         "parallel; the baseline runs on one)")
    ap.add_argument("--trace", action="store_true",
                    help="our runs also record a Kineto timeline of two steps after --warmup (<run>-trace.json, "
                         "its summary in <run>-trace.json.txt)")
    a = ap.parse_args()
    variants = a.variants.split(",")
    known = ("bf16", "baseline", "qat", "qat-requant", "qat-export", "qat-w4a16", "qat-rowscaled")
    layouts = a.layouts.split(",")
    if any(l not in ("1", "dp2", "ep2") for l in layouts) or not layouts:
        ap.error("--layouts: a comma-separated subset of 1,dp2,ep2")
    if any(v not in known for v in variants) or ("baseline" in variants and "bf16" not in variants[:variants.index("baseline")]):
        ap.error(f"--variants: a comma-separated subset of {','.join(known)}; baseline after bf16")
    os.makedirs(a.out, exist_ok=True)
    import qwen3_moe_train as qb  # the baseline's token-file writer (fp4qat's FP4QTOK1 layout)
    import numpy as np
    results, bad = [], 0
    for shape in a.shapes.split(","):
        cfg, seq, bs = SHAPES[shape]
        m = read_shape(cfg)
        tokens = os.path.join(a.out, f"{shape}-tokens.bin")
        rng = np.random.default_rng(0)
        qb.write_token_file(tokens, rng.integers(0, m["vocab_size"], size=max(4 * seq * bs * a.steps, 1 << 20)),
                            width=2 if m["vocab_size"] <= 65535 else 4)
        fpt = flops_per_token(m, seq)
        per = {}
        for r in range(a.rounds):
            runs_ = [(v, "1") for v in variants] if "1" in layouts else []
            runs_ += [(v, l) for l in layouts if l != "1" for v in variants if v != "baseline"]
            for variant, layout in runs_:
                name = variant if layout == "1" else f"{variant}-{layout}"
                out = os.path.join(a.out, f"{shape}-{name}-r{r}")
                if variant == "baseline":
                    recipe = os.path.join(a.out, f"{shape}-bf16-r{r}", "config.yaml")
                    rc, secs, rows = baseline(a, shape, tokens, recipe, out)
                    mem = float("nan")
                    if rc == 0:
                        pb = json.load(open(out + ".json")).get("summary", {}).get("peak_memory_bytes")
                        mem = pb / 2**30 if pb else mem
                else:
                    rc, secs, rows = ours(a, shape, variant, tokens, out, layout)
                    mem = rows[-1].get("peak_memory_gib", float("nan")) if rows else float("nan")
                if variant == "qat-export":
                    # The loop's real rate: the step's compute plus the time the export held the loop
                    # (export_s: staging, and waiting for the previous export's write when the disk is
                    # slower than the steps), per step of seq x batch tokens.
                    step_tokens = seq * bs * (1 if layout == "1" else 2)  # global, every rank's
                    for r_ in rows:
                        if "export_s" in r_ and r_.get("tokens_per_s", 0) > 0:
                            r_["tokens_per_s"] = step_tokens / (step_tokens / r_["tokens_per_s"] + r_["export_s"])
                tps = summarise(rows, a.warmup)
                exp = summarise(rows, a.warmup, "export_s") if variant == "qat-export" else float("nan")
                print(f"{shape:18s} round {r} {name:14s} rc {rc} {secs:7.1f} s  tokens/s {tps:12.0f}  "
                      f"peak {mem:7.2f} GiB" + (f"  export_s {exp:.3f}" if exp == exp else ""), flush=True)
                bad |= rc != 0
                per.setdefault(name, []).append({"tokens_per_s": tps, "peak_memory_gib": mem, "export_s": exp})
        row = {"shape": shape, "seq_len": seq, "batch_size": bs, "flops_per_token": fpt, "variants": {}}
        for variant, runs in per.items():
            tps = statistics.median(x["tokens_per_s"] for x in runs)
            row["variants"][variant] = {
                "tokens_per_s": tps,
                "mfu": tps * fpt / (a.peak_tflops * 1e12 * (2 if variant.endswith(("-dp2", "-ep2")) else 1)),
                "peak_memory_gib": max(x["peak_memory_gib"] for x in runs),
                "export_s": statistics.median(x["export_s"] for x in runs), "rounds": runs}
        b = row["variants"]["bf16"]["tokens_per_s"] if "bf16" in row["variants"] else float("nan")
        for variant, v in row["variants"].items():
            v["step_time_vs_our_bf16"] = b / v["tokens_per_s"] if v["tokens_per_s"] > 0 else float("nan")
        results.append(row)
    with open(os.path.join(a.out, "step_bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n| shape | variant | tokens/s | MFU | peak GiB | step time / our BF16 | export_s |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        for variant, v in row["variants"].items():
            print(f"| {row['shape']} (seq {row['seq_len']}, batch {row['batch_size']}) | {variant} | "
                  f"{v['tokens_per_s']:,.0f} | {100 * v['mfu']:.1f}% | {v['peak_memory_gib']:.2f} | "
                  f"{v['step_time_vs_our_bf16']:.3f}x | {v['export_s']:.3f} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
