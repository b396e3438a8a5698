"""
The statistics behind gpt-ablate's reports, as pure functions of numbers: no runs, files or figures here
(run_records.py reads the runs; ablation_report.py and study_report.py make the reports from these numbers).
test_plot.py checks them against scipy.stats and by simulation (intervals, tests, Holm, power, factorial
effects); test_study_report.py the compute multiplier's curve, law and interval.

  * per comparison (or effect) over n seeds, family_stats: the mean, its 95% Student t interval (df = n - 1),
    the two-sided p-value of the one-sample (= paired) t-test, Holm-Bonferroni verdicts at family-wise ALPHA
    over the family, and the Bonferroni interval at 1 - ALPHA/k that goes with them (ci_family).
  * power, add_power: the exact minimum detectable effect at POWER (noncentral t) and the seeds needed for
    TARGET nats, also at the ends of the 95% chi-square interval of the true sd.
  * factorial_effects: main effects and two-way interactions of a 2^m factorial, once per seed.
  * the compute multiplier: the first crossing of a loss target on a curve piecewise linear in log C, its
    interval (log_multiplier), and the law L = a*(C/C0)^-b + c fitted by least squares (fit_power_law).
  * ema: the smoothing of a train curve.

numpy only; scipy (special, stats, optimize) is imported on first use, so plain plots do without it.
"""

import functools
import itertools
import math

import numpy as np

ALPHA = 0.05        # family-wise error rate of a report's verdicts
POWER = 0.8         # power at which the minimum detectable effect is stated
TARGET = 0.02       # nats: the effect size for "seeds needed"
MAX_SEEDS = 100_000  # the seeds-needed search stops here
EXPONENT_RANGE = (1e-3, 4.0)   # the fitted law's exponent b is searched in this range


def is_num(x):
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def ema(values, beta):
    """Bias-corrected exponential moving average (as TensorBoard smooths)."""
    out, m = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def mean_std(values):
    """(mean, std with ddof=1) of the finite values; std is None when fewer than 2."""
    v = [float(x) for x in values if is_num(x)]
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
                   and is_num(exp_by_seed[k]) and is_num(ref_by_seed[k]))
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
        v = [float(x) for x in values if is_num(x)]
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
        if not all(c in got and is_num(got[c]) for c in cells):
            skipped.append(seed)
            continue
        y = np.array([got[c] for c in cells], dtype=float)
        for e, c in contrasts.items():
            effects[e].append(float(y[c > 0].mean() - y[c < 0].mean()))
        used.append(seed)
    return effects, used, skipped

# -----------------------------------------------------------------------------
# the compute multiplier: the reference's loss against compute, its measured points and a law fitted
# through them (study_report.py says what they mean)

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


def t_half(var, df):
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
        h = t_half(vm + vm[:, [j]], df)
        m = diffs.shape[1]
        hd = t_half(diffs.var(1, ddof=1) / m, m - 1) if m > 1 else np.full(len(diffs), np.nan)
    h[:, j] = 0.0
    target = means[:, j] + diffs.mean(1)
    est = first_crossing(target, logc, means) - logc_arm
    lo = first_crossing(target + hd, logc, means - h) - logc_arm
    hi = first_crossing(target - hd, logc, means + h) - logc_arm
    return est, lo, hi
