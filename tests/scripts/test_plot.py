#!/usr/bin/env python3
"""tests/scripts/test_plot.py — scripts/plot and scripts/quality_report.py's figure, end to end on
synthetic metrics, run with the venv's python (matplotlib): writes metrics.jsonl files as
`fp4qat train` writes them (plus a null, a line that is not JSON and a half-written last line),
runs scripts/plot as a subprocess (FP4QAT_PYTHON = this python) and reads the SVG back: axis labels,
legend entries, a logarithmic loss axis (tick labels' positions affine in log10 of their values,
not in the values), the PNG beside it; the error paths (missing metrics.jsonl, no usable row,
several runs without --out) exit non-zero naming the problem without a traceback.
Exit 0 = pass; the last line says "N passed, M failed"."""
import json
import math
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(os.path.join(here, "..", ".."))
plot = os.path.join(repo, "scripts", "plot")
SVG = "{http://www.w3.org/2000/svg}"

sys.path.insert(0, here)
import checks  # noqa: E402 (the shared tally)
from checks import check  # noqa: E402


def run_plot(*args):
    env = dict(os.environ, FP4QAT_PYTHON=sys.executable)
    p = subprocess.run([plot, *args], capture_output=True, text=True, env=env, timeout=300)
    return p.returncode, p.stdout, p.stderr


def write_run(d, steps=300, scale=1.0, partial=True):
    """A pretraining-like run: loss from ~6 down to ~0.02 (over two decades), evals every 100 steps."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for s in range(1, steps + 1):
            loss = 0.02 + 6.0 * math.exp(-s / (30.0 * scale)) * (1 + 0.05 * math.sin(s))
            row = {"step": s, "loss": loss, "lr": 1e-3 * min(1.0, s / 10), "grad_norm": 3 * math.exp(-s / 100) + 0.1,
                   "tokens_per_s": 5000 + 100 * math.sin(s), "aux_loss": 1.1, "expert_load": [[0.5, 0.5]],
                   "export_s": 0.05, "mismatch_mean": 1e-4 * (1 + math.sin(s) ** 2), "mismatch_max": 2e-3}
            if s == 7:
                row["grad_norm"] = None  # the trainer writes NaN/Inf as null
            f.write(json.dumps(row) + "\n")
            if s == 50:
                f.write("garbage that is not JSON\n")
            if s % 100 == 0:
                f.write(json.dumps({"step": s, "val_loss": loss * 1.1, "exact_match": min(1.0, s / steps)}) + "\n")
        if partial:
            f.write('{"step": %d, "loss": 0.0' % (steps + 1))  # a run still writing: no newline, cut


def texts(svg_path):
    """All <text> strings of an SVG, and the (label, y) of the loss panel's y tick labels."""
    root = ET.parse(svg_path).getroot()
    allt = ["".join(t.itertext()) for t in root.iter(SVG + "text")]
    ticks = []
    for g in root.iter(SVG + "g"):
        if g.get("id") == "panel-loss":  # its axes: x first, then y
            axes = [ax for ax in g.iter(SVG + "g") if ax.get("id", "").startswith("matplotlib.axis_")]
            for t in axes[1].iter(SVG + "text") if len(axes) > 1 else []:
                ticks.append(("".join(t.itertext()), float(t.get("y"))))
    return allt, ticks


def log_axis_ok(ticks):
    """The numeric tick labels' y positions are affine in log10(value) (within 0.5 px) and not in
    the value: a logarithmic axis."""
    pts = []
    for s, y in ticks:
        try:
            v = float(s.replace("\u2212", "-"))
        except ValueError:
            continue
        if v > 0:
            pts.append((v, y))
    if len(pts) < 3 or max(v for v, _ in pts) / min(v for v, _ in pts) < 10:
        return False, "too few numeric tick labels over a decade: %r" % ticks

    def resid(f):
        xs = [f(v) for v, _ in pts]
        ys = [y for _, y in pts]
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        return max(abs(y - (my + b * (x - mx))) for x, y in zip(xs, ys))

    rl, rv = resid(math.log10), resid(lambda v: v)
    return rl < 0.5 and rv > 5, "labels %s: residual vs log10 %.3f px, vs value %.1f px" % (
        [s for s, _ in ticks], rl, rv)


def main():
    tmp = tempfile.mkdtemp(prefix="fp4qat-test-plot-")

    # 1. one run, default output RUN_DIR/loss.svg (+ loss.png)
    a = os.path.join(tmp, "pretrain-a")
    write_run(a)
    rc, out, err = run_plot(a)
    svg = os.path.join(a, "loss.svg")
    check(rc == 0, "scripts/plot RUN_DIR exits 0" + ("" if rc == 0 else " (rc %d; %s)" % (rc, err.strip()[-300:])))
    check(os.path.isfile(svg) and os.path.getsize(svg) > 0, "RUN_DIR/loss.svg written")
    check(os.path.isfile(os.path.join(a, "loss.png")), "RUN_DIR/loss.png written beside it")
    check("incomplete last line" in err and "metrics.jsonl:" in err, "the half-written last line is skipped with a warning")
    check("not JSON" in err, "a line that is not JSON is skipped with a warning")
    check("Traceback" not in err, "no traceback")
    if os.path.isfile(svg):
        allt, ticks = texts(svg)
        for label in ("optimizer step", "cross-entropy loss (log scale)", "exact match (fraction correct)",
                      "learning rate", "validation loss"):
            check(label in allt, "SVG has the text %r" % label)
        check(any(t.startswith("train loss") for t in allt), "SVG has the legend entry 'train loss...'")
        check(any(t.startswith("pretrain-a — step 300") for t in allt), "legend entry of the run (label, last step)")
        ok, why = log_axis_ok(ticks)
        check(ok, "loss axis is logarithmic: " + why)
        check(not [f for f in os.listdir(a) if ".tmp-" in f], "no temporary files left")

    # 2. two runs overlaid: one legend entry each
    b = os.path.join(tmp, "pretrain-b")
    write_run(b, steps=200, scale=2.0, partial=False)
    cmp_svg = os.path.join(tmp, "out", "compare.svg")
    rc, out, err = run_plot(a, b, "--out", cmp_svg, "--no-png")
    check(rc == 0, "two runs with --out exit 0" + ("" if rc == 0 else " (rc %d; %s)" % (rc, err.strip()[-300:])))
    if os.path.isfile(cmp_svg):
        allt, ticks = texts(cmp_svg)
        check(sum(t.startswith("pretrain-a — ") for t in allt) == 1 and sum(t.startswith("pretrain-b — ") for t in allt) == 1,
              "one legend entry per run")
        check(log_axis_ok(ticks)[0], "overlay: loss axis is logarithmic")
    else:
        check(False, "--out FILE written")
    check(not os.path.exists(os.path.join(tmp, "out", "compare.png")), "--no-png: no PNG")
    rc, out, err = run_plot(a, b, "--label", "first", "--label", "second", "--out", cmp_svg, "--no-png")
    check(rc == 0 and any(t.startswith("second — step 200") for t in texts(cmp_svg)[0]), "--label names the runs")

    # 3. error paths
    empty = os.path.join(tmp, "no-run")
    os.makedirs(empty)
    rc, out, err = run_plot(empty)
    check(rc != 0, "missing metrics.jsonl: non-zero exit (rc %d)" % rc)
    check(os.path.join(empty, "metrics.jsonl") in err and "no such file" in err,
          "missing metrics.jsonl: the message names the file (%s)" % err.strip())
    check("Traceback" not in err, "missing metrics.jsonl: no traceback")
    bad = os.path.join(tmp, "bad-run")
    os.makedirs(bad)
    with open(os.path.join(bad, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": null}\n{"step": 2, "val_loss": null}\n{"step": 3, "lo')
    rc, out, err = run_plot(bad)
    check(rc != 0 and "no usable rows" in err and os.path.join(bad, "metrics.jsonl") in err,
          "no usable row: non-zero exit naming the file (%s)" % err.strip().splitlines()[-1:])
    check(not os.path.exists(os.path.join(bad, "loss.svg")), "no usable row: no figure written")
    rc, out, err = run_plot(a, b)
    check(rc != 0 and "--out" in err, "several runs without --out: non-zero exit asking for --out")

    # 4. the quality report's figure through the same module
    rep = os.path.join(tmp, "report")
    os.makedirs(rep)
    with open(os.path.join(rep, "evals.jsonl"), "w") as f:
        for vl, em in ((1.12, 0.51), (1.18, 0.25), (1.14, 0.45), (1.13, 0.44)):
            f.write(json.dumps({"val_loss": vl, "exact_match": em, "mean_abs_dlogp": 0.1}) + "\n")
    for mode in ("high_precision", "dequantized"):
        write_run(os.path.join(rep, "qat-" + mode), steps=150)
    p = subprocess.run([sys.executable, os.path.join(repo, "scripts", "quality_report.py"), rep, "test machine"],
                       capture_output=True, text=True, timeout=300)
    qsvg = os.path.join(rep, "quality-report.svg")
    check(p.returncode == 0 and os.path.isfile(qsvg), "quality_report.py writes quality-report.svg" + ("" if p.returncode == 0 else " (%s)" % p.stderr.strip()[-300:]))
    if os.path.isfile(qsvg):
        allt, ticks = texts(qsvg)
        for label in ("Validation loss", "Exact-match accuracy", "NVFP4 PTQ", "QAT fine-tuning loss", "1.1800", "0.250"):
            check(label in allt, "quality report SVG has the text %r" % label)
        ok, why = log_axis_ok(ticks)
        check(ok, "quality report: QAT loss axis is logarithmic: " + why)
    check(os.path.isfile(os.path.join(rep, "quality-report.md")), "quality_report.py writes quality-report.md")

    # 5. the recipes (evals-recipes.jsonl, qat-<recipe>): their PTQ and QAT bars and QAT curves
    with open(os.path.join(rep, "evals-recipes.jsonl"), "w") as f:
        for key, (ptq, qat) in (("rows", (1.2345, 1.1357)), ("w4a16", (1.1975, 1.1111))):
            for role, vl in (("bf16", 1.12), ("ptq", ptq), ("qat", qat)):
                f.write(json.dumps({"recipe": key, "role": role, "val_loss": vl, "exact_match": 0.5,
                                    "mean_abs_dlogp": 0.01}) + "\n")
            write_run(os.path.join(rep, "qat-" + key), steps=150)
    p = subprocess.run([sys.executable, os.path.join(repo, "scripts", "quality_report.py"), rep, "test machine"],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "quality_report.py with recipes" + ("" if p.returncode == 0 else " (%s)" % p.stderr.strip()[-300:]))
    if os.path.isfile(qsvg):
        allt, ticks = texts(qsvg)
        for label in ("W4A16", "row-scaled", "1.1111", "1.2345", "1.1357", "1.1975", "NVFP4 PTQ"):
            check(label in allt, "quality report SVG with recipes has the text %r" % label)
    md = open(os.path.join(rep, "quality-report.md")).read()
    check("Lowest validation loss after QAT: **W4A16" in md, "quality-report.md names the recipe with the lowest QAT loss")

    # 6. the serving profiles (evals-serving.jsonl): the trained-for x served-by |dlogp| table
    profs = ["fp4qat", "marlin", "flashinfer_per_token"]
    with open(os.path.join(rep, "evals-serving.jsonl"), "w") as f:
        for i, t in enumerate(profs):
            for j, s_ in enumerate(profs):
                f.write(json.dumps({"trained": t, "served": s_, "val_loss": 1.1, "mean_abs_dlogp":
                                    0.0 if i == j else 0.001 * (1 + 3 * i + j)}) + "\n")
    p = subprocess.run([sys.executable, os.path.join(repo, "scripts", "quality_report.py"), rep, "test machine"],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "quality_report.py with serving profiles" + ("" if p.returncode == 0 else " (%s)" % p.stderr.strip()[-300:]))
    md = open(os.path.join(rep, "quality-report.md")).read()
    rows = [l for l in md.splitlines() if l.startswith("| `marlin` (vLLM")]
    check(len(rows) == 1 and rows[0].split("|")[2:5] == [" 4.00e-03 ", " 0.00e+00 ", " 6.00e-03 "],
          "quality-report.md: the marlin row of the serving table is trained-for marlin, served by each profile: %s" % rows)
    check("| trained for (row), served by (column) | `fp4qat` | `marlin` | `flashinfer_per_token` |" in md,
          "quality-report.md: the serving table's columns are the served-by profiles")

    status = checks.summary()
    if not status:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print("files kept in " + tmp)
    return status


if __name__ == "__main__":
    sys.exit(main())
