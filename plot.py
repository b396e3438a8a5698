"""
Plot NLL curves from gpt-ablate training logs, and build the one-page ablation report.

Plain mode: one PNG with a smoothed train curve (raw curve faint behind it) and the
val points of every run, plus a table of final numbers printed to stdout.

    python plot.py out/*/log.txt                  # writes nll.png
    python plot.py out/*/log.txt -o curves.png

Report mode, for the seven-experiment ablation laid out as DIR/<experiment>/seed<k>/:

    python plot.py DIR/*/*/log.txt --report DIR/report.pdf
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --no_samples
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --sample_prompt "Once" --sample_tokens 30

writes DIR/report.pdf (one A4 page), DIR/report.md and DIR/report.png (the plot).
Seeds of one experiment share a colour (thin, faint); the mean over seeds is bold.
Each experiment is compared with baseline paired on seed: d_k = exp_k - baseline_k.
A difference "exceeds the noise" when |mean(d)| > 2 * std(d, ddof=1) / sqrt(n), n >= 2.

Each argument may be a log.txt or the run's out_dir. Bad input (no files, a missing
file, a log without usable rows) gives a one-line error on stderr and exit code 2.
"""

import argparse
import functools
import json
import math
import re
import sys
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# experiments of the ablation, in report order, with the switches each one turns on
EXPERIMENTS = {
    "baseline": [],
    "swiglu": ["swiglu"],
    "rope": ["rope"],
    "warmup": ["warmup"],
    "cosine": ["cosine"],
    "rmsnorm": ["rmsnorm"],
    "all": ["swiglu", "rope", "warmup", "cosine", "rmsnorm"],
}
SWITCHES = ["swiglu", "rope", "warmup", "cosine", "rmsnorm"]  # config key is use_<name>
BASELINE = "baseline"
A4_PORTRAIT = (8.27, 11.69)  # inches

# -----------------------------------------------------------------------------
# loading runs

class UsageError(Exception):
    """Bad command-line input; main() turns it into a one-line message and exit 2."""


def read_log(path):
    """Parse a log.txt into a list of event dicts, with train.py's parser (imported lazily: torch)."""
    from train import read_log as train_read_log
    return train_read_log(path)


def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def clean_events(events):
    """
    Return (start, train_rows, eval_rows) from raw log events. A "resume" at step s
    drops the rows the killed process logged after s; if a step still appears twice
    for one event kind the last occurrence wins. Unknown events and keys are ignored.
    """
    start, rows = None, {"train": [], "eval": []}
    for e in events:
        kind, step = e.get("event"), e.get("step")
        if kind == "start":
            start = e
        elif kind == "resume" and _is_num(step):
            for k in rows:
                rows[k] = [r for r in rows[k] if r["step"] <= step]
        elif kind in rows and _is_num(step):
            rows[kind].append(e)
    key = {"train": "train_nll", "eval": "val_nll"}
    out = {}
    for kind, kind_rows in rows.items():
        last = {r["step"]: r for r in kind_rows}  # later rows overwrite earlier ones
        out[kind] = [last[s] for s in sorted(last) if _is_num(last[s].get(key[kind]))]
    return start, out["train"], out["eval"]


@dataclass
class Run:
    """One training run: its curves from log.txt and, if it finished, results.json."""
    name: str
    out_dir: Path
    experiment: str
    seed: int | None
    train: list = field(default_factory=list)    # train rows, sorted by step
    evals: list = field(default_factory=list)    # eval rows, sorted by step
    start: dict | None = None
    results: dict | None = None

    @property
    def config(self):
        src = self.results or self.start or {}
        return src.get("config") or {}

    def _final(self, key):
        if self.results and _is_num(self.results.get(key)):
            return float(self.results[key])
        vals = [r[key] for r in self.evals if _is_num(r.get(key))]
        return float(vals[-1]) if vals else float("nan")

    @property
    def val_nll(self):
        return self._final("val_nll")

    @property
    def val_bpb(self):
        return self._final("val_bpb")

    @property
    def steps(self):
        if self.results and _is_num(self.results.get("steps")):
            return int(self.results["steps"])
        return int(max(r["step"] for r in self.train + self.evals))

    @property
    def params(self):
        for src in (self.results, self.start):
            total = ((src or {}).get("params") or {}).get("total")
            if _is_num(total):
                return int(total)
        return None

    @property
    def tokens_per_s(self):
        if self.results and _is_num(self.results.get("tokens_per_s")):
            return float(self.results["tokens_per_s"])
        vals = [r["tokens_per_s"] for r in self.train if _is_num(r.get("tokens_per_s"))]
        return float(np.median(vals)) if vals else float("nan")

    @property
    def source(self):
        return "results.json" if self.results else f"log (step {self.steps})"


def run_identity(out_dir):
    """(name, experiment, seed) from the folder: .../exp/seed3 -> ("exp/seed3", "exp", 3)."""
    m = re.fullmatch(r"seed(\d+)", out_dir.name)
    if m:
        return f"{out_dir.parent.name}/{out_dir.name}", out_dir.parent.name, int(m.group(1))
    return out_dir.name, out_dir.name, None


def load_run(path):
    """Load a run from its log.txt (or its out_dir). Raises UsageError on bad input."""
    path = Path(path)
    log_path = path / "log.txt" if path.is_dir() else path
    if not log_path.is_file():
        raise UsageError(f"no such file: {log_path}")
    start, train, evals = clean_events(read_log(log_path))
    if not train and not evals:
        raise UsageError(f"no usable train/eval rows in {log_path}")
    out_dir = log_path.resolve().parent
    results = None
    if (out_dir / "results.json").is_file():
        try:
            results = json.loads((out_dir / "results.json").read_text())
        except ValueError:
            print(f"plot.py: warning: ignoring unreadable {out_dir / 'results.json'}", file=sys.stderr)
    name, experiment, seed = run_identity(out_dir)
    run = Run(name, out_dir, experiment, seed, train, evals, start, results)
    if run.seed is None and isinstance(run.config.get("seed"), int):
        run.seed = run.config["seed"]
    return run


def group_by_experiment(runs):
    """{experiment: [runs sorted by seed]}, known experiments first in ablation order."""
    names = sorted({r.experiment for r in runs},
                   key=lambda e: (list(EXPERIMENTS).index(e) if e in EXPERIMENTS else len(EXPERIMENTS), e))
    return {e: sorted((r for r in runs if r.experiment == e), key=lambda r: (r.seed is None, r.seed or 0, r.name))
            for e in names}

# -----------------------------------------------------------------------------
# statistics

def ema(values, beta):
    """Bias-corrected exponential moving average (as TensorBoard smooths)."""
    out, m = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def mean_std(values):
    """(mean, std with ddof=1) of the finite values; std is None when fewer than 2."""
    v = np.array([x for x in values if _is_num(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) >= 2 else None)


def paired_diff(exp_by_seed, base_by_seed):
    """
    Paired comparison on seed: d_k = exp_k - base_k for every seed k in both dicts.
    Returns {"seeds", "diffs", "n", "mean", "std", "se", "beyond_noise"}; beyond_noise is
    |mean| > 2*se with se = std(ddof=1)/sqrt(n), or None when n < 2.
    """
    seeds = sorted(k for k in exp_by_seed if k in base_by_seed
                   and _is_num(exp_by_seed[k]) and _is_num(base_by_seed[k]))
    diffs = [exp_by_seed[k] - base_by_seed[k] for k in seeds]
    n = len(diffs)
    mean, std = mean_std(diffs)
    se = std / math.sqrt(n) if std is not None else None
    beyond = bool(abs(mean) > 2 * se) if se is not None else None
    return {"seeds": seeds, "diffs": diffs, "n": n, "mean": mean, "std": std, "se": se, "beyond_noise": beyond}


def switches_on(experiment, runs):
    """Switches an experiment turns on, read from the config flags use_<switch> (else from its name)."""
    config = runs[0].config if runs else {}
    if any(f"use_{s}" in config for s in SWITCHES):
        on = [s for s in SWITCHES if config.get(f"use_{s}")]
    else:
        on = EXPERIMENTS.get(experiment)
        if on is None:
            return "?"
    if len(on) == len(SWITCHES):
        return "all five"
    return ", ".join(on) if on else "none"


def summarize(groups):
    """One summary dict per experiment: final val NLL over seeds and the paired diff vs baseline."""
    base = {r.seed: r.val_nll for r in groups.get(BASELINE, []) if r.seed is not None}
    rows = []
    for exp, runs in groups.items():
        nll_mean, nll_std = mean_std([r.val_nll for r in runs])
        params = [r.params for r in runs if r.params is not None]
        rows.append({
            "experiment": exp,
            "switches": switches_on(exp, runs),
            "params": params[0] if params else None,
            "n": sum(_is_num(r.val_nll) for r in runs),
            "nll_mean": nll_mean,
            "nll_std": nll_std,
            "diff": None if exp == BASELINE or BASELINE not in groups else
                    paired_diff({r.seed: r.val_nll for r in runs if r.seed is not None}, base),
            "bpb_mean": mean_std([r.val_bpb for r in runs])[0],
            "tps_mean": mean_std([r.tokens_per_s for r in runs])[0],
        })
    return rows


def verdict_line(rows):
    """One sentence: which changes beat baseline beyond the noise, which did not, which were worse."""
    if not any(r["experiment"] == BASELINE for r in rows):
        return "Verdict: no baseline runs found, so no change could be compared with it."
    better, within, worse, unknown = [], [], [], []
    for r in rows:
        d = r["diff"]
        if d is None:
            continue
        if d["beyond_noise"] is None:
            unknown.append(r["experiment"])
        elif not d["beyond_noise"]:
            within.append(r["experiment"])
        else:
            (better if d["mean"] < 0 else worse).append(r["experiment"])
    fmt = lambda xs: ", ".join(xs) if xs else "none"
    line = (f"Verdict: beat baseline by more than the noise: {fmt(better)}; "
            f"within the noise: {fmt(within)}; worse than baseline beyond the noise: {fmt(worse)}")
    if unknown:
        line += f"; undecided (fewer than 2 paired seeds): {fmt(unknown)}"
    return line + "."


def _time_budget(config):
    """The config's max_time as text ("4h", or "90 s" for a number), or None when not set."""
    t = config.get("max_time")
    if isinstance(t, str) and t.strip():
        return t.strip()
    return f"{t:g} s" if _is_num(t) and t > 0 else None


def matching_note(runs):
    """Say whether the runs were time-matched (config max_time set) or step-matched."""
    budgets = [_time_budget(r.config) for r in runs]
    timed = sorted({b for b in budgets if b is not None})
    if timed and None not in budgets:
        stopped = sum((r.results or {}).get("stopped_by") == "max_time" for r in runs)
        return (f"Runs were time-matched: max_time = {', '.join(timed)}; {stopped}/{len(runs)} stopped on time, "
                f"so step counts differ between runs.")
    if not timed:
        iters = sorted({r.config.get("max_iters") for r in runs}, key=str)
        return f"Runs were step-matched: max_iters = {', '.join(map(str, iters))} (max_time not set)."
    return "Runs were mixed: some time-matched (max_time set), some step-matched; compare with care."


# -----------------------------------------------------------------------------
# formatting

def fmt_params(n):
    return "?" if n is None else f"{n / 1e6:.2f}M"


def fmt_mean_std(mean, std, n, digits=4):
    if not _is_num(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} (n={n})"


def table_cells(row):
    """The report-table cells of one summary row, as strings."""
    d = row["diff"]
    if d is None:
        diff, noise = "—", "—"
    elif d["n"] == 0:
        diff, noise = "n/a", "n/a (no paired seed)"
    else:
        mean = round(d["mean"], 4) + 0.0  # + 0.0 turns -0.0 into 0.0
        diff = f"{mean:+.4f} ± {d['std']:.4f}" if d["std"] is not None else f"{mean:+.4f} (n=1)"
        if d["beyond_noise"] is None:
            noise = "n/a (1 seed)"
        else:
            noise = ("yes, better" if d["mean"] < 0 else "yes, worse") if d["beyond_noise"] else "no"
    bpb = f"{row['bpb_mean']:.4f}" if _is_num(row["bpb_mean"]) else "n/a"
    tps = f"{row['tps_mean']:,.0f}" if _is_num(row["tps_mean"]) else "n/a"
    return [row["experiment"], row["switches"], fmt_params(row["params"]),
            fmt_mean_std(row["nll_mean"], row["nll_std"], row["n"]), diff, noise, bpb, tps]


TABLE_HEADER = ["experiment", "switches on", "params", "val NLL (mean ± std)",
                "Δ vs baseline (paired)", "beyond noise?", "val bpb", "tokens/s"]


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def runs_table(runs):
    """Plain-text table of each run's final numbers, one row per run."""
    w = max([len("run")] + [len(r.name) for r in runs])
    lines = [f"{'run':<{w}}  {'val_nll':>8}  {'val_bpb':>8}  {'steps':>7}  {'params':>12}  source"]
    for r in runs:
        params = f"{r.params:,}" if r.params is not None else "?"
        lines.append(f"{r.name:<{w}}  {r.val_nll:>8.4f}  {r.val_bpb:>8.4f}  {r.steps:>7}  {params:>12}  {r.source}")
    return "\n".join(lines)


def clean_text(s):
    """Replace control/format characters by spaces and collapse whitespace to one line."""
    s = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(s))
    return " ".join(s.split())

# -----------------------------------------------------------------------------
# plotting

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def train_curve(run, beta):
    """beta None: smooth over about 1/20 of the run's points (none for short runs), so the curve does not
    lag far behind the validation points."""
    steps = np.array([r["step"] for r in run.train], dtype=float)
    nll = np.array([r["train_nll"] for r in run.train], dtype=float)
    if beta is None:
        beta = max(0.0, 1.0 - 20.0 / max(1, len(nll)))
    return steps, nll, ema(nll, beta)


def val_curve(run):
    return (np.array([r["step"] for r in run.evals], dtype=float),
            np.array([r["val_nll"] for r in run.evals], dtype=float))


def _set_ylim(ax, curves):
    """Zoom y on the part that matters: the values after the first 10% of the steps."""
    late = []
    for steps, vals in curves:
        if len(steps):
            late.append(vals[steps >= 0.1 * steps.max()])
    late = np.concatenate(late) if late else np.array([])
    late = late[np.isfinite(late)]
    if len(late):
        lo, hi = late.min(), late.max()
        pad = 0.05 * (hi - lo) if hi > lo else 0.1
        ax.set_ylim(lo - pad, hi + pad)


def _style_axes(ax, beta):
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats/token)")
    smooth = "auto" if beta is None else f"{beta:g}"
    ax.set_title(f"lines: train NLL (EMA, beta={smooth});  markers: val NLL", fontsize=9)
    ax.grid(alpha=0.3)


def plot_runs(ax, runs, beta):
    """Plain mode: per run the raw train curve faint, its EMA on top, val points joined by a thin line."""
    curves = []
    for i, run in enumerate(runs):
        c = f"C{i % 10}"
        steps, raw, smooth = train_curve(run, beta)
        vs, vn = val_curve(run)
        ax.plot(steps, raw, color=c, alpha=0.2, lw=0.8)
        ax.plot(steps, smooth, color=c, lw=1.6, label=run.name)
        ax.plot(vs, vn, color=c, lw=0.8, marker="o", ms=4)
        curves += [(steps, smooth), (vs, vn)]
    _set_ylim(ax, curves)
    _style_axes(ax, beta)
    if runs:
        ax.legend(fontsize=8)


def mean_train_curve(runs, beta):
    """Mean over seeds of the smoothed train curves, on the steps all seeds reached."""
    curves = [train_curve(r, beta) for r in runs if r.train]
    if not curves:
        return np.array([]), np.array([])
    last = min(s[-1] for s, _, _ in curves)
    grid = np.unique(np.concatenate([s[s <= last] for s, _, _ in curves]))
    return grid, np.mean([np.interp(grid, s, sm) for s, _, sm in curves], axis=0)


def mean_val_curve(runs):
    """Mean over seeds of val NLL at the eval steps every seed has."""
    per_run = [dict(zip(*val_curve(r))) for r in runs if r.evals]
    if not per_run:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    return np.array(steps), np.array([np.mean([d[s] for d in per_run]) for s in steps])


def plot_experiments(ax, groups, beta):
    """Report mode: seeds of one experiment faint in one colour, the mean over seeds bold."""
    curves = []
    for i, (exp, runs) in enumerate(groups.items()):
        c = f"C{i % 10}"
        for run in runs:
            steps, _, smooth = train_curve(run, beta)
            vs, vn = val_curve(run)
            ax.plot(steps, smooth, color=c, alpha=0.3, lw=0.7)
            ax.plot(vs, vn, color=c, alpha=0.3, lw=0.5, marker="o", ms=2.5)
        ms, mt = mean_train_curve(runs, beta)
        vs, vn = mean_val_curve(runs)
        ax.plot(ms, mt, color=c, lw=2.0, label=f"{exp} (n={len(runs)})")
        ax.plot(vs, vn, color=c, lw=1.0, marker="o", ms=5, markeredgecolor="black", markeredgewidth=0.5)
        curves += [(ms, mt), (vs, vn)]
    _set_ylim(ax, curves)
    _style_axes(ax, beta)
    if groups:
        ax.legend(fontsize=7, ncol=2)


def write_nll_png(runs, path, beta):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    plot_runs(ax, runs, beta)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

# -----------------------------------------------------------------------------
# report

def generate_report_samples(groups, prompt, max_new_tokens, temperature=0.8, top_k=50, seed=1337):
    """{experiment: (run name or None, text)} from each experiment's lowest-seed ckpt.pt."""
    try:
        from sample import generate_samples
    except Exception as e:  # sample.py missing or broken: report without samples
        print(f"plot.py: warning: cannot import sample.generate_samples ({e})", file=sys.stderr)
        generate_samples = None
    out = {}
    for exp, runs in groups.items():
        run = runs[0]  # lowest seed
        ckpt = run.out_dir / "ckpt.pt"
        if generate_samples is None or not ckpt.is_file():
            out[exp] = (run.name, "(no checkpoint)")
            continue
        try:
            text = generate_samples(str(ckpt), prompt, num_samples=1, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_k=top_k, seed=seed, device="cpu")[0]
        except Exception as e:
            print(f"plot.py: warning: sampling {ckpt} failed: {e!r}", file=sys.stderr)
            text = "(sampling failed)"
        out[exp] = (run.name, clean_text(text))
    return out


@functools.lru_cache(maxsize=None)
def _font_charmap(family):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    return FT2Font(font_manager.findfont(font_manager.FontProperties(family=family))).get_charmap()


def _fit_font(text, family="monospace"):
    """Replace characters the PDF font has no glyph for by '?', to avoid tofu and warnings."""
    charmap = _font_charmap(family)
    return "".join(ch if ord(ch) in charmap else "?" for ch in text)


def build_report_figure(groups, rows, verdict, note, samples, sample_desc, beta, title):
    """The one-page A4 report: plot, table, verdict, note, samples. Returns the figure."""
    plt = _pyplot()
    fig = plt.figure(figsize=A4_PORTRAIT)
    page_pt = A4_PORTRAIT[1] * 72

    def line_h(size):  # height of one text line, in figure fraction
        return size * 1.3 / page_pt

    fig.text(0.5, 0.975, textwrap.shorten(title, 80), ha="center", va="top", fontsize=13,
             weight="bold", parse_math=False)
    ax = fig.add_axes([0.10, 0.60, 0.86, 0.33])
    plot_experiments(ax, groups, beta)

    tab_ax = fig.add_axes([0.03, 0.555 - 0.024 * (len(rows) + 1), 0.94, 0.024 * (len(rows) + 1)])
    tab_ax.axis("off")
    table = tab_ax.table(cellText=[table_cells(r) for r in rows], colLabels=TABLE_HEADER,
                         colWidths=[0.09, 0.13, 0.07, 0.16, 0.18, 0.13, 0.08, 0.09], cellLoc="center",
                         bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    for (r, _), cell in table.get_celld().items():
        cell.set_linewidth(0.4)
        cell.get_text().set_parse_math(False)
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")

    y = tab_ax.get_position().y0 - 0.012
    for text, size, weight in [(verdict, 8.5, "bold"), (note, 8, "normal"),
                               ("Noise: an experiment exceeds the noise when |mean paired diff| > 2 x standard "
                                "error of the paired (same-seed) differences; needs n >= 2 seeds.", 7.5, "normal")]:
        lines = textwrap.wrap(text, 120 if size < 8 else 112)
        fig.text(0.04, y, "\n".join(lines), va="top", fontsize=size, weight=weight, linespacing=1.3,
                 parse_math=False)
        y -= line_h(size) * len(lines) + 0.006

    fig.text(0.04, y, sample_desc, va="top", fontsize=8, weight="bold", parse_math=False)
    y -= line_h(8) + 0.004
    size, width = 6.5, 136  # monospace: ~0.6 em per char, ~140 chars fit in 0.92 of the page width
    if samples:
        label_w = max(len(e) for e in samples) + 2
        max_lines = max(1, min(4, int((y - 0.015) / line_h(size)) // len(samples)))
        for exp, (_, text) in samples.items():
            lines = textwrap.wrap(_fit_font(text), width, initial_indent=f"{exp}:".ljust(label_w),
                                  subsequent_indent=" " * label_w) or [exp]
            if len(lines) > max_lines:
                lines = lines[:max_lines]
                lines[-1] = lines[-1][:width - 3] + "..."
            fig.text(0.04, y, "\n".join(lines), va="top", fontsize=size, family="monospace",
                     linespacing=1.3, parse_math=False)
            y -= line_h(size) * len(lines)
    return fig


def count_pdf_pages(path):
    """Number of page objects in a PDF written by matplotlib (its page dicts are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", Path(path).read_bytes()))


def write_report_md(path, png_name, rows, verdict, note, samples, sample_desc, title):
    parts = [f"# {title}", "", note, "", f"![NLL vs step]({png_name})", "", markdown_table(rows), "",
             f"**{verdict}**", "",
             "Noise: an experiment exceeds the noise when |mean paired diff| > 2 × standard error of the "
             "paired (same-seed) differences, with n ≥ 2 seeds.", ""]
    parts += ["## Samples", "", sample_desc, ""]
    for exp, (run_name, text) in samples.items():
        parts += [f"**{exp}** ({run_name}):", "", "~~~text", text.replace("~~~", "~ ~ ~"), "~~~", ""]
    if not samples:
        parts += ["(samples skipped)", ""]
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def write_report(runs, pdf_path, beta, samples, sample_desc):
    """Write report.pdf (one page), report.md and report.png next to each other; return the paths."""
    pdf_path = Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    md_path, png_path = pdf_path.with_suffix(".md"), pdf_path.with_suffix(".png")
    groups = group_by_experiment(runs)
    rows = summarize(groups)
    verdict, note = verdict_line(rows), matching_note(runs)
    title = f"gpt-ablate report: {pdf_path.resolve().parent.name}"

    plt = _pyplot()
    fig = build_report_figure(groups, rows, verdict, note, samples, sample_desc, beta, title)
    fig.savefig(pdf_path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    plot_experiments(ax, groups, beta)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    write_report_md(md_path, png_path.name, rows, verdict, note, samples, sample_desc, title)

    pages = count_pdf_pages(pdf_path)
    if pages != 1:
        raise RuntimeError(f"{pdf_path} has {pages} pages, expected exactly 1")
    return rows, verdict, (pdf_path, md_path, png_path)

# -----------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description="Plot NLL curves of gpt-ablate runs; build the ablation report.")
    p.add_argument("logs", nargs="*", help="log.txt files (or run folders)")
    p.add_argument("-o", "--out", default=None, help="PNG to write (default nll.png; in report mode only if given)")
    p.add_argument("--report", default=None, help="write a one-page report PDF here (plus .md and .png next to it)")
    p.add_argument("--smooth", type=float, default=None,
                   help="EMA beta for train curves, in [0, 1) (default: about 1/20 of a run's points)")
    p.add_argument("--sample_prompt", default="The", help="report: prompt for the samples")
    p.add_argument("--sample_tokens", type=int, default=40, help="report: new tokens per sample")
    p.add_argument("--sample_seed", type=int, default=1337, help="report: sampling seed (same for all)")
    p.add_argument("--no_samples", action="store_true", help="report: skip generating samples")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    try:
        if not args.logs:
            raise UsageError("no log files given (usage: python plot.py out/*/log.txt [-o nll.png])")
        if args.smooth is not None and not 0 <= args.smooth < 1:
            raise UsageError(f"--smooth must be in [0, 1), got {args.smooth}")
        runs = [load_run(p) for p in args.logs]
    except UsageError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2

    print(runs_table(runs))
    out = args.out or (None if args.report else "nll.png")
    if out:
        write_nll_png(runs, out, args.smooth)
        print(f"wrote {out}")
    if args.report:
        desc = (f'Samples: prompt "{clean_text(args.sample_prompt)}", {args.sample_tokens} new tokens, '
                f"temperature 0.8, top_k 50, seed {args.sample_seed}; lowest-seed ckpt.pt of each experiment")
        samples = {} if args.no_samples else generate_report_samples(
            group_by_experiment(runs), args.sample_prompt, args.sample_tokens, seed=args.sample_seed)
        if args.no_samples:
            desc = "Samples: skipped (--no_samples)"
        rows, verdict, paths = write_report(runs, args.report, args.smooth, samples, desc)
        print()
        print(markdown_table(rows))
        print(verdict)
        print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
