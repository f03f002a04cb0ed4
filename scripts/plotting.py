"""scripts/plotting.py — fp4qat's one plotting path (matplotlib, Agg backend: no display needed).

Used by scripts/plot (training curves of one or several runs, from their metrics.jsonl) and by
scripts/quality_report.py (the quality report's figure). Figures are written as SVG with the text
kept as text (svg.fonttype none: labels can be searched and tested), and optionally as PNG.

metrics.jsonl, as `fp4qat train` writes it (trainer/train.cpp), holds one JSON object a line:
  per optimizer step: step, loss, lr, grad_norm, tokens_per_s, aux_loss, expert_load
                      [, export_s] [, mismatch_mean, mismatch_max]
  per evaluation:     step, val_loss, exact_match
  per export push:    step (the exported one), push_s, push_status [, push_error]  (export.push_url)
Non-finite numbers are written as null. A run resumed from a checkpoint appends the steps after
that checkpoint again; the last row written for a step wins.
"""
import json
import math
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    from matplotlib.lines import Line2D
except ImportError as e:  # pragma: no cover - depends on the environment
    raise SystemExit("plotting: error: matplotlib is not importable from %s (%s); run scripts/setup, "
                     "which installs it into the venv" % (sys.executable, e))

STYLE = {
    "svg.fonttype": "none",    # text stays <text>, not glyph paths
    "svg.hashsalt": "fp4qat",  # stable ids: the same data gives the same file
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
}
COLORS = plt.get_cmap("tab10").colors


class MetricsError(Exception):
    """metrics.jsonl missing, unreadable or without a row that can be plotted."""


def _warn(msg):
    print("plot: warning: " + msg, file=sys.stderr)


def _num(v):
    """A finite float, or None (null, NaN, Inf, strings, booleans...)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---- reading ------------------------------------------------------------------------------------
def read_metrics(path, warn=_warn):
    """The JSON objects of a metrics.jsonl, in file order. Lines that do not parse are skipped with
    a warning (a partially written last line is the normal case of a run still writing)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise MetricsError("%s: no such file (fp4qat train writes metrics.jsonl into the run's out_dir)" % path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise MetricsError("%s: cannot read: %s" % (path, e))
    last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            what = "incomplete last line" if i == last else "line that is not JSON"
            warn("%s:%d: %s skipped: %.60r" % (path, i + 1, what, line.strip()))
            continue
        if not isinstance(row, dict):
            warn("%s:%d: not a JSON object, skipped" % (path, i + 1))
            continue
        rows.append(row)
    return rows


def series(rows, key):
    """(steps, values) of `key`: rows with an integer step and a finite value, sorted by step; of
    several rows for one step (a resumed run) the last one."""
    by_step = {}
    for r in rows:
        s, v = _num(r.get("step")), _num(r.get(key))
        if s is not None and v is not None:
            by_step[int(s)] = v
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


class Run:
    """One run's metrics: a label and its rows."""

    def __init__(self, label, rows, source=""):
        self.label, self.rows, self.source = label, rows, source
        self._cache = {}

    def get(self, key):
        if key not in self._cache:
            self._cache[key] = series(self.rows, key)
        return self._cache[key]

    def has(self, key):
        return bool(self.get(key)[0])


def load_run(path, label=None, warn=_warn):
    """A Run from a run folder (or its metrics.jsonl). MetricsError when nothing can be plotted."""
    mpath = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    rows = read_metrics(mpath, warn)
    run = Run(label or run_label(path), rows, mpath)
    if not any(run.has(k) for k in ("loss", "val_loss")):
        raise MetricsError("%s: no usable rows (%d parsed; none has a step with a finite loss or val_loss)"
                           % (mpath, len(rows)))
    return run


def run_label(path):
    """A short name for a run folder: its last path component (metrics.jsonl's folder for a file)."""
    p = os.path.abspath(path)
    if os.path.basename(p) == "metrics.jsonl":
        p = os.path.dirname(p)
    return os.path.basename(p.rstrip(os.sep)) or p


def unique_labels(paths):
    """Labels for several runs: the folder names, lengthened with parent folders where they clash."""
    parts = [os.path.abspath(p).rstrip(os.sep).split(os.sep) for p in paths]
    parts = [p[:-1] if p[-1] == "metrics.jsonl" else p for p in parts]
    n = 1
    while True:
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels) or n >= max(len(p) for p in parts):
            return labels
        n += 1


# ---- axes ---------------------------------------------------------------------------------------
class _PlainLogFormatter(mticker.LogFormatter):
    """Log-axis tick labels as plain numbers (0.01, 0.1, 1, 2, 5); minor ticks labelled (some of
    them) when the axis spans less than 3 decades, as matplotlib decides."""

    def __call__(self, x, pos=None):
        s = super().__call__(x, pos)
        return "%.3g" % x if s else ""


def log_axis(ax, which="y"):
    """A log scale on `ax` with readable tick labels."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1)))


def auto_scale(ax, values):
    """Log when every value is positive and they span a factor of 10 or more; symlog when some are
    zero (|dlogp| is exactly 0 on the CPU); linear otherwise."""
    vals = [v for v in values if v is not None]
    pos = [v for v in vals if v > 0]
    if not vals or not pos:
        return "linear"
    if len(pos) == len(vals):
        if max(pos) / min(pos) >= 10:
            log_axis(ax)
            return "log"
        return "linear"
    if min(vals) >= 0:
        ax.set_yscale("symlog", linthresh=min(pos))
        return "symlog"
    return "linear"


def smooth(values, window):
    """Centred moving average (the window shrinks at the ends)."""
    h = window // 2
    v0 = values[0] if values else 0.0  # sums of the differences to the first value: a constant stays exact
    out, csum = [], [0.0]
    for v in values:
        csum.append(csum[-1] + (v - v0))
    for i in range(len(values)):
        a, b = max(0, i - h), min(len(values), i + h + 1)
        out.append(v0 + (csum[b] - csum[a]) / (b - a))
    return out


def _fmt(v):
    return "%.4g" % v


# ---- panels -------------------------------------------------------------------------------------
# Panels after the loss panel, in order: (title, y label, [(key, style name, line style)], scale,
# smooth). A panel is drawn when some run has one of its keys; `smooth` panels of many steps draw
# a moving average over the faint raw line (noisy per-step measurements).
PANELS = [
    ("Exact-match accuracy", "exact match (fraction correct)",
     [("exact_match", "exact match (eval)", dict(ls="-", marker="o", ms=4))], "fraction", False),
    ("Trainer vs its export", "|Δ log p| per token",
     [("mismatch_mean", "mean", dict(ls="-")), ("mismatch_max", "max", dict(ls=":"))], "auto", True),
    ("Learning rate", "learning rate", [("lr", "lr", dict(ls="-"))], "linear", False),
    ("Gradient norm", "global grad norm (before clipping)", [("grad_norm", "grad norm", dict(ls="-", lw=0.9))], "auto", True),
    ("Router auxiliary loss", "aux loss", [("aux_loss", "aux loss", dict(ls="-", lw=0.9))], "linear", True),
    ("Throughput", "tokens / s", [("tokens_per_s", "tokens/s", dict(ls="-", lw=0.9))], "linear", True),
    ("Export time", "seconds per export", [("export_s", "export", dict(ls="-", lw=0.9))], "linear", True),
]
PANEL_KEYS = ["loss"] + [k for p in PANELS for k, _, _ in p[2]]


def draw_loss(ax, runs, title="Loss"):
    """Train loss (line; a moving average over the raw line when there are many steps) and
    validation loss (dashed, circles) of each run, on a log axis. Returns the style handles."""
    smoothed = None
    for i, run in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        steps, loss = run.get("loss")
        if steps:
            w = len(steps) // 50
            if w >= 5:
                w |= 1
                ax.plot(steps, loss, color=c, lw=0.6, alpha=0.3)
                ax.plot(steps, smooth(loss, w), color=c, lw=1.6)
                smoothed = w if smoothed is None else max(smoothed, w)
            else:
                ax.plot(steps, loss, color=c, lw=1.6)
        vs, vl = run.get("val_loss")
        if vs:
            ax.plot(vs, vl, color=c, ls="--", marker="o", ms=5, mfc="white", mew=1.5, lw=1.2)
    log_axis(ax)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (log scale)")
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    handles = [Line2D([], [], color="0.2", lw=1.6,
                      label="train loss" + (" (moving average; raw faint)" if smoothed else "")),
               Line2D([], [], color="0.2", ls="--", marker="o", ms=5, mfc="white", mew=1.5, lw=1.2,
                      label="validation loss")]
    return handles


def _draw_panel(ax, runs, title, ylabel, keys, scale, smoothing):
    allv, styles, smoothed = [], [], False
    for i, run in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        for key, name, st in keys:
            s, v = run.get(key)
            if not s:
                continue
            allv += v
            w = len(s) // 50
            if smoothing and w >= 5:  # many noisy steps: a moving average over the raw line
                w |= 1
                ax.plot(s, v, color=c, lw=0.5, alpha=0.25, ls=st.get("ls", "-"))
                ax.plot(s, smooth(v, w), color=c, **dict(st, lw=1.5))
                smoothed = True
            else:
                ax.plot(s, v, color=c, **st)
    for key, name, st in keys:
        if any(r.has(key) for r in runs):
            styles.append(Line2D([], [], color="0.2", label=name, **st))
    if scale == "fraction":
        ax.set_ylim(-0.03, 1.03)
    elif scale == "auto":
        scale = auto_scale(ax, allv)
    if scale == "linear":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.set_title(title + (" (smoothed)" if smoothed else ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel + (" (log scale)" if scale == "log" else " (symlog scale)" if scale == "symlog" else ""))
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    if len(styles) > 1:
        ax.legend(handles=styles, loc="best")


def _run_legend_label(run):
    parts = []
    s, v = run.get("loss")
    if s:
        parts.append("train %s" % _fmt(v[-1]))
    s, v = run.get("val_loss")
    if s:
        parts.append("val %s" % _fmt(v[-1]))
    s, v = run.get("exact_match")
    if s:
        parts.append("exact match %.3g" % v[-1])
    last = max([run.get(k)[0][-1] for k in ("loss", "val_loss") if run.has(k)])
    return "%s — step %d: %s" % (run.label, last, ", ".join(parts))


def figure_runs(runs, title=None, panels=None):
    """The training-curves figure of one or several runs: loss on a log axis across the top, then a
    grid of the other metrics present (or those named in `panels`)."""
    want = set(panels) if panels else None
    extra = [p for p in PANELS
             if any(r.has(k) for r in runs for k, _, _ in p[2]) and (want is None or any(k in want for k, _, _ in p[2]))]
    ncol = 2 if len(extra) > 1 else 1
    nrow = (len(extra) + ncol - 1) // ncol
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(11, 4.6 + 2.9 * nrow), layout="constrained")
        gs = fig.add_gridspec(1 + nrow, ncol, height_ratios=[1.7] + [1] * nrow)
        ax = fig.add_subplot(gs[0, :])
        ax.set_gid("panel-loss")
        styles = draw_loss(ax, runs, "Loss")
        run_handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=2.5, label=_run_legend_label(r))
                       for i, r in enumerate(runs)]
        leg = ax.legend(handles=run_handles, loc="upper right", title="run")
        ax.add_artist(leg)
        ax.legend(handles=styles, loc="lower left")
        for j, (ptitle, ylabel, keys, scale, smoothing) in enumerate(extra):
            pax = fig.add_subplot(gs[1 + j // ncol, j % ncol], sharex=ax)
            pax.set_gid("panel-" + keys[0][0])
            _draw_panel(pax, runs, ptitle, ylabel, keys, scale, smoothing)
        fig.suptitle(title or ("fp4qat training: " + (runs[0].label if len(runs) == 1 else "%d runs" % len(runs))),
                     fontsize=13, fontweight="bold")
    return fig


def figure_quality_report(models, curves=(), title=None, xlabel="model, as served"):
    """The quality report's figure. models: [(label, val_loss, exact_match)] bars; curves: Runs
    (the QAT fine-tunings) whose losses are drawn under the bars."""
    labels = [m[0] for m in models]
    many = len(models) > 6  # the bar panels one above the other, wide enough for every label
    with plt.rc_context(STYLE):
        if many:
            fig = plt.figure(figsize=(max(11, 1.25 * len(models)), 12 if curves else 8), layout="constrained")
            gs = fig.add_gridspec(3 if curves else 2, 1, height_ratios=[1, 1, 1.2] if curves else [1, 1])
        else:
            fig = plt.figure(figsize=(11, 8 if curves else 4.2), layout="constrained")
            gs = fig.add_gridspec(2 if curves else 1, 2, height_ratios=[1, 1.2] if curves else [1])
        for j, (idx, name, ylabel) in enumerate(((1, "Validation loss", "cross-entropy loss"),
                                                 (2, "Exact-match accuracy", "exact match (fraction correct)"))):
            ax = fig.add_subplot(gs[j, 0] if many else gs[0, j])
            ax.set_gid("panel-" + ("val_loss" if idx == 1 else "exact_match"))
            vals = [m[idx] for m in models]
            x = range(len(models))
            bars = ax.bar(x, [v if _num(v) is not None else 0 for v in vals],
                          color=[COLORS[i % len(COLORS)] for i in x], width=0.6)
            for b, v in zip(bars, vals):
                ax.annotate("n/a" if _num(v) is None else ("%.4f" % v if idx == 1 else "%.3f" % v),
                            (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            xytext=(0, 2), textcoords="offset points", fontsize=9)
            ax.set_xticks(list(x), labels)
            ax.set_title(name)
            ax.set_ylabel(ylabel)
            ax.set_xlabel(xlabel)
            ax.grid(axis="x", visible=False)
            top = max([v for v in vals if _num(v) is not None] or [1])
            ax.set_ylim(0, 1.05 if idx == 2 else top * 1.15)
        if curves:
            ax = fig.add_subplot(gs[2, 0] if many else gs[1, :])
            ax.set_gid("panel-loss")
            styles = draw_loss(ax, list(curves), "QAT fine-tuning loss")
            leg = ax.legend(handles=[Line2D([], [], color=COLORS[i % len(COLORS)], lw=2.5, label=_run_legend_label(r))
                                     for i, r in enumerate(curves)], loc="upper right", title="run")
            ax.add_artist(leg)
            ax.legend(handles=styles, loc="lower left")
        if title:
            fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


# ---- writing ------------------------------------------------------------------------------------
def save(fig, out, png=True):
    """Writes `fig` to `out` (format from its extension: svg, png, pdf), whole or not at all (a
    temporary name renamed), and for an .svg a .png beside it unless png is False. Returns the
    paths written."""
    base, ext = os.path.splitext(out)
    ext = ext.lower().lstrip(".") or "svg"
    if ext not in ("svg", "png", "pdf"):
        raise MetricsError("%s: unknown figure format '.%s' (use .svg, .png or .pdf)" % (out, ext))
    targets = [(out, ext)] + ([(base + ".png", "png")] if png and ext == "svg" else [])
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    written = []
    meta = {"svg": {"Date": None, "Creator": "fp4qat scripts/plotting.py"}, "png": {"Software": "fp4qat scripts/plotting.py"},
            "pdf": {"CreationDate": None}}
    with plt.rc_context(STYLE):
        for path, fmt in targets:
            tmp = "%s.tmp-%d.%s" % (path, os.getpid(), fmt)
            try:
                fig.savefig(tmp, format=fmt, dpi=110, metadata=meta[fmt], facecolor="white")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            written.append(path)
    plt.close(fig)
    return written


# ---- command line: scripts/plot ------------------------------------------------------------------
def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(
        prog="scripts/plot",
        description="Training curves of fp4qat runs from their metrics.jsonl: loss (log scale; train "
                    "and validation) vs step, and panels for exact match, trainer/export mismatch, "
                    "learning rate, grad norm, throughput and export time where present. Several "
                    "runs are overlaid, one colour and legend entry each.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder (its metrics.jsonl) or a metrics.jsonl")
    p.add_argument("--out", help="figure file (.svg, .png or .pdf); default RUN_DIR/loss.svg for one run "
                                 "(required for several). An .svg gets a .png beside it.")
    p.add_argument("--label", action="append", default=[], help="legend name of a run, once per RUN_DIR in order "
                                                                "(default: folder names)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--panels", help="comma-separated metrics to draw besides the loss, from: "
                                    + ", ".join(PANEL_KEYS[1:]) + " (default: all present)")
    p.add_argument("--no-png", action="store_true", help="no PNG beside an SVG")
    a = p.parse_args(argv)
    try:
        if a.label and len(a.label) != len(a.runs):
            raise MetricsError("%d --label for %d runs: give one per RUN_DIR" % (len(a.label), len(a.runs)))
        if len(a.runs) > 1 and not a.out:
            raise MetricsError("several runs: name the figure with --out FILE")
        panels = [k.strip() for k in a.panels.split(",") if k.strip()] if a.panels else None
        bad = [k for k in panels or [] if k not in PANEL_KEYS]
        if bad:
            raise MetricsError("--panels: unknown metric %s (known: %s)" % (", ".join(bad), ", ".join(PANEL_KEYS[1:])))
        labels = a.label or unique_labels(a.runs)
        runs = [load_run(r, l) for r, l in zip(a.runs, labels)]
        out = a.out or os.path.join(os.path.dirname(runs[0].source), "loss.svg")
        written = save(figure_runs(runs, a.title, panels), out, png=not a.no_png)
    except MetricsError as e:
        print("plot: error: %s" % e, file=sys.stderr)
        return 1
    print("plot: wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
