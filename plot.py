"""
Plot NLL curves from gpt-ablate training logs and build the one-page ablation report and the study report.
The designs themselves are ablate.py's; this file reads what ran from OUT/design.json and the runs.

Plain mode: one PNG with a smoothed train curve (raw curve faint behind it) and the
val points of every run, plus a table of final numbers printed to stdout.

    python plot.py out/*/log.txt                  # writes nll.png
    python plot.py out/*/log.txt -o curves.png

Report mode, for an ablation laid out as DIR/<experiment>/seed<k>/ (DIR/design.json says which design
ran; without it the design is inferred from the folder names and the runs' configs):

    python plot.py DIR/*/*/log.txt --report DIR/report.pdf
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --no_samples
    python plot.py DIR/*/*/log.txt --report DIR/report.pdf --sample_prompt "Once" --sample_tokens 30

writes DIR/report.pdf (one A4 page), DIR/report.md and DIR/report.png (the plot).
Seeds of one experiment share a colour (thin, faint); the mean over seeds is bold.

Statistics (see test_plot.py for the checks):
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
    by a large factor). Power never licenses "no effect": that claim comes only from a 95% CI inside +-0.02.

Study mode, for a study folder written by ablate.py (--tune, --scale; layout in the "studies" section):

    python plot.py --study OUT                     # OUT/study_report.md, .pdf, _sensitivity.png, _compute.png
    python plot.py --study OUT -o reports/s.pdf

  the design and sizes (params, tokens, training FLOPs), each arm's tuning curve per size (chosen value,
  diverged values, edge-of-grid warnings), the per-size verdicts above, Δ against training FLOPs, and each
  arm's compute multiplier C_ref(L_arm)/C_arm from the reference's loss-vs-compute curve (a fitted
  L = a*C^-b + c with >= 4 sizes, else piecewise linear in log C) with a paired bootstrap interval over seeds.

Each argument may be a log.txt, the run's out_dir, or a runs.json ({"runs": [{"experiment", "seed", and that
run's results.json numbers}]}, as in results/: finished runs without curves, their design.json beside it).
Bad input (no files, a missing file, a log without usable rows, an unknown switch) gives a one-line error
on stderr and exit code 2.
"""

import argparse
import functools
import itertools
import json
import math
import re
import sys
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

A4_PORTRAIT = (8.27, 11.69)  # inches
ALPHA = 0.05        # family-wise error rate of a report's verdicts
POWER = 0.8         # power at which the minimum detectable effect is stated
TARGET = 0.02       # nats: the effect size for "seeds needed"
MAX_SEEDS = 100_000  # the seeds-needed search stops here

DESIGNS = ("one-at-a-time", "leave-one-out", "factorial")   # the designs ablate.py makes (design.json)
REFERENCE = {"one-at-a-time": "baseline", "leave-one-out": "all", "factorial": "baseline"}


class UsageError(Exception):
    """Bad command-line input; main() turns it into a one-line message and exit 2."""


def _train():
    """train.py, imported lazily (it imports torch)."""
    import train
    return train

# -----------------------------------------------------------------------------
# designs: what a design.json (written by ablate.py, which makes the designs) may say

def registered_switches():
    """{switch name: config key} from train.py, in declaration order."""
    return dict(_train().SWITCHES)

# -----------------------------------------------------------------------------
# loading runs

def read_log(path):
    """Parse a log.txt into a list of event dicts, with train.py's parser (imported lazily: torch)."""
    return _train().read_log(path)


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


def divergence(events):
    """The log's last "nan" event (train.py writes one when the loss turns non-finite, then exits 3), unless
    a later "resume" continued the run from a checkpoint; else None."""
    last = None
    for e in events:
        if e.get("event") == "nan":
            last = e
        elif e.get("event") == "resume":
            last = None
    return last


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
    nan_event: dict | None = None                # the log's "nan" event when the run diverged there

    @property
    def status(self):
        """'finished' (results.json with a finite val NLL), 'diverged' (a nan event in the log, or a
        non-finite final val NLL) or 'unfinished' (no results.json: stopped, killed or still running)."""
        if self.nan_event is not None:
            return "diverged"
        if self.results is not None:
            return "finished" if _is_num(self.results.get("val_nll")) else "diverged"
        return "unfinished"

    @property
    def status_text(self):
        """'finished', 'diverged at step 180', 'diverged at the final evaluation (step 500)',
        'unfinished (last logged step 300)'."""
        if self.status == "diverged":
            if self.nan_event is not None and _is_num(self.nan_event.get("step")):
                return f"diverged at step {int(self.nan_event['step'])}"
            return f"diverged at the final evaluation (step {self.steps})"
        if self.status == "unfinished":
            return f"unfinished (last logged step {self.steps})"
        return "finished"

    @property
    def config(self):
        src = self.results or self.start or {}
        return src.get("config") or {}

    def _result(self, key):
        """A number from results.json, or None (old runs lack the newer keys)."""
        v = (self.results or {}).get(key)
        return float(v) if _is_num(v) else None

    def _final(self, key):
        """The final number; a diverged run has none (an earlier estimate is not its result); an
        unfinished one shows its last periodic evaluation (labelled so by `source`)."""
        if self.status == "diverged":
            return float("nan")
        if self._result(key) is not None:
            return self._result(key)
        vals = [r[key] for r in self.evals if _is_num(r.get(key))]
        return float(vals[-1]) if vals else float("nan")

    @property
    def val_nll(self):
        return self._final("val_nll")

    @property
    def val_bpb(self):
        return self._final("val_bpb")

    @property
    def val_nll_se(self):
        """Standard error of the final val NLL (None when not saved): by document (val_nll_se_by)."""
        return self._result("val_nll_se")

    @property
    def val_nll_se_by(self):
        """'document': train.py clustered the windows by document (its eval rows count the documents);
        'window': an older run's standard error, over windows as if they were independent."""
        return "document" if any("documents" in r for r in self.evals) else "window"

    @property
    def steps(self):
        if self._result("steps") is not None:
            return int(self._result("steps"))
        return int(max(r["step"] for r in self.train + self.evals))

    @property
    def tokens(self):
        """Tokens trained: results.json, else the last logged row (an unfinished run)."""
        if self._result("tokens") is not None:
            return int(self._result("tokens"))
        vals = [r["tokens"] for r in self.train + self.evals if _is_num(r.get("tokens"))]
        return int(max(vals)) if vals else None

    @property
    def train_time(self):
        return self._result("train_time")

    @property
    def eval_time(self):
        return self._result("eval_time")

    @property
    def wall_time(self):
        if self._result("wall_time") is not None:
            return self._result("wall_time")
        vals = [r["elapsed"] for r in self.train + self.evals if _is_num(r.get("elapsed"))]
        return float(max(vals)) if vals else None

    @property
    def params(self):
        for src in (self.results, self.start):
            total = ((src or {}).get("params") or {}).get("total")
            if _is_num(total):
                return int(total)
        return None

    @property
    def tokens_per_s(self):
        """Training throughput: tokens / train_time (results.json), else results' or the log's tokens_per_s."""
        if self.train_time and self.tokens:
            return self.tokens / self.train_time
        if self._result("tokens_per_s") is not None:
            return self._result("tokens_per_s")
        vals = [r["tokens_per_s"] for r in self.train if _is_num(r.get("tokens_per_s"))]
        return float(np.median(vals)) if vals else float("nan")

    @property
    def source(self):
        if self.status == "diverged":
            return self.status_text
        return "results.json" if self.results else f"log (step {self.steps}, unfinished)"


def claimed_switches(name):
    """The switches a folder name says were on, in train.py's own naming (train.switches_name: 'baseline',
    'rmsnorm', 'swiglu+rope'; value switches as 'n_layer=6'): {config key: value}; None when the name claims
    nothing checkable ('all' and 'no_x' depend on a design's switch list; 'shakespeare' is just a name)."""
    registry = registered_switches()
    claim = {key: False for key in registry.values()}
    if name == "baseline":
        return claim
    for part in name.split("+"):
        key, eq, text = part.partition("=")
        if part in registry:
            claim[registry[part]] = True
        elif eq and key in _train().CONFIG_FIELDS and key not in registry.values():
            claim[key] = _guess_value(key, text)
        else:
            return None
    return claim


def run_label(run):
    """The run's name, true of what it trained: its folder name, unless that names other switches than its
    config has on; then what was trained, with the folder: 'rmsnorm (folder baseline)',
    'rmsnorm/seed1 (folder baseline/seed1)'."""
    claim, cfg = claimed_switches(run.experiment), run.config
    if claim is None or any(key not in cfg for key in claim) or all(cfg[k] == v for k, v in claim.items()):
        return run.name
    from types import SimpleNamespace
    trained = _train().switches_name(SimpleNamespace(**{k: cfg[k] for k in registered_switches().values()}))
    trained += "".join(f"+{k}={cfg[k]}" for k, v in claim.items() if k not in registered_switches().values())
    return f"{trained}{run.name.removeprefix(run.experiment)} (folder {run.name})"


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
    run = read_run(log_path)
    if not run.train and not run.evals:
        raise UsageError(f"no usable train/eval rows in {log_path}")
    return run


def read_run(log_path):
    """The Run of an existing log.txt and the results.json beside it, whatever rows the log has."""
    events = read_log(log_path)
    start, train, evals = clean_events(events)
    out_dir = Path(log_path).resolve().parent
    results = None
    if (out_dir / "results.json").is_file():
        try:
            results = json.loads((out_dir / "results.json").read_text())
        except ValueError:
            print(f"plot.py: warning: ignoring unreadable {out_dir / 'results.json'}", file=sys.stderr)
    name, experiment, seed = run_identity(out_dir)
    run = Run(name, out_dir, experiment, seed, train, evals, start, results, divergence(events))
    if run.seed is None and isinstance(run.config.get("seed"), int):
        run.seed = run.config["seed"]
    return run


def load_runs_json(path):
    """Finished runs without curves from a runs.json: {"runs": [{"experiment", "seed", and the numbers of
    that run's results.json}]}, as shipped in results/ where the run folders were not kept. Each run sits,
    for find_design, at DIR/<experiment>/seed<k> (DIR/design.json is the ablation's design)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())["runs"]
        runs = []
        for e in entries:
            exp, seed = str(e["experiment"]), int(e["seed"])
            runs.append(Run(f"{exp}/seed{seed}", path.resolve().parent / exp / f"seed{seed}", exp, seed,
                            results=dict(e)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a runs.json ({{\"runs\": [{{\"experiment\", \"seed\", ...}}]}}): {e}") from None
    if not runs:
        raise UsageError(f"{path}: no runs in it")
    return runs


def load_runs(path):
    """The runs of one command-line argument: a log.txt or run folder (one run), or a runs.json (many)."""
    return load_runs_json(path) if str(path).endswith(".json") else [load_run(path)]


def default_order(names):
    """Report order without a design.json: baseline, the registered switches, all, no_<x>, the rest."""
    known = ["baseline"] + list(registered_switches()) + ["all"]
    def key(e):
        if e in known:
            return (0, known.index(e), e)
        if e.startswith("no_"):
            return (1, known.index(e[3:]) if e[3:] in known else len(known), e)
        return (2, e.count("+"), e)
    return sorted(names, key=key)


def group_by_experiment(runs, order=None):
    """{experiment: [runs sorted by seed]}, in `order` (a design's experiment list) first, else default_order."""
    names = {r.experiment for r in runs}
    order = [e for e in (order or []) if e in names]
    names = order + default_order(names - set(order))
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
    v = [float(x) for x in values if _is_num(x)]
    if not v:
        return float("nan"), None
    mean = math.fsum(v) / len(v)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) >= 2 else None
    return mean, std


@functools.cache
def _special():
    from scipy import special   # imported on first use: plain plots do without scipy
    return special


def t_quantile(q, df):
    """Student t quantile, array-friendly: t_quantile(0.975, 2) = 4.3027. scipy.special.stdtrit is the
    inverse CDF behind scipy.stats.t.ppf, without its per-call overhead (the tests check they agree)."""
    return _special().stdtrit(df, q)


def t_sf(t, df):
    """Student t upper tail P(T > t), array-friendly (scipy.special.stdtr, as behind scipy.stats.t.sf)."""
    return _special().stdtr(df, -np.asarray(t, dtype=float))


def paired_diff(exp_by_seed, ref_by_seed):
    """Paired differences d_k = exp_k - ref_k on the seeds k both dicts have: (seeds, diffs)."""
    seeds = sorted(k for k in exp_by_seed if k in ref_by_seed
                   and _is_num(exp_by_seed[k]) and _is_num(ref_by_seed[k]))
    return seeds, [exp_by_seed[k] - ref_by_seed[k] for k in seeds]


def holm(pvalues, alpha=ALPHA):
    """
    Holm-Bonferroni over the p-values that are not None: sort them, compare the i-th smallest
    (i = 1..m) with alpha / (m - i + 1) and stop at the first that fails. Returns (adjusted p-values,
    rejected flags), both aligned with the input (None where the input is None). adjusted_i =
    max over j <= i of min(1, (m - j + 1) p_(j)); rejected = adjusted <= alpha.
    """
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    adjusted, rejected, running = [None] * len(pvalues), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
        rejected[i] = running <= alpha
    return adjusted, rejected


@functools.cache
def _stats():
    from scipy import optimize, stats   # imported on first use, like _special
    return optimize, stats


def t_test_power(nc, n, k, alpha=ALPHA):
    """Exact power of the two-sided one-sample (= paired) t-test at level alpha/k with n values when the
    true mean is nc standard errors from 0 (nc = mean * sqrt(n) / sd): P(|T| > t_{1-alpha/2k, n-1}) for T
    noncentral t with n-1 degrees of freedom and noncentrality nc (scipy.stats.nct)."""
    nct = _stats()[1].nct
    crit = t_quantile(1 - alpha / (2 * k), n - 1)
    return float(nct.sf(crit, n - 1, nc) + nct.sf(crit, n - 1, -nc))   # upper tail + lower tail


@functools.lru_cache(maxsize=None)
def _mde_per_sd(n, k, alpha, power):
    """The exact minimum detectable effect for n values in units of their sd: nc* / sqrt(n), where nc* is
    the noncentrality at which t_test_power reaches `power` (found by root finding; cached: it depends
    on n, k, alpha and power only)."""
    optimize = _stats()[0]
    hi = float(t_quantile(1 - alpha / (2 * k), n - 1) + t_quantile(power, n - 1)) + 1.0
    while t_test_power(hi, n, k, alpha) < power:
        hi *= 2
    nc = optimize.brentq(lambda x: t_test_power(x, n, k, alpha) - power, 0.0, hi, xtol=1e-10, rtol=1e-10)
    return nc / math.sqrt(n)


def min_detectable_effect(sd, n, k, alpha=ALPHA, power=POWER):
    """Smallest |mean| that the two-sided t-test at level alpha/k detects with probability `power`, for n
    values whose true standard deviation is sd: exact, from the noncentral t distribution (the shortcut
    (t_{1-alpha/2k} + t_power) * sd / sqrt(n) is 2-26% too small at n = 2-4). Arrays work."""
    per_sd = np.vectorize(lambda m: _mde_per_sd(int(m), int(k), float(alpha), float(power)), otypes=[float])
    return np.asarray(sd, dtype=float) * per_sd(n)


def seeds_needed(sd, k, target=TARGET, alpha=ALPHA, power=POWER, max_n=MAX_SEEDS):
    """Smallest n >= 2 whose min_detectable_effect(sd, n, k) <= target, or max_n + 1 when even max_n
    seeds are not enough. The MDE falls with n, so: start at the normal-theory answer
    ((z_{1-alpha/2k} + z_power) sd / target)^2 and step down while n - 1 still suffices, up while n does not."""
    ok = lambda n: _mde_per_sd(n, int(k), float(alpha), float(power)) * sd <= target
    if not ok(max_n):
        return max_n + 1
    sp = _special()
    z = sp.ndtri(1 - alpha / (2 * k)) + sp.ndtri(power)
    n = min(max_n, max(2, math.ceil((z * sd / target) ** 2)))
    while n > 2 and ok(n - 1):
        n -= 1
    while not ok(n):
        n += 1
    return n


@functools.lru_cache(maxsize=None)
def sd_ratio_interval(df, conf=0.95):
    """(lo, hi): the true sd lies in [lo * s, hi * s] with confidence conf, for an observed sd s with df
    degrees of freedom (chi-square interval: df s^2 / sigma^2 ~ chi2(df)). df = 3 (4 seeds): (0.57, 3.73)."""
    chi2 = _stats()[1].chi2
    return (math.sqrt(df / chi2.ppf(0.5 + conf / 2, df)), math.sqrt(df / chi2.ppf(0.5 - conf / 2, df)))


def family_stats(samples, alpha=ALPHA, target=TARGET):
    """
    The statistics of one report. samples: {name: per-seed values} (paired differences against the
    reference, or per-seed factorial effects); each is tested for mean 0 with a two-sided one-sample
    t-test (= the paired t-test of the two arms), and the family of all testable names gets a
    Holm-Bonferroni verdict at family-wise level alpha. Returns {name: dict} with
    n, mean, sd, se, df, t, p, ci (95% per comparison, t with df = n-1), p_holm, significant (True/False,
    or None with `reason` when no test is possible: one seed, or no spread), k (tests in the family),
    ci_family (the interval at the family's level, 1 - alpha/k: Bonferroni, so all k hold together with
    probability >= 1 - alpha, the error rate the Holm verdicts control), within_target (the whole ci_family
    inside +-target: an effect larger than target is ruled out at the verdicts' level), and
    the power entries (None here; add_power fills them in).
    """
    out = {}
    for name, values in samples.items():
        v = [float(x) for x in values if _is_num(x)]
        n = len(v)
        mean, sd = mean_std(v)
        st = {"n": n, "mean": mean, "sd": sd, "se": None, "df": n - 1, "t": None, "p": None, "ci": None,
              "p_holm": None, "significant": None, "reason": None, "k": 0, "ci_family": None, "within_target": None,
              "sd_ci": None,
              "mde": None, "mde_range": None, "seeds_for_target": None, "seeds_range": None}
        if n == 0:
            st["reason"] = "no paired seed"
        elif n == 1:
            st["reason"] = "1 seed: no test possible"
        elif sd <= 1e-12 * max(1.0, abs(mean)):
            st["reason"] = "no spread between seeds: no test possible"
        else:
            st["se"] = sd / math.sqrt(n)
            st["t"] = mean / st["se"]
        out[name] = st
    tested = [name for name, st in out.items() if st["t"] is not None]
    if not tested:
        return out
    k = len(tested)
    df = np.array([out[x]["df"] for x in tested], dtype=float)
    t = np.array([out[x]["t"] for x in tested])
    p = np.minimum(1.0, 2 * t_sf(np.abs(t), df))
    se = np.array([out[x]["se"] for x in tested])
    half, half_family = t_quantile(0.975, df) * se, t_quantile(1 - alpha / (2 * k), df) * se
    adjusted, rejected = holm([float(x) for x in p], alpha)
    for i, name in enumerate(tested):
        st = out[name]
        ci = (st["mean"] - float(half[i]), st["mean"] + float(half[i]))
        fam = (st["mean"] - float(half_family[i]), st["mean"] + float(half_family[i]))
        st.update(p=float(p[i]), p_holm=adjusted[i], significant=rejected[i], k=k, ci=ci, ci_family=fam,
                  within_target=-target < fam[0] and fam[1] < target)
    return out


def add_power(family, alpha=ALPHA, power=POWER, target=TARGET):
    """Fill in the power entries of family_stats' tested entries: sd_ci (95% interval of the true sd),
    mde (exact minimum detectable effect at `power` and level alpha/k, at the observed sd) with mde_range
    (the same at the ends of sd_ci), seeds_for_target (seeds that would detect `target` nats at the
    observed sd; MAX_SEEDS + 1 means more than MAX_SEEDS) with seeds_range (at the ends of sd_ci).
    With 2-4 seeds the sd, and so every power number, is uncertain by a large factor: hence the ranges."""
    for st in family.values():
        if st["t"] is None:
            continue
        lo, hi = sd_ratio_interval(st["df"])
        sds = (st["sd"], st["sd"] * lo, st["sd"] * hi)
        mde = [float(min_detectable_effect(sd, st["n"], st["k"], alpha, power)) for sd in sds]
        need = [seeds_needed(sd, st["k"], target, alpha, power) for sd in sds]
        st.update(sd_ci=sds[1:], mde=mde[0], mde_range=tuple(mde[1:]), seeds_for_target=need[0],
                  seeds_range=tuple(need[1:]))
    return family


def factorial_effects(cells_by_seed, names):
    """
    Main effects and two-way interactions of a 2^m factorial, once per seed.
    cells_by_seed: {seed: {frozenset(switch names on): value}}; names: the m switch names.
    With x_A = +1 (A on) / -1 (A off): main effect A = mean(y | x_A = +1) - mean(y | x_A = -1);
    interaction "A × B" = mean(y | x_A x_B = +1) - mean(y | x_A x_B = -1)
                        = ((effect of A with B on) - (effect of A with B off)) / 2.
    Seeds without all 2^m cells are skipped. Returns ({effect: [per-seed values]}, seeds used, seeds skipped).
    """
    cells = [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    x = np.array([[1.0 if s in c else -1.0 for s in names] for c in cells])
    contrasts = {a: x[:, i] for i, a in enumerate(names)}
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        contrasts[f"{a} × {b}"] = x[:, i] * x[:, j]
    effects = {e: [] for e in contrasts}
    used, skipped = [], []
    for seed in sorted(cells_by_seed):
        got = cells_by_seed[seed]
        if not all(c in got and _is_num(got[c]) for c in cells):
            skipped.append(seed)
            continue
        y = np.array([got[c] for c in cells], dtype=float)
        for e, c in contrasts.items():
            effects[e].append(float(y[c > 0].mean() - y[c < 0].mean()))
        used.append(seed)
    return effects, used, skipped

# -----------------------------------------------------------------------------
# the analysis behind a report

def find_design(runs):
    """The design.json next to the runs' experiment folders (DIR/design.json for DIR/<exp>/seed<k>), or None."""
    found = {}
    for r in runs:
        if r.seed is not None and r.out_dir.name == f"seed{r.seed}":
            path = r.out_dir.parent.parent / "design.json"
            if path.is_file():
                found[path] = None
    for path in found:
        try:
            d = json.loads(path.read_text())
            if d.get("design") in DESIGNS and isinstance(d.get("experiments"), list):
                d["source"] = f"{path.name}"
                return d
        except (ValueError, AttributeError):
            pass
        print(f"plot.py: warning: ignoring unreadable {path}", file=sys.stderr)
    return None


def config_on_set(run, switches):
    """The switch names a run had on, from its config (None when its config lacks a switch's key)."""
    cfg, on = run.config, set()
    for s in switches:
        if s["key"] not in cfg:
            return None
        if (s["off"] is not None and cfg[s["key"]] is True) or (s["off"] is None and cfg[s["key"]] == s["on"]):
            on.add(s["name"])
    return frozenset(on)


def design_on_set(design, run):
    """The switch names a run had on: its experiment's in the design (what ablate.py passed), else its config's."""
    for e in design.get("experiments", []):
        if e["name"] == run.experiment:
            return frozenset(e.get("on", []))
    return config_on_set(run, design.get("switches") or [])


def factorial_cells(design, run_values):
    """{seed: {frozenset(switches on): value}} of [(run, value)], for factorial_effects."""
    cells = {}
    for run, v in run_values:
        on = design_on_set(design, run)
        if run.seed is not None and on is not None:
            cells.setdefault(run.seed, {})[on] = v
    return cells


def infer_design(groups):
    """A design dict without design.json: from the folder names (as ablate.py names them) and configs."""
    registry = registered_switches()
    names = list(groups)
    on_sets = {}
    for exp, runs in groups.items():
        cfg = runs[0].config if runs else {}
        if any(k in cfg for k in registry.values()):
            on_sets[exp] = [n for n, k in registry.items() if cfg.get(k) is True]
    parts = {p for e in names for p in e.removeprefix("no_").split("+")}
    chosen = [n for n in registry if n in parts or any(n in on for on in on_sets.values())]
    # value switches appear only in names such as "swiglu+n_layer=6"
    values = []
    for exp in names:
        for part in exp.removeprefix("no_").split("+"):
            if "=" in part and part not in values:
                values.append(part)
    switches = [{"name": n, "key": registry[n], "on": True, "off": False} for n in chosen]
    for v in values:
        key, _, text = v.partition("=")
        switches.append({"name": v, "key": key, "on": _guess_value(key, text), "off": None})
    if "all" in names and len(names) > 1 and all(e == "all" or e.startswith("no_") for e in names):
        design = "leave-one-out"
    elif any("+" in e for e in names):
        design = "factorial"
    else:
        design = "one-at-a-time"
    experiments = []
    for exp in names:
        if exp == "all":
            named = [s["name"] for s in switches]
        elif exp.startswith("no_"):
            named = [s["name"] for s in switches if s["name"] != exp[3:]]
        else:
            named = [p for p in exp.split("+") if p in registry or p in values]
        on = on_sets[exp] if exp in on_sets else [n for n in named if n in registry]
        experiments.append({"name": exp, "on": on + [v for v in values if v in named]})
    return {"design": design, "reference": REFERENCE[design], "switches": switches,
            "experiments": experiments, "source": "inferred from the folder names and run configs"}


def _guess_value(key, text):
    try:
        return _train().coerce(key, text, "an experiment name")
    except Exception:
        return text


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
    if s is None or not _is_num(s):
        return "?"
    return f"{s:.1f}s" if s < 10 else f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def fmt_mean_std(mean, std, n, digits=4):
    if not _is_num(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} (n={n})"


def fmt_p(p):
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _signed(x, digits=4):
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
    mean = _signed(st["mean"])
    ci = f"[{_signed(st['ci'][0])}, {_signed(st['ci'][1])}]" if st["ci"] else "n/a"
    mde, need = "n/a", "n/a"
    if st["mde"] is not None:   # the number at the observed sd, then its range over the sd's 95% interval
        mde = f"{st['mde']:.3f} ({st['mde_range'][0]:.3f}-{st['mde_range'][1]:.3f})"
        need = f"{_fmt_seeds(st['seeds_for_target'])} ({_fmt_int_range(*st['seeds_range'])})"
    return [pairs_cell(name, a), mean, ci, fmt_p(st["p"]), fmt_p(st["p_holm"]), effect_word(name, st, a), mde, need]


def run_cells(row):
    """[experiment, switches on, params, seeds, tokens, val NLL ± sd, eval se, val bpb, tokens/s, time]."""
    bpb = f"{row['bpb_mean']:.4f}" if _is_num(row["bpb_mean"]) else "n/a"
    tps = f"{row['tps_mean']:,.0f}" if _is_num(row["tps_mean"]) else "n/a"
    se = f"{row['eval_se']:.4f}" if row["eval_se"] is not None else "n/a"
    if _is_num(row["train_time"]) and _is_num(row["eval_time"]):
        time = f"{fmt_time(row['train_time'])} / {fmt_time(row['eval_time'])}"
    else:
        time = f"? / ? ({fmt_time(row['wall_time'])} wall)" if _is_num(row["wall_time"]) else "?"
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


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(a):
    """One row per experiment (with its comparison against the reference); factorial: plus an effects table."""
    if a.family_kind == "effects":
        return (_md_table(RUN_HEADER, [run_cells(r) for r in a.rows]) + "\n\nEffects (per-seed contrasts, "
                "tested over seeds):\n\n" + _md_table(comparison_header(a), comparison_rows(a)))
    header = RUN_HEADER + comparison_header(a)[1:]
    return _md_table(header, [run_cells(r) + stats_cells(r["experiment"], r["stats"], a) for r in a.rows])


def runs_table(runs):
    """Plain-text table of each run's final numbers, one row per run."""
    w = max([len("run")] + [len(run_label(r)) for r in runs])
    lines = [f"{'run':<{w}}  {'val_nll':>8}  {'val_bpb':>8}  {'steps':>7}  {'params':>12}  source"]
    for r in runs:
        params = f"{r.params:,}" if r.params is not None else "?"
        lines.append(f"{run_label(r):<{w}}  {r.val_nll:>8.4f}  {r.val_bpb:>8.4f}  {r.steps:>7}  {params:>12}  {r.source}")
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


def _colour(i, n):
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


def _set_ylim(ax, curves, late=0.1):
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
        c = _colour(i, len(runs))
        steps, raw, smooth = train_curve(run, beta)
        vs, vn = val_curve(run)
        ax.plot(steps, raw, color=c, alpha=0.2, lw=0.8)
        ax.plot(steps, smooth, color=c, lw=1.6, label=run_label(run))
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


def plot_experiments(ax, groups, beta, late=0.5, legend_max=8):
    """Report mode: seeds of one experiment faint in one colour, the mean over its finished seeds bold, a
    failed seed dashed. The axes show the last (1 - late) of training, where the arms separate, with y fitted
    to it (the first steps, up near ln(vocab), would squeeze the end into a few pixels)."""
    curves, top = [], 0
    for i, (exp, runs) in enumerate(groups.items()):
        c = _colour(i, len(groups))
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
    _set_ylim(ax, curves, late)
    _style_axes(ax, beta)
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
        return {name: _colour(i, len(a.family)) for i, name in enumerate(a.family)}
    exps = list(a.groups)
    return {name: _colour(exps.index(name), len(exps)) if name in exps else "C7" for name in a.family}


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
        if _is_num(st["mean"]):
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


def _draw_table(fig, rect, header, cells, size):
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
    plt = _pyplot()
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
    _draw_table(fig, [0.03, y - h, 0.94, h], RUN_HEADER, [run_cells(r) for r in a.rows], tsize)
    y -= h + 0.008
    if a.family:
        h = row_h * (len(a.family) + 1)
        _draw_table(fig, [0.03, y - h, 0.94, h], comparison_header(a), comparison_rows(a), tsize)
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
    return f"{t:g} s" if _is_num(t) and t > 0 else None


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

    plt = _pyplot()
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

# -----------------------------------------------------------------------------
# studies: tuned learning rates, several sizes, compute multipliers
#
# ablate.py runs a study into OUT: OUT/study.json (design, seeds, tuned key and grid, sizes, budget), then per
# size a folder OUT/<size>/ (OUT itself without --scale) with tune/<experiment>/<KEY>=<value>/seed<k>/ (the
# tuning runs, scored on the tuning set), choice.json (each arm's chosen value) and <experiment>/seed<k>/ (the
# comparison runs at the chosen values, on the validation set). `python plot.py --study OUT` reads it all here.

FIT_MIN_SIZES = 4              # from this many sizes on (more than the law's 3 parameters) a law is fitted too
EXPONENT_RANGE = (1e-3, 4.0)   # the fitted law's exponent b is searched in this range


@dataclass
class StudySize:
    name: str              # the size's folder name ("" without --scale)
    args: dict             # its config keys, e.g. {"n_layer": "2", "n_embd": "64"}
    folder: Path
    runs: dict             # {experiment: {seed: Run}}: finished comparison runs
    tune: dict             # {experiment: {value: {seed: tuning-set NLL, or None when it diverged}}}
    choice: dict | None    # choice.json's by_experiment, or None when there is none
    problems: list         # one line per comparison or tuning run that did not finish (diverged tuning: a result)
    analysis: object = None  # Analysis of the comparison runs (None without any)

    @property
    def label(self):
        return self.name or "(one size)"


@dataclass
class Study:
    root: Path
    spec: dict             # study.json
    design: dict           # spec["design"]
    reference: str         # the experiment every other one is compared with
    key: str | None        # the tuned config key (None: no tuning stage)
    values: list           # its grid, as the strings ablate.py passed
    sizes: list            # [StudySize], in study.json's order
    notes: list            # plain sentences for the report


def run_state(folder):
    """(Run or None, state, text) of one run folder: state is Run.status ("finished", "diverged",
    "unfinished") or "not started" (no log.txt); text says it in words ("diverged at step 180")."""
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
    """Read a study folder written by ablate.py (layout above). UsageError when it is not one."""
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
    study = Study(root, spec, design, design.get("reference") or REFERENCE[design["design"]], key, values, [], [])
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

# the compute of a run: two measures

def train_flops(run):
    """(training FLOPs of a finished run, where the number came from): results.json's train_flops (train.py's
    count, train.flops_per_token x tokens: 6 per weight of every matmul, the tied output head included, plus
    the attention term), else its flops_per_token x tokens; (None, "unknown") when it records neither."""
    res = run.results or {}
    if _is_num(res.get("train_flops")):
        return float(res["train_flops"]), "train_flops in results.json"
    if _is_num(res.get("flops_per_token")) and run.tokens:
        return float(res["flops_per_token"]) * run.tokens, "flops_per_token x tokens in results.json"
    return None, "unknown"


def nonembedding_compute(run):
    """Kaplan et al.'s C = 6 N D of a finished run: N = its non-embedding parameters (results.json's params),
    D = its training tokens; None when either is unknown. Without the output head, which at small widths is
    most of the training FLOPs."""
    n = ((run.results or {}).get("params") or {}).get("non_embedding")
    return 6.0 * n * run.tokens if _is_num(n) and run.tokens else None


MEASURES = {"training FLOPs": lambda run: train_flops(run)[0], "non-embedding 6ND": nonembedding_compute}

# the reference's loss against compute: its measured points, and a law fitted through them

def _law_fit(logc, loss, b):
    """Least squares of loss = a * x + c with x = exp(-b * logc) = (C/C0)^-b, row by row (b: one per row).
    Returns (a, c, residual sum of squares). For a fixed exponent the law is a straight line in x."""
    x = np.exp(-b[:, None] * logc)
    xc = x - x.mean(1, keepdims=True)
    lc = loss - loss.mean(1, keepdims=True)
    sxx, sxl = (xc * xc).sum(1), (xc * lc).sum(1)
    a = sxl / sxx
    c = loss.mean(1) - a * x.mean(1)
    return a, c, (lc * lc).sum(1) - a * sxl


def fit_power_law(logc, loss, iters=60):
    """Fit L = a * (C/C0)^-b + c to each row of loss (B, n) at log compute logc (B, n) (log C - log C0):
    for each b the best a, c are a straight-line fit, so b alone is searched: a log-spaced grid over
    EXPONENT_RANGE, then golden-section search between the grid neighbours of the best point. Returns
    (a, b, c) arrays; a row whose best a is not > 0 (loss not falling with compute) gets nan."""
    logc, loss = np.atleast_2d(logc), np.atleast_2d(loss)
    rows = len(loss)
    grid = np.geomspace(*EXPONENT_RANGE, 81)
    sse = np.array([_law_fit(logc, loss, np.full(rows, b))[2] for b in grid])  # (grid, rows)
    k = np.nanargmin(np.where(np.isfinite(sse), sse, np.inf), axis=0)
    lo, hi = np.log(grid[np.maximum(k - 1, 0)]), np.log(grid[np.minimum(k + 1, len(grid) - 1)])
    g = (math.sqrt(5) - 1) / 2
    for _ in range(iters):  # golden section in log b, every row at once
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        left = _law_fit(logc, loss, np.exp(m1))[2] <= _law_fit(logc, loss, np.exp(m2))[2]
        lo, hi = np.where(left, lo, m1), np.where(left, m2, hi)
    b = np.exp((lo + hi) / 2)
    a, c, _ = _law_fit(logc, loss, b)
    bad = ~(a > 0)
    return np.where(bad, np.nan, a), np.where(bad, np.nan, b), np.where(bad, np.nan, c)


def invert_power_law(target, a, b, c):
    """log(C/C0) at which a * (C/C0)^-b + c = target; inf when target <= c (below the law's floor)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log((target - c) / a) / b
    return np.where(target > c, out, np.where(np.isnan(a), np.nan, np.inf))


def first_crossing(target, logc, curve):
    """log C at which a curve first reaches the loss target, row by row: target (B,), curve (B, S) the losses at
    log compute logc (S,), ascending, joined by straight lines in log C. Never extrapolated: -inf where the
    first point is already below target (reached before the smallest measured compute), +inf where no point
    reaches it (beyond the largest). Raising a point of the curve, or lowering target, never gives less."""
    target, curve = np.asarray(target, dtype=float), np.asarray(curve, dtype=float)
    reached = curve <= target[:, None]
    k = np.maximum(reached.argmax(1), 1)      # the first point at or below target (point 0: handled below)
    rows = np.arange(len(curve))
    l0, l1, c0, c1 = curve[rows, k - 1], curve[rows, k], logc[k - 1], logc[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = c0 + (target - l0) * (c1 - c0) / (l1 - l0)
    out = np.where(curve[:, 0] == target, logc[0], np.where(curve[:, 0] < target, -np.inf, out))
    out = np.where(reached.any(1), out, np.inf)
    return np.where(np.isnan(target) | np.isnan(curve).any(1), np.nan, out)


def _t_half(var, df):
    """Half-width of a 95% Student t interval from the variance of the estimate and its degrees of freedom
    (0 when the variance is 0, nan when it is unknown)."""
    var = np.asarray(var, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(var > 0, t_quantile(0.975, df) * np.sqrt(np.abs(var)), np.where(var == 0, 0.0, np.nan))


def log_multiplier(ref, diffs, j, logc, logc_arm):
    """The log compute multiplier of an arm at size j and its 95% interval, row by row (B studies at once).
    ref: [S arrays (B, n_i)], the reference's per-seed val NLL at each size, at log compute logc (S,),
    ascending; diffs (B, m): the arm's paired differences from the reference at size j (arm - reference, per
    seed); logc_arm: the arm's log compute. Returns (estimate, lo, hi), each (B,): +-inf past the measured
    range (first_crossing), lo and hi nan without two seeds to estimate a spread.
    Estimate: where the reference's mean curve reaches its own mean at size j plus the mean paired Δ.
    Interval: the paired Δ's 95% Student t interval pushed through the curve, with every other size's point
    moved by the 95% Welch t interval of its difference from size j (other runs) the way that widens it. The
    multiplier falls as the target loss rises and rises as a point of the curve rises, so the interval holds
    the true multiplier whenever the intervals hold their truths, and adding half-widths (instead of their
    root sum of squares) makes it conservative. The point of size j is not moved: with logc_arm = logc[j]
    the interval excludes 0 (a multiplier of 1) only where the paired Δ's t interval excludes 0."""
    means = np.stack([r.mean(1) for r in ref], 1)                                            # (B, S)
    n = np.array([r.shape[1] for r in ref], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        vm = np.stack([r.var(1, ddof=1) if r.shape[1] > 1 else np.full(len(r), np.nan) for r in ref], 1) / n
        df = (vm + vm[:, [j]]) ** 2 / (vm ** 2 / (n - 1) + vm[:, [j]] ** 2 / (n[j] - 1))   # Welch-Satterthwaite
        h = _t_half(vm + vm[:, [j]], df)
        m = diffs.shape[1]
        hd = _t_half(diffs.var(1, ddof=1) / m, m - 1) if m > 1 else np.full(len(diffs), np.nan)
    h[:, j] = 0.0
    target = means[:, j] + diffs.mean(1)
    est = first_crossing(target, logc, means) - logc_arm
    lo = first_crossing(target + hd, logc, means - h) - logc_arm
    hi = first_crossing(target - hd, logc, means + h) - logc_arm
    return est, lo, hi


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
            hd = float(_t_half(np.var(diffs, ddof=1) / len(diffs), len(diffs) - 1)) if len(diffs) > 1 else math.nan
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
    plt = _pyplot()
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
            c = _colour(i, len(exps))
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

# per-size verdicts and the paired differences against compute

def size_flops(size, exp):
    """Mean training FLOPs of exp's finished runs at this size (None when unknown)."""
    f = [train_flops(r)[0] for r in size.runs.get(exp, {}).values()]
    return float(np.mean(f)) if f and None not in f else None


def delta_compute_figure(study):
    """Δ of each comparison (or factorial effect) against training FLOPs, a line per switch across the sizes,
    bars = its 95% CI; a filled marker is a Holm verdict at its size, a hollow one is not."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    names = list(dict.fromkeys(x for s in study.sizes if s.analysis for x in s.analysis.family))
    for i, name in enumerate(names):
        c = _colour(i, len(names))
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

# the report: one list of blocks, written as markdown and as PDF pages

def _fmt_flops(x):
    return "?" if x is None or not _is_num(x) else f"{x:.3g}"


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
        ci = f" [{_signed(d[1])}, {_signed(d[2])}]" if not math.isnan(d[1]) else ""
        inside = "n/a" if math.isnan(m.value) else "beyond the largest" if math.isinf(m.value) else \
            "before the smallest" if m.value == 0 else "inside"
        rows.append([*key, f"{m.loss:.4f}", _signed(d[0]) + ci] +
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
        if flops is None and _is_num(plan("flops_per_token")) and _is_num(plan("tokens")):
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
            parts += [_md_table(b[1], b[2]), ""]
        elif b[0] == "img":
            parts += [f"![{Path(b[1]).stem}]({Path(b[1]).name})", ""]
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def write_study_pdf(path, title, blocks, figures):
    """A4 pages: the text and tables top to bottom, flowing onto the next page when full; then each figure
    ({png path: its matplotlib figure}) on a page of its own, drawn as vectors, in the order of the text."""
    from matplotlib.backends.backend_pdf import PdfPages
    plt = _pyplot()
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
                    _draw_table(fig, [0.03, y - h, 0.94, h], b[1], chunk, 6.5)
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
    Returns (Study, tuning rows, multipliers (method, [Multiplier], notes), paths)."""
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
            _pyplot().close(fig)
    return study, rows, mult, [pdf_path, md_path, *pngs.values()]


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
