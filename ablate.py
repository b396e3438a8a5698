"""
ablate.py - run an ablation or a study: every experiment of a design x N seeds (seeds 1..N) into
OUT/<experiment>/seed<k>/, then the report (plot.py); optionally with the learning rate (or any config key)
tuned per arm (--tune), at several model sizes (--scale), with per-size token budgets or one wall-clock budget
(--budget), N runs at once (--jobs), resumable, or as SLURM job arrays (--print-slurm, --submit, --task).

    python ablate.py --seeds 3 --out out/ablate config/baseline.py                    # an ablation
    python ablate.py --switches rope --tune learning_rate=1e-3,3e-3,1e-2 --tune_docs=20 \\
        --scale n_embd=32,64 --seeds 2 --jobs 2 --out out/study config/cpu_ablation.py  # a study

Three jobs, three files: train.py trains one run; this file runs ablations and studies (the designs, stages,
sizes, budgets, arrays, resume); plot.py reads the results (statistics, figures, reports). The experiments
come from train.py's switch registry (the designs below), so a new switch needs no edit here. This file is the
one place that maps a job array's task index to a run; slurm/ablate.sbatch calls `python ablate.py --task
$SLURM_ARRAY_TASK_ID ...`. Every argument that is not an option here goes to train.py unchanged (same data,
validation set, token budget and settings for every run); after them each run gets --out_dir, --seed and every
switch explicitly (--use_x=True/False, plus --KEY=VALUE for a value switch that is on), so a config file cannot
leak a switch into the baseline.

A study, per size: the tuning stage runs every arm at every --tune value with the tuning seeds
(1001, 1002 by default: never a comparison seed), evaluated on the tuning set (train.py --eval_set=tune: the
tune_docs documents just before the validation set, held out from training in both stages); each arm's
value with the lowest mean final tuning NLL is chosen (a diverged value is a result, skipped). While an
arm's best value is the lowest or highest value tried, it is tuned again one grid step beyond it (a round;
at most --tune-max-extend values per side), so the choice is inside the values tried. The comparison stage
then runs every arm at its chosen value with seeds 1..N on the validation set. warmup_iters follows each
size's steps (--warmup-frac; by default the config's own fraction), unless given. Layout:

    OUT/design.json                                          the design, written once; another is refused
    OUT/study.json                                           a study's (--tune, --scale) spec; another is refused
    OUT/[SIZE/]tune/<experiment>/<KEY>=<value>/seed<k>/     tuning runs (SIZE = n_layer=2+n_embd=64)
    OUT/[SIZE/]choice.json                                   per arm: values tried (round, why), scores, choice,
                                                             its margin and noise, why it stayed on an edge
    OUT/[SIZE/]<experiment>/seed<k>/                         comparison runs
    OUT/[SIZE/]budget.json                                   --budget: the calibrated step count
    OUT/console/...                                          with --jobs > 1: each run's console output
"""

import argparse
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import train   # the config, switch registry, model (parameters, FLOPs) and helpers of train.py

HERE = Path(__file__).resolve().parent
PROG = "ablate.py"
PY = os.environ.get("PYTHON") or sys.executable  # the interpreter of train.py and plot.py
TUNE_SEED0 = 1000          # tuning seeds are 1001, 1002, ...; comparison seeds 1..N (at most 1000)
TUNE_SEEDS = 2             # tuning seeds per value by default: every choice has a noise estimate (SEEDS_RULE)
MAX_EXTEND = 3             # values tried beyond the grid on a side at most, by default (--tune-max-extend)
EXIT_NAN, EXIT_STOPPED = train.EXIT_NAN, train.EXIT_PREEMPTED
MANAGED = ("out_dir", "seed", "resume", "eval_set")   # set per run by this file
VALUE_RE = re.compile(r"[A-Za-z0-9._+-]+")           # a --switch, --tune or --scale value (part of a folder name)


class UsageError(Exception):
    """A bad argument: one line, exit 2."""


def say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def quote(cmd):
    return " ".join(shlex.quote(str(a)) for a in cmd)


def script(name):  # train.py / plot.py: relative names when run from the repo root (readable commands)
    return name if Path.cwd() == HERE else str(HERE / name)


# -----------------------------------------------------------------------------
# arguments

def get_args(argv):
    train_tail = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_tail = argv[:i], argv[i + 1:]

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            m = re.fullmatch(r"argument (--[\w-]+).*: expected one argument", message)
            raise UsageError(f"{m.group(1)} needs a value" if m else message)

    p = Parser(prog="python ablate.py", allow_abbrev=False, add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--list-switches", action="store_true")
    p.add_argument("--design")
    p.add_argument("--switches")
    p.add_argument("--switch", action="append", default=[])
    p.add_argument("--experiments")
    p.add_argument("--seeds", default="1")
    p.add_argument("--out", default="out/ablate")
    p.add_argument("--tune")
    p.add_argument("--tune-seeds")
    p.add_argument("--tune-max-extend")
    p.add_argument("--warmup-frac")
    p.add_argument("--scale", action="append", default=[])
    p.add_argument("--tokens")
    p.add_argument("--tokens-per-param")
    p.add_argument("--budget")
    p.add_argument("--jobs", default="1")
    p.add_argument("--task")
    p.add_argument("--stage", choices=("tune", "compare"))
    p.add_argument("--round")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--print-slurm", action="store_true")
    p.add_argument("--submit", action="store_true")
    p.add_argument("--no-report", action="store_true")
    args, rest = p.parse_known_args(argv)
    args.train_args = rest + train_tail
    return args


def positive_int(text, what, limit=None):
    if not re.fullmatch(r"\d+", str(text)) or int(text) < 1 or (limit and int(text) > limit):
        raise UsageError(f"{what} must be a positive integer{f' <= {limit}' if limit else ''} (got '{text}')")
    return int(text)


def parse_number(text, what):
    """2e6, 500000, 2M, 1.5k, 3G -> a positive float."""
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?\d+)?)([kKmMgGbB]?)", text.strip())
    try:
        value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}[m.group(2).lower()]
    except (AttributeError, ValueError):
        raise UsageError(f"{what}: expected a positive number such as 2e6, 500k or 2M (got '{text}')") from None
    if not value > 0 or not math.isfinite(value):
        raise UsageError(f"{what} must be positive (got '{text}')")
    return value


def parse_grid(spec, opt, unique=True):
    """'KEY=v1,v2,...' -> (key, [value strings]); each value checked against the key's type. A --scale key
    may repeat a value (n_layer=1,1,2 with n_embd=16,32,64): there the sizes must differ, not the values."""
    key, eq, text = spec.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    values = [v.strip() for v in text.split(",")]
    if not eq or not key or not text or "" in values:
        raise UsageError(f"{opt} expects KEY=v1,v2,... (got '{spec}')")
    if key not in train.CONFIG_FIELDS:
        raise UsageError(f"{opt} {spec}: unknown config key '{key}'")
    if key in train.SWITCHES.values():
        raise UsageError(f"{opt} {spec}: {key} is a switch; choose switches with --switches")
    if key in MANAGED + ("tune_docs", "data_seed", "max_iters", "max_time"):
        raise UsageError(f"{opt} {spec}: {key} is set by the study itself and cannot be varied")
    for v in values:
        if not VALUE_RE.fullmatch(v):
            raise UsageError(f"{opt} {spec}: the value '{v}' may only use the characters A-Z a-z 0-9 . _ + -")
        try:
            train.coerce(key, v, opt)
        except train.UserError as e:
            raise UsageError(str(e)) from None
    if unique and len(set(values)) != len(values):
        raise UsageError(f"{opt} {spec}: a value is listed twice")
    return key, values


def arg_key(a):  # the config key of a train.py argument (--out-dir=x -> out_dir), else None
    return a[2:].partition("=")[0].replace("-", "_") if a.startswith("--") else None


# -----------------------------------------------------------------------------
# designs: which experiments an ablation runs (the one place they are defined; OUT/design.json records them)
#   one-at-a-time  baseline, each switch alone, all (every chosen switch on); reference: baseline
#   leave-one-out  all, then no_<x> = all without x for each x; reference: all
#   factorial      every combination ("baseline", "a+b", ..., "all"); reference: baseline
# The switches come from train.py's registry (train.SWITCHES); default: those declared with ablate=True, in
# declaration order. A value switch (--switch KEY=VALUE) is on as --KEY=VALUE, off as the config's value. Every
# experiment sets every registered switch explicitly (--use_x=True/False), so a config file can never leak one
# in. design.json: {"design", "reference", "switches": [{"name", "key", "on", "off"}], "experiments": [{"name",
# "on": [switch names], "args": [...]}]}, experiments in task order.

DESIGNS = ("one-at-a-time", "leave-one-out", "factorial")
REFERENCE = {"one-at-a-time": "baseline", "leave-one-out": "all", "factorial": "baseline"}
SWITCH_MANAGED = ("out_dir", "seed", "resume", "data_seed")  # never a value switch


def registered_switches():
    """{switch name: config key} from train.py, in declaration order."""
    return dict(train.SWITCHES)


def default_switch_names():
    """The registered switches declared with ablate=True, in declaration order."""
    return [n for n, k in train.SWITCHES.items() if train.CONFIG_FIELDS[k].metadata.get("ablate", True)]


def parse_value_switch(spec):
    """'KEY=VALUE' -> {"name", "key", "on", "off": None}; UsageError on a bad key or value."""
    key, eq, text = spec.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not eq or not key or not text:
        raise UsageError(f"--switch expects KEY=VALUE, got '{spec}'")
    if key in train.SWITCHES.values():
        name = key.removeprefix("use_")
        raise UsageError(f"--switch {spec}: {key} is a registered switch; choose it with --switches {name}")
    if key in SWITCH_MANAGED:
        raise UsageError(f"--switch {spec}: {key} is set by ablate.py itself and cannot be a switch "
                         f"(managed keys: {', '.join(SWITCH_MANAGED)})")
    if not VALUE_RE.fullmatch(text):
        raise UsageError(f"--switch {spec}: the value may only use the characters A-Z a-z 0-9 . _ + -")
    try:
        value = train.coerce(key, text, "--switch")
    except train.UserError as e:
        raise UsageError(str(e)) from None
    return {"name": f"{key}={text}", "key": key, "on": value, "off": None}


def choose_switches(names=None, values=()):
    """The switches of a design: registered ones (names: list, or None for the default set) followed by
    value switches ('KEY=VALUE' strings). Returns [{"name", "key", "on", "off"}]; UsageError when bad."""
    registry = registered_switches()
    names = default_switch_names() if names is None else names
    out, seen_keys = [], set()
    for name in names:
        if name not in registry:
            raise UsageError(f"unknown switch '{name}' (registered switches: {', '.join(registry)})")
        if registry[name] in seen_keys:
            raise UsageError(f"switch '{name}' is listed twice")
        seen_keys.add(registry[name])
        out.append({"name": name, "key": registry[name], "on": True, "off": False})
    for spec in values:
        sw = parse_value_switch(spec)
        if sw["key"] in seen_keys:
            raise UsageError(f"--switch {spec}: {sw['key']} is given twice")
        seen_keys.add(sw["key"])
        out.append(sw)
    if not out:
        raise UsageError("no switches chosen (give --switches and/or --switch KEY=VALUE)")
    return out


def experiment_args(on, switches):
    """Command-line args of one experiment: every registered switch explicitly True/False, then
    --KEY=VALUE for each value switch that is on."""
    on = set(on)
    bool_on = {s["key"] for s in switches if s["off"] is not None and s["name"] in on}
    args = [f"--{key}={key in bool_on}" for key in registered_switches().values()]
    args += [f"--{s['name']}" for s in switches if s["off"] is None and s["name"] in on]
    return args


def make_design(design="one-at-a-time", switches=None):
    """The experiments of a design as a json-ready dict (design.json; see above)."""
    if design not in DESIGNS:
        raise UsageError(f"unknown design '{design}' (designs: {', '.join(DESIGNS)})")
    switches = choose_switches() if switches is None else switches
    names = [s["name"] for s in switches]
    m = len(names)
    full = "all" if m > 1 else names[0]
    if design == "one-at-a-time":
        exps = [("baseline", [])] + [(n, [n]) for n in names] + [("all", names)]
    elif design == "leave-one-out":
        exps = [("all", names)] + [(f"no_{n}", [x for x in names if x != n]) for n in names]
    else:
        exps = []
        for r in range(m + 1):
            for combo in itertools.combinations(names, r):
                name = "baseline" if r == 0 else full if r == m else "+".join(combo)
                exps.append((name, list(combo)))
    experiments, seen = [], set()
    for name, on in exps:  # no duplicates (one switch: "all" is that switch)
        if frozenset(on) in seen:
            continue
        seen.add(frozenset(on))
        experiments.append({"name": name, "on": on, "args": experiment_args(on, switches)})
    return {"design": design, "reference": REFERENCE[design], "switches": switches, "experiments": experiments}


# -----------------------------------------------------------------------------
# the study: design, sizes, tuning grid, budgets (everything that study.json records)

def make_study(args):
    seeds = positive_int(args.seeds, "--seeds", limit=TUNE_SEED0 if args.tune else None)
    tune_seeds = positive_int(args.tune_seeds or TUNE_SEEDS, "--tune-seeds", limit=1000)
    max_extend = args.tune_max_extend or str(MAX_EXTEND)
    if not re.fullmatch(r"\d+", max_extend) or int(max_extend) > 20:
        raise UsageError(f"--tune-max-extend must be an integer from 0 to 20 (got '{max_extend}')")
    jobs = positive_int(args.jobs, "--jobs")
    if not args.out:
        raise UsageError("--out must not be empty")
    names = None if args.switches is None else [s.strip() for s in args.switches.split(",") if s.strip()]
    try:
        design = make_design(args.design or "one-at-a-time", choose_switches(names, args.switch))
    except UsageError as e:
        raise UsageError(f"design: {e}") from None
    if args.experiments:  # a subset of the design's experiments, e.g. baseline,rope,all
        keep = [n.strip() for n in args.experiments.split(",") if n.strip()]
        names = [e["name"] for e in design["experiments"]]
        unknown = [n for n in keep if n not in names]
        if unknown or not keep:
            raise UsageError(f"--experiments: {', '.join(unknown) or 'none given'} not in the design "
                             f"(its experiments: {', '.join(names)})")
        design["experiments"] = [e for e in design["experiments"] if e["name"] in keep]
    value_keys = {s["key"] for s in design["switches"] if s["off"] is None}
    tune = None
    if args.tune:
        key, values = parse_grid(args.tune, "--tune")
        if len(values) < 2:
            raise UsageError(f"--tune {args.tune}: give at least two values to choose from")
        tune = {"key": key, "values": values, "seeds": [TUNE_SEED0 + i for i in range(1, tune_seeds + 1)],
                "max_extend": int(max_extend)}
    else:
        given = [o for o, v in (("--tune-seeds", args.tune_seeds), ("--tune-max-extend", args.tune_max_extend)) if v]
        if given:
            raise UsageError(f"{given[0]} needs --tune")
    scale = [parse_grid(s, "--scale", unique=False) for s in args.scale]
    keys = [k for k, _ in scale]
    if len(set(keys)) != len(keys):
        raise UsageError("--scale: a key is given twice")
    if len({len(v) for _, v in scale}) > 1:
        raise UsageError("--scale: every key needs the same number of values (the i-th values make size i); got "
                         + ", ".join(f"{k}: {len(v)}" for k, v in scale))
    if tune and tune["key"] in keys:
        raise UsageError(f"--tune {tune['key']} is also a --scale key")
    for k in keys + ([tune["key"]] if tune else []):
        if k in value_keys:
            raise UsageError(f"{k} is both a value switch (--switch) and a --tune/--scale key")
    n_sizes = len(scale[0][1]) if scale else 1
    sizes = [{"name": "+".join(f"{k}={v[i]}" for k, v in scale), "args": {k: v[i] for k, v in scale}}
             for i in range(n_sizes)]
    names = [s["name"] for s in sizes]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise UsageError(f"--scale: the size {twice} is listed twice")
    rules = [o for o, v in (("--tokens", args.tokens), ("--tokens-per-param", args.tokens_per_param),
                            ("--budget", args.budget)) if v]
    if len(rules) > 1:
        raise UsageError(f"{' and '.join(rules)}: choose one budget rule")
    train_args = args.train_args
    for a in train_args:
        k = arg_key(a)
        if k in MANAGED:
            raise UsageError(f"ablate.py sets --{k} itself (got '{a}'); use --out DIR / --seeds N")
        if k in train.SWITCHES.values():
            raise UsageError(f"ablate.py sets the switches itself, per experiment (got '{a}'); "
                             "choose them with --design/--switches/--switch")
        if k in keys:
            raise UsageError(f"{k} is set per size by --scale; do not also give '{a}'")
        if rules == ["--budget"] and k == "max_time":
            raise UsageError(f"--budget replaces max_time (one step count for all arms); do not also give '{a}'")
        if rules and k in ("max_iters", "max_time"):
            raise UsageError(f"{rules[0]} sets max_iters for every run; do not also give '{a}'")
    # every size's effective config (the baseline arm): checks the arguments once, gives params and FLOPs
    cfgs, params, flops = [], [], []
    for s in sizes:
        try:
            cfg = train.parse_args(train_args + [f"--{k}={v}" for k, v in s["args"].items()])
        except train.UserError as e:
            raise UsageError(f"train.py arguments{' at size ' + s['name'] if s['name'] else ''}: {e}") from None
        if tune and cfg.tune_docs <= 0:
            raise UsageError("--tune needs a tuning set held out from training and validation: pass "
                             "--tune_docs=K (e.g. --tune_docs=20; the comparison runs get it too, so both "
                             "stages train on the same documents)")
        model = train.GPT(cfg)
        cfgs.append(cfg)
        params.append(model.num_params())
        flops.append(train.flops_per_token(model))
    tokens_per_step = [c.batch_size * c.block_size for c in cfgs]
    budget = {"rule": "config", "tokens_per_step": tokens_per_step, "params": params, "flops_per_token": flops}
    if args.tokens or args.tokens_per_param:
        if args.tokens:
            tokens = [parse_number(t, "--tokens") for t in args.tokens.split(",")]
            if len(tokens) != n_sizes:
                raise UsageError(f"--tokens gives {len(tokens)} budgets for {n_sizes} size(s): one per size")
            budget.update(rule="tokens")
        else:
            ratio = parse_number(args.tokens_per_param, "--tokens-per-param")
            tokens = [ratio * p["non_embedding"] for p in params]
            budget.update(rule="tokens_per_param", ratio=ratio)
        budget["max_iters"] = [max(1, math.ceil(t / n)) for t, n in zip(tokens, tokens_per_step)]
    elif args.budget:
        if not re.fullmatch(r"([0-9]+(\.[0-9]*)?[hmsHMS]?)+", args.budget) or not re.search("[1-9]", args.budget):
            raise UsageError(f"--budget expects a duration such as 4h, 30m, 1h30m or 90s (got '{args.budget}')")
        budget.update(rule="budget", duration=args.budget)
    else:
        budget["max_iters"] = [c.max_iters for c in cfgs]
        max_time = [a.partition("=")[2] for a in train_args if arg_key(a) == "max_time"]
        if max_time and max_time[-1] not in ("", "0") and max_time[-1].lower() != "none":
            say(f"warning: with --max_time={max_time[-1]} each arm turns its own speed into a step count, so the "
                f"arms train on different numbers of tokens; use --budget {max_time[-1]} for one step count shared "
                "by every arm")
    if "max_iters" in budget:
        budget["tokens"] = [m * n for m, n in zip(budget["max_iters"], tokens_per_step)]
    tuned = bool(tune) and tune["key"] == "warmup_iters"
    explicit = tuned or "warmup_iters" in keys + [arg_key(a) for a in train_args] or \
        not (tune or scale or args.warmup_frac)   # a plain ablation keeps the config's warmup_iters
    budget["warmup"] = warmup_rule(args.warmup_frac, cfgs, budget.get("max_iters"), explicit, tuned)
    study = {"design": design, "seeds": seeds, "tune": tune, "sizes": sizes, "budget": budget,
             "train_args": train_args}
    return StudyPlan(study, Path(args.out.rstrip("/") or "/"), jobs, cfgs)


def warmup_rule(frac_text, cfgs, max_iters, explicit, tuned):
    """budget["warmup"]: warmup_iters per size. As given when the user sets it (--warmup_iters=N, or as a --tune or
    --scale key); else max(1, round(F x the size's max_iters)), F = --warmup-frac or by default the config's own
    warmup_iters / max_iters (so a size at the config's steps keeps the config's warmup)."""
    if explicit:
        if frac_text:
            raise UsageError("--warmup-frac sets warmup_iters per size: do not also set warmup_iters "
                             "(--warmup_iters, --tune or --scale)")
        return {"rule": "as given", "fraction": None, "warmup_iters": [None if tuned else c.warmup_iters for c in cfgs]}
    if frac_text:
        try:
            frac = float(frac_text)
        except ValueError:
            frac = None
        if frac is None or not 0 < frac < 1:
            raise UsageError(f"--warmup-frac must be a number between 0 and 1, e.g. 0.1 (got '{frac_text}')")
        rule = "--warmup-frac"
    else:
        frac, rule = cfgs[0].warmup_iters / cfgs[0].max_iters, "the config's warmup_iters / max_iters"
    return {"rule": rule, "fraction": frac,
            "warmup_iters": [warmup_steps(frac, m) for m in max_iters or [None] * len(cfgs)]}


def warmup_steps(frac, max_iters):
    return max(1, round(frac * max_iters)) if max_iters else None


class PlannedRun:
    """One train.py run of the study, as planned: its folder, label and state on disk (what a finished run
    recorded is read by run_records.RecordedRun)."""

    def __init__(self, st, size, stage, exp, seed, value=None, rnd=0):
        self.size, self.stage, self.exp, self.seed, self.value, self.round = size, stage, exp, seed, value, rnd
        base = st.size_dir(size)
        self.dir = (base / "tune" / exp["name"] / f"{st.tune['key']}={value}" / f"seed{seed}" if stage == "tune"
                    else base / exp["name"] / f"seed{seed}")
        self.label = (f"{exp['name']} seed {seed}" + (f" {st.tune['key']}={value}" if stage == "tune" else "")
                      + (f" [{stage}{f' round {rnd}' if rnd else ''}]" if st.tune else "")
                      + (f" [{st.sizes[size]['name']}]" if st.scaled else ""))

    def state(self):
        if (self.dir / "results.json").is_file():
            return "done"
        if (self.dir / "diverged.json").is_file():
            return "diverged"
        return "resume" if (self.dir / "ckpt.pt").is_file() else "new"


class StudyPlan:
    """The plan of a study (or plain ablation): study.json's spec, the output folder, and every PlannedRun by
    stage (study_report.StudyResults reads what the runs recorded)."""

    def __init__(self, spec, out, jobs, cfgs):
        self.spec, self.out, self.jobs, self.cfgs = spec, out, jobs, cfgs
        self.design, self.tune, self.sizes = spec["design"], spec["tune"], spec["sizes"]
        self.exps, self.seeds, self.budget = self.design["experiments"], spec["seeds"], spec["budget"]
        self.scaled = bool(self.sizes[0]["name"])
        self.max_iters = list(self.budget.get("max_iters") or [None] * len(self.sizes))  # None: not calibrated
        self.stages = {"tune": [], "compare": []}
        for i in range(len(self.sizes)):  # task order: size, experiment, value, seed
            for e in self.exps:
                if self.tune:
                    self.stages["tune"] += [PlannedRun(self, i, "tune", e, s, v) for v in self.tune["values"]
                                            for s in self.tune["seeds"]]
                self.stages["compare"] += [PlannedRun(self, i, "compare", e, s) for s in range(1, self.seeds + 1)]
        self.runs = self.stages["tune"] + self.stages["compare"]   # the runs known before any tuning result

    def all_runs(self):
        """The runs known now: the grid's tuning runs, those beyond the grid that tuning results called for
        (choice.json's "tried" once it is written), and the comparison runs."""
        tune = []
        for i in range(len(self.sizes)):
            path = self.size_dir(i) / "choice.json"
            choice = json.loads(path.read_text())["by_experiment"] if self.tune and path.is_file() else None
            for e in self.exps if self.tune else []:
                tried = (choice[e["name"]].get("tried") or [{"value": v, "round": 0} for v in self.tune["values"]]
                         if choice else tuning(self, i, e)["tried"])
                tune += [PlannedRun(self, i, "tune", e, s, t["value"], t["round"])
                         for t in tried for s in self.tune["seeds"]]
        return tune + self.stages["compare"]

    def size_dir(self, i):
        return self.out / self.sizes[i]["name"] if self.sizes[i]["name"] else self.out

    def budget_args(self, i):
        out = [] if self.budget["rule"] == "config" else [f"--max_iters={self.max_iters[i] or 'CALIBRATED'}",
                                                          "--max_time="]
        frac = self.budget["warmup"]["fraction"]
        if frac is not None and self.warmup_iters(i) != self.cfgs[i].warmup_iters:  # the config's steps: its warmup
            out.append(f"--warmup_iters={self.warmup_iters(i) or f'{frac:g}xCALIBRATED'}")
        return out

    def warmup_iters(self, i):
        """Size i's warmup_iters (None: --budget not calibrated yet, or warmup_iters is the tuned key)."""
        w = self.budget["warmup"]
        return w["warmup_iters"][i] if w["fraction"] is None else warmup_steps(w["fraction"], self.max_iters[i])

    def command(self, run, chosen=None):
        """train.py's argument list for a run (chosen: the tuned value of a comparison run)."""
        cmd = [PY, script("train.py"), *self.spec["train_args"],
               *[f"--{k}={v}" for k, v in self.sizes[run.size]["args"].items()]]
        if run.stage == "tune":
            cmd += [f"--{self.tune['key']}={run.value}", "--eval_set=tune"]
        elif self.tune:
            cmd += [f"--{self.tune['key']}={chosen or '<chosen>'}"]
        cmd += [f"--out_dir={run.dir}", f"--seed={run.seed}", *run.exp["args"], *self.budget_args(run.size)]
        return cmd + (["--resume=auto"] if run.state() == "resume" else [])

    # --- design.json (and a study's study.json): written once, another design or study in the folder refused ---
    def check_folder(self, write):
        """A plain ablation is its design (design.json) and budget (budget.json): more seeds or other train.py
        arguments may follow in the same folder. A study (--tune, --scale) is all of study.json."""
        want, out = self.spec, self.out
        dpath, path = out / "design.json", out / "study.json"
        if path.is_file():
            have = json.loads(path.read_text())
            differ = [k for k in ("seeds", "tune", "sizes", "budget", "train_args") if have.get(k) != want[k]]
            if design_key(have["design"]) != design_key(want["design"]):
                differ.insert(0, "design")
            if differ:
                raise UsageError(f"{path} holds another study (it differs in: {', '.join(differ)}); one folder "
                                 "for both would mix results: repeat the same command, or use a new --out")
        if dpath.is_file():
            try:
                have = json.loads(dpath.read_text())
                same = design_key(have) == design_key(want["design"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UsageError(f"cannot read {dpath} ({e}); delete it only if no runs of another design are in "
                                 f"{out}") from None
            if not same:
                raise UsageError(f"{dpath} holds another design ({design_summary(have)}) than the one requested "
                                 f"({design_summary(want['design'])}); one folder for both would mix results: pass "
                                 "the same --design/--switches/--switch as before, or a new --out")
        if not path.is_file() and not self.tune and not self.scaled and not dpath.is_file() and any(r.state() != "new" for r in self.runs):
            raise UsageError(f"{out} already holds runs but no design.json: use a new --out")
        for i in range(len(self.sizes)):
            budget_json, where = self.size_dir(i) / "budget.json", self.size_dir(i)
            if self.budget["rule"] != "budget" and budget_json.is_file():
                raise UsageError(f"{where} holds a --budget ablation ({budget_json}: --budget "
                                 f"{json.loads(budget_json.read_text()).get('budget')}): pass the same --budget, "
                                 "or a new --out")
            if self.budget["rule"] == "budget" and not budget_json.is_file() and \
                    any(r.state() != "new" for r in self.runs if r.size == i):
                raise UsageError(f"{where} already holds runs made without --budget (no {budget_json}); their step "
                                 "counts differ: use a new --out")
        if write:
            out.mkdir(parents=True, exist_ok=True)
            if not dpath.is_file():
                write_json(dpath, self.design)
            if (self.tune or self.scaled) and not path.is_file():
                write_json(path, {**want, "created": now_iso()})


def design_key(d):
    """What makes two designs the same: the kind and each experiment's name and arguments (not the layout)."""
    return d["design"], [(e["name"], e["args"]) for e in d["experiments"]]


def design_summary(d):  # "leave-one-out: all, no_rope, no_swiglu"
    return f"{d.get('design')}: {', '.join(str(e.get('name')) for e in d.get('experiments', []))}"


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# the choice: per size and arm, the tuned value with the lowest mean final NLL on the tuning set; while that
# value is the lowest or highest value tried, the grid grows on that side, one value per round

DONE = ("done", "diverged")
EXTEND_RULE = ("round 0 runs the grid; while an arm's best value (lowest mean tuning NLL; a diverged value is a "
               "bad result) is the lowest or highest value tried, the next round runs the next value beyond it, "
               "at most max_extend values on a side; a geometric grid (every value > 0) steps by its mean ratio, "
               "by decades where that ratio is a root of 10 (1-3-10, 1-2-5 grids), any other grid by its mean "
               "difference, never below 0 unless a grid value is negative; the choice is made once the best value "
               "is inside the values tried or the grid cannot grow (edge_reason says why)")
SEEDS_RULE = ("the choice is the lowest mean over the tuning seeds (2 by default); margin = the runner-up's mean "
              "minus the chosen one's, noise = the standard error of their paired difference over the tuning "
              "seeds (none with one seed): a margin below the noise is a warning, the two values are equally "
              "good within noise (more --tune-seeds would settle it)")


def run_nll(run):
    """The final tuning-set NLL of a finished tuning run; None if it diverged (exit code 3, a non-finite
    result or loss)."""
    if run.state() == "diverged":
        return None
    res = json.loads((run.dir / "results.json").read_text())
    if res.get("eval_set", "val") != "tune":
        raise UsageError(f"{run.dir}/results.json was not evaluated on the tuning set (eval_set "
                         f"{res.get('eval_set', 'val')!r}); it is not a tuning run of this study")
    nll = res.get("val_nll")
    return nll if isinstance(nll, (int, float)) and math.isfinite(nll) else None


def numeric_order(values):
    try:
        return sorted(values, key=float)  # a numeric grid: its edges are its smallest and largest value
    except ValueError:
        return list(values)


def choose(values, nlls):
    """values: the values tried (strings); nlls: {value: {seed: NLL or None (diverged)}}. A value with a diverged
    seed is out of the choice. Returns the choice.json entry of one arm: the scores (mean NLL) in the values'
    order, diverged, chosen, edge (chosen is the lowest or highest value tried), and its margin over the
    runner-up with the noise of that margin (SEEDS_RULE)."""
    scores = {v: (None if any(x is None for x in nlls[v].values()) else sum(nlls[v].values()) / len(nlls[v]))
              for v in numeric_order(values)}
    diverged = {v: sorted(s for s, x in nlls[v].items() if x is None) for v in scores
                if any(x is None for x in nlls[v].values())}
    ok = [v for v in scores if scores[v] is not None]
    chosen = min(ok, key=scores.get) if ok else None
    runner = min((v for v in ok if v != chosen), key=scores.get, default=None)
    margin = noise = None
    if runner is not None:
        margin = scores[runner] - scores[chosen]
        diffs = [nlls[runner][s] - nlls[chosen][s] for s in nlls[chosen] if s in nlls[runner]]
        if len(diffs) >= 2:
            mean = sum(diffs) / len(diffs)
            noise = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    return {"scores": scores, "diverged": diverged, "chosen": chosen,
            "edge": chosen is not None and chosen in (list(scores)[0], list(scores)[-1]),
            "runner_up": runner, "margin": margin, "noise": noise,
            "within_noise": None if noise is None else margin < noise}


def extension(key, grid, side, j):
    """(the j-th value beyond the grid's low or high end as a string, None), or (None, why there is none).
    Every value > 0: a geometric grid, its step the mean ratio r = (max/min)^(1/(n-1)); where r^m = 10 within
    15% for a whole m <= n (1-3-10 and 1-2-5 grids) the grid repeats by decades (beyond 1e-3,3e-3,1e-2: 3e-2,
    1e-1, 3e-1; below it 3e-4, 1e-4), else edge x or / r^j. Else (a value <= 0) arithmetic: edge +/- j x the
    mean difference, never below 0 unless a grid value is negative. An irregular grid steps by its mean step."""
    typ = train.CONFIG_FIELDS[key].type
    if typ not in (int, float, "int", "float"):
        return None, f"{key} is not numeric"
    xs = sorted(float(v) for v in grid)
    n = len(xs)
    if xs[0] > 0:
        step = math.log10(xs[-1] / xs[0]) / (n - 1)   # decades per step
        m = round(1 / step)
        if 1 <= m <= n and abs(m * step - 1) < 0.06:
            q = n - 1 + j if side == "high" else -j           # the index of the new value on the grid's lattice
            p = n - m + (q - n + m) % m if side == "high" else q % m   # the grid value a whole number of decades away
            x = xs[p] * 10 ** ((q - p) // m)
        else:
            x = xs[-1] * 10 ** (step * j) if side == "high" else xs[0] / 10 ** (step * j)
    else:
        d = (xs[-1] - xs[0]) / (n - 1)
        x = xs[-1] + j * d if side == "high" else xs[0] - j * d
        if x < 0 <= xs[0]:
            return None, f"{key} stays >= 0 (no grid value is negative)"
    if typ in (int, "int"):
        text = str(round(x))
    else:
        text = f"{x:.4g}"
        if "e" in text or any("e" in v.lower() for v in grid):
            mantissa, _, exponent = f"{x:.3e}".partition("e")
            text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if xs[0] > 0 and float(text) <= 0:
        return None, f"{key} stays > 0 (the grid is geometric)"
    return text, None


def tuning(st, i, e):
    """Arm e's tuning at size i as far as its finished runs go (EXTEND_RULE). Returns {"tried": [{"value",
    "round", "why"}], "round": the last round so far, "waiting": its unfinished runs, "choice": once no run is
    waiting, choose()'s entry with "edge_reason" (why a best value on the edge stayed there) and "tried"}."""
    key, grid, seeds, bound = st.tune["key"], st.tune["values"], st.tune["seeds"], st.tune["max_extend"]
    tried = [{"value": v, "round": 0, "why": "the grid"} for v in grid]
    extended = {"low": 0, "high": 0}
    while True:
        rnd = tried[-1]["round"]
        runs = [PlannedRun(st, i, "tune", e, s, t["value"], rnd) for t in tried if t["round"] == rnd for s in seeds]
        waiting = [r for r in runs if r.state() not in DONE]
        if waiting:
            return {"tried": tried, "round": rnd, "waiting": waiting, "choice": None}
        values = [t["value"] for t in tried]
        c = choose(values, {v: {s: run_nll(PlannedRun(st, i, "tune", e, s, v)) for s in seeds} for v in values})
        reason = None
        if c["edge"]:
            side = "low" if c["chosen"] == next(iter(c["scores"])) else "high"
            value, reason = (None, f"--tune-max-extend {bound} values beyond the grid on that side, all tried")
            if extended[side] < bound:
                value, reason = extension(key, grid, side, extended[side] + 1)
            if value is not None and float(value) in map(float, values):
                value, reason = None, f"the grid's step rounds to {key}={value}, already tried"
            if value is not None:
                try:
                    train.parse_args(st.spec["train_args"] + [f"--{k}={v}" for k, v in st.sizes[i]["args"].items()]
                                     + e["args"] + [f"--{key}={value}"])
                except train.UserError as err:
                    value, reason = None, f"the next value {key}={value} is not valid: {err}"
            if value is not None:
                extended[side] += 1
                tried.append({"value": value, "round": rnd + 1, "why": f"after round {rnd} the best value "
                              f"{key}={c['chosen']} was the {side}est tried"})
                continue
        c.update(edge_reason=reason, tried=tried)
        return {"tried": tried, "round": rnd, "waiting": [], "choice": c}


def make_choice(st, i):
    """OUT/[SIZE/]choice.json once every arm's tuning at size i is decided (written once; then read back)."""
    path = st.size_dir(i) / "choice.json"
    if path.is_file():
        return json.loads(path.read_text())
    size = f" at {st.sizes[i]['name']}" if st.scaled else ""
    walks = {e["name"]: tuning(st, i, e) for e in st.exps}
    waiting = [r for w in walks.values() for r in w["waiting"]]
    if waiting:
        raise StudyError(1, f"the tuning stage{' of size ' + st.sizes[i]['name'] if st.scaled else ''} is not "
                            f"finished ({len(waiting)} tuning runs to go, e.g. {waiting[0].dir}): run it first "
                            "(a comparison job array waits for it with --dependency=afterok)")
    key, out, warnings = st.tune["key"], {}, []
    for name, w in walks.items():
        c = out[name] = w["choice"]
        where = name + size
        if c["chosen"] is None:
            raise StudyError(1, f"{where}: every {key} value diverged in tuning ({', '.join(c['scores'])}); "
                                f"nothing to compare: use a grid of lower values")
        for v, seeds in c["diverged"].items():
            warnings.append(f"{where}: {key}={v} diverged (tuning seeds {', '.join(map(str, seeds))}): "
                            "too high for this arm, left out of the choice")
        if c["edge"]:
            warnings.append(f"{where}: the best {key}={c['chosen']} is on the edge of the values tried "
                            f"({c['edge_reason']}); the optimum may lie beyond it")
        if c["within_noise"]:
            warnings.append(f"{where}: {key}={c['chosen']} beat {c['runner_up']} by {c['margin']:.4f}, less than "
                            f"the noise of that difference ({c['noise']:.4f}, its standard error over "
                            f"{len(st.tune['seeds'])} tuning seeds): equally good within noise")
    choice = {"key": key, "by_experiment": out, "warnings": warnings, "max_extend": st.tune["max_extend"],
              "tuning_seeds": st.tune["seeds"], "max_iters": st.max_iters[i], "warmup_iters": st.warmup_iters(i),
              "rules": {"extend": EXTEND_RULE, "seeds": SEEDS_RULE, "warmup": st.budget["warmup"]["rule"]}}
    write_json(path, choice)
    for w in warnings:
        say(f"warning: {w}")
    for name, c in out.items():
        beyond = [f"{t['value']} (round {t['round']})" for t in c["tried"] if t["round"]]
        if beyond:
            say(f"{name}{size}: tried beyond the grid: {', '.join(beyond)}")
    say(f"chose {key} per arm{size}: " + ", ".join(f"{n} {c['chosen']}" for n, c in out.items()) + f" ({path})")
    return choice


class StudyError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


# -----------------------------------------------------------------------------
# budgets: --budget calibrates one step count per size from speed probes (the slowest arm's)

def probe(st, i, exp, duration, max_iters=None, what=None):
    """Steps of size i, experiment exp that fit in duration on this machine (train.py --steps-in)."""
    if SIGNALS.requested:
        raise StudyError(EXIT_STOPPED, "stop requested by a signal; no speed probe started")
    what = what or f"speed probe of {PlannedRun(st, i, 'compare', exp, 1).label}"
    cmd = [PY, script("train.py"), *st.spec["train_args"], *[f"--{k}={v}" for k, v in st.sizes[i]["args"].items()],
           "--seed=1", *exp["args"], *([f"--max_iters={max_iters}", "--max_time="] if max_iters else []),
           f"--steps-in={duration}"]
    say(f"$ {quote(cmd)}")
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if st.jobs > 1 and "OMP_NUM_THREADS" not in os.environ else {})}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    SIGNALS.children.add(p)
    try:
        stdout, stderr = p.communicate()
    finally:
        SIGNALS.children.discard(p)
    rc = p.returncode if p.returncode >= 0 else 128 - p.returncode
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if SIGNALS.requested and (rc or not lines):
        raise StudyError(EXIT_STOPPED, f"stop requested by a signal during the {what}")
    if rc != 0 or not lines or not lines[-1].isdigit():
        err = (stderr.strip().splitlines() or ["no output"])[-1]
        raise StudyError(rc or 1, f"{what} failed with exit code {rc} ({describe_rc(rc)}): {err}")
    return int(lines[-1])


def shape_arms(st):
    """One experiment per distinct model (arms that differ only in schedule switches run at one speed)."""
    schedule = {k for k in train.SWITCHES.values() if not train.CONFIG_FIELDS[k].metadata["shape"]}
    seen = {}
    for e in st.exps:
        sig = tuple(a for a in e["args"] if arg_key(a) not in schedule)
        seen.setdefault(sig, e)
    return {e["name"]: seen[tuple(a for a in e["args"] if arg_key(a) not in schedule)] for e in st.exps}


def calibrate(st, i):
    """--budget D at size i: max_iters = the slowest arm's steps in D, saved in [SIZE/]budget.json."""
    path, dur = st.size_dir(i) / "budget.json", st.budget["duration"]
    if path.is_file():
        have = json.loads(path.read_text())
        n = have.get("max_iters")
        if not isinstance(n, int) or n <= 0:
            raise StudyError(2, f"{path} has no usable max_iters; delete it to calibrate again")
        if have.get("budget") != dur:
            raise StudyError(2, f"{path} was calibrated for --budget {have.get('budget')} (max_iters={n}), not "
                                f"--budget {dur}; runs with different budgets in one folder would mix results: "
                                f"pass --budget {have.get('budget')}, or a new --out")
        if have.get("train_args", st.spec["train_args"]) != st.spec["train_args"]:
            say(f"warning: {path} was calibrated with other train.py arguments; delete it to calibrate again if "
                "they change the speed")
        return n
    # One process calibrates (a job array's first task), holding [SIZE/].lock as train.py holds a run's folder
    # (a lock of a dead process on this host is taken over); the others wait for budget.json.
    limit, start, lock = float(os.environ.get("ABLATE_BUDGET_WAIT", 3600)), time.time(), path.with_name(".lock")
    waiting = False
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            train.lock_out_dir(path.parent)
            break
        except train.UserError:
            if path.is_file():
                return calibrate(st, i)
            if not waiting:
                say(f"waiting for {path}: another task is calibrating --budget {dur} (lock {lock})")
                waiting = True
            if SIGNALS.requested:
                raise StudyError(EXIT_STOPPED, f"stop requested by a signal while waiting for {path}") from None
            if time.time() - start > limit:
                raise StudyError(1, f"waited {limit:.0f}s for {path}; if the calibrating task died, remove "
                                    f"{lock} and rerun (ABLATE_BUDGET_WAIT sets the wait)") from None
            time.sleep(float(os.environ.get("ABLATE_BUDGET_POLL", 5)))
    try:
        if path.is_file():  # written by the task that held the lock before
            return calibrate(st, i)
        per_arm, by_model, at = {}, shape_arms(st), f" at {st.sizes[i]['name']}" if st.scaled else ""
        say(f"--budget {dur}{at}: probing the speed of each arm on {os.uname().nodename} (train.py --steps-in={dur})")
        for e in st.exps:
            m = by_model[e["name"]]
            if m["name"] in per_arm:
                per_arm[e["name"]] = per_arm[m["name"]]
                say(f"budget{at}: {e['name']} runs the same model as {m['name']} (only schedule switches differ): "
                    f"{per_arm[e['name']]} steps")
                continue
            per_arm[e["name"]] = probe(st, i, e, dur, what=f"budget probe of arm {e['name']}")
            if per_arm[e["name"]] <= 0:
                raise StudyError(2, f"--budget {dur} is too short: arm {e['name']} fits 0 steps")
            say(f"budget{at}: {e['name']} fits {per_arm[e['name']]} steps in {dur}")
        n = min(per_arm.values())
        write_json(path, {"budget": dur, "max_iters": n, "per_arm": per_arm, "host": os.uname().nodename,
                          "created": now_iso(), "train_args": st.spec["train_args"]})
        say(f"budget{at}: --budget {dur} = max_iters {n} for every arm (the slowest arm's count); saved in {path}")
        return n
    finally:
        lock.unlink(missing_ok=True)


def estimate(st):
    """Seconds of every run (from train.py --steps-in probes of each size's distinct models), printed."""
    by_model, secs = shape_arms(st), {}
    say("estimating the time from speed probes (train.py --steps-in=1h"
        + (", one thread each" if st.jobs > 1 and "OMP_NUM_THREADS" not in os.environ else "") + ") ...")
    for i in range(len(st.sizes)):
        for e in st.exps:
            m = by_model[e["name"]]
            if (i, m["name"]) not in secs:
                per_hour = probe(st, i, m, "1h", max_iters=10**9)
                secs[i, m["name"]] = 3600 / max(per_hour, 1)  # seconds per step, evaluations included
            secs[i, e["name"]] = secs[i, m["name"]]
    total = 0.0
    for r in st.runs:
        steps = st.max_iters[r.size]
        total += (secs[r.size, r.exp["name"]] * steps if steps else
                  train.parse_duration(st.budget["duration"]))
    return total


# -----------------------------------------------------------------------------
# running: N local runs at once, a progress line per finished run

def print_plan(st):
    b = st.budget
    say(f"study in {st.out}: design {st.design['design']} ({', '.join(e['name'] for e in st.exps)}), "
        f"{st.seeds} comparison seed(s) (1..{st.seeds})"
        + (f"; tuning {st.tune['key']} over {', '.join(st.tune['values'])} (and up to {st.tune['max_extend']} "
           f"values beyond it on the side of a best value on its edge, --tune-max-extend) with tuning seed(s) "
           f"{', '.join(map(str, st.tune['seeds']))}, on the tuning set" if st.tune else ""))
    rule = {"config": "max_iters of the config", "tokens": "--tokens per size",
            "tokens_per_param": f"--tokens-per-param {b.get('ratio')} x non-embedding params",
            "budget": f"--budget {b.get('duration')} (the slowest arm's steps, calibrated per size)"}[b["rule"]]
    w = b["warmup"]
    for i, s in enumerate(st.sizes):
        n_t = sum(r.size == i for r in st.stages["tune"])
        n_c = sum(r.size == i for r in st.stages["compare"])
        steps, warmup = st.max_iters[i], st.warmup_iters(i)
        say(f"  size {s['name'] or '(the config)'}: {b['params'][i]['total']:,} params "
            f"({b['params'][i]['non_embedding']:,} non-embedding), "
            + (f"{steps} steps x {b['tokens_per_step'][i]} = {steps * b['tokens_per_step'][i]:,} tokens "
               f"({b['flops_per_token'][i] * steps * b['tokens_per_step'][i]:.3g} FLOPs, baseline) per run"
               if steps else "steps calibrated at the start")
            + (f", warmup_iters {warmup}" + (f" ({warmup / steps:.0%} of the steps)" if steps else "")
               if warmup else "")
            + f"; {n_t + n_c} runs" + (f" ({n_t} tuning + {n_c} comparison)" if st.tune else ""))
    say(f"  budget rule: {rule}; warmup_iters: "
        + (f"{w['fraction']:.3g} x each size's steps ({w['rule']}), for the arms with use_warmup"
           if w["fraction"] is not None else "as given")
        + f"; {len(st.runs)} runs in all"
        + (f" (+ up to {st.tune['max_extend'] * len(st.sizes) * len(st.exps) * len(st.tune['seeds'])} tuning "
           "runs beyond the grid)" if st.tune and st.tune["max_extend"] else ""))


class Signals:
    """SIGUSR1 (SLURM's warning before the time limit) and SIGTERM that reach ablate.py go on to every train.py it
    runs, which checkpoints and exits 75; SIGINT goes on as SIGTERM (a process started in the background by a
    non-interactive shell ignores SIGINT). After one, no new run starts. Installed while main() runs; after it, run as
    a command, SIGUSR1 and SIGTERM are ignored: the work is done, and their default action while the process shuts
    down (exit 138 or 143) would make ablate.sbatch report a finished task as failed."""
    SIGS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested, self.children, self.old, self.command = False, set(), {}, False

    def handler(self, signum, _frame):
        self.requested = True
        for p in list(self.children):
            try:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.requested = False
        self.old = {s: signal.signal(s, self.handler) for s in self.SIGS}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, signal.SIG_IGN if self.command and s != signal.SIGINT else h)


SIGNALS = Signals()


class Runner:
    def __init__(self, st):
        self.st, self.running, self.t0 = st, {}, time.time()
        self.finished_here, self.failed = 0, None   # runs finished (results.json or diverged) by this command
        self.done_before = 0                        # runs finished before it (set by run_all)

    @property
    def stop(self):
        return SIGNALS.requested

    def progress(self, run, what):
        runs = self.st.all_runs()   # the total grows as tuning results call for runs beyond the grid
        done = self.done_before + self.finished_here
        elapsed = time.time() - self.t0
        left = len(runs) - done
        rate = elapsed / self.finished_here if self.finished_here else None
        say(f"[{done}/{len(runs)} runs done] {run.label}: {what}; elapsed {train.format_seconds(elapsed)}"
            + (f", about {train.format_seconds(rate * left)} left" if rate and left else ""))

    def start(self, run, chosen):
        cmd = self.st.command(run, chosen)
        say(f"{'resume' if run.state() == 'resume' else 'run'} {run.label} -> {run.dir}")
        say(f"$ {quote(cmd)}")
        env = dict(os.environ)
        out = None
        if self.st.jobs > 1:
            env.setdefault("OMP_NUM_THREADS", "1")
            console = self.st.out / "console" / run.dir.relative_to(self.st.out) / "console.txt"
            console.parent.mkdir(parents=True, exist_ok=True)
            out = open(console, "a")
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        self.running[p.pid] = (p, run, time.time(), out)
        SIGNALS.children.add(p)

    def finish(self, run, rc, seconds):
        """Record one run's end. A divergence is a result (diverged.json); a stop or a failure ends the study."""
        if (run.dir / "results.json").is_file():  # written last: finished, even if a signal came as it exited
            nll = json.loads((run.dir / "results.json").read_text()).get("val_nll")
            if isinstance(nll, (int, float)) and math.isfinite(nll):
                self.finished_here += 1
                self.progress(run, f"{'tuning' if run.stage == 'tune' else 'val'} nll {nll:.4f} in {train.format_seconds(seconds)}")
                return
            rc = EXIT_NAN
        elif rc == 0:
            rc = 1  # exited 0 but left no results.json: not a result
        if self.stop and rc - 128 in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            rc = EXIT_STOPPED  # our forwarded signal came before train.py could catch it (still starting)
        if rc == EXIT_NAN:
            self.finished_here += 1
            log = run.dir / "log.txt"
            msg = [e.get("message") for e in train.read_log(log) if e.get("event") == "nan"] if log.is_file() else []
            write_json(run.dir / "diverged.json", {"exit_code": rc, "message": (msg or [None])[-1], "when": now_iso()})
            self.progress(run, f"DIVERGED (exit code {rc}; recorded in {run.dir / 'diverged.json'})")
            return
        what = "STOPPED" if rc == EXIT_STOPPED else "FAILED"
        self.progress(run, f"{what} with exit code {rc} ({describe_rc(rc)}); out_dir {run.dir}")
        if self.failed is None or rc != EXIT_STOPPED:
            self.failed = rc

    def run_all(self):
        st = self.st
        error = None  # a StudyError of a choice (an arm whose every value diverged): raised once the others end
        runs = st.all_runs()
        self.done_before = sum(r.state() in DONE for r in runs)
        if self.done_before:
            say(f"{self.done_before} of {len(runs)} runs already finished (results.json or diverged.json): skipped")
        while True:
            if not self.stop and self.failed is None and error is None and len(self.running) < st.jobs:
                try:
                    ready = self.todo()
                except StudyError as e:
                    error, ready = e, []
                for run in ready[:st.jobs - len(self.running)]:
                    chosen = (make_choice(st, run.size)["by_experiment"][run.exp["name"]]["chosen"]
                              if run.stage == "compare" and st.tune else None)
                    self.start(run, chosen)
            if not self.running:
                break
            pid, status = os.wait()
            if pid not in self.running:
                continue
            self.reap(pid, os.waitstatus_to_exitcode(status))
        if self.stop and self.failed is None:
            self.failed = EXIT_STOPPED
        if self.failed is not None:
            runs = st.all_runs()
            raise StudyError(self.failed, "the study stopped"
                             + ("; rerun the same command to resume" if self.failed == EXIT_STOPPED else "")
                             + f" ({sum(r.state() in DONE for r in runs)} of {len(runs)} runs done)")
        if error is not None:
            raise error

    def reap(self, pid, returncode):
        p, run, t, out = self.running.pop(pid)
        SIGNALS.children.discard(p)
        p.returncode = returncode
        if out:
            out.close()
        self.finish(run, returncode if returncode >= 0 else 128 - returncode, time.time() - t)

    def todo(self):
        """The runs to start now, tuning runs first: each arm's runs of its current tuning round (tuning()), then
        the comparison runs of each size whose choice is made (here, once all its arms' tuning is decided)."""
        st, tune, compare = self.st, [], []
        for i in range(len(st.sizes)):
            if st.tune and not (st.size_dir(i) / "choice.json").is_file():
                waiting = [r for e in st.exps for r in tuning(st, i, e)["waiting"]]
                if waiting:
                    tune += waiting
                    continue
                make_choice(st, i)
            compare += [r for r in st.stages["compare"] if r.size == i]
        busy = {r.dir for _, r, _, _ in self.running.values()}
        return [r for r in tune + compare if r.state() not in DONE and r.dir not in busy]


def describe_rc(rc):
    return {75: "stopped after saving a checkpoint (preempted); rerun the same command to resume",
            2: "user/config error", 3: "NaN/inf loss"}.get(rc, "crash")


# -----------------------------------------------------------------------------
# SLURM: a job array per stage, and one per tuning round beyond the grid, each waiting for the one before (afterok)

def ablate_args(args):
    """The ablate.py arguments of this ablation or study (the same command in every array task)."""
    out = ["--seeds", args.seeds, "--out", args.out]
    for o, v in (("--design", args.design), ("--switches", args.switches), *(("--switch", s) for s in args.switch),
                 ("--experiments", args.experiments), ("--tune", args.tune), ("--tune-seeds", args.tune_seeds),
                 ("--tune-max-extend", args.tune_max_extend), ("--warmup-frac", args.warmup_frac),
                 ("--budget", args.budget), ("--tokens", args.tokens), ("--tokens-per-param", args.tokens_per_param),
                 *(("--scale", s) for s in args.scale)):
        if v is not None and (v or o == "--switches"):
            out += [o, v]
    return out + args.train_args


def round_tasks(st):
    """The tasks of a tuning round beyond the grid: one per (size, experiment, tuning seed), in that order."""
    return [(i, e, s) for i in range(len(st.sizes)) for e in st.exps for s in st.tune["seeds"]]


def sbatch_lines(st, args):
    """[(what, sbatch line)]: with --tune the grid's tuning array, one array per round beyond it (its tasks
    run the next value of the arms whose best value is on the edge; the others exit at once), then the
    comparison array, each line waiting for the one before ($TUNE: the id of the previous line's array)."""
    after = ["--dependency=afterok:$TUNE"]
    if not st.tune:
        return [("compare stage", ["sbatch", f"--array=0-{len(st.stages['compare']) - 1}",
                                   script("slurm/ablate.sbatch"), *ablate_args(args)])]
    lines = [("tune stage", ["sbatch", "--parsable", f"--array=0-{len(st.stages['tune']) - 1}",
                             script("slurm/ablate.sbatch"), "--stage", "tune", *ablate_args(args)])]
    for k in range(1, st.tune["max_extend"] + 1):
        lines.append((f"tuning round {k}", ["sbatch", "--parsable", f"--array=0-{len(round_tasks(st)) - 1}", *after,
                                            script("slurm/ablate.sbatch"), "--stage", "tune", "--round", str(k),
                                            *ablate_args(args)]))
    lines.append(("compare stage", ["sbatch", f"--array=0-{len(st.stages['compare']) - 1}", *after,
                                    script("slurm/ablate.sbatch"), "--stage", "compare", *ablate_args(args)]))
    return lines


def shell_line(line):  # quoted, but $TUNE left for the shell
    return quote(line).replace("'--dependency=afterok:$TUNE'", "--dependency=afterok:$TUNE")


def print_slurm(st, args):
    """A script to paste: TUNE=$(sbatch --parsable ... tune), TUNE=$(sbatch --parsable --dependency=afterok:$TUNE
    ... --round 1), ..., then sbatch --dependency=afterok:$TUNE ... compare; without --tune one sbatch line.
    Then each task's train.py command as a comment."""
    if Path.cwd() != HERE:
        say("warning: not run from the repo root; sbatch runs in its submit dir, so relative paths below must be "
            "valid from there")
    for what, line in sbatch_lines(st, args):
        print(f"TUNE=$({shell_line(line)})" if "--parsable" in line else shell_line(line))
        if what.startswith("tuning round"):
            print(f"# {what}: {len(round_tasks(st))} tasks (size, experiment, seed), each the arm's next "
                  f"{st.tune['key']} beyond the values tried if its best value is on their edge; else it exits at once")
            continue
        runs = st.stages[what.split()[0]]
        if st.tune or st.scaled:
            print(f"# {what}: {len(runs)} tasks (size, experiment{', value' if what == 'tune stage' else ''}, seed)")
        else:
            print(f"# {len(st.exps)} experiments x {st.seeds} seed(s) = {len(runs)} tasks; task I = experiment "
                  f"I / {st.seeds}, seed I % {st.seeds} + 1")
        for t, r in enumerate(runs):
            print(f"# {what.split()[0] + ' ' if st.tune else ''}task {t} ({r.label}): "
                  + ("already finished, skipped" if r.state() in DONE else quote(st.command(r))))
    if st.budget["rule"] == "budget" and None in st.max_iters:
        print(f"# --budget {st.budget['duration']}: the first task to start probes the arms and writes budget.json "
              "(max_iters for all); the others wait for it")
    print(f"# when all tasks are done, write the report: {quote(['python', script('ablate.py'), *ablate_args(args)])}")


def submit(st, args):
    """Run the sbatch lines, each array waiting for the one before (afterok)."""
    ids = []
    for _, line in sbatch_lines(st, args):
        line = [a.replace("$TUNE", ids[-1]) if ids else a for a in line]
        line = line[:1] + ["--parsable"] + [a for a in line[1:] if a != "--parsable"]
        say(f"$ {quote(line)}")
        r = subprocess.run(line, capture_output=True, text=True)
        if r.returncode != 0:
            raise StudyError(1, f"sbatch failed (exit code {r.returncode}): {r.stderr.strip()}")
        ids.append(r.stdout.strip().split(";")[0])
    print(" ".join(ids))
    say(f"submitted job array(s) {', '.join(ids)}"
        + (", each waiting for the one before (afterok)" if len(ids) > 1 else ""))


def task_count(st, stage, t, rnd):
    """The number of tasks of the array that task t belongs to; UsageError when t is out of its range."""
    n = len(round_tasks(st)) if rnd else len(st.stages[stage])
    if t >= n:
        where = (f"tuning round {rnd} has" if rnd else f"the {stage} stage has" if st.tune or st.scaled else
                 f"{len(st.exps)} experiments x {st.seeds} seed(s) =")
        raise UsageError(f"--task {t} out of range: {where} tasks 0..{n - 1}")
    return n


def task(st, stage, t, rnd=0, dry_run=False):
    """One array task: (size, experiment, [value,] seed) = stage's runs[t]; in tuning round rnd > 0, the arm
    (size, experiment, seed) = round_tasks(st)[t] at its round-rnd value, if it has one."""
    n = task_count(st, stage, t, rnd)
    top = os.environ.get("SLURM_ARRAY_TASK_MAX")
    if top and top != str(n - 1):
        say(f"warning: job array ends at task {top} but "
            + (f"{len(st.exps)} experiments x {st.seeds} seed(s)" if not (st.tune or st.scaled) else
               f"tuning round {rnd}" if rnd else f"the {stage} stage")
            + f" need --array=0-{n - 1} (python ablate.py --print-slurm ... prints it)")
    if rnd:
        i, e, seed = round_tasks(st)[t]
        w = tuning(st, i, e)
        value = next((x["value"] for x in w["tried"] if x["round"] == rnd), None)
        where = e["name"] + (f" at {st.sizes[i]['name']}" if st.scaled else "")
        if value is None and w["choice"] is None:
            raise StudyError(1, f"{where}: tuning round {w['round']} is not finished (e.g. {w['waiting'][0].dir}): "
                                f"round {rnd} waits for it (--dependency=afterok)")
        if value is None:
            say(f"nothing to do in tuning round {rnd}: {where} was decided after round {w['round']}")
            return
        run = PlannedRun(st, i, "tune", e, seed, value, rnd)
    else:
        run = st.stages[stage][t]
    say(f"task {t} -> {run.label}")
    if st.budget["rule"] == "budget" and not (dry_run and not (st.size_dir(run.size) / "budget.json").is_file()):
        st.max_iters[run.size] = calibrate(st, run.size)
    chosen = None
    if stage == "compare" and st.tune and not dry_run:
        chosen = make_choice(st, run.size)["by_experiment"][run.exp["name"]]["chosen"]
    if run.state() in DONE:
        say(f"skip {run.label}: already finished ({run.dir})")
        return
    if dry_run:
        print(quote(st.command(run, chosen)))
        return
    r = Runner(st)
    r.t0 = study_created(st)  # the progress line: elapsed since the study began, runs done on disk
    r.start(run, chosen)
    (p, *_), = r.running.values()
    p.wait()
    r.finished_here = sum(x.state() in DONE for x in st.all_runs() if x.dir != run.dir)
    r.reap(p.pid, p.returncode)
    if r.failed is not None:
        raise StudyError(r.failed, f"task {t} of {f'tuning round {rnd}' if rnd else f'the {stage} stage'} "
                                   f"({run.label}) did not finish")


def study_created(st):
    """When the study (study.json) or the ablation (design.json, written at its start) began."""
    try:
        created = json.loads((st.out / "study.json").read_text())["created"]
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (OSError, ValueError, KeyError):
        try:
            return (st.out / "design.json").stat().st_mtime
        except OSError:
            return time.time()


# -----------------------------------------------------------------------------
# the report (plot.py): the study report, or a plain ablation's report

def report(st):
    plot = [PY, script("plot.py")]
    if st.tune or st.scaled:
        cmd, pdf = plot + ["--study", str(st.out)], st.out / "study_report.pdf"
    else:
        pdf, logs = st.out / "report.pdf", [r.dir / "log.txt" for r in st.runs]
        for log in logs:
            if not log.is_file():
                say(f"warning: missing {log}")
        if not any(log.is_file() for log in logs):
            raise StudyError(1, f"no log.txt found under {st.out}; cannot write the report")
        cmd = plot + [str(log) for log in logs if log.is_file()] + ["--report", str(pdf)]
    say(f"$ {quote(cmd)}")
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise StudyError(rc, f"all runs finished, but plot.py failed with exit code {rc}; rerun: {quote(cmd)}")
    say(f"report written: {pdf}")


# -----------------------------------------------------------------------------

def main(argv=None):
    SIGNALS.command = argv is None  # run as `python ablate.py ...`, not main([...]) from Python
    argv = sys.argv[1:] if argv is None else argv
    try:
        with SIGNALS:
            return run_command(argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except StudyError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code


def run_command(argv):
    """What main() does; a bad argument raises UsageError (exit 2), a failed run or step StudyError (its code)."""
    args = get_args(argv)
    if args.help:
        print(__doc__.strip() + "\n\n" + OPTIONS)
        return 0
    if args.list_switches:
        return subprocess.run([PY, script("train.py"), "--list-switches"]).returncode
    st = make_study(args)
    if args.task is not None and args.print_slurm:
        raise UsageError("--task and --print-slurm do not go together")
    if args.task is not None:
        stage = args.stage or ("compare" if not st.tune else None)
        if stage is None:
            raise UsageError("--task with --tune needs --stage tune or --stage compare")
        if stage == "tune" and not st.tune:
            raise UsageError("--stage tune needs --tune")
        if not re.fullmatch(r"\d+", args.task):
            raise UsageError(f"--task must be a non-negative integer (got '{args.task}')")
        rnd = 0
        if args.round is not None:
            if stage != "tune":
                raise UsageError("--round goes with --stage tune (a tuning round beyond the grid)")
            if not st.tune["max_extend"]:
                raise UsageError("--round needs --tune-max-extend > 0")
            rnd = positive_int(args.round, "--round", limit=st.tune["max_extend"])
        task_count(st, stage, int(args.task), rnd)
        st.check_folder(write=not args.dry_run)
        task(st, stage, int(args.task), rnd, args.dry_run)
        return 0
    if args.stage or args.round:
        raise UsageError(f"{'--stage' if args.stage else '--round'} goes with --task (a job array's task)")
    st.check_folder(write=not (args.dry_run or args.print_slurm))
    if st.budget["rule"] == "budget":
        for i in range(len(st.sizes)):
            if (st.size_dir(i) / "budget.json").is_file() or not (args.dry_run or args.print_slurm or args.submit):
                st.max_iters[i] = calibrate(st, i)
        if None in st.max_iters:
            say(f"--budget {args.budget}: max_iters is calibrated when the runs start (no budget.json yet); "
                "shown as --max_iters=CALIBRATED")
    print_plan(st)
    if args.submit:
        submit(st, args)
        return 0
    if args.print_slurm:
        print_slurm(st, args)
        return 0
    if args.dry_run:  # the commands, and what they would cost here
        try:
            seconds = estimate(st)
            say(f"estimate: {train.format_seconds(seconds)} of training in {len(st.runs)} runs"
                + (f", about {train.format_seconds(seconds / st.jobs)} with --jobs {st.jobs}" if st.jobs > 1 else "")
                + " on this machine (start-up of each run not counted"
                + ("; nor the tuning runs beyond the grid that the results may call for)" if st.tune else ")"))
        except StudyError as e:  # e.g. on a login node without the GPU the runs ask for
            if SIGNALS.requested:
                raise
            say(f"estimate: not available here ({e})")
        for r in st.runs:
            print(f"# {r.label}: already finished" if r.state() in DONE else quote(st.command(r)))
        return 0
    Runner(st).run_all()
    if args.no_report:
        say(f"all {len(st.all_runs())} runs finished; report skipped (--no-report)")
        return 0
    report(st)
    return 0


OPTIONS = """\
usage: python ablate.py [--design D] [--switches a,b] [--switch KEY=VALUE ...] [--seeds N] [--out DIR]
                        [--budget DURATION] [study options] [options] [config/X.py] [--key=value ...]

Options of every ablation (the experiments are the design's; `python ablate.py --list-switches` lists the
switches declared in train.py's config):
  --design D             one-at-a-time (default: baseline, each switch alone, all), leave-one-out (all, and
                         all minus each one: no_<switch>) or factorial (every combination of the chosen switches)
  --switches a,b,c       which switches take part (default: the default set of train.py)
  --switch KEY=VALUE     a value switch: an experiment that sets --KEY=VALUE (e.g. n_layer=2,
                         learning_rate=3e-3; no spaces in VALUE); off = your setting or the default. Repeatable.
  --seeds N              seeds per experiment (default 1)
  --out DIR              output root (default out/ablate). The design is saved in DIR/design.json; a different
                         design in the same DIR is refused (use a new --out)
  --budget DURATION      equal budgets: turn a per-run wall-clock budget (4h, 30m, 1h30m, 90s) into ONE step
                         count for every run: each arm's speed is probed on this machine (train.py
                         --steps-in=DURATION), the slowest arm sets max_iters, and every run gets --max_iters=N
                         (and no max_time), so all arms see the same tokens and the schedule's horizon is known
                         from step 0. Saved in DIR/[SIZE/]budget.json and reused by reruns, resumes and array
                         tasks (the first task calibrates, the others wait up to $ABLATE_BUDGET_WAIT s, default
                         3600). Not with --max_iters/--max_time
  --task I               run only task I, 0 <= I < experiments x N: experiment I / N, seed I % N + 1, in the
                         design's order (slurm/ablate.sbatch); no report. With --dry-run: print its command
  --dry-run              print the train.py commands that would run (and an estimate of the time); run nothing
  --print-slurm          print the sbatch command line for the job array, then each task's train.py command (as
                         '# task I ...' comment lines); run nothing
  --no-report            do not run plot.py at the end
  --list-switches        print train.py's switches (name, key, shape|schedule, default|optional, help)
  -h, --help             this text
  --                     everything after it goes to train.py

Study options:
  --tune KEY=v1,v2,...   tune KEY per arm (e.g. learning_rate=1e-3,3e-3,1e-2): a tuning stage runs every arm
                         at every value on the tuning set (needs --tune_docs=K for train.py) and picks each
                         arm's best; the comparison stage runs each arm at its choice (OUT/[SIZE/]choice.json)
  --tune-max-extend N    while an arm's best value is the lowest or highest value tried, tune again one step
                         beyond it, up to N values per side (default 3; 0: never): a geometric grid (all > 0)
                         steps by its mean ratio (by decades for 1-3-10 and 1-2-5 grids: 1e-2 -> 3e-2 -> 1e-1),
                         any other by its mean difference, never below 0 unless a grid value is; the
                         comparison starts once every choice is inside the values tried or cannot move
                         (choice.json: every value tried, its round and why, and why a choice stayed on the edge)
  --tune-seeds M         tuning seeds per value (default 2): seeds 1001..1000+M, never comparison seeds. The
                         choice is the lowest mean; choice.json gives its margin over the runner-up and the
                         noise of that margin (the standard error of their paired difference over the seeds;
                         none with M=1); a margin below the noise is a warning: equally good within noise
  --warmup-frac F        warmup_iters = F x each size's max_iters (at least 1), for the arms with use_warmup;
                         default: the config's own warmup_iters / max_iters, so a size at the config's steps
                         keeps its warmup; a --warmup_iters=N you give (or a --tune/--scale of it) is kept
  --experiments a,b,..   only these experiments of the design (e.g. baseline,rope,all)
  --scale KEY=v1,v2,...  sizes (repeatable; the i-th values of every --scale key make size i), each in
                         OUT/<KEY=v+KEY2=w>/
  --tokens t1,t2,...     training tokens per run at each size (2e6, 500k, 2M); --max_iters = tokens / (batch x block)
  --tokens-per-param R   tokens = R x non-embedding parameters of the size's baseline
  --budget DURATION      per size: one step count for every arm from speed probes (as above)
  --jobs N               N runs at once (each OMP_NUM_THREADS=1 unless set; their output in OUT/console/)
  --dry-run              print each stage's and size's runs and an estimate of the time (speed probes)
  --print-slurm          print the sbatch lines: the tuning array, one array per round beyond the grid
                         (--tune-max-extend; a task whose arm needs no such round exits at once), then the
                         comparison array, each waiting for the one before
  --submit               run those sbatch lines, chained with --dependency=afterok
  --task I --stage S     run task I of stage S (tune|compare) only (slurm/ablate.sbatch); with --round K
                         (--stage tune) task I of tuning round K: (size, experiment, tuning seed) I
A finished run (results.json) is never retrained; an interrupted one (ckpt.pt, no results.json) resumes with
--resume=auto; a diverged one (train.py's exit code 3) is recorded (diverged.json), skipped and shown by the
report. Another study in the same --out is refused. If a run exits otherwise non-zero, ablate.py says which and
exits with the same code (75 = preempted/stopped after a checkpoint: requeue and rerun to resume; 2 = config
error; 1 = crash). SIGUSR1/SIGTERM received by ablate.py are forwarded to the running train.py (SIGINT as
SIGTERM); no further run starts after one. With --max_time (and no --budget) each arm turns its own speed into
a step count, so the arms train on different numbers of tokens: ablate.py warns. The interpreter of train.py and
plot.py is $PYTHON, else the one running ablate.py."""

if __name__ == "__main__":
    sys.exit(main())
