"""
Reading what ran: a run's log.txt and the results.json beside it, or a runs.json of finished runs (as shipped
in results/), into a RecordedRun (a run as its files recorded it: name, status, curves, final numbers; the
runs that ablate.py plans are its PlannedRun), and the design of an ablation: its design.json (ablate.py
makes the designs and writes it) or, without one, a design inferred from the folder names and the runs'
configs. log.txt is parsed by train.py's own reader and the switches are train.py's registry (train is
imported on first use: it imports torch).

Bad input (a missing file, a log without usable rows, a file that is not a runs.json) raises UsageError;
plot.py turns it into a one-line error and exit code 2.
"""

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stats import is_num

DESIGNS = ("one-at-a-time", "leave-one-out", "factorial")   # the designs ablate.py makes (design.json)
REFERENCE = {"one-at-a-time": "baseline", "leave-one-out": "all", "factorial": "baseline"}


class UsageError(Exception):
    """Bad input (arguments, files); plot.py's main() turns it into a one-line message and exit 2."""


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
        elif kind == "resume" and is_num(step):
            for k in rows:
                rows[k] = [r for r in rows[k] if r["step"] <= step]
        elif kind in rows and is_num(step):
            rows[kind].append(e)
    key = {"train": "train_nll", "eval": "val_nll"}
    out = {}
    for kind, kind_rows in rows.items():
        last = {r["step"]: r for r in kind_rows}  # later rows overwrite earlier ones
        out[kind] = [last[s] for s in sorted(last) if is_num(last[s].get(key[kind]))]
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
class RecordedRun:
    """One training run as its files recorded it: its curves from log.txt and, if it finished, results.json (a
    runs.json entry: results.json's numbers only). ablate.py's PlannedRun is a run it plans."""
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
            return "finished" if is_num(self.results.get("val_nll")) else "diverged"
        return "unfinished"

    @property
    def status_text(self):
        """'finished', 'diverged at step 180', 'diverged at the final evaluation (step 500)',
        'unfinished (last logged step 300)'."""
        if self.status == "diverged":
            if self.nan_event is not None and is_num(self.nan_event.get("step")):
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
        return float(v) if is_num(v) else None

    def _final(self, key):
        """The final number; a diverged run has none (an earlier estimate is not its result); an
        unfinished one shows its last periodic evaluation (labelled so by `source`)."""
        if self.status == "diverged":
            return float("nan")
        if self._result(key) is not None:
            return self._result(key)
        vals = [r[key] for r in self.evals if is_num(r.get(key))]
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
        vals = [r["tokens"] for r in self.train + self.evals if is_num(r.get("tokens"))]
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
        vals = [r["elapsed"] for r in self.train + self.evals if is_num(r.get("elapsed"))]
        return float(max(vals)) if vals else None

    @property
    def params(self):
        for src in (self.results, self.start):
            total = ((src or {}).get("params") or {}).get("total")
            if is_num(total):
                return int(total)
        return None

    @property
    def tokens_per_s(self):
        """Training throughput: tokens / train_time (results.json), else results' or the log's tokens_per_s."""
        if self.train_time and self.tokens:
            return self.tokens / self.train_time
        if self._result("tokens_per_s") is not None:
            return self._result("tokens_per_s")
        vals = [r["tokens_per_s"] for r in self.train if is_num(r.get("tokens_per_s"))]
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
    """The RecordedRun of an existing log.txt and the results.json beside it, whatever rows the log has."""
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
    run = RecordedRun(name, out_dir, experiment, seed, train, evals, start, results, divergence(events))
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
            runs.append(RecordedRun(f"{exp}/seed{seed}", path.resolve().parent / exp / f"seed{seed}", exp,
                                    seed, results=dict(e)))
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
# the design the runs ran: design.json, else inferred; which switches each run had on

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
