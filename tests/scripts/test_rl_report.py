#!/usr/bin/env python3
"""tests/scripts/test_rl_report.py — scripts/rl_report.py on synthetic metrics of the five arms
(rows as `fp4qat rl` writes them): docs/rl-report.json's fields per arm (reward_start / reward_end
= the mean reward of the first / last 10% of iterations, mismatch_mean and kl_mean over the run,
iterations), the markdown table and statements from those numbers, the figure; an arm without
metrics is skipped with a warning, not an error.
Exit 0 = pass; the last line says "N passed, M failed"."""
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(os.path.join(here, "..", ".."))
sys.path.insert(0, here)
import checks  # noqa: E402 (the shared tally)
from checks import check  # noqa: E402

# per arm: (reward at iteration i, sampler mismatch, kl)
ARMS = {"a": (lambda i: 0.2 + 0.01 * i, 1e-3, 1e-4), "b": (lambda i: 0.3, 0.1, 0.05),
        "b-no-tis": (lambda i: 0.3 - 0.001 * i, 0.12, 0.06), "c": (lambda i: 0.5, 2e-3, 2e-4)}
N = 20
with tempfile.TemporaryDirectory() as rep:
    for name, (rew, mm, kl) in ARMS.items():
        os.makedirs(os.path.join(rep, name))
        with open(os.path.join(rep, name, "metrics.jsonl"), "w") as f:
            for i in range(N):
                f.write(json.dumps({"step": i + 1, "loss": 0.1, "lr": 1e-4, "grad_norm": 1, "tokens_per_s": 1,
                                    "aux_loss": 1, "reward_mean": rew(i), "response_length_mean": 3,
                                    "clip_fraction": 0, "sampler_mismatch_mean": mm, "sampler_kl": kl,
                                    "corrected_fraction": 0.01 if name == "b" else 0.0,
                                    "sample_s": 0.5}) + "\n")
    p = subprocess.run([sys.executable, os.path.join(repo, "scripts", "rl_report.py"), rep, "test machine", "marlin"],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "rl_report.py exits 0 (stderr: %s)" % p.stderr[-300:])
    check("arm d" in p.stderr, "the arm without metrics (d) is named in a warning")
    rj = json.load(open(os.path.join(rep, "rl-report.json")))
    check(sorted(k for k in rj if k in ("a", "b", "b_no_tis", "c", "d")) == ["a", "b", "b_no_tis", "c"],
          "rl-report.json has one object per arm with metrics: %s" % sorted(rj))
    a = rj["a"]
    check(a["iterations"] == N, "iterations = rows with a reward (%s)" % a["iterations"])
    # 10% of 20 iterations: the first two (0.20, 0.21) and the last two (0.38, 0.39)
    check(abs(a["reward_start"] - 0.205) < 1e-9 and abs(a["reward_end"] - 0.385) < 1e-9,
          "reward_start / reward_end: the first / last 10%% of iterations (%s, %s)" % (a["reward_start"], a["reward_end"]))
    check(abs(rj["b"]["mismatch_mean"] - 0.1) < 1e-12 and abs(rj["c"]["kl_mean"] - 2e-4) < 1e-12,
          "mismatch_mean and kl_mean: the run's means")
    md = open(os.path.join(rep, "rl-report.md")).read()
    check("| (a) BF16 learner, BF16 sampler | 20 | 0.205 | 0.385 | 1.00e-03 |" in md, "the table row of arm a")
    check("(100x)" in md, "the NVFP4 sampler's mismatch against the BF16 pair's, as a ratio")
    check("at the BF16 pair's level" in md, "QAT's mismatch (2x the BF16 pair's) called the BF16 pair's level")
    svg = open(os.path.join(rep, "rl-report.svg")).read()
    check("mean reward" in svg and "(c) expert-only NVFP4 QAT learner" in svg, "the figure's panel and legend text")
sys.exit(checks.summary())
