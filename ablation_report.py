"""
The ablation report, `python plot.py DIR/*/*/log.txt --report DIR/report.pdf`: the analysis of an ablation's
runs (read by run_records.py) against its design, the report's sentences and tables, its figure, and the files
DIR/report.pdf (one A4 page), DIR/report.md and DIR/report.png. Seeds of one experiment share a colour (thin,
faint); the mean over seeds is bold. The study report (study_report.py) shows this analysis, its verdict
sentence and its tables at each size, and draws with the helpers here (pyplot, colour, draw_table); plot.py's
plain curves use the curve helpers (train_curve, val_curve, zoom_ylim, style_axes).

Statistics (the functions: stats.py; the checks: test_plot.py):
  * one-at-a-time / leave-one-out: each experiment is compared with the reference paired on seed,
    d_k = exp_k - ref_k. Leave-one-out: d = (all without x) - all, so d > 0 means x helps inside the recipe.
  * factorial: per seed, with +-1 (effect) coding of the 2^m cells, the main effect of A is
    mean(cells with A on) - mean(cells with A off), and the interaction AxB is the +-1 contrast
    mean(cells where A and B agree) - mean(cells where they differ), which equals half the difference
    between A's effect with B on and with B off. Each effect is estimated once per seed.
  * per comparison (or effect) over n seeds: the mean, its 95% confidence interval from Student's t
    (df = n - 1), and the two-sided p-value of the (paired) t-test. The verdict is Holm-Bonferroni at a
    family-wise error of 5% over all comparisons (or all effects) in the report. One seed, or no spread
    between the seeds: no test is possible and the report says so.
  * power: the minimum detectable effect at 80% power at the corrected level alpha/k (k comparisons), exact
    from the noncentral t distribution at the observed sd, and the fewest seeds that detect 0.02 nats; both
    also at the ends of the 95% chi-square interval of the true sd (with 2-4 seeds the sd itself is uncertain
    by a large factor). Power never licenses "no effect": that claim comes only from the interval at the
    verdicts' family-wise level (Bonferroni, 1 - 0.05/k) lying inside +-0.02.
"""

import functools
import math
import re
import sys
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from run_records import (design_on_set, factorial_cells, find_design, group_by_experiment, infer_design,
                         registered_switches)
from stats import (MAX_SEEDS, TARGET, add_power, ema, factorial_effects, family_stats, is_num, mean_std,
                   paired_diff, sd_ratio_interval, t_quantile)

A4_PORTRAIT = (8.27, 11.69)  # inches

# -----------------------------------------------------------------------------
# the analysis behind a report

def on_label(on, switches, design):
    """'none', 'swiglu, rope', 'all (5)', 'all but rope' (leave-one-out)."""
    names = [s["name"] for s in switches]
    on = [n for n in names if n in set(on)] + [n for n in on if n not in names]
    if not on:
        return "none"
    if len(names) > 1 and set(on) == set(names):
        return f"all ({len(names)})"
    missing = [n for n in names if n not in on]
    if design == "leave-one-out" and len(missing) == 1:
        return f"all but {missing[0]}"
    return ", ".join(on)


@dataclass
class Analysis:
    design: dict                   # the design (from design.json or inferred); "source" says which
    groups: dict                   # {experiment: [runs]}
    rows: list                     # one summary dict per experiment
    family: dict                   # {comparison or effect name: family_stats entry}
    family_kind: str               # "comparisons" or "effects"
    notes: list                    # extra lines (skipped seeds, missing cells)
    seeds: list = field(default_factory=list)   # the seeds of all runs (the design's seeds)
    used_seeds: dict = field(default_factory=dict)   # {comparison or effect: seeds it used}


def summarize_experiment(exp, all_runs, on, switches, design):
    """An experiment's row: its numbers over its finished runs; the others are counted in `failed`."""
    runs = [r for r in all_runs if r.status == "finished"]
    nll_mean, nll_std = mean_std([r.val_nll for r in runs])
    params = [r.params for r in all_runs if r.params is not None]
    ses = [r.val_nll_se for r in runs if r.val_nll_se is not None]
    return {
        "experiment": exp,
        "switches": on_label(on, switches, design) if on is not None else "?",
        "params": params[0] if params else None,
        "n": len(runs),
        "runs": len(all_runs),
        "failed": [r for r in all_runs if r.status != "finished"],
        "pairs": None,     # the seeds its comparison with the reference paired on, if any
        "nll_mean": nll_mean,
        "nll_std": nll_std,
        "eval_se": mean_std(ses)[0] if ses else None,
        "bpb_mean": mean_std([r.val_bpb for r in runs])[0],
        "tokens": [r.tokens for r in runs],       # finished runs: the ones the numbers use
        "tps_mean": mean_std([r.tokens_per_s for r in runs])[0],
        "train_time": mean_std([r.train_time for r in runs if r.train_time is not None])[0],
        "eval_time": mean_std([r.eval_time for r in runs if r.eval_time is not None])[0],
        "wall_time": mean_std([r.wall_time for r in runs if r.wall_time is not None])[0],
        "stats": None,     # the family_stats entry of its comparison with the reference, if any
    }


def analyze(runs, design=None):
    """Everything the report shows, from the runs and the design (design.json, else inferred)."""
    if design is None:
        design = find_design(runs)
    groups = group_by_experiment(runs, [e["name"] for e in (design or {}).get("experiments", [])])
    if design is None:
        design = infer_design(groups)
    switches = design.get("switches") or []
    design_on = {e["name"]: e.get("on", []) for e in design.get("experiments", [])}
    kind, ref, notes = design["design"], design.get("reference", "baseline"), []
    rows = [summarize_experiment(e, rs, design_on_set(design, rs[0]) if rs else None, switches, kind)
            for e, rs in groups.items()]
    registry = registered_switches()
    cfg_on = lambda r: (None if any(k not in r.config for k in registry.values())
                        else {n for n, k in registry.items() if r.config[k] is True})
    wrong = [r.name for r in runs if r.experiment in design_on and cfg_on(r) is not None
             and cfg_on(r) != set(design_on[r.experiment]) & set(registry)]
    if wrong:
        notes.append(f"WARNING: the config of {_names(wrong)} has other switches on than its experiment's name "
                     f"says (its start event or results.json); its numbers count for the experiment of its folder.")
    finished = [r for r in runs if r.status == "finished"]   # failed runs are named, never averaged in
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    if kind == "factorial":
        names = [s["name"] for s in switches]
        cells_by_seed = factorial_cells(design, [(r, r.val_nll) for r in finished])
        samples, used, skipped = factorial_effects(cells_by_seed, names) if names else ({}, [], [])
        skipped = sorted(set(skipped) | (set(seeds) - set(cells_by_seed)))
        if skipped:
            notes.append(f"Seeds {', '.join(map(str, skipped))} lack a finished run in some of the {2 ** len(names)} "
                         f"cells and are left out of the effects.")
        higher = 2 ** len(names) - 1 - len(names) - math.comb(len(names), 2)
        if higher:
            notes.append(f"Interactions of three or more switches ({higher} of them) are neither estimated nor "
                         f"tested: the effects above are the {len(names)} main effects and the "
                         f"{math.comb(len(names), 2)} two-way interactions.")
        family, family_kind = add_power(family_stats(samples)), "effects"
        used_seeds = {e: used for e in samples}
    else:
        ref_runs = {r.seed: r.val_nll for r in finished if r.experiment == ref and r.seed is not None}
        samples, used_seeds = {}, {}
        if ref in groups:
            for e, rs in groups.items():
                if e != ref:
                    mine = {r.seed: r.val_nll for r in rs if r.status == "finished" and r.seed is not None}
                    used_seeds[e], samples[e] = paired_diff(mine, ref_runs)
        family, family_kind = add_power(family_stats(samples)), "comparisons"
        for row in rows:
            row["stats"] = family.get(row["experiment"])
            row["pairs"] = used_seeds.get(row["experiment"])
    return Analysis(design, groups, rows, family, family_kind, notes, seeds, used_seeds)

# -----------------------------------------------------------------------------
# the report's sentences

def _names(xs):
    return ", ".join(xs) if xs else "none"


def _fmt_range(values, digits=3):
    values = [v for v in values if v is not None]
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"


def _fmt_seeds(n):
    return f">{MAX_SEEDS:,}" if n is None or n > MAX_SEEDS else f"{n:,}"


def effect_word(name, st, a):
    """The verdict of one comparison/effect in words, for the table."""
    if st["significant"] is None:
        return st["reason"] if st["reason"] != "no spread between seeds: no test possible" else "no spread: no test"
    if not st["significant"]:
        if st["ci"][0] > 0 or st["ci"][1] < 0:   # p < 0.05 alone, but not at the corrected level
            return "not detected after Holm (CI alone excludes 0)"
        return "not detected"
    lower = st["mean"] < 0
    if a.family_kind == "effects":
        if " × " in name:
            return "synergy (<0)" if lower else "interference (>0)"
        return "lowers NLL" if lower else "raises NLL"
    if a.design["design"] == "leave-one-out":
        x = name.removeprefix("no_")
        return f"{x} hurts" if lower else f"{x} helps"
    return "better" if lower else "worse"


def design_line(a):
    d = a.design
    names = _names([s["name"] for s in d.get("switches", [])])
    ref = "" if d["design"] == "factorial" else f"; reference: {d.get('reference')}"
    runs = [r for rs in a.groups.values() for r in rs]
    done = sum(r.status == "finished" for r in runs)
    failed = "" if done == len(runs) else f"; {done} of {len(runs)} runs finished (the others: see the verdict)"
    return (f"Design: {d['design']} ({d.get('source', 'design.json')}); switches: {names}{ref}; "
            f"{len(a.groups)} experiments, {len(a.seeds)} seed(s) ({_seed_list(a.seeds)}), paired on seed{failed}.")


def _seed_list(seeds):
    """[1, 2, 3, 4] -> '1-4'; [1, 3] -> '1, 3'."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "none"


def failure_line(a):
    """The runs left out of every number, as results: 'rope: 1 of 4 seeds diverged at step 180 (seed 2)'.
    A divergence says the change was unstable in this setting; an unfinished run is only missing."""
    parts = []
    for row in a.rows:
        exp, n = row["experiment"], row["runs"]
        div = [r for r in row["failed"] if r.status == "diverged"]
        unf = [r for r in row["failed"] if r.status == "unfinished"]
        if len(div) == 1:
            parts.append(f"{exp}: 1 of {n} seeds {div[0].status_text} (seed {div[0].seed})")
        elif div:
            parts.append(f"{exp}: {len(div)} of {n} seeds diverged (" +
                         ", ".join(f"seed {r.seed} {r.status_text.removeprefix('diverged ')}" for r in div) + ")")
        if unf:
            parts.append(f"{exp}: {len(unf)} of {n} seeds unfinished, excluded (" +
                         ", ".join(f"seed {r.seed}, {r.status_text.removeprefix('unfinished (')[:-1]}" for r in unf)
                         + ")")
    if not parts:
        return ""
    return ("Failed runs, left out of every number (a comparison uses the seeds where both arms finished): "
            + "; ".join(parts) + ".")


def verdict_line(a):
    """One sentence: the corrected verdicts of the report's family."""
    fam = a.family
    if not fam:
        if a.family_kind == "comparisons":
            return f"Verdict: no {a.design.get('reference', 'baseline')} runs (the reference), so nothing could be compared."
        return "Verdict: no seed has every cell of the factorial, so no effect could be estimated."
    tested = [x for x, st in fam.items() if st["significant"] is not None]
    k = len(tested)
    head = (f"Verdict (two-sided paired t-test, Holm-corrected over {k} "
            f"{'effect' if a.family_kind == 'effects' else 'comparison'}{'s' if k != 1 else ''}, family-wise 5%): ")
    untested = {}
    for x, st in fam.items():
        if st["significant"] is None:
            untested.setdefault(st["reason"], []).append(x)
    tail = "".join(f"; {reason}: {_text_names(a, xs)}" for reason, xs in untested.items())
    if not tested:
        return "Verdict: " + tail[2:] + "."
    sig = lambda neg, xs=tested: [x for x in xs if fam[x]["significant"] and (fam[x]["mean"] < 0) == neg]
    nd = [x for x in tested if not fam[x]["significant"]]
    kind = a.design["design"]
    if a.family_kind == "effects":
        main = [x for x in tested if " × " not in x]
        inter = [x for x in tested if " × " in x]
        body = (f"main effects: lower NLL: {_names(sig(True, main))}; raise NLL: {_names(sig(False, main))}; "
                f"interactions: synergy (<0): {_names(sig(True, inter))}; interference (>0): "
                f"{_names(sig(False, inter))}; not detected: {_names(nd)}")
    elif kind == "leave-one-out":
        body = (f"helps inside the full recipe (removing it raises NLL): {_text_names(a, sig(False))}; "
                f"hurts (removing it lowers NLL): {_text_names(a, sig(True))}; not detected: {_text_names(a, nd)}")
    else:
        ref = a.design.get("reference", "baseline")
        body = f"better than {ref}: {_names(sig(True))}; worse: {_names(sig(False))}; not detected: {_names(nd)}"
    alone = [x for x in nd if fam[x]["ci"][0] > 0 or fam[x]["ci"][1] < 0]
    why = (f" ({_text_names(a, alone)}: the per-comparison 95% CI excludes 0, but with {k} tests the corrected "
           f"level is stricter, so not detected.)" if alone else "")
    failed = failure_line(a)
    return head + body + tail + "." + why + (" " + failed if failed else "")


def _text_names(a, xs):
    """Names for the report's sentences: leave-one-out comparisons by the switch they remove (no_rope ->
    rope) in every sentence, so that each list means the same thing."""
    if a.design["design"] == "leave-one-out":
        xs = [x.removeprefix("no_") for x in xs]
    return _names(xs)


def _fmt_int_range(lo, hi):
    return _fmt_seeds(lo) if lo == hi else f"{_fmt_seeds(lo)}-{_fmt_seeds(hi)}"


def power_line(a):
    """Whether "not detected" means "no effect" or "too few seeds": power says only how large an effect
    these seeds would catch (with ranges, as the sd of a few seeds is itself uncertain); a claim of no effect
    larger than TARGET comes from the interval alone (the whole family-level interval inside +-TARGET)."""
    fam = a.family
    nd = [x for x, st in fam.items() if st["significant"] is False]
    small = [x for x in nd if fam[x]["within_target"]]
    unresolved = [x for x in nd if not fam[x]["within_target"]]
    untested = [x for x, st in fam.items() if st["significant"] is None]
    parts = []
    if small:
        parts.append(f"No effect larger than {TARGET} nats ({_text_names(a, small)}): the whole interval at the "
                     f"verdicts' family-wise level (Bonferroni, 1 - 0.05/k) lies inside ±{TARGET} nats; this comes "
                     f"from the interval, not from power.")
    power_of = unresolved or [x for x, st in fam.items() if st["significant"]]
    if power_of:
        sts = [fam[x] for x in power_of]
        ns = sorted({st["n"] for st in sts})
        seeds = "/".join(map(str, ns))
        mde = _fmt_range([st["mde"] for st in sts])
        need = [st["seeds_for_target"] for st in sts]
        plausible_mde = _fmt_range([min(st["mde_range"][0] for st in sts), max(st["mde_range"][1] for st in sts)])
        plausible_need = _fmt_int_range(min(st["seeds_range"][0] for st in sts), max(st["seeds_range"][1] for st in sts))
        factors = "; ".join(f"with {n} seeds {sd_ratio_interval(n - 1)[0]:.2f}-{sd_ratio_interval(n - 1)[1]:.2f}x"
                            for n in ns)
        what = (f"with {seeds} seeds and the observed noise (sd {_fmt_range([st['sd'] for st in sts], 4)} nats) these "
                f"tests find |effect| >= {mde} nats with 80% power (exact, noncentral t, corrected level), and "
                f"{TARGET} nats would need {_fmt_int_range(min(need), max(need))} seeds. But the sd of so few seeds "
                f"is itself uncertain (95% interval of the true sd: {factors} the observed), so that effect size "
                f"is plausibly {plausible_mde} nats and the seeds needed {plausible_need}.")
        if unresolved:
            parts.append(f"Not detected ({_text_names(a, unresolved)}) does not mean no effect: {what} "
                         f"Too few seeds, not evidence of no effect.")
        else:
            parts.append(f"Power: {what}")
    spread = [x for x in untested if fam[x]["reason"] == "no spread between seeds: no test possible"]
    one = [x for x in untested if fam[x]["n"] == 1]
    unpaired = [x for x in untested if fam[x]["n"] == 0]
    if one:
        parts.append(f"No test possible for {_text_names(a, one)}: one paired seed; a paired t-test needs at "
                     f"least 2 (ablate.py --seeds 3 or more for a usable one).")
    if spread:
        parts.append(f"No test possible for {_text_names(a, spread)}: the paired difference is the same on every "
                     f"seed (no spread), which more seeds will not change if the two arms train identically; "
                     f"check that the switch changes the run.")
    if unpaired:
        parts.append(f"No test possible for {_text_names(a, unpaired)}: no seed where both it and the reference "
                     f"finished.")
    return " ".join(parts)


def tokens_line(a):
    """Tokens per arm, and a loud warning when the arms did not train on the same number of tokens."""
    per_exp = {row["experiment"]: sorted({t for t in row["tokens"] if t is not None}) for row in a.rows}
    all_tokens = sorted({t for ts in per_exp.values() for t in ts})
    if not all_tokens:
        return "Tokens per run: unknown (no finished run records its tokens).", False
    if len(all_tokens) == 1:
        failed = any(row["failed"] for row in a.rows)
        return (f"Tokens per run: {all_tokens[0]:,} in every " + ("finished run (the runs the numbers use)"
                if failed else "run") + " (equal budgets).", False)
    detail = "; ".join(f"{e} {fmt_tokens(ts)}" for e, ts in per_exp.items() if ts)
    return (f"WARNING: the runs trained on DIFFERENT token counts ({all_tokens[0]:,} to {all_tokens[-1]:,}): "
            f"the comparisons mix the change with the budget. Per experiment: {detail}."), True


def timing_line(a):
    """Training time vs evaluation time, and what tokens/s means."""
    runs = [r for rs in a.groups.values() for r in rs if r.status == "finished"]
    tt = [r.train_time for r in runs if r.train_time is not None]
    et = [r.eval_time for r in runs if r.eval_time is not None]
    wt = [r.wall_time for r in runs if r.wall_time is not None]
    if tt and et:
        share = sum(et) / max(1e-9, sum(tt) + sum(et))
        line = (f"Time per run (mean): training {fmt_time(np.mean(tt))}, evaluation {fmt_time(np.mean(et))} "
                f"({share:.0%} of the two)" + (f", wall {fmt_time(np.mean(wt))}" if wt else "") +
                "; tokens/s = training throughput (tokens / training time, evaluation excluded).")
    else:
        line = ("Time per run (mean): " + (f"wall {fmt_time(np.mean(wt))}" if wt else "unknown") +
                "; training and evaluation time were not recorded (older train.py), so tokens/s may "
                "include evaluation.")
    return line


def method_line(a):
    kind = a.design["design"]
    ref = a.design.get("reference", "baseline")
    kinds = {r.val_nll_se_by for runs in a.groups.values() for r in runs if r.val_nll_se is not None}
    by = {"document": "by document (the windows of one document share its noise: cluster-robust)",
          "window": "over validation windows as if independent (runs older than the by-document estimate; it "
                    "understates the noise of which documents were chosen)"}
    noise = ("NLL noise: ± = std over seeds; eval se = standard error of the final val NLL, "
             + "; in some runs ".join(by[k] for k in sorted(kinds)) + " (mean over seeds).")
    test = ("95% CI from Student t (df = n-1, per comparison, not corrected); p = two-sided t-test; verdict = "
            "Holm-adjusted p <= 0.05 over the k tests; MDE = the |Δ| the t-test at level 0.05/k detects with 80% "
            "power (exact: noncentral t) at the observed sd of the per-seed values, and seeds for "
            f"{TARGET} = the fewest seeds whose MDE is <= {TARGET} nats; in brackets both at the ends of the "
            "95% chi-square interval of the true sd.")
    if kind == "factorial":
        what = ("Factorial effects per seed with ±1 coding: main effect A = mean(cells A on) - mean(cells A off); "
                "interaction A × B = mean(cells where A, B agree) - mean(cells where they differ) = half the "
                "change of A's effect when B turns on; A × B < 0: together they lower NLL more than the sum of "
                "their separate gains (by 2|A × B|).")
    elif kind == "leave-one-out":
        what = ("Δ = val NLL of (all without x) - all, paired on seed: Δ > 0 means x helps inside the full "
                "recipe, Δ < 0 that it hurts.")
    else:
        what = f"Δ = val NLL of the experiment - {ref}, paired on seed: Δ < 0 is better."
    return " ".join([what, test, noise])

# -----------------------------------------------------------------------------
# formatting

def fmt_params(n):
    """Millions with three decimals: RoPE's missing position table or QK-norm's gains stay visible."""
    return "?" if n is None else f"{n / 1e6:.3f}M"


def fmt_tokens(ts):
    ts = sorted({t for t in ts if t is not None})
    if not ts:
        return "?"
    f = lambda t: f"{t / 1e9:.3g}B" if t >= 1e9 else f"{t / 1e6:.3g}M" if t >= 1e6 else f"{t:,}"
    return f(ts[0]) if len(ts) == 1 else f"{f(ts[0])}-{f(ts[-1])} (!)"


def fmt_time(s):
    if s is None or not is_num(s):
        return "?"
    return f"{s:.1f}s" if s < 10 else f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def fmt_mean_std(mean, std, n, digits=4):
    if not is_num(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} (n={n})"


def fmt_p(p):
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def signed(x, digits=4):
    return f"{round(x, digits) + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def pairs_cell(name, a):
    """How many seeds a comparison (or effect) used, and which, when they are not all the design's seeds."""
    used = a.used_seeds.get(name, [])
    return str(len(used)) if list(used) == list(a.seeds) else f"{len(used)} (seeds {_seed_list(used)})"


def stats_cells(name, st, a):
    """[pairs, mean, 95% CI, p, p (Holm), verdict, MDE, seeds for 0.02] of one comparison or effect."""
    if st is None:
        return ["—"] * 8
    if st["n"] == 0:
        return [pairs_cell(name, a), "n/a", "n/a", "n/a", "n/a", "no paired seed", "n/a", "n/a"]
    mean = signed(st["mean"])
    ci = f"[{signed(st['ci'][0])}, {signed(st['ci'][1])}]" if st["ci"] else "n/a"
    mde, need = "n/a", "n/a"
    if st["mde"] is not None:   # the number at the observed sd, then its range over the sd's 95% interval
        mde = f"{st['mde']:.3f} ({st['mde_range'][0]:.3f}-{st['mde_range'][1]:.3f})"
        need = f"{_fmt_seeds(st['seeds_for_target'])} ({_fmt_int_range(*st['seeds_range'])})"
    return [pairs_cell(name, a), mean, ci, fmt_p(st["p"]), fmt_p(st["p_holm"]), effect_word(name, st, a), mde, need]


def run_cells(row):
    """[experiment, switches on, params, seeds, tokens, val NLL ± sd, eval se, val bpb, tokens/s, time]."""
    bpb = f"{row['bpb_mean']:.4f}" if is_num(row["bpb_mean"]) else "n/a"
    tps = f"{row['tps_mean']:,.0f}" if is_num(row["tps_mean"]) else "n/a"
    se = f"{row['eval_se']:.4f}" if row["eval_se"] is not None else "n/a"
    if is_num(row["train_time"]) and is_num(row["eval_time"]):
        time = f"{fmt_time(row['train_time'])} / {fmt_time(row['eval_time'])}"
    else:
        time = f"? / ? ({fmt_time(row['wall_time'])} wall)" if is_num(row["wall_time"]) else "?"
    seeds = str(row["n"])
    if row["failed"]:   # e.g. "3 of 4 (1 diverged)"
        div = sum(r.status == "diverged" for r in row["failed"])
        what = [f"{div} diverged"] * bool(div) + [f"{len(row['failed']) - div} unfinished"] * (len(row["failed"]) > div)
        seeds = f"{row['n']} of {row['runs']} ({', '.join(what)})"
    return [row["experiment"], row["switches"], fmt_params(row["params"]), seeds, fmt_tokens(row["tokens"]),
            fmt_mean_std(row["nll_mean"], row["nll_std"], row["n"]), se, bpb, tps, time]


RUN_HEADER = ["experiment", "switches on", "params", "seeds", "tokens", "val NLL (mean ± std)", "eval se",
              "val bpb", "tokens/s (train)", "time train / eval"]
STATS_HEADER = ["seeds", "mean", "95% CI (per comparison)", "p", "p (Holm)", "verdict", "MDE 80% (sd range)",
                f"seeds for {TARGET} (sd range)"]


def comparison_header(a):
    if a.family_kind == "effects":
        return ["effect"] + STATS_HEADER
    ref = a.design.get("reference", "baseline")
    return ["experiment", "pairs", f"Δ vs {ref}"] + STATS_HEADER[2:]


def comparison_rows(a):
    return [[name] + stats_cells(name, st, a) for name, st in a.family.items()]


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(a):
    """One row per experiment (with its comparison against the reference); factorial: plus an effects table."""
    if a.family_kind == "effects":
        return (md_table(RUN_HEADER, [run_cells(r) for r in a.rows]) + "\n\nEffects (per-seed contrasts, "
                "tested over seeds):\n\n" + md_table(comparison_header(a), comparison_rows(a)))
    header = RUN_HEADER + comparison_header(a)[1:]
    return md_table(header, [run_cells(r) + stats_cells(r["experiment"], r["stats"], a) for r in a.rows])


def clean_text(s):
    """Replace control/format characters by spaces and collapse whitespace to one line."""
    s = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(s))
    return " ".join(s.split())

# -----------------------------------------------------------------------------
# plotting

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def colour(i, n):
    if n <= 10:
        return f"C{i % 10}"
    import matplotlib
    return matplotlib.colormaps["tab20"](i % 20)


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


def zoom_ylim(ax, curves, late=0.1):
    """Zoom y on the part that matters: the values after the first `late` fraction of the steps."""
    tail = []
    for steps, vals in curves:
        if len(steps):
            tail.append(vals[steps >= late * steps.max()])
    tail = np.concatenate(tail) if tail else np.array([])
    tail = tail[np.isfinite(tail)]
    if len(tail):
        lo, hi = tail.min(), tail.max()
        pad = 0.05 * (hi - lo) if hi > lo else 0.1
        ax.set_ylim(lo - pad, hi + pad)


def style_axes(ax, beta):
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats/token)")
    smooth = "auto" if beta is None else f"{beta:g}"
    ax.set_title(f"lines: train NLL (EMA, beta={smooth});  markers: val NLL", fontsize=9)
    ax.grid(alpha=0.3)


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


def plot_experiments(ax, groups, beta, late=0.5, legend_max=8):
    """Report mode: seeds of one experiment faint in one colour, the mean over its finished seeds bold, a
    failed seed dashed. The axes show the last (1 - late) of training, where the arms separate, with y fitted
    to it (the first steps, up near ln(vocab), would squeeze the end into a few pixels)."""
    curves, top = [], 0
    for i, (exp, runs) in enumerate(groups.items()):
        c = colour(i, len(groups))
        done = [r for r in runs if r.status == "finished"]
        for run in runs:
            steps, _, smooth = train_curve(run, beta)
            vs, vn = val_curve(run)
            ls = "-" if run.status == "finished" else "--"
            ax.plot(steps, smooth, color=c, alpha=0.3, lw=0.7, ls=ls)
            ax.plot(vs, vn, color=c, alpha=0.3, lw=0.5, marker="o", ms=2.5, ls=ls)
            top = max([top] + [r["step"] for r in run.train + run.evals])
        ms, mt = mean_train_curve(done, beta)
        vs, vn = mean_val_curve(done)
        ax.plot(ms, mt, color=c, lw=2.0, label=f"{exp} (n={len(done)})" if len(done) == len(runs) else
                f"{exp} ({len(done)} of {len(runs)} finished)")
        ax.plot(vs, vn, color=c, lw=1.0, marker="o", ms=5, markeredgecolor="black", markeredgewidth=0.5)
        curves += [(ms, mt), (vs, vn)]
    if top:
        ax.set_xlim(late * top, top * 1.01)
    zoom_ylim(ax, curves, late)
    style_axes(ax, beta)
    smooth = "auto" if beta is None else f"{beta:g}"
    ax.set_title(f"NLL vs step, last {1 - late:.0%} of training; lines: train NLL (EMA, beta={smooth}), "
                 f"markers: val NLL; bold: mean over finished seeds", fontsize=7)
    ax.xaxis.label.set_size(7)
    ax.yaxis.label.set_size(7)
    ax.tick_params(labelsize=6.5)
    if 0 < len(groups) <= legend_max:   # on the crowded PDF page a long legend would cover the curves
        ax.legend(fontsize=5.5 if len(groups) <= 8 else 5, ncol=4, loc="upper right")
    elif groups:
        ax.text(0.99, 0.97, "(legend: report.png)", ha="right", va="top", transform=ax.transAxes, fontsize=6)


def curve_samples(a, step_values):
    """The report's family at one step: {comparison or effect: per-seed values} from step_values
    [(run, val NLL at that step)], on the seeds the final comparison used (finished runs only)."""
    if a.family_kind == "effects":
        names = [s["name"] for s in a.design.get("switches", [])]
        effects, used, _ = factorial_effects(factorial_cells(a.design, step_values), names)
        return {e: vals for e, vals in effects.items() if used}
    ref = a.design.get("reference", "baseline")
    by = {}
    for run, v in step_values:
        by.setdefault(run.experiment, {})[run.seed] = v
    out = {}
    for e, seeds in a.used_seeds.items():
        pairs = [by.get(e, {}).get(k, math.nan) - by.get(ref, {}).get(k, math.nan) for k in seeds]
        if seeds and all(map(math.isfinite, pairs)):
            out[e] = pairs
    return out


def delta_curves(a):
    """{comparison or effect: (steps, mean, ci_lo, ci_hi)}: the paired difference (or factorial effect) of
    val NLL at each evaluation step that every seed it uses has, mean over seeds and pointwise 95% t interval
    (None-free: the interval is nan with one seed)."""
    runs = [r for rs in a.groups.values() for r in rs if r.status == "finished"]
    vals = [(r, dict(zip(*val_curve(r)))) for r in runs]
    steps = sorted({s for _, d in vals for s in d})
    out = {}
    for s in steps:
        for name, v in curve_samples(a, [(r, d[s]) for r, d in vals if s in d]).items():
            if len(v) != len(a.used_seeds.get(name, [])):
                continue   # a seed lacks this step: a mean over fewer seeds would jump
            mean, sd = mean_std(v)
            half = float(t_quantile(0.975, len(v) - 1)) * sd / math.sqrt(len(v)) if sd is not None else math.nan
            out.setdefault(name, []).append((s, mean, mean - half, mean + half))
    return {name: tuple(np.array(col) for col in zip(*rows)) for name, rows in out.items()}


def _family_colours(a):
    """One colour per comparison, the same as its experiment's NLL curves; effects: by position."""
    if a.family_kind == "effects":
        return {name: colour(i, len(a.family)) for i, name in enumerate(a.family)}
    exps = list(a.groups)
    return {name: colour(exps.index(name), len(exps)) if name in exps else "C7" for name in a.family}


def plot_forest(ax, a):
    """The answer: each comparison's (or effect's) paired mean with its 95% CI (per comparison), the zero
    line, the Holm verdict (filled marker = detected) and the MDE at 80% power (grey band, +-MDE)."""
    names = list(a.family)
    colours = _family_colours(a)
    for y, name in enumerate(names):
        st = a.family[name]
        if st["mde"] is not None:
            ax.fill_betweenx([y - 0.3, y + 0.3], -st["mde"], st["mde"], color="0.88", lw=0, zorder=0)
        if st["ci"] is not None:
            ax.plot(st["ci"], [y, y], color=colours[name], lw=1.6, zorder=2)
        if is_num(st["mean"]):
            filled = bool(st["significant"])
            ax.plot([st["mean"]], [y], marker="o", ms=5, color=colours[name], zorder=3,
                    markerfacecolor=colours[name] if filled else "white", markeredgewidth=1.2)
        if st["significant"] is None:
            ax.annotate(effect_word(name, st, a), (1, y), xycoords=("axes fraction", "data"), xytext=(-2, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=6, color="0.4")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(names)), [(f"{x} ({a.family[x]['n']})") for x in names], fontsize=6.5)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ref = a.design.get("reference", "baseline")
    ax.set_xlabel("effect on val NLL, nats (per-seed contrast)" if a.family_kind == "effects" else
                  f"Δ val NLL vs {ref}, nats (paired; < 0 better)", fontsize=7)
    ax.set_title("mean and 95% CI (seeds); filled: detected (Holm, 5%);\ngrey band: ±MDE at 80% power",
                 fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.grid(axis="x", alpha=0.3)
    if not names:
        ax.text(0.5, 0.5, "no comparison possible", ha="center", va="center", transform=ax.transAxes, fontsize=7)


def plot_delta_vs_step(ax, a):
    """When an effect appears and whether it still grows: the paired difference of val NLL at each evaluation
    (mean over the seeds of the final comparison, band: pointwise 95% CI)."""
    curves = delta_curves(a)
    colours = _family_colours(a)
    for name, (steps, mean, lo, hi) in curves.items():
        ax.plot(steps, mean, color=colours[name], lw=1.4, marker="o", ms=2.5, label=name)
        ax.fill_between(steps, lo, hi, color=colours[name], alpha=0.15, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ref = a.design.get("reference", "baseline")
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("effect (nats)" if a.family_kind == "effects" else f"Δ val NLL vs {ref}", fontsize=7)
    ax.set_title("paired Δ of val NLL at each evaluation: mean over seeds,\nband: 95% CI (pointwise)"
                 if a.family_kind != "effects" else "factorial effects of val NLL at each evaluation:\n"
                 "mean over seeds, band: 95% CI (pointwise)", fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.grid(alpha=0.3)
    if curves:
        finite = np.concatenate([np.r_[m[len(m) // 4:], l[len(l) // 4:], h[len(h) // 4:]]
                                 for _, m, l, h in curves.values()])
        finite = finite[np.isfinite(finite)]
        if len(finite):   # the first evaluations (near the initial loss) would hide the end: fit y to the rest
            lo, hi = min(finite.min(), 0.0), max(finite.max(), 0.0)
            pad = 0.08 * (hi - lo) if hi > lo else 0.01
            ax.set_ylim(lo - pad, hi + pad)
        if len(curves) <= 10:
            ax.legend(fontsize=5.5, ncol=2)
    else:
        ax.text(0.5, 0.5, "no per-step validation curves in the input\n(final numbers only): nothing to draw",
                ha="center", va="center", transform=ax.transAxes, fontsize=7, color="#c00000")


def plot_report_panels(fig, a, beta, rects, legend_max=8):
    """The report's three panels in rects (forest, Δ vs step, NLL vs step); returns the axes."""
    axes = [fig.add_axes(r) for r in rects]
    plot_forest(axes[0], a)
    plot_delta_vs_step(axes[1], a)
    if any(r.train or r.evals for rs in a.groups.values() for r in rs):
        plot_experiments(axes[2], a.groups, beta, legend_max=legend_max)
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, "NLL vs step: no per-step curves in the input (final numbers only)",
                     ha="center", va="center", transform=axes[2].transAxes, fontsize=7, color="#c00000")
    return axes

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


def report_text(a):
    """The report's sentences in order: [(text, kind)], kind in bold / warn / normal / small."""
    tokens, unequal = tokens_line(a)
    lines = [(verdict_line(a), "bold")]
    power = power_line(a)
    if power:
        lines.append((power, "normal"))
    lines.append((tokens, "warn" if unequal else "normal"))
    used = [r for rs in a.groups.values() for r in rs if r.status == "finished"]
    lines.append((timing_line(a) + " " + matching_note(used), "normal"))
    lines += [(n, "warn" if n.startswith("WARNING") else "normal") for n in a.notes]
    lines.append((method_line(a), "small"))
    return lines


def draw_table(fig, rect, header, cells, size):
    """A table filling rect; column widths follow their longest text, and the font shrinks when the
    longest texts would not fit across the page."""
    lens = [max([len(h) * 1.1] + [len(row[i]) for row in cells]) + 2 for i, h in enumerate(header)]
    width_pt = rect[2] * A4_PORTRAIT[0] * 72
    size = min(size, width_pt / (0.62 * sum(lens)))
    ax = fig.add_axes(rect)
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=header, colWidths=[x / sum(lens) for x in lens], cellLoc="center",
                     bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    for (r, _), cell in table.get_celld().items():
        cell.set_linewidth(0.4)
        cell.get_text().set_parse_math(False)
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    return ax


def build_report_figure(a, samples, sample_desc, beta, title):
    """The one-page A4 report: design, plot, run table, comparison/effect table, verdict and notes,
    samples (as many as fit). Returns the figure."""
    plt = pyplot()
    fig = plt.figure(figsize=A4_PORTRAIT)
    page_pt = A4_PORTRAIT[1] * 72

    def line_h(size):  # height of one text line, in figure fraction
        return size * 1.3 / page_pt

    def text(y, s, size, width, **kw):
        lines = textwrap.wrap(s, width) or [""]
        fig.text(0.04, y, "\n".join(lines), va="top", fontsize=size, linespacing=1.3, parse_math=False, **kw)
        return y - line_h(size) * len(lines)

    n_rows = len(a.rows) + len(a.family) + 2
    dense = n_rows > 16
    row_h, tsize = (0.0118, 5.5) if dense else (0.017, 6.5)
    fig.text(0.5, 0.978, textwrap.shorten(title, 80), ha="center", va="top", fontsize=13,
             weight="bold", parse_math=False)
    y = text(0.955, design_line(a), 7.5, 130)
    top_h, nll_h = (0.12, 0.065) if dense else (0.15, 0.10)
    y -= 0.03                       # room for the panel titles
    nll_y = y - top_h - 0.055 - nll_h
    plot_report_panels(fig, a, beta, [[0.14, y - top_h, 0.33, top_h], [0.58, y - top_h, 0.38, top_h],
                                      [0.10, nll_y, 0.86, nll_h]])
    y = nll_y - 0.04                # room for the x label

    h = row_h * (len(a.rows) + 1)
    draw_table(fig, [0.03, y - h, 0.94, h], RUN_HEADER, [run_cells(r) for r in a.rows], tsize)
    y -= h + 0.008
    if a.family:
        h = row_h * (len(a.family) + 1)
        draw_table(fig, [0.03, y - h, 0.94, h], comparison_header(a), comparison_rows(a), tsize)
        y -= h + 0.008

    for s, kind in report_text(a):
        if kind == "small":
            size, width = (6, 160) if dense else (6.5, 150)
        else:
            size, width = (7, 132) if dense else (8, 125)
        kw = {"weight": "bold"} if kind in ("bold", "warn") else {}
        if kind == "warn":
            kw["color"] = "#c00000"
        y = text(y, s, size, width, **kw) - 0.004

    y -= 0.002
    fig.text(0.04, y, sample_desc, va="top", fontsize=7.5, weight="bold", parse_math=False)
    y -= line_h(7.5) + 0.003
    size, width = 6 if dense else 6.5, 146 if dense else 136  # monospace: ~0.6 em per char
    if samples:
        label_w = max(len(e) for e in samples) + 2
        fit = int((y - 0.012) / line_h(size))          # text lines that still fit on the page
        shown = list(samples.items())
        if fit < len(shown):
            shown = shown[:max(0, fit - 1)]
        max_lines = max(1, min(4, fit // max(1, len(samples))))
        for exp, (_, s) in shown:
            lines = textwrap.wrap(_fit_font(s), width, initial_indent=f"{exp}:".ljust(label_w),
                                  subsequent_indent=" " * label_w) or [exp]
            if len(lines) > max_lines:
                lines = lines[:max_lines]
                lines[-1] = lines[-1][:width - 3] + "..."
            fig.text(0.04, y, "\n".join(lines), va="top", fontsize=size, family="monospace",
                     linespacing=1.3, parse_math=False)
            y -= line_h(size) * len(lines)
        if len(shown) < len(samples):
            fig.text(0.04, y, f"({len(samples) - len(shown)} more samples in report.md)", va="top", fontsize=size,
                     family="monospace", parse_math=False)
    return fig


def count_pdf_pages(path):
    """Number of page objects in a PDF written by matplotlib (its page dicts are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", Path(path).read_bytes()))


def _time_budget(config):
    """The config's max_time as text ("4h", or "90 s" for a number), or None when not set."""
    t = config.get("max_time")
    if isinstance(t, str) and t.strip():
        return t.strip()
    return f"{t:g} s" if is_num(t) and t > 0 else None


def matching_note(runs):
    """Say whether the runs were time-matched (config max_time set) or step-matched."""
    budgets = [_time_budget(r.config) for r in runs]
    timed = sorted({b for b in budgets if b is not None})
    if timed and None not in budgets:
        stopped = sum((r.results or {}).get("stopped_by") == "max_time" for r in runs)
        return (f"Runs were time-matched: max_time = {', '.join(timed)}; {stopped}/{len(runs)} stopped on time, "
                f"so step counts differ between runs.")
    if not any(r.config for r in runs):
        steps = sorted({r.steps for r in runs})
        return (f"Run settings not in the input (final numbers only); steps per run: "
                f"{', '.join(f'{s:,}' for s in steps)}.")
    if not timed:
        iters = sorted({r.config.get("max_iters") for r in runs}, key=str)
        return f"Runs were step-matched: max_iters = {', '.join(map(str, iters))} (max_time not set)."
    return "Runs were mixed: some time-matched (max_time set), some step-matched; compare with care."


def write_report_md(path, png_name, a, samples, sample_desc, title):
    figure = ("Forest plot: each comparison's paired difference with its 95% CI, Holm verdict and MDE; "
              "paired difference of val NLL vs step; NLL vs step")
    parts = [f"# {title}", "", design_line(a), "", f"![{figure}]({png_name})", "", markdown_tables(a), ""]
    for s, kind in report_text(a):
        parts += [f"**{s}**" if kind in ("bold", "warn") else s, ""]
    parts += ["## Samples", "", sample_desc, ""]
    for exp, (run_name, text) in samples.items():
        parts += [f"**{exp}** ({run_name}):", "", "~~~text", text.replace("~~~", "~ ~ ~"), "~~~", ""]
    if not samples:
        parts += ["(samples skipped)", ""]
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def write_report(runs, pdf_path, beta, samples, sample_desc, design=None):
    """Write report.pdf (one page), report.md and report.png next to each other; return (analysis, paths)."""
    pdf_path = Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    md_path, png_path = pdf_path.with_suffix(".md"), pdf_path.with_suffix(".png")
    a = analyze(runs, design)
    tokens, unequal = tokens_line(a)
    if unequal:
        print(f"plot.py: {tokens}", file=sys.stderr)
    title = f"gpt-ablate report: {pdf_path.resolve().parent.name}"

    plt = pyplot()
    fig = build_report_figure(a, samples, sample_desc, beta, title)
    fig.savefig(pdf_path)
    plt.close(fig)
    fig = plt.figure(figsize=(10, 9))
    plot_report_panels(fig, a, beta, [[0.13, 0.56, 0.33, 0.37], [0.57, 0.56, 0.40, 0.37], [0.07, 0.06, 0.90, 0.40]],
                       legend_max=32)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    write_report_md(md_path, png_path.name, a, samples, sample_desc, title)

    pages = count_pdf_pages(pdf_path)
    if pages != 1:
        raise RuntimeError(f"{pdf_path} has {pages} pages, expected exactly 1")
    return a, (pdf_path, md_path, png_path)
