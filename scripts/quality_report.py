"""scripts/quality_report.py REPORT_DIR MACHINE — turns the outputs of scripts/quality_report
(evals.jsonl, the QAT runs' metrics.jsonl) into quality-report.md and quality-report.svg (drawn
by scripts/plotting.py, as scripts/plot draws training curves)."""
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plotting  # noqa: E402  (scripts/plotting.py)

rep, machine = sys.argv[1], sys.argv[2]
evals = [json.loads(l) for l in open(os.path.join(rep, "evals.jsonl")) if l.strip()]


def metrics(mode):
    rows = plotting.read_metrics(os.path.join(rep, "qat-" + mode, "metrics.jsonl"))
    steps = [r for r in rows if "loss" in r]
    return steps


rows = []
bf16, ptq, hp, dq = evals
rows.append(("BF16 (pretrained; trainer policy)", "bf16", bf16, bf16["mean_abs_dlogp"],
             "BF16 trainer vs its NVFP4 PTQ export"))
rows.append(("NVFP4 PTQ (`fp4qat convert`)", "nvfp4", ptq, bf16["mean_abs_dlogp"],
             "same pair as above: a BF16 trainer serving NVFP4"))
for name, mode, ev in (("NVFP4 QAT, high_precision backward", "high_precision", hp),
                       ("NVFP4 QAT, dequantized backward", "dequantized", dq)):
    steps = metrics(mode)
    mm = [s["mismatch_mean"] for s in steps if plotting._num(s.get("mismatch_mean")) is not None]
    rows.append((name, "nvfp4", ev, max(mm) if mm else float("nan"),
                 "trainer vs its own export, max over %d steps" % len(mm)))

# The 2026 recipes (scripts/quality_report: evals-recipes.jsonl, qat-<recipe>/metrics.jsonl).
RECIPES = [("4over6", "Four Over Six (M 256, MAE), weights and activations", "4over6"),
           ("rows", "row-scaled (per-token) activation scales", "row-scaled"),
           ("4over6-rows", "Four Over Six + row-scaled activations", "4over6+rows"),
           ("w4a16", "W4A16 (NVFP4 weights, BF16 activations)", "W4A16")]
recipe_rows = []
recipe_shorts = []  # (short label, recipe key) of each recipe present, for the figure
path = os.path.join(rep, "evals-recipes.jsonl")
if os.path.exists(path):
    by = {(e["recipe"], e["role"]): e for e in (json.loads(l) for l in open(path) if l.strip())}
    for key, label, short in RECIPES:
        if (key, "qat") not in by:
            continue
        recipe_shorts.append((short, key))
        steps = metrics(key)
        mm = [s_["mismatch_mean"] for s_ in steps if plotting._num(s_.get("mismatch_mean")) is not None]
        recipe_rows.append(("%s, PTQ" % label, "nvfp4", by[(key, "ptq")], by[(key, "bf16")]["mean_abs_dlogp"],
                            "BF16 trainer vs this PTQ export"))
        recipe_rows.append(("%s, QAT" % label, "nvfp4", by[(key, "qat")], max(mm) if mm else float("nan"),
                            "trainer vs its own export, max over %d steps" % len(mm)))

date = datetime.date.today().isoformat()
md = ["# Quality report: BF16 vs NVFP4 PTQ vs expert-only NVFP4 QAT", "",
      "Machine: %s. Date: %s. Command: `scripts/quality_report`." % (machine, date), "",
      "Tiny Qwen3-MoE (configs/tiny.yaml) pretrained in BF16 on the synthetic addition corpus "
      "(recipes/default.yaml), then: post-training NVFP4 quantization of the experts "
      "(`fp4qat convert`, 1D blocks, calibrated input scales), and expert-only NVFP4 QAT "
      "fine-tuning (recipes/expert-nvfp4-qat-tiny.yaml, 150 steps) in both backward modes. Every "
      "model is evaluated from its exported folder, run as the rollout side runs it "
      "(`fp4qat eval`): validation loss on 4 x 16 x 64 synthetic tokens and exact-match accuracy "
      "of greedy answers to 128 problems. |dlogp| is the mean per-token |log p_trainer - log p_export| "
      "between the policy the trainer computes and the NVFP4 export the rollout engine would sample from.",
      "", "| model | served as | val loss | exact match | mean abs dlogp vs NVFP4 export | dlogp measured |",
      "|---|---|---:|---:|---:|---|"]
for name, fmt, ev, d, how in rows + recipe_rows:
    md.append("| %s | %s | %.4f | %.3f | %.2e | %s |" % (name, fmt, ev["val_loss"], ev["exact_match"], d, how))
if recipe_rows:
    qat = [(r[0], r[2]) for r in [rows[2]] + recipe_rows[1::2]]  # the QAT rows (high_precision backward)
    best = min(qat, key=lambda r: r[1]["val_loss"])
    md += ["", "Recipes (issue 20): each 2026 recipe as PTQ (`fp4qat convert` with the same rules) and as "
           "expert-only QAT (high_precision backward), served with its recorded recipe. Lowest validation "
           "loss after QAT: **%s** (%.4f; exact match %.3f)." % (best[0], best[1]["val_loss"],
                                                                  best[1]["exact_match"])]
# Serving profiles (scripts/quality_report: evals-serving.jsonl): |dlogp| between the trainer's
# policy (each QAT run's export under the profile it was trained for) and the same export as each
# engine profile serves it.
PROFILES = [("fp4qat", "`fp4qat` (the export's recorded recipe as `fp4qat eval` serves it)"),
            ("marlin", "`marlin` (vLLM / SGLang on Hopper: W4A16, Marlin's weights)"),
            ("flashinfer_per_token", "`flashinfer_per_token` (SM100 per-token activation scales)"),
            ("flashinfer_static", "`flashinfer_static` (SM100 FlashInfer / CUTLASS MoE: one static scale per layer)")]
path = os.path.join(rep, "evals-serving.jsonl")
if os.path.exists(path):
    sv = {(e["trained"], e["served"]): e for e in (json.loads(l) for l in open(path) if l.strip())}
    trained = [p for p, _ in PROFILES if any(k[0] == p for k in sv)]
    served = [p for p, _ in PROFILES if any(k[1] == p for k in sv)]
    md += ["", "Serving profiles (`qat.serving`, issue 21): mean per-token |dlogp| between the trainer's policy "
           "after expert-only QAT under the profile of the row and its export as the engine of the column "
           "computes it (`fp4qat eval --reference-serving`). The diagonal is the per-step probe of a run "
           "trained for the engine that serves it; off the diagonal, a run trained for one engine and "
           "served by another. A run trained for `flashinfer_per_token` records row-scaled activations "
           "in its recipe, so `fp4qat eval` serves it per token as well.", "",
           "| trained for (row), served by (column) | " + " | ".join("`%s`" % p for p in served) + " |",
           "|---|" + "---:|" * len(served)]
    for t in trained:
        label = dict(PROFILES)[t]
        md.append("| %s | " % label + " | ".join(
            ("%.2e" % sv[(t, s_)]["mean_abs_dlogp"]) if (t, s_) in sv else "—" for s_ in served) + " |")
md += ["", "![val loss and exact match per model; QAT loss curves](quality-report.svg)", "",
       "Reading: with QAT the trainer's policy *is* the served NVFP4 policy (|dlogp| at "
       "accumulation-order level; exactly 0 on the CPU), while a BF16 trainer whose weights are "
       "served in NVFP4 differs per token by the BF16 row's |dlogp| — the off-policy gap RL "
       "importance ratios would absorb. The QAT rows also show what fine-tuning under the NVFP4 "
       "forward recovers of the PTQ loss and accuracy.", ""]
open(os.path.join(rep, "quality-report.md"), "w").write("\n".join(md))

# Figure (scripts/plotting.py, the same code as scripts/plot): val loss and exact match per model
# as served (the recipes' PTQ and QAT after the four base models), and the QAT fine-tunings' loss
# curves (log scale) from their metrics.jsonl.
models = [(short, r[2]["val_loss"], r[2]["exact_match"])
          for short, r in zip(["BF16", "NVFP4 PTQ", "NVFP4 QAT\nhp backward", "NVFP4 QAT\ndq backward"], rows)]
for (short, _), ptq_row, qat_row in zip(recipe_shorts, recipe_rows[0::2], recipe_rows[1::2]):
    models.append((short + "\nPTQ", ptq_row[2]["val_loss"], ptq_row[2]["exact_match"]))
    models.append((short + "\nQAT", qat_row[2]["val_loss"], qat_row[2]["exact_match"]))
curves = []
for label, mode in [("QAT, high_precision backward", "high_precision"), ("QAT, dequantized backward", "dequantized")] + \
        [("QAT, " + short, key) for short, key in recipe_shorts]:
    try:
        curves.append(plotting.load_run(os.path.join(rep, "qat-" + mode), label))
    except plotting.MetricsError as e:
        print("quality_report: warning: no curve: %s" % e, file=sys.stderr)
fig = plotting.figure_quality_report(models, curves, "BF16 vs NVFP4 PTQ vs expert-only NVFP4 QAT (%s)" % machine,
                                     "model, as served (hp / dq: high_precision / dequantized backward; "
                                     "recipes: high_precision)")
plotting.save(fig, os.path.join(rep, "quality-report.svg"), png=False)
