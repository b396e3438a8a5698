"""
Plot NLL curves from gpt-ablate training logs and build the one-page ablation report and the study report.
The designs themselves are ablate.py's; what ran is read from OUT/design.json and the runs.

Plain mode: one PNG with a smoothed train curve (raw curve faint behind it) and the
val points of every run, plus a table of final numbers printed to stdout.

    python plot.py out/*/log.txt                  # writes nll.png
    python plot.py out/*/log.txt -o curves.png

Report mode, for an ablation laid out as DIR/<experiment>/seed<k>/ (DIR/design.json says which design
ran; without it the design is inferred from the folder names and the runs' configs):

    python plot.py DIR/*/*/log.txt --report DIR/report.pdf
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --no_samples
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --sample_prompt "Once" --sample_tokens 30

writes DIR/report.pdf (one A4 page), DIR/report.md and DIR/report.png (the plot); what it says and its
statistics: ablation_report.py.

Study mode, for a study folder written by ablate.py (--tune, --scale; its layout and what the report says:
study_report.py):

    python plot.py --study OUT                     # OUT/study_report.md, .pdf, _sensitivity.png, _compute.png
    python plot.py --study OUT -o reports/s.pdf

Each argument may be a log.txt, the run's out_dir, or a runs.json ({"runs": [{"experiment", "seed", and that
run's results.json numbers}]}, as in results/: finished runs without curves, their design.json beside it).
Bad input (no files, a missing file, a log without usable rows, an unknown switch) gives a one-line error
on stderr and exit code 2.

This file is the command line and the plain curves. Behind it each job has a file of its own, and each file
imports only the files listed below it (none imports plot.py):

    study_report.py      the study report: tuning, per-size verdicts, compute multipliers
    ablation_report.py   the ablation report: its analysis, sentences, tables, figure and files
    run_records.py       reading what ran: log.txt, results.json, runs.json, design.json
    stats.py             the statistics, pure functions of numbers
"""

import argparse
import sys
from pathlib import Path

from ablation_report import (analyze, clean_text, colour, design_line, generate_report_samples, markdown_tables,
                             power_line, pyplot, style_axes, train_curve, val_curve, verdict_line, write_report,
                             zoom_ylim)
from run_records import UsageError, load_runs, run_label
from study_report import multiplier_rows, write_study_report


# -----------------------------------------------------------------------------
# plain mode: the curves of every run and a table of their final numbers

def runs_table(runs):
    """Plain-text table of each run's final numbers, one row per run."""
    w = max([len("run")] + [len(run_label(r)) for r in runs])
    lines = [f"{'run':<{w}}  {'val_nll':>8}  {'val_bpb':>8}  {'steps':>7}  {'params':>12}  source"]
    for r in runs:
        params = f"{r.params:,}" if r.params is not None else "?"
        lines.append(f"{run_label(r):<{w}}  {r.val_nll:>8.4f}  {r.val_bpb:>8.4f}  {r.steps:>7}  {params:>12}  {r.source}")
    return "\n".join(lines)


def plot_runs(ax, runs, beta):
    """Plain mode: per run the raw train curve faint, its EMA on top, val points joined by a thin line."""
    curves = []
    for i, run in enumerate(runs):
        c = colour(i, len(runs))
        steps, raw, smooth = train_curve(run, beta)
        vs, vn = val_curve(run)
        ax.plot(steps, raw, color=c, alpha=0.2, lw=0.8)
        ax.plot(steps, smooth, color=c, lw=1.6, label=run_label(run))
        ax.plot(vs, vn, color=c, lw=0.8, marker="o", ms=4)
        curves += [(steps, smooth), (vs, vn)]
    zoom_ylim(ax, curves)
    style_axes(ax, beta)
    if runs:
        ax.legend(fontsize=8)


def write_nll_png(runs, path, beta):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    plot_runs(ax, runs, beta)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

# -----------------------------------------------------------------------------
# study mode

def study_main(args):
    """python plot.py --study OUT [-o OUT/study_report.pdf]: write the study report, print where."""
    if args.out and Path(args.out).suffix != ".pdf":
        raise UsageError(f"-o with --study names the report's PDF (ending in .pdf), got '{args.out}'")
    study, _, (method, ms, notes), paths = write_study_report(args.study, args.out)
    for size in study.sizes:
        print(f"size {size.label}: " + (verdict_line(size.analysis) if size.analysis else "no finished comparison run"))
    print(method)
    header, rows = multiplier_rows(study.reference, ms)
    for row in rows:
        print(f"size {row[0]}, {row[1]}: " + "; ".join(f"{h}: {c}" for h, c in zip(header[2:], row[2:]) if c))
    for size, exp, w in dict.fromkeys((m.size, m.experiment, m.warning) for m in ms if m.warning):
        print(f"past the measured range: size {size}, {exp}: {w}")
    for n in notes:
        print(n)
    print("wrote " + ", ".join(map(str, paths)))
    return 0

# -----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default also prints the usage)
        print(f"plot.py: error: {message}", file=sys.stderr)
        sys.exit(2)


EPILOG = """\
designs (ablate.py makes them and writes OUT/design.json; without it the report infers the design):
  one-at-a-time  baseline, each switch alone, all          reference: baseline
  leave-one-out  all, no_<x> (all without x) for each x    reference: all
  factorial      every combination: baseline, a, a+b, ..., all (main effects and two-way interactions)

report statistics: paired on seed; mean, 95% CI (Student t, df = n-1), two-sided p, Holm-Bonferroni verdict
at family-wise 5% over the report's comparisons (factorial: its main effects and interactions); minimum
detectable effect at 80% power (exact, noncentral t) and seeds needed for 0.02 nats, with their ranges over
the 95% interval of the true sd. One seed: no test, said plainly.
"""


def get_args(argv=None):
    p = _Parser(description="Plot NLL curves of gpt-ablate runs; build the ablation report and the study report.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="*", help="log.txt files (or run folders)")
    p.add_argument("-o", "--out", default=None, help="PNG to write (default nll.png; in report mode only if given)")
    p.add_argument("--report", default=None, help="write a one-page report PDF here (plus .md and .png next to it)")
    p.add_argument("--smooth", type=float, default=None,
                   help="EMA beta for train curves, in [0, 1) (default: about 1/20 of a run's points)")
    p.add_argument("--sample_prompt", default="The", help="report: prompt for the samples")
    p.add_argument("--sample_tokens", type=int, default=40, help="report: new tokens per sample")
    p.add_argument("--sample_seed", type=int, default=1337, help="report: sampling seed (same for all)")
    p.add_argument("--no_samples", action="store_true", help="report: skip generating samples")
    p.add_argument("--study", default=None, metavar="OUT",
                   help="write the report of the study in OUT (ablate.py's layout): OUT/study_report.pdf, .md and "
                        "two PNG figures; -o names the PDF")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    try:
        if args.study:
            if args.logs or args.report:
                raise UsageError("--study takes no log files and no --report (-o names the study report's PDF)")
            return study_main(args)
        if not args.logs:
            raise UsageError("no log files given (usage: python plot.py out/*/log.txt [-o nll.png])")
        if args.smooth is not None and not 0 <= args.smooth < 1:
            raise UsageError(f"--smooth must be in [0, 1), got {args.smooth}")
        runs = [r for p in args.logs for r in load_runs(p)]
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
        a = analyze(runs)   # design.json read (or the design inferred) once: the samples' groups, the report
        samples = {} if args.no_samples else generate_report_samples(
            a.groups, args.sample_prompt, args.sample_tokens, seed=args.sample_seed)
        if args.no_samples:
            desc = "Samples: skipped (--no_samples)"
        a, paths = write_report(runs, args.report, args.smooth, samples, desc, a.design)
        print()
        print(design_line(a))
        print(markdown_tables(a))
        print(verdict_line(a))
        print(power_line(a))
        print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
