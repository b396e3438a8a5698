"""Tests of the study report (plot.py --study, issue 16's reading side) on synthetic study folders written
here in ablate.py's layout (study.json, choice.json, results.json and log.txt files; no training):
the compute multiplier (a known law and a variant worth exactly 2x compute, fitted and interpolated; the
extrapolation warning; the bootstrap interval), the sensitivity figure (chosen point, diverged values,
log axis), the edge-of-grid warning, the per-size verdicts, failed runs named, the FLOPs fallback against
train.flops_per_token, and the command line. Run: pytest -q test_study_report.py"""

import json
import shutil
import sys
import math
from pathlib import Path

import numpy as np
import pytest

import plot
import train

C0 = 1e12        # FLOPs of the smallest synthetic size
TOKENS = 100_000


def law(c):
    """The synthetic baseline's loss-vs-compute law: L = 2 (C/C0)^-0.25 + 1.5."""
    return 2.0 * (c / C0) ** -0.25 + 1.5


def log_law(c):
    """A law that is a straight line in log C, where piecewise-linear interpolation in log C is exact."""
    return 5.0 - 0.1 * math.log(c / C0)


def write_run(folder, nll=None, flops=None, eval_set="val", state="finished", config=None):
    """One run folder as train.py writes it: log.txt (start, train, eval, end or nan) and, when finished,
    results.json with val_nll, tokens, params, config, flops_per_token and train_flops."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"n_layer": 2, "n_embd": 64, "block_size": 32, "use_rope": False, **(config or {})}
    params = {"total": 600_000, "non_embedding": 100_000}
    events = [{"event": "start", "step": 0, "config": cfg, "params": params},
              {"event": "train", "step": 10, "tokens": TOKENS, "train_nll": 5.0}]
    if state == "diverged":
        events.append({"event": "nan", "step": 10, "message": "train loss is nan at step 10"})
    else:
        events.append({"event": "eval", "step": 10, "tokens": TOKENS, "val_nll": nll})
    if state == "finished":
        events.append({"event": "end", "step": 10, "val_nll": nll})
    (folder / "log.txt").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    if state == "finished":
        res = {"val_nll": nll, "val_nll_se": 0.001, "steps": 10, "tokens": TOKENS, "params": params,
               "config": cfg, "eval_set": eval_set}
        if flops is not None:
            res.update(flops_per_token=flops / TOKENS, train_flops=flops)
        (folder / "results.json").write_text(json.dumps(res))


def design(names=("baseline", "rope")):
    return {"design": "one-at-a-time", "reference": "baseline",
            "switches": [{"name": n, "key": f"use_{n}", "on": True, "off": False} for n in names if n != "baseline"],
            "experiments": [{"name": n, "on": [] if n == "baseline" else [n], "args": []} for n in names]}


def make_study(root, sizes, seeds=3, tune=None, names=("baseline", "rope")):
    """sizes: [(name, {experiment: ([per-seed NLL], FLOPs per run)})]. Writes study.json and the comparison
    runs OUT/<size>/<experiment>/seed<k>/ (k = 1..)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec = {"design": design(names), "seeds": seeds, "tune": tune,
            "sizes": [{"name": n, "args": dict(kv.split("=") for kv in n.split("+")) if n else {}} for n, _ in sizes],
            "budget": {"tokens": TOKENS}, "train_args": ["config/tiny.py"]}
    (root / "study.json").write_text(json.dumps(spec))
    for name, arms in sizes:
        for exp, (nlls, flops) in arms.items():
            for k, nll in enumerate(nlls, 1):
                write_run(root / name / exp / f"seed{k}", nll, flops)
    return root


NOISE = (-0.004, 0.0, 0.004)   # per-seed offsets with mean 0: each arm's mean is its law's value exactly


def two_x_study(root, law_fn, n_sizes):
    """A baseline on law_fn at sizes C0 * 4^i and a variant that reaches, at compute C, the baseline's loss
    at 2C: its compute multiplier is 2.0 at every size."""
    sizes = []
    for i in range(n_sizes):
        c = C0 * 4 ** i
        sizes.append((f"n_layer={i + 1}", {"baseline": ([law_fn(c) + e for e in NOISE], c),
                                          "rope": ([law_fn(2 * c) + e for e in NOISE], c)}))
    return make_study(root, sizes)

# -----------------------------------------------------------------------------
# the compute multiplier


def test_multiplier_is_2_for_a_variant_worth_2x_compute_fitted_law(tmp_path):
    study = plot.load_study(two_x_study(tmp_path, law, 5))
    method, ms, notes = plot.compute_multipliers(study, n_boot=400)
    assert "fitted" in method and "b = 0.25" in method and "c = 1.5000" in method
    assert [m.size for m in ms] == [f"n_layer={i}" for i in range(1, 6)]
    for m in ms:
        assert m.value == pytest.approx(2.0, rel=1e-3), m       # tolerance: 0.1%
        assert m.interval[0] <= m.value <= m.interval[1]
        assert m.base_flops == pytest.approx(2 * m.flops, rel=1e-3)
    # at the largest size the variant's loss is below every loss the baseline reached: extrapolated
    assert [m.warning is not None for m in ms] == [False] * 4 + [True]
    assert "extrapolated" in ms[-1].warning and "below the lowest" in ms[-1].warning


def test_multiplier_is_2_by_interpolation_with_three_sizes(tmp_path):
    study = plot.load_study(two_x_study(tmp_path, log_law, 3))
    method, ms, notes = plot.compute_multipliers(study, n_boot=400)
    assert "piecewise linear in log C" in method
    assert [m.value for m in ms] == pytest.approx([2.0, 2.0, 2.0], rel=1e-9)
    assert [m.warning is not None for m in ms] == [False, False, True]


def test_multiplier_below_one_and_extrapolation_above_the_range(tmp_path):
    """A variant worth half the compute: 0.5; at the smallest size its loss is above every baseline loss."""
    sizes = [(f"n_layer={i + 1}", {"baseline": ([log_law(C0 * 4 ** i) + e for e in NOISE], C0 * 4 ** i),
                                   "rope": ([log_law(C0 * 4 ** i / 2) + e for e in NOISE], C0 * 4 ** i)})
             for i in range(3)]
    _, ms, _ = plot.compute_multipliers(plot.load_study(make_study(tmp_path, sizes)), n_boot=200)
    assert [m.value for m in ms] == pytest.approx([0.5] * 3, rel=1e-9)
    assert "above the highest" in ms[0].warning and ms[1].warning is None and ms[2].warning is None


def test_bootstrap_interval_comes_from_the_seeds(tmp_path):
    """Noise between seeds gives an interval around the estimate; seeds that agree give none (a point)."""
    rng = np.random.default_rng(1)
    sizes = []
    for i in range(3):
        c = C0 * 4 ** i
        base = [log_law(c) + x for x in rng.normal(0, 0.01, 4)]
        sizes.append((f"n_layer={i + 1}", {"baseline": (base, c), "rope": ([log_law(2 * c) + x for x in
                                                                           rng.normal(0, 0.01, 4)], c)}))
    _, ms, _ = plot.compute_multipliers(plot.load_study(make_study(tmp_path / "noisy", sizes, seeds=4)), n_boot=500)
    m = ms[1]
    assert m.interval[0] < m.value < m.interval[1] and m.interval[1] / m.interval[0] > 1.05
    assert m.resamples == 500
    flat = [(n, {e: ([v[0][0]] * 3, v[1]) for e, v in arms.items()}) for n, arms in sizes]
    _, ms, _ = plot.compute_multipliers(plot.load_study(make_study(tmp_path / "flat", flat)), n_boot=200)
    assert ms[1].interval == pytest.approx((ms[1].value, ms[1].value))


def test_multiplier_when_an_arm_or_the_reference_lacks_a_seed(tmp_path):
    """The arm's loss is its mean over all its finished seeds (its number in the arms table), and a resample
    that draws only reference seeds the arm lacks gives no multiplier: at the smallest size the arm lacks
    seed 3 (1 resample in 27 draws seed 3 alone), at the middle one the reference lacks it."""
    c = [C0 * 4 ** i for i in range(3)]
    pair = (-0.004, 0.004)   # two seeds whose mean is the law's value, like NOISE's three
    sizes = [("n_layer=1", {"baseline": ([log_law(c[0]) + e for e in NOISE], c[0]),
                            "rope": ([log_law(2 * c[0]) + e for e in pair], c[0])}),
             ("n_layer=2", {"baseline": ([log_law(c[1]) + e for e in pair], c[1]),
                            "rope": ([log_law(2 * c[1]) + e for e in NOISE], c[1])}),
             ("n_layer=3", {"baseline": ([log_law(c[2]) + e for e in NOISE], c[2]),
                            "rope": ([log_law(2 * c[2]) + e for e in NOISE], c[2])})]
    study = plot.load_study(make_study(tmp_path, sizes))
    _, ms, notes = plot.compute_multipliers(study, n_boot=400)
    assert [m.value for m in ms] == pytest.approx([2.0] * 3, rel=1e-9)
    assert 0.9 * 400 < ms[0].resamples < 400 and ms[1].resamples == 400
    assert any(n.startswith("Size n_layer=1, rope: ") and "gave no multiplier" in n for n in notes)
    assert {"Size n_layer=1, rope: 2 of 3 comparison seeds finished.",
            "Size n_layer=2, baseline: 2 of 3 comparison seeds finished."} <= set(study.notes)


def test_fit_power_law_recovers_known_parameters():
    logc = np.log(np.array([1, 3, 10, 30, 100.0]))[None]
    a, b, c = plot.fit_power_law(logc, 0.7 * np.exp(-0.4 * logc) + 2.1)
    assert (a[0], b[0], c[0]) == pytest.approx((0.7, 0.4, 2.1), rel=1e-6)
    # loss rising with compute: no law of this family (a > 0)
    assert np.isnan(plot.fit_power_law(logc, 2.0 + 0.1 * logc)[0][0])


def test_no_multiplier_when_the_baseline_does_not_improve(tmp_path):
    sizes = [(f"n_layer={i + 1}", {"baseline": ([3.0 + 0.1 * (i == 1) + e for e in NOISE], C0 * 4 ** i),
                                   "rope": ([2.9 + e for e in NOISE], C0 * 4 ** i)}) for i in range(3)]
    _, ms, notes = plot.compute_multipliers(plot.load_study(make_study(tmp_path, sizes)), n_boot=100)
    assert all(math.isnan(m.value) for m in ms)
    assert any("does not fall with compute" in n for n in notes)


def test_one_size_gives_no_multiplier_and_says_why(tmp_path):
    root = make_study(tmp_path, [("", {"baseline": ([3.0, 3.1, 3.05], C0), "rope": ([2.9, 3.0, 2.96], C0)})])
    method, ms, _ = plot.compute_multipliers(plot.load_study(root))
    assert ms == [] and "two or more sizes" in method

# -----------------------------------------------------------------------------
# the training compute of a run


@pytest.mark.parametrize("rope", [False, True])
def test_flops_fallback_matches_train_flops_per_token(tmp_path, rope):
    """Without train_flops or flops_per_token in results.json, the FLOPs come from params and config by
    train.flops_per_token's formula; they agree with train.py on a real model."""
    cfg = train.Config(n_layer=2, n_head=2, n_embd=32, block_size=16, use_rope=rope)
    model = train.GPT(cfg, vocab_size=97)
    write_run(tmp_path, 3.0, config={"n_layer": 2, "n_embd": 32, "block_size": 16, "use_rope": rope})
    res = json.loads((tmp_path / "results.json").read_text())
    res["params"] = model.num_params()
    (tmp_path / "results.json").write_text(json.dumps(res))
    flops, source = plot.train_flops(plot.load_run(tmp_path))
    assert flops == train.flops_per_token(model) * TOKENS and source.startswith("6 x")
    res["flops_per_token"] = 123.0
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert plot.train_flops(plot.load_run(tmp_path)) == (123.0 * TOKENS, "flops_per_token x tokens")
    res["train_flops"] = 5e9
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert plot.train_flops(plot.load_run(tmp_path))[0] == 5e9

# -----------------------------------------------------------------------------
# tuning: the sensitivity figure, diverged values, the edge warning

LRS = ["1e-3", "3e-3", "1e-2"]


def tuned_study(root, chosen=("3e-3", "3e-3"), diverge=("rope", "1e-2")):
    """Two sizes, two arms, tuned over LRS with tuning seeds 1001, 1002: NLL is lowest at 3e-3; the `diverge`
    arm's tuning runs at that value diverge (nan) and choice.json lists them."""
    sizes = [("n_embd=32", {"baseline": ([3.0, 3.02, 3.01], 1e12), "rope": ([2.9, 2.93, 2.91], 1e12)}),
             ("n_embd=64", {"baseline": ([2.8, 2.82, 2.81], 4e12), "rope": ([2.75, 2.78, 2.76], 4e12)})]
    root = make_study(root, sizes, tune={"key": "learning_rate", "values": LRS, "seeds": [1001, 1002]})
    for (name, _), pick in zip(sizes, chosen):
        by_exp = {}
        for exp in ("baseline", "rope"):
            scores, div = {}, {}
            for v in LRS:
                for k, seed in enumerate((1001, 1002)):
                    path = root / name / "tune" / exp / f"learning_rate={v}" / f"seed{seed}"
                    if (exp, v) == tuple(diverge):
                        write_run(path, state="diverged")
                        div[v] = [1001, 1002]
                    else:
                        write_run(path, 3.0 + abs(math.log10(float(v) / 3e-3)) + 0.01 * k, 1e11, eval_set="tune")
                scores[v] = None if v in div else 3.005 + abs(math.log10(float(v) / 3e-3))
            by_exp[exp] = {"scores": scores, "diverged": div, "chosen": pick, "edge": pick in (LRS[0], LRS[-1])}
        (root / name / "choice.json").write_text(json.dumps({"key": "learning_rate", "by_experiment": by_exp}))
    return root


def report_md(root, n_boot=50):
    """The study report's markdown text, without drawing its figures (fast)."""
    study = plot.load_study(root)
    rows = plot.tuning_rows(study)
    blocks = plot.study_blocks(study, rows, plot.compute_multipliers(study, n_boot),
                               {"sensitivity": "s.png", "compute": "c.png"})
    plot.write_study_md(Path(root) / "report.md", "t", blocks)
    return (Path(root) / "report.md").read_text()


def _markers(ax, marker):
    return [line for line in ax.get_lines() if line.get_marker() == marker]


def test_sensitivity_figure_marks_chosen_and_diverged_on_a_log_axis(tmp_path):
    study = plot.load_study(tuned_study(tmp_path))
    rows = plot.tuning_rows(study)
    rope = next(r for r in rows if r["size"] == "n_embd=32" and r["experiment"] == "rope")
    assert rope["diverged"] == ["1e-2"] and rope["scores"]["1e-2"] is None and rope["chosen"] == "3e-3"
    assert rope["scores"]["1e-3"] == pytest.approx(3.0 + math.log10(3) + 0.005)
    fig = plot.sensitivity_figure(study, rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning_rate"
    stars = _markers(ax, "*")
    assert sorted(float(s.get_xdata()[0]) for s in stars) == [3e-3, 3e-3]           # one chosen point per arm
    crosses = _markers(ax, "x")
    assert [float(x.get_xdata()[0]) for x in crosses] == [1e-2]                      # rope's diverged value
    assert crosses[0].get_ydata()[0] == 0.97     # at the top of the panel (axes fraction)
    plot._pyplot().close(fig)


def test_diverged_tuning_run_is_found_from_its_log(tmp_path):
    """Without choice.json (tuning not finished) a diverged tuning run still shows, and is no score."""
    root = tuned_study(tmp_path)
    (root / "n_embd=64" / "choice.json").unlink()
    study = plot.load_study(root)
    rows = {r["experiment"]: r for r in plot.tuning_rows(study) if r["size"] == "n_embd=64"}
    assert rows["rope"]["diverged"] == ["1e-2"] and rows["baseline"]["diverged"] == []
    assert rows["rope"]["scores"]["1e-2"] is None and rows["rope"]["chosen"] is None
    assert any("n_embd=64: no choice.json" in n for n in study.notes)


def test_linear_axis_when_the_values_span_less_than_10x(tmp_path):
    study = plot.load_study(tuned_study(tmp_path))
    study.values = ["2", "3", "4"]
    fig = plot.sensitivity_figure(study, plot.tuning_rows(study))
    assert fig.axes[0].get_xscale() == "linear"
    plot._pyplot().close(fig)


def test_report_names_diverged_tuning_runs_and_the_edge(tmp_path):
    md = report_md(tuned_study(tmp_path, chosen=("3e-3", "1e-3")))
    assert "rope at learning_rate = 1e-2 (size n_embd=32)" in md and "Diverged tuning runs" in md
    edge = [line for line in md.splitlines() if "edge of the grid" in line]
    assert len(edge) == 2 and all("size n_embd=64" in line for line in edge)   # both arms chose 1e-3 there
    assert "1e-3 (3.4821) EDGE" in md                                           # tuning table: chosen and NLL
    # no edge, nothing diverged: no warning
    md2 = report_md(tuned_study(tmp_path / "b", diverge=("none", "none")))
    assert "edge of the grid" not in md2 and "Diverged tuning runs" not in md2


def test_a_choice_within_the_tuning_noise_is_flagged(tmp_path):
    """Baseline at n_embd=32: 3e-3 beats 1e-2 by 0.005 on average over the tuning seeds 1001, 1002, but the
    paired differences are +0.03 and -0.02 (standard error 0.025): flagged. Consistent paired differences
    (the other arms and size: the same gap on both seeds) are not, however small the noise of one run."""
    root = tuned_study(tmp_path, diverge=("none", "none"))
    for v, nlls in (("3e-3", (3.00, 3.04)), ("1e-2", (3.03, 3.02))):
        for seed, nll in zip((1001, 1002), nlls):
            write_run(root / "n_embd=32" / "tune" / "baseline" / f"learning_rate={v}" / f"seed{seed}", nll, 1e11,
                      eval_set="tune")
    rows = {(r["size"], r["experiment"]): r for r in plot.tuning_rows(plot.load_study(root))}
    margin, noise, runner, how = rows[("n_embd=32", "baseline")]["close"]
    assert runner == "1e-2" and margin == pytest.approx(0.005) and noise == pytest.approx(0.025)
    assert "2 tuning seeds" in how
    assert [k for k, r in rows.items() if r["close"]] == [("n_embd=32", "baseline")]
    md = report_md(root)
    warn = [line for line in md.splitlines() if "within noise" in line]
    assert len(warn) == 1 and "size n_embd=32, baseline: learning_rate = 3e-3 beat 1e-2 by 0.0050" in warn[0]


def test_with_one_tuning_seed_the_noise_is_the_comparison_runs_sd(tmp_path):
    """One tuning seed: no paired estimate, so sqrt(2) x the arm's seed-to-seed sd of its final val NLL
    (baseline at n_embd=32: 3.0, 3.02, 3.01, sd 0.01) against a 0.01 margin: flagged; a 0.05 margin: not."""
    root = tuned_study(tmp_path, diverge=("none", "none"))
    for margin, want in ((0.01, True), (0.05, False)):
        for v in LRS:
            for seed in (1001, 1002):
                run = root / "n_embd=32" / "tune" / "baseline" / f"learning_rate={v}" / f"seed{seed}"
                if seed == 1002:
                    shutil.rmtree(run, ignore_errors=True)
                else:
                    write_run(run, {"3e-3": 3.0, "1e-2": 3.0 + margin}.get(v, 4.0), 1e11, eval_set="tune")
        row = next(r for r in plot.tuning_rows(plot.load_study(root))
                   if (r["size"], r["experiment"]) == ("n_embd=32", "baseline"))
        assert bool(row["close"]) is want
        if want:
            assert row["close"][1] == pytest.approx(0.01 * math.sqrt(2)) and "sqrt(2)" in row["close"][3]


def test_tuning_run_scored_on_the_validation_set_is_flagged(tmp_path):
    root = tuned_study(tmp_path)
    path = root / "n_embd=32" / "tune" / "baseline" / "learning_rate=1e-3" / "seed1001"
    write_run(path, 3.4, eval_set="val")
    study = plot.load_study(root)
    assert any("scored on the 'val' set" in n for n in study.notes)

# -----------------------------------------------------------------------------
# per-size verdicts, failed runs, the whole report


def test_per_size_verdicts_and_delta_figure(tmp_path):
    """rope is clearly better at the small size and equal at the big one: the table says so per size."""
    sizes = [("n_layer=1", {"baseline": ([3.00, 3.05, 3.02, 3.08], 1e12), "rope": ([2.90, 2.951, 2.919, 2.982], 1e12)}),
             ("n_layer=2", {"baseline": ([2.80, 2.85, 2.82, 2.88], 4e12), "rope": ([2.81, 2.84, 2.83, 2.87], 4e12)})]
    study = plot.load_study(make_study(tmp_path, sizes, seeds=4))
    small, big = (s.analysis.family["rope"] for s in study.sizes)
    assert [[row["n"] for row in s.analysis.rows] for s in study.sizes] == [[4, 4], [4, 4]]   # each size alone
    assert small["mean"] == pytest.approx(-0.0995) and small["significant"] is True
    assert big["mean"] == pytest.approx(0.0) and big["significant"] is False
    _, _, _, paths = plot.write_study_report(tmp_path, n_boot=50)
    md = (tmp_path / "study_report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| n_layer=") and "| rope |" in line]
    verdicts = [r for r in rows if "better" in r or "not detected" in r]
    assert len(verdicts) == 2 and "-0.0995" in verdicts[0] and "better" in verdicts[0]
    assert "not detected" in verdicts[1]
    fig = plot.delta_compute_figure(study)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    line = next(x for x in ax.get_lines() if x.get_label() == "rope")
    assert list(line.get_xdata()) == [1e12, 4e12] and list(line.get_ydata()) == pytest.approx([-0.0995, 0.0])
    filled = [x.get_markerfacecolor() for x in ax.get_lines() if x.get_marker() == "o"]
    assert filled[1] == "white" and filled[0] != "white"    # significant filled, not detected hollow
    plot._pyplot().close(fig)
    assert all(Path(p).is_file() for p in paths) and plot.count_pdf_pages(paths[0]) == 2   # text, Δ figure (no tuning)
    assert "![study_report_compute](study_report_compute.png)" in md
    assert "Size n_layer=1: Verdict" in md and "Training FLOPs from: train_flops in results.json." in md


def test_sizes_table_is_planned_until_a_run_finished(tmp_path):
    """Before any run of a size finished, its params, tokens and FLOPs come from study.json's budget, marked
    "(planned)"; a finished reference run's numbers take their place."""
    root = make_study(tmp_path, [("n_layer=1", {}), ("n_layer=2", {"baseline": ([3.0], 2e12)})], seeds=1)
    spec = json.loads((root / "study.json").read_text())
    spec["budget"] = {"rule": "tokens", "tokens": [250_000, 500_000], "flops_per_token": [4e6, 5e6],
                      "params": [{"total": 700_000, "non_embedding": 12_800}, {"total": 9, "non_embedding": 9}]}
    (root / "study.json").write_text(json.dumps(spec))
    md = report_md(root)
    assert "| n_layer=1 | n_layer=1 | 0.700M (planned) | 0.013M (planned) | 250,000 (planned) | 1e+12 (planned) |" in md
    assert "| n_layer=2 | n_layer=2 | 0.600M | 0.100M | 100,000 | 2e+12 |" in md


def test_pdf_tables_flow_onto_the_next_page(tmp_path):
    """A table longer than the page goes on over the next pages instead of running off the first."""
    blocks = [("h", "Long"), ("table", ["name", "value"], [[f"row {i}", "x"] for i in range(150)])]
    plot.write_study_pdf(tmp_path / "r.pdf", "t", blocks, {})
    assert plot.count_pdf_pages(tmp_path / "r.pdf") == 3     # 64 rows, 67, then the last 19


def test_failed_runs_are_named_and_left_out(tmp_path):
    sizes = [(f"n_layer={i + 1}", {"baseline": ([log_law(C0 * 4 ** i) + e for e in NOISE], C0 * 4 ** i),
                                   "rope": ([log_law(C0 * 8 ** i) + e for e in NOISE], C0 * 4 ** i)}) for i in range(2)]
    root = make_study(tmp_path, sizes)
    write_run(root / "n_layer=1" / "rope" / "seed4", 1.0, state="unfinished")
    write_run(root / "n_layer=2" / "rope" / "seed4", state="diverged")
    study = plot.load_study(root)
    assert sorted(study.sizes[0].runs["rope"]) == [1, 2, 3]
    assert study.sizes[0].analysis.family["rope"]["n"] == 3
    md = report_md(root)
    assert "n_layer=1/rope/seed4 (comparison run): unfinished (last logged step 10)" in md
    assert "n_layer=2/rope/seed4 (comparison run): diverged at step 10" in md

# -----------------------------------------------------------------------------
# the command line


def test_cli_writes_the_report_and_prints_the_multipliers(tmp_path, capsys):
    root = two_x_study(tmp_path / "s", log_law, 3)
    assert plot.main(["--study", str(root), "-o", str(tmp_path / "r" / "rep.pdf")]) == 0
    out = capsys.readouterr().out
    assert "size n_layer=1, rope: 2.00x [1.9" in out and "piecewise linear in log C" in out
    assert "size n_layer=3, rope: 2.00x" in out and "extrapolated" in out
    assert "size n_layer=2: Verdict" in out           # each size's verdict line, as its own report says it
    for name in ("rep.pdf", "rep.md", "rep_compute.png"):
        assert (tmp_path / "r" / name).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--study", "{root}/nope"], "no such study folder"),
    (["--study", "{root}"], "has no study.json"),
    (["--study", "{root}/bad"], "cannot read study file"),
    (["--study", "{root}/bad", "x/log.txt"], "--study takes no log files"),
    (["--study", "{root}/bad", "-o", "r.png"], "ending in .pdf"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text("{not json")
    assert plot.main([a.format(root=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("plot.py: error:")


def test_a_finished_run_whose_log_has_no_rows_counts_and_one_without_results_does_not(tmp_path):
    """results.json is a run's result: a log with only start/end (or only a nan) still says what happened."""
    write_run(tmp_path / "a", 3.0, 1e12)
    (tmp_path / "a" / "log.txt").write_text(json.dumps({"event": "start", "step": 0}) + "\n")
    run, state, _ = plot.run_state(tmp_path / "a")
    assert state == "finished" and run.val_nll == 3.0 and plot.train_flops(run)[0] == 1e12
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "log.txt").write_text(json.dumps({"event": "nan", "step": 0}) + "\n")
    assert plot.run_state(tmp_path / "b")[:2] == (None, "diverged")
    assert plot.run_state(tmp_path / "c")[:2] == (None, "not started")


def test_reads_the_layout_ablate_py_writes(tmp_path, monkeypatch, capsys):
    """The contract with the running side: a study run by ablate.py (with test_study.py's fake train.py, which
    writes results from a known function of the learning rate: baseline best at 3e-3, rope at 1e-2) reads
    back with the sizes, each arm's choice, the diverged value and the comparison runs where they are."""
    import ablate
    import test_study
    py = tmp_path / "fakepy"
    py.write_text(test_study.FAKE_PY.format(python=sys.executable))
    py.chmod(0o755)
    monkeypatch.setattr(ablate, "PY", str(py))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_DIVERGE", json.dumps(["rope|3e-2"]))
    monkeypatch.chdir(Path(test_study.HERE))
    out = tmp_path / "study"
    assert ablate.main(["--out", str(out), "--switches", "rope", "--tune", "learning_rate=3e-3,1e-2,3e-2",
                        "--scale", "n_embd=32", "--seeds", "2", *test_study.STUDY_ARGS]) == 0, capsys.readouterr().err
    study = plot.load_study(out)
    assert [s.name for s in study.sizes] == ["n_embd=32"] and study.key == "learning_rate"
    rows = {r["experiment"]: r for r in plot.tuning_rows(study)}
    assert (rows["baseline"]["chosen"], rows["baseline"]["edge"]) == ("3e-3", True)
    assert (rows["rope"]["chosen"], rows["rope"]["edge"], rows["rope"]["diverged"]) == ("1e-2", False, ["3e-2"])
    assert rows["rope"]["scores"]["3e-3"] == pytest.approx(3 + math.log10(0.3) ** 2 - 0.1)   # the fake's law
    assert all(sorted(s.runs[e]) == [1, 2] for s in study.sizes for e in ("baseline", "rope"))
    assert study.sizes[0].problems == []
