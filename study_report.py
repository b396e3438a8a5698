"""
The study report, `python plot.py --study OUT`: a study folder written by ablate.py (--tune, --scale) read
whole, and OUT/study_report.md, .pdf, _sensitivity.png and _compute.png written from it: the design and sizes
(params, tokens, training FLOPs), each arm's tuning curve per size (chosen value, diverged values,
edge-of-grid warnings), the ablation report's verdicts at each size (ablation_report.analyze), Δ against
training FLOPs, and each arm's compute multiplier C_ref(L_arm)/C_arm from the reference's loss-vs-compute
curve (straight lines in log C between its sizes, never extrapolated; with >= 4 sizes also a fitted
L = a*(C/C0)^-b + c), with the paired Δ's t interval pushed through that curve (the math: stats.py).

The folder: ablate.py runs a study into OUT: OUT/study.json (design, seeds, tuned key and grid, sizes,
budget), then per size a folder OUT/<size>/ (OUT itself without --scale) with
tune/<experiment>/<KEY>=<value>/seed<k>/ (the tuning runs, scored on the tuning set), choice.json (each arm's
chosen value) and <experiment>/seed<k>/ (the comparison runs at the chosen values, on the validation set).
load_study reads it all into a StudyResults (what the runs recorded; ablate.py's StudyPlan is the plan).
"""

import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation_report import (A4_PORTRAIT, analyze, colour, comparison_header, comparison_rows, draw_table,
                             fmt_mean_std, fmt_params, fmt_tokens, md_table, pyplot, signed, verdict_line)
from run_records import DESIGNS, REFERENCE, UsageError, read_run
from stats import fit_power_law, invert_power_law, is_num, log_multiplier, mean_std, paired_diff, t_half

FIT_MIN_SIZES = 4              # from this many sizes on (more than the law's 3 parameters) a law is fitted too

# -----------------------------------------------------------------------------
# reading a study folder

@dataclass
class StudySize:
    name: str              # the size's folder name ("" without --scale)
    args: dict             # its config keys, e.g. {"n_layer": "2", "n_embd": "64"}
    folder: Path
    runs: dict             # {experiment: {seed: RecordedRun}}: finished comparison runs
    tune: dict             # {experiment: {value: {seed: tuning-set NLL, or None when it diverged}}}
    choice: dict | None    # choice.json's by_experiment, or None when there is none
    problems: list         # one line per comparison or tuning run that did not finish (diverged tuning: a result)
    analysis: object = None  # Analysis of the comparison runs (None without any)

    @property
    def label(self):
        return self.name or "(one size)"


@dataclass
class StudyResults:
    """What a study's runs recorded, read by load_study (ablate.py's StudyPlan is the study it plans)."""
    root: Path
    spec: dict             # study.json
    design: dict           # spec["design"]
    reference: str         # the experiment every other one is compared with
    key: str | None        # the tuned config key (None: no tuning stage)
    values: list           # its grid, as the strings ablate.py passed
    sizes: list            # [StudySize], in study.json's order
    notes: list            # plain sentences for the report


def run_state(folder):
    """(RecordedRun or None, state, text) of one run folder: state is RecordedRun.status ("finished",
    "diverged", "unfinished") or "not started" (no log.txt); text says it in words ("diverged at step 180")."""
    log = Path(folder) / "log.txt"
    if not log.is_file():
        return None, "not started", "not started"
    run = read_run(log)
    if run.train or run.evals or run.status == "finished":
        return run, run.status, run.status_text
    # no train or eval row in the log (e.g. a run that diverged at its first step): no step to name
    return None, run.status, f"{run.status} (no train or eval row in its log)"


def seed_folders(folder):
    """{seed: path} of the seed<k> folders inside folder."""
    out = {}
    for p in Path(folder).glob("seed*"):
        m = re.fullmatch(r"seed(\d+)", p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {what} {path}: {e}") from None


def load_study(root):
    """Read a study folder written by ablate.py (its layout: this file's docstring) into a StudyResults.
    UsageError when it is not one."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"no such study folder: {root}")
    if not (root / "study.json").is_file():
        raise UsageError(f"{root} has no study.json (is it a study folder written by ablate.py?)")
    spec = _read_json(root / "study.json", "study file")
    design = spec.get("design") if isinstance(spec, dict) else None
    if not isinstance(design, dict) or design.get("design") not in DESIGNS or not isinstance(
            design.get("experiments"), list):
        raise UsageError(f"{root / 'study.json'}: no valid 'design' (need design and experiments)")
    design = dict(design, source="study.json")
    tune = spec.get("tune") or {}
    key, values = tune.get("key"), [str(v) for v in tune.get("values") or []]
    sizes = spec.get("sizes") or [{"name": "", "args": {}}]
    study = StudyResults(root, spec, design, design.get("reference") or REFERENCE[design["design"]], key, values,
                         [], [])
    experiments = [e["name"] for e in design["experiments"]]
    for sz in sizes:
        folder = root / sz["name"] if sz.get("name") else root
        size = StudySize(sz.get("name") or "", dict(sz.get("args") or {}), folder, {}, {}, None, [])
        if key:
            path = folder / "choice.json"
            if path.is_file():
                size.choice = (_read_json(path, "choice file").get("by_experiment") or {})
            else:
                study.notes.append(f"Size {size.label}: no choice.json (the tuning stage has not finished).")
        for exp in experiments:
            size.runs[exp] = {}
            for seed, path in seed_folders(folder / exp).items():
                run, state, text = run_state(path)
                if state == "finished":
                    size.runs[exp][seed] = run
                else:
                    size.problems.append(f"{path.relative_to(root)} (comparison run): {text}")
            if key:  # the grid's values, and those ablate.py tried beyond it (choice.json's "tried")
                tried = [str(t["value"]) for t in ((size.choice or {}).get(exp) or {}).get("tried") or []]
                size.tune[exp] = {}
                for v in values + [t for t in tried if t not in values]:
                    size.tune[exp][v] = {}
                    for seed, path in seed_folders(folder / "tune" / exp / f"{key}={v}").items():
                        run, state, text = run_state(path)
                        if state == "finished":
                            size.tune[exp][v][seed] = run.val_nll
                            if (run.results or {}).get("eval_set", "tune") != "tune":
                                study.notes.append(f"WARNING: tuning run {path.relative_to(root)} was scored on "
                                                   f"the '{run.results['eval_set']}' set, not the tuning set.")
                        elif state == "diverged":
                            size.tune[exp][v][seed] = None
                        else:
                            size.problems.append(f"{path.relative_to(root)} (tuning run): {text}")
            n = len(size.runs[exp])
            if isinstance(spec.get("seeds"), int) and n < spec["seeds"]:
                study.notes.append(f"Size {size.label}, {exp}: {n} of {spec['seeds']} comparison seeds finished.")
        runs = [r for rs in size.runs.values() for r in rs.values()]
        size.analysis = analyze(runs, design) if runs else None
        study.sizes.append(size)
    return study

# -----------------------------------------------------------------------------
# the compute of a run: two measures

def train_flops(run):
    """(training FLOPs of a finished run, where the number came from): results.json's train_flops (train.py's
    count, train.flops_per_token x tokens: 6 per weight of every matmul, the tied output head included, plus
    the attention term), else its flops_per_token x tokens; (None, "unknown") when it records neither."""
    res = run.results or {}
    if is_num(res.get("train_flops")):
        return float(res["train_flops"]), "train_flops in results.json"
    if is_num(res.get("flops_per_token")) and run.tokens:
        return float(res["flops_per_token"]) * run.tokens, "flops_per_token x tokens in results.json"
    return None, "unknown"


def nonembedding_compute(run):
    """Kaplan et al.'s C = 6 N D of a finished run: N = its non-embedding parameters (results.json's params),
    D = its training tokens; None when either is unknown. Without the output head, which at small widths is
    most of the training FLOPs."""
    n = ((run.results or {}).get("params") or {}).get("non_embedding")
    return 6.0 * n * run.tokens if is_num(n) and run.tokens else None


MEASURES = {"training FLOPs": lambda run: train_flops(run)[0], "non-embedding 6ND": nonembedding_compute}

# -----------------------------------------------------------------------------
# the compute multiplier: each arm against the reference's loss-vs-compute curve

@dataclass
class Multiplier:
    size: str
    experiment: str
    measure: str           # the compute counted: a key of MEASURES
    loss: float            # the arm's val NLL as compared: the reference's mean at this size + the mean paired Δ
    delta: tuple           # (mean paired Δ, its 95% t interval's lo, hi): nan with one paired seed
    value: float           # C_ref(loss) / C_arm: inf beyond the largest measured reference, 0 before the smallest
    interval: tuple | None # (lo, hi) of the 95% interval, ends likewise; None without two seeds
    bounds: tuple          # (smallest, largest) reference compute / C_arm: a value past them is only a bound
    law: float | None      # the multiplier by the fitted law (FIT_MIN_SIZES+ sizes, inside the range), else None
    warning: str | None    # past the measured range: what the study cannot say, and the run that would


def compute_multipliers(study):
    """Each arm's compute multiplier at each size, in each measure of compute (MEASURES), against the reference
    arm's loss-vs-compute curve (log_multiplier): (method sentence, [Multiplier], notes)."""
    ref, notes = study.reference, []
    sizes = [s for s in study.sizes if s.runs.get(ref)]
    for s in study.sizes:
        if s not in sizes:
            notes.append(f"Size {s.label} has no finished {ref} run and is left out of the compute curve.")
    if len(sizes) < 2:
        return (f"Compute multiplier: needs finished {ref} runs at two or more sizes (the study has "
                f"{len(sizes)}).", [], notes)
    method = [f"Compute multiplier = C_{ref}(L_arm) / C_arm: the compute the {ref} needs to reach the arm's val "
              f"NLL, divided by the arm's compute (2.00x: the {ref} needs twice the compute; below 1: the change "
              f"costs compute). L_arm = the {ref}'s mean at that size + the mean paired Δ (the arm's mean when both "
              f"ran the same seeds). C_{ref}(L) follows straight lines in log C between the {ref}'s mean val NLL "
              f"at its {len(sizes)} sizes and is never extrapolated: an arm whose loss lies past the losses the "
              f"{ref} measured gets a bound (> the {ref}'s largest compute / C_arm, or < its smallest / C_arm), "
              f"not a number. 95% interval: the paired Δ's Student t interval pushed through that curve, each "
              f"other size's point moved by its 95% Welch t interval from this size, the way that widens it "
              f"(conservative; at equal compute it excludes 1 only where the paired Δ's interval excludes 0); "
              f"an end past the measured range is a bound likewise. Two measures of compute: training FLOPs "
              f"(train.py's count: 6 per weight of every matmul, the tied output head included, plus attention) "
              f"and non-embedding 6ND (Kaplan et al. 2020's compute C = 6ND: N = non-embedding parameters, "
              f"D = training tokens; without the head)." + _share_sentence(study, sizes)]
    out = []
    for measure, compute in MEASURES.items():
        out += _multipliers_by(study, sizes, measure, compute, method, notes)
    warnings = {(m.size, m.experiment): m.warning for m in out if m.warning}
    for m in out:
        m.warning = warnings.get((m.size, m.experiment))
    return " ".join(method), out, notes


def _share_sentence(study, sizes):
    """How much of the reference's training FLOPs the non-embedding compute is, over the sizes."""
    shares = [nonembedding_compute(r) / train_flops(r)[0] for s in sizes for r in s.runs[study.reference].values()
              if nonembedding_compute(r) and train_flops(r)[0]]
    if not shares:
        return ""
    return (f" Here the non-embedding compute is {100 * min(shares):.1f}-{100 * max(shares):.1f}% of the "
            f"{study.reference}'s training FLOPs (the rest: the output head and attention).")


def _multipliers_by(study, sizes, measure, compute, method, notes):
    """The multipliers of every arm at every size by one measure of compute; adds sentences to method and
    notes."""
    ref = study.reference
    cost = [[compute(r) for r in s.runs[ref].values()] for s in sizes]
    if any(c is None for cs in cost for c in cs):
        notes.append(f"By {measure}: unknown for some {ref} runs (results.json), no multiplier by it.")
        return []
    order = sorted(range(len(sizes)), key=lambda i: np.mean(cost[i]))
    sizes, logc = [sizes[i] for i in order], np.log([np.mean(cost[i]) for i in order])
    ref_nll = [np.array([[r.val_nll for r in s.runs[ref].values()]]) for s in sizes]       # [(1, n_i)]
    means = np.array([x.mean() for x in ref_nll])
    if not np.all(np.diff(means) < 0):
        notes.append(f"By {measure}: the {ref}'s mean val NLL does not fall with compute at every step between "
                     f"sizes ({', '.join(f'{x:.4f}' for x in means)}): no multiplier by it.")
        return []
    law = _fit_law(study, sizes, measure, logc, ref_nll, method) if len(sizes) >= FIT_MIN_SIZES else None
    out = []
    for j, size in enumerate(sizes):
        for exp, runs in size.runs.items():
            if exp == ref or not runs:
                continue
            c_arm = [compute(r) for r in runs.values()]
            _, diffs = paired_diff({k: r.val_nll for k, r in runs.items()},
                                   {k: r.val_nll for k, r in size.runs[ref].items()})
            if None in c_arm or not diffs:
                notes.append(f"Size {size.label}, {exp}: " + (f"{measure} unknown" if None in c_arm else
                             f"no seed in common with the {ref}") + f", no multiplier by {measure}.")
                continue
            logc_arm = math.log(np.mean(c_arm))
            est, lo, hi = (float(x[0]) for x in log_multiplier(ref_nll, np.array([diffs]), j, logc, logc_arm))
            d = float(np.mean(diffs))     # and its 95% t interval d +- hd, as in the per-size report
            hd = float(t_half(np.var(diffs, ddof=1) / len(diffs), len(diffs) - 1)) if len(diffs) > 1 else math.nan
            loss = float(means[j] + d)
            by_law = None
            if law is not None and math.isfinite(est):
                by_law = float(np.exp(logc[0] + invert_power_law(loss, *law)[0] - logc_arm))
            out.append(Multiplier(size.label, exp, measure, loss, (d, d - hd, d + hd), math.exp(est),
                                  None if math.isnan(lo) or math.isnan(hi) else (math.exp(lo), math.exp(hi)),
                                  (math.exp(logc[0] - logc_arm), math.exp(logc[-1] - logc_arm)), by_law,
                                  _range_warning(study, sizes, loss, means, est)))
    return out


def _fit_law(study, sizes, measure, logc, ref_nll, method):
    """Fit L = a*(C/C0)^-b + c to the reference's mean val NLL at FIT_MIN_SIZES or more sizes (more points than
    its 3 parameters, so its residuals test it); adds its parameters and residuals to method. Returns (a, b, c)
    as arrays, or None when no law of that family fits (loss not falling)."""
    means = np.array([x.mean() for x in ref_nll])
    a, b, c = fit_power_law(logc - logc[0], means)
    if not np.isfinite(a[0]):
        method.append(f"By {measure}: no law L = a·C^-b + c with a, b > 0 fits the {study.reference}'s losses.")
        return None
    resid = means - (a[0] * np.exp(-b[0] * (logc - logc[0])) + c[0])
    se = [x.std(ddof=1) / math.sqrt(x.shape[1]) if x.shape[1] > 1 else math.nan for x in ref_nll]
    listed = ", ".join(f"{round(r, 4) + 0.0:+.4f} (se {s:.4f}, {z.label})" for r, s, z in zip(resid, se, sizes))
    method.append(f"By {measure}, the law L = a·(C/C0)^-b + c fitted by least squares to the {study.reference}'s "
                  f"{len(sizes)} mean val NLLs (C0 = {math.exp(logc[0]):.3g}: a = {a[0]:.4g}, b = {b[0]:.3g}, "
                  f"c = {c[0]:.4f}; {len(sizes) - 3} residual degree(s) of freedom) leaves residuals (mean - law) "
                  f"of {listed}; its multipliers, inside the measured range only, are in the column 'law, {measure}'.")
    return a, b, c


def _range_warning(study, sizes, loss, means, est):
    """None inside the reference's measured losses; past them, what the study cannot say and the reference run
    that would say it: the largest size on 2x and 4x its tokens, or the smallest on 1/2 and 1/4."""
    if not math.isinf(est):
        return None
    ref = study.reference
    beyond = est > 0
    size = sizes[-1] if beyond else sizes[0]
    tokens = [r.tokens for r in size.runs[ref].values() if r.tokens]
    factors = (2, 4) if beyond else (0.5, 0.25)
    more = [f"{int(round(f * tokens[0]))}" for f in factors] if tokens else None
    where = (f"below the lowest loss the {ref} measured ({means[-1]:.4f}, size {size.label}): beyond the largest "
             f"measured {ref}, the multiplier is only a lower bound" if beyond else
             f"above the highest loss the {ref} measured ({means[0]:.4f}, size {size.label}): before the "
             f"smallest measured {ref}, the multiplier is only an upper bound")
    run = (f"the {ref} at size {size.label} on {'2x and 4x' if beyond else '1/2 and 1/4 of'} its tokens"
           + (f" ({more[0]} and {more[1]}: ablate.py with --experiments {ref}, "
              + " ".join(f"--scale {k}={v}" for k, v in size.args.items())
              + f" and --tokens {more[0]}, then {more[1]})" if more else ""))
    return (f"the arm's val NLL {loss:.4f} is {where}; to measure it, extend the {ref}'s curve past that loss, "
            f"e.g. with {run}")

# -----------------------------------------------------------------------------
# the tuning stage: what each arm chose, and its sensitivity curve

def _numeric(values):
    """The grid as floats, or None when a value is not a number."""
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def grid_order(values):
    """The grid in plotting order: by number when every value is one, else as given."""
    nums = _numeric(values)
    return [v for _, v in sorted(zip(nums, values))] if nums else list(values)


def tuning_rows(study):
    """[{size, experiment, chosen, edge, scores {value: mean NLL or None}, diverged [values]}] per size and
    arm. The points are the tuning runs' own NLL (mean over finished tuning seeds) at every value tried (the
    grid, and the values ablate.py added beyond it); chosen and edge come from choice.json (the edge is also
    checked here: the chosen value first or last of the values tried); a value is diverged when a tuning run
    of it diverged (its log, or choice.json's list)."""
    rows = []
    for size in study.sizes:
        for exp, by_value in size.tune.items():
            order = grid_order(list(by_value))
            choice = (size.choice or {}).get(exp) or {}
            scores, diverged = {}, []
            for v in order:
                nlls = [x for x in by_value.get(v, {}).values() if x is not None]
                scores[v] = float(np.mean(nlls)) if nlls else None
                if None in by_value.get(v, {}).values() or (choice.get("diverged") or {}).get(v):
                    diverged.append(v)
            chosen = choice.get("chosen")
            chosen = None if chosen is None else str(chosen)
            edge = bool(choice.get("edge")) or (chosen is not None and len(order) > 1 and chosen in (order[0], order[-1]))
            rows.append({"size": size.label, "experiment": exp, "chosen": chosen, "edge": edge,
                         "edge_reason": choice.get("edge_reason"),
                         "scores": scores, "diverged": diverged,
                         "close": close_call(size, exp, chosen, scores, by_value)})
    return rows


def close_call(size, exp, chosen, scores, by_value):
    """(margin, noise, runner-up, how) when the chosen value beat the runner-up by less than the noise of that
    difference, else None. With 2+ tuning seeds run at both values: the standard error of the mean paired
    difference over those seeds. With one: sd * sqrt(2), sd = the seed-to-seed sd of the arm's final val NLL
    at this size (its comparison runs), the noise of two independent runs; runs sharing a tuning seed are
    correlated, so this may overstate it. Such a choice may be a coin toss: more --tune-seeds settle it."""
    others = {v: x for v, x in scores.items() if x is not None and v != chosen}
    if chosen is None or scores.get(chosen) is None or not others:
        return None
    runner = min(others, key=others.get)
    margin = others[runner] - scores[chosen]
    a, b = by_value.get(chosen, {}), by_value.get(runner, {})
    diffs = [b[t] - a[t] for t in a if t in b and a[t] is not None and b[t] is not None]
    if len(diffs) >= 2:
        noise = mean_std(diffs)[1] / math.sqrt(len(diffs))
        how = f"the standard error of the paired difference over {len(diffs)} tuning seeds"
    else:
        sd = mean_std([r.val_nll for r in size.runs.get(exp, {}).values()])[1]
        if sd is None:
            return None
        noise = sd * math.sqrt(2)
        how = ("sqrt(2) x the arm's seed-to-seed sd of its final val NLL: two independent runs; one tuning "
               "seed shared by both values makes them correlated, so this may overstate it")
    return (margin, noise, runner, how) if margin < noise else None


def sensitivity_figure(study, rows):
    """One panel per size: tuning-set NLL against the tuned value, a line per arm (mean over tuning seeds),
    the chosen value starred, a diverged value an x at the top; log x when the values are positive and span
    10x or more."""
    plt = pyplot()
    tried = (v for size in study.sizes for by_value in size.tune.values() for v in by_value)  # every arm's values
    order = grid_order(list(dict.fromkeys(tried)))
    nums = _numeric(order)
    xs = nums if nums else list(range(len(order)))
    log_x = bool(nums) and min(nums) > 0 and max(nums) >= 10 * min(nums)
    n = len(study.sizes)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.0 * cols, 3.9 * math.ceil(n / cols)),
                             squeeze=False)
    exps = [e["name"] for e in study.design["experiments"]]
    for ax, size in zip(axes.flat, study.sizes):
        edges = []
        for i, exp in enumerate(exps):
            row = next((r for r in rows if r["size"] == size.label and r["experiment"] == exp), None)
            if row is None:
                continue
            c = colour(i, len(exps))
            pts = [(x, row["scores"][v]) for x, v in zip(xs, order) if row["scores"].get(v) is not None]
            for x, v in zip(xs, order):  # every finished tuning seed, faint
                seeds = [y for y in size.tune[exp].get(v, {}).values() if y is not None]
                ax.plot([x] * len(seeds), seeds, ".", color=c, alpha=0.35, ms=4)
            if pts:
                ax.plot(*zip(*pts), "-o", color=c, lw=1.4, ms=4, label=exp)
            if row["chosen"] in order and row["scores"].get(row["chosen"]) is not None:
                ax.plot(xs[order.index(row["chosen"])], row["scores"][row["chosen"]], "*", color=c, ms=15,
                        markeredgecolor="black", markeredgewidth=0.8, zorder=5)
            for v in row["diverged"]:
                ax.plot(xs[order.index(v)], 0.97, "x", color=c, ms=9, mew=2, transform=ax.get_xaxis_transform(),
                        clip_on=False)
            if row["edge"]:
                edges.append(exp)
        if log_x:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        else:
            pad = 0.08 * (max(xs) - min(xs) or 1)
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_xticks(xs, order)      # a tick at every tried value, labelled as it was given
        ax.minorticks_off()
        if not any(y is not None for r in rows if r["size"] == size.label for y in r["scores"].values()):
            ax.text(0.5, 0.5, "no finished tuning run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(study.key)
        ax.set_ylabel("tuning-set NLL (nats/token)")
        title = f"size {size.label}" + (f"\nchosen on the edge of the values tried: {', '.join(edges)}" if edges else "")
        ax.set_title(title, fontsize=9, color="#c00000" if edges else "black")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], ls="", marker="*", ms=12, color="grey", markeredgecolor="black"),
                Line2D([], [], ls="", marker="x", ms=8, mew=2, color="grey")]
    labels += ["chosen value", "diverged (at the top)"]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle("Sensitivity: each arm's tuning-set NLL against the tuned value (mean over tuning seeds; dots: "
                 "single seeds)", fontsize=10)
    two_line_title = any(r["edge"] for r in rows)  # a panel's title names the edge choices on a second line
    top = 0.88 - 0.03 * (fig.get_figheight() > 5) - 0.3 / fig.get_figheight() * two_line_title  # below the suptitle
    fig.subplots_adjust(left=0.08 / cols ** 0.5, right=0.98, top=top,
                        bottom=0.2 / math.ceil(n / cols), wspace=0.3, hspace=0.45)   # fixed: tight_layout is slow
    return fig

# -----------------------------------------------------------------------------
# per-size verdicts and the paired differences against compute

def size_flops(size, exp):
    """Mean training FLOPs of exp's finished runs at this size (None when unknown)."""
    f = [train_flops(r)[0] for r in size.runs.get(exp, {}).values()]
    return float(np.mean(f)) if f and None not in f else None


def delta_compute_figure(study):
    """Δ of each comparison (or factorial effect) against training FLOPs, a line per switch across the sizes,
    bars = its 95% CI; a filled marker is a Holm verdict at its size, a hollow one is not."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    names = list(dict.fromkeys(x for s in study.sizes if s.analysis for x in s.analysis.family))
    for i, name in enumerate(names):
        c = colour(i, len(names))
        pts = []
        for size in study.sizes:
            st = size.analysis.family.get(name) if size.analysis else None
            exp = name if name in size.runs else study.reference   # effects: the size's compute (the reference's)
            x = size_flops(size, exp)
            if st and st["n"] and x:
                pts.append((x, st))
        pts.sort(key=lambda p: p[0])
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [p[1]["mean"] for p in pts]
        ax.plot(x, y, "-", color=c, lw=1.3, label=name)
        for xi, st in pts:
            if st["ci"]:
                ax.errorbar(xi, st["mean"], yerr=[[st["mean"] - st["ci"][0]], [st["ci"][1] - st["mean"]]],
                            color=c, capsize=3, lw=1)
            ax.plot(xi, st["mean"], "o", ms=6, color=c, markerfacecolor=c if st["significant"] else "white")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training compute per run (FLOPs, log scale)")
    ref = "per-seed effect" if any(s.analysis and s.analysis.family_kind == "effects" for s in study.sizes) \
        else f"Δ val NLL vs {study.reference}"
    ax.set_ylabel(f"{ref} (nats/token)")
    ax.set_title("Paired Δ against compute: bars = 95% CI (Student t over seeds); filled = Holm verdict at its "
                 "size", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no paired Δ with known training FLOPs", ha="center", va="center", transform=ax.transAxes)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.93, bottom=0.11)
    return fig

# -----------------------------------------------------------------------------
# the report: one list of blocks, written as markdown and as PDF pages

def _fmt_flops(x):
    return "?" if x is None or not is_num(x) else f"{x:.3g}"


def _fmt_mult(x, bounds):
    """A multiplier: a number inside the measured range, a bound past it (value inf or 0: see Multiplier)."""
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return f"> {bounds[1]:.2f}x"
    return f"< {bounds[0]:.2f}x" if x == 0 else f"{x:.2f}x"


def _fmt_multiplier(m):
    """'1.37x [< 1.00x, 1.80x]': the multiplier and its 95% interval."""
    interval = (f"[{_fmt_mult(m.interval[0], m.bounds)}, {_fmt_mult(m.interval[1], m.bounds)}]" if m.interval
                else "(no interval)")
    return f"{_fmt_mult(m.value, m.bounds)} {interval}"


def _fmt_law(x):
    if x is None:
        return ""
    return f"{x:.2f}x" if math.isfinite(x) else "below the law's floor c"


def multiplier_rows(ref, ms):
    """(header, rows) of the multiplier table: one row per size and arm, a column per measure of compute (and
    per fitted law)."""
    measures = list(dict.fromkeys(m.measure for m in ms))
    laws = [x for x in measures if any(m.law is not None for m in ms if m.measure == x)]
    header = ["size", "arm", f"val NLL ({ref} + Δ)", "paired Δ [95% CI]"] + \
             [f"multiplier, {x} [95%]" for x in measures] + [f"law, {x}" for x in laws] + ["measured range"]
    rows = []
    for key in dict.fromkeys((m.size, m.experiment) for m in ms):
        by = {m.measure: m for m in ms if (m.size, m.experiment) == key}
        m = next(iter(by.values()))
        d = m.delta
        ci = f" [{signed(d[1])}, {signed(d[2])}]" if not math.isnan(d[1]) else ""
        inside = "n/a" if math.isnan(m.value) else "beyond the largest" if math.isinf(m.value) else \
            "before the smallest" if m.value == 0 else "inside"
        rows.append([*key, f"{m.loss:.4f}", signed(d[0]) + ci] +
                    [_fmt_multiplier(by[x]) if x in by else "n/a" for x in measures] +
                    [_fmt_law(by[x].law) if x in by else "" for x in laws] + [inside])
    return header, rows


def study_blocks(study, rows, mult, pngs):
    """The report as [("h", text) | ("p", text) | ("warn", text) | ("table", header, rows) | ("img", path)]."""
    d, spec, ref = study.design, study.spec, study.reference
    exps = [e["name"] for e in d["experiments"]]
    blocks = [("h", "Design")]
    tune = spec.get("tune") or {}
    blocks.append(("p", f"Design: {d['design']}; experiments: {', '.join(exps)}; reference: {ref}. "
                        f"{spec.get('seeds', '?')} comparison seed(s) per arm and size. " +
                   (f"Tuned: {study.key} over {', '.join(grid_order(study.values))} per arm and size, with tuning "
                    f"seed(s) {', '.join(map(str, tune.get('seeds') or []))}, scored on the tuning set; each arm "
                    f"then runs at its own chosen value on the comparison seeds and the validation set."
                    if study.key else "No tuning stage: every arm ran at the config's values.")))
    budget = spec.get("budget") if isinstance(spec.get("budget"), dict) else {}
    if budget:
        blocks.append(("p", f"Token budget rule: {budget.get('rule', '?')}" +
                       "".join(f"; {k} = {v}" for k, v in budget.items() if k != "rule" and not isinstance(v, list))
                       + " (planned numbers, marked so below, come from study.json where no run finished)."))
    if spec.get("train_args"):
        blocks.append(("p", f"train.py arguments: {' '.join(map(str, spec['train_args']))}"))
    size_rows, sources = [], set()
    for i, size in enumerate(study.sizes):
        runs = list(size.runs.get(ref, {}).values())
        r = runs[0] if runs else None
        plan = lambda key: budget[key][i] if isinstance(budget.get(key), list) and i < len(budget[key]) else None
        params = ((r.results or {}).get("params") if r else None) or plan("params") or {}
        planned = " (planned)" if r is None else ""
        tokens = fmt_tokens([x.tokens for x in runs]) if runs else fmt_tokens([plan("tokens")]) + planned
        flops = size_flops(size, ref)
        if flops is None and is_num(plan("flops_per_token")) and is_num(plan("tokens")):
            flops = plan("flops_per_token") * plan("tokens")
        sources |= {train_flops(x)[1] for rs in size.runs.values() for x in rs.values()}
        size_rows.append([size.label, " ".join(f"{k}={v}" for k, v in size.args.items()) or "(config)",
                          fmt_params(params.get("total")) + planned, fmt_params(params.get("non_embedding")) + planned,
                          tokens, _fmt_flops(flops) + (planned if flops is not None else "")])
    blocks.append(("table", ["size", "config keys", f"params ({ref})", "non-embedding", "tokens per run",
                             "train FLOPs per run"], size_rows))
    blocks.append(("p", f"Training FLOPs from: {'; '.join(sorted(sources)) or 'no finished run'}."))

    blocks.append(("h", "Tuning: the sensitivity of each arm"))
    if study.key:
        blocks.append(("img", pngs["sensitivity"]))
        sizes = [s.label for s in study.sizes]
        table = []
        for exp in exps:
            cells = [exp]
            for label in sizes:
                r = next((x for x in rows if x["size"] == label and x["experiment"] == exp), None)
                if r is None or r["chosen"] is None:
                    cells.append("(no choice)")
                    continue
                score = r["scores"].get(r["chosen"])
                cells.append(f"{r['chosen']}" + (f" ({score:.4f})" if score is not None else "") +
                             (" EDGE" if r["edge"] else "") +
                             (f"; diverged: {', '.join(r['diverged'])}" if r["diverged"] else ""))
            table.append(cells)
        blocks.append(("table", ["arm"] + [f"size {s}: chosen {study.key} (tuning NLL)" for s in sizes], table))
        for r in rows:
            if r["edge"]:
                blocks.append(("warn", f"WARNING: size {r['size']}, {r['experiment']}: the chosen {study.key} = "
                                       f"{r['chosen']} is on the edge of the values tried; the best value may "
                                       f"lie outside them ("
                                       + (f"{r['edge_reason']})." if r.get("edge_reason") else "widen the grid).")))
        for r in rows:
            if r["close"]:
                margin, noise, runner, how = r["close"]
                blocks.append(("warn", f"WARNING: size {r['size']}, {r['experiment']}: {study.key} = {r['chosen']} "
                                       f"beat {runner} by {margin:.4f} tuning NLL, less than the noise of that "
                                       f"difference ({noise:.4f}: {how}): the choice may be within noise "
                                       f"(more --tune-seeds would settle it)."))
        div = [f"{r['experiment']} at {study.key} = {', '.join(r['diverged'])} (size {r['size']})"
               for r in rows if r["diverged"]]
        if div:
            blocks.append(("p", "Diverged tuning runs (a result: that value is too high for that arm; never "
                                "chosen): " + "; ".join(div) + "."))
    else:
        blocks.append(("p", "No tuning stage in this study (ablate.py without --tune)."))

    blocks.append(("h", "Verdicts at every size"))
    arm_rows, fam_rows, header = [], [], None
    for size in study.sizes:
        a = size.analysis
        if a is None:
            blocks.append(("p", f"Size {size.label}: no finished comparison run."))
            continue
        for row in a.rows:
            r = next((x for x in rows if x["size"] == size.label and x["experiment"] == row["experiment"]), None)
            arm_rows.append([size.label, row["experiment"], (r or {}).get("chosen") or "-", fmt_params(row["params"]),
                             str(row["n"]), fmt_tokens(row["tokens"]), _fmt_flops(size_flops(size, row["experiment"])),
                             fmt_mean_std(row["nll_mean"], row["nll_std"], row["n"])])
        header = header or ["size"] + comparison_header(a)
        fam_rows += [[size.label] + cells for cells in comparison_rows(a)]
    if arm_rows:
        blocks.append(("table", ["size", "experiment", f"tuned {study.key}" if study.key else "tuned", "params",
                                 "seeds", "tokens", "train FLOPs", "val NLL (mean ± std)"], arm_rows))
    if fam_rows:
        blocks.append(("table", header, fam_rows))
        kind = next(s.analysis.family_kind for s in study.sizes if s.analysis)
        blocks.append(("p", f"Each size is its own family: paired on seed, 95% CI from Student t, Holm-Bonferroni "
                            f"over that size's {kind} at family-wise 5% (the per-size report's statistics)."))
        blocks += [("p", f"Size {s.label}: {verdict_line(s.analysis)}") for s in study.sizes if s.analysis]
    blocks.append(("h", "Δ against training compute"))
    blocks.append(("img", pngs["compute"]))

    blocks.append(("h", "Compute multiplier"))
    method, ms, notes = mult
    blocks.append(("p", method))
    if ms:
        blocks.append(("table", *multiplier_rows(ref, ms)))
        warned = dict.fromkeys((m.size, m.experiment, m.warning) for m in ms if m.warning)
        blocks += [("p", f"Past the measured range: size {size}, {exp}: {w}.") for size, exp, w in warned]
    blocks += [("p", n) for n in notes]

    blocks.append(("h", "Failed, diverged and missing runs"))
    problems = [p for s in study.sizes for p in s.problems]
    blocks.append(("p", "; ".join(problems) + "." if problems else "None: every run that was started finished."))
    blocks += [("warn" if n.startswith("WARNING") else "p", n) for n in study.notes]
    return blocks


def write_study_md(path, title, blocks):
    parts = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h":
            parts += [f"## {b[1]}", ""]
        elif b[0] == "p":
            parts += [b[1], ""]
        elif b[0] == "warn":
            parts += [f"**{b[1]}**", ""]
        elif b[0] == "table":
            parts += [md_table(b[1], b[2]), ""]
        elif b[0] == "img":
            parts += [f"![{Path(b[1]).stem}]({Path(b[1]).name})", ""]
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def write_study_pdf(path, title, blocks, figures):
    """A4 pages: the text and tables top to bottom, flowing onto the next page when full; then each figure
    ({png path: its matplotlib figure}) on a page of its own, drawn as vectors, in the order of the text."""
    from matplotlib.backends.backend_pdf import PdfPages
    plt = pyplot()
    page_pt = A4_PORTRAIT[1] * 72
    line_h = lambda size: size * 1.3 / page_pt
    with PdfPages(path) as pdf:
        fig, y = None, 0.0

        def new_page():
            nonlocal fig, y
            if fig is not None:
                pdf.savefig(fig)
                plt.close(fig)
            fig, y = plt.figure(figsize=A4_PORTRAIT), 0.96

        new_page()
        fig.text(0.5, 0.98, textwrap.shorten(title, 90), ha="center", va="top", fontsize=12, weight="bold",
                 parse_math=False)
        y = 0.95
        for b in blocks:
            if b[0] == "img":     # the figures follow the text, each on its own page
                b = ("p", f"(Figure {Path(b[1]).name}: on a page after the text.)")
            if b[0] == "table":
                rows = list(b[2])
                while rows:
                    fit = int((y - 0.04) / 0.0135) - 1
                    if fit < 2:
                        new_page()
                        continue
                    chunk, rows = rows[:fit], rows[fit:]
                    h = 0.0135 * (len(chunk) + 1)
                    draw_table(fig, [0.03, y - h, 0.94, h], b[1], chunk, 6.5)
                    y -= h + 0.01
                continue
            size = 10 if b[0] == "h" else 7.5
            lines = textwrap.wrap(b[1], 125 if b[0] != "h" else 90) or [""]
            if y - line_h(size) * len(lines) < 0.03:
                new_page()
            kw = {"weight": "bold"} if b[0] in ("h", "warn") else {}
            if b[0] == "warn":
                kw["color"] = "#c00000"
            fig.text(0.04, y, "\n".join(lines), va="top", fontsize=size, linespacing=1.3, parse_math=False, **kw)
            y -= line_h(size) * len(lines) + 0.008
        pdf.savefig(fig)
        plt.close(fig)
        for b in blocks:
            if b[0] == "img":
                pdf.savefig(figures[b[1]])


def write_study_report(root, pdf_path=None):
    """Read the study in root and write study_report.pdf/.md and its two PNG figures (next to the PDF).
    Returns (StudyResults, tuning rows, multipliers (method, [Multiplier], notes), paths)."""
    study = load_study(root)
    pdf_path = Path(pdf_path) if pdf_path else study.root / "study_report.pdf"
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    stem = pdf_path.with_suffix("")
    pngs = {"sensitivity": Path(f"{stem}_sensitivity.png"), "compute": Path(f"{stem}_compute.png")}
    rows = tuning_rows(study)
    figures = {pngs["compute"]: delta_compute_figure(study)}
    if study.key:
        figures[pngs["sensitivity"]] = sensitivity_figure(study, rows)
    else:
        del pngs["sensitivity"]
    mult = compute_multipliers(study)
    title = f"gpt-ablate study report: {study.root.resolve().name}"
    blocks = study_blocks(study, rows, mult, pngs)
    md_path = pdf_path.with_suffix(".md")
    write_study_md(md_path, title, blocks)
    try:
        for png, fig in figures.items():
            fig.savefig(png, dpi=110)
        write_study_pdf(pdf_path, title, blocks, figures)
    finally:
        for fig in figures.values():
            pyplot().close(fig)
    return study, rows, mult, [pdf_path, md_path, *pngs.values()]
