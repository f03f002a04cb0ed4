#!/usr/bin/env python3
"""bench/rl_split.py RUN_DIR... — the RL loop's iteration split from each run's metrics.jsonl
(`fp4qat rl`; README, "The RL loop"): medians over the iterations after the first two of
load_s, sample_s, score_s, train_s (summed over the iteration's updates), export_s (the
iteration's last update), their sum, sampled tokens/s, and export + load as a share of it."""
import json
import statistics
import sys


def split(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    rows = [r for r in rows if "train_s" in r]
    its, cur = [], None
    for r in rows:
        if "sample_s" in r:  # the step that begins an iteration
            cur = {k: r.get(k, 0.0) for k in ("load_s", "sample_s", "score_s", "sample_tokens_per_s")}
            cur.update(train_s=0.0, export_s=0.0)
            its.append(cur)
        if cur is None:
            continue  # a resumed run's first steps, mid-iteration
        cur["train_s"] += r["train_s"]
        cur["export_s"] += r.get("export_s", 0.0)
    for it in its:
        it["iteration_s"] = sum(it[k] for k in ("load_s", "sample_s", "score_s", "train_s", "export_s"))
        it["export_load_share"] = (it["export_s"] + it["load_s"]) / it["iteration_s"]
    return its[2:] if len(its) > 4 else its


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: bench/rl_split.py RUN_DIR...")
    keys = ("load_s", "sample_s", "score_s", "train_s", "export_s", "iteration_s", "sample_tokens_per_s",
            "export_load_share")
    print("run " + " ".join(f"{k:>12s}" for k in keys) + "  iterations")
    bad = 0
    for run in sys.argv[1:]:
        try:
            its = split(run)
        except OSError as e:
            print(f"run {run}: no metrics ({e})")
            bad = 1
            continue
        if not its:
            print(f"run {run}: no iteration logged")
            bad = 1
            continue
        med = {k: statistics.median(it[k] for it in its) for k in keys}
        print(f"run {run}\n    " + " ".join(f"{med[k]:12.4f}" for k in keys) + f"  {len(its)}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
