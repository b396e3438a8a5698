"""Tests for the shell tooling: ablate.sh, slurm/*.sbatch, prepare_small.sh.

No real training: PYTHON points at a fake interpreter (written into tmp_path) that records
its argv and fakes what train.py / plot.py do: `train.py --list-switches` lists a switch registry
(FAKE_SWITCHES), `train.py ... --steps-in=D` answers a step count from the arm's arguments
(FAKE_STEPS_COST), `plot.py --print-design` prints the design of that registry (DESIGN_CODE below,
the spec of plot.py's designs), and a training run leaves log.txt / ckpt.pt / results.json. The
scripts are copied into a scratch repo in tmp_path, so these tests depend on neither train.py nor
plot.py (test_ablate.py runs the real ones).
"""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# The fake registry (train.py --list-switches) and the designs plot.py --print-design derives from it.
# One source: exec'd here and pasted into the fake interpreter.
DESIGN_CODE = r'''
import itertools, json, os
REGISTRY = json.loads(os.environ.get("FAKE_SWITCHES") or json.dumps([
    ["swiglu", "shape", "default"], ["rope", "shape", "default"], ["rmsnorm", "shape", "default"],
    ["warmup", "schedule", "default"], ["cosine", "schedule", "default"], ["qknorm", "shape", "optional"]]))

class DesignError(Exception):
    pass

def design(kind="one-at-a-time", switches=None, values=()):
    """[(name, [args])] in task order, and the json dict, as plot.py --print-design gives them."""
    names = [n for n, _, d in REGISTRY if d == "default"] if switches is None else switches.split(",")
    for n in names:
        if n not in [r[0] for r in REGISTRY]:
            raise DesignError(f"unknown switch '{n}'")
    for v in values:
        if "=" not in v:
            raise DesignError(f"--switch expects KEY=VALUE, got '{v}'")
    chosen = names + list(values)
    if kind == "one-at-a-time":
        exps = [("baseline", [])] + [(n, [n]) for n in chosen] + [("all", chosen)]
    elif kind == "leave-one-out":
        exps = [("all", chosen)] + [("no_" + n, [x for x in chosen if x != n]) for n in chosen]
    elif kind == "factorial":
        exps = [("baseline" if not c else "all" if len(c) == len(chosen) else "+".join(c), list(c))
                for r in range(len(chosen) + 1) for c in itertools.combinations(chosen, r)]
    else:
        raise DesignError(f"unknown design '{kind}'")
    out = []
    for name, on in exps:
        if any(set(on) == set(o) for _, _, o in out):
            continue
        args = [f"--use_{n}={n in on}" for n, _, _ in REGISTRY] + ["--" + v for v in values if v in on]
        out.append((name, args, on))
    js = {"design": kind, "reference": "all" if kind == "leave-one-out" else "baseline",
          "switches": [{"name": n} for n in chosen],
          "experiments": [{"name": n, "on": on, "args": a} for n, a, on in out]}
    return [(n, a) for n, a, _ in out], js
'''
_ns = {}
exec(DESIGN_CODE, _ns)
design, REGISTRY = _ns["design"], _ns["REGISTRY"]

FAKE_PY = r'''#!{python} -S
# fake interpreter: `fake train.py ARGS` / `fake plot.py ARGS`
import json, os, signal, sys, time
argv = sys.argv[1:]
if argv[:1] == ["-c"]:  # python -c CODE (ablate.sh reads the design's json): the real python, not logged
    os.execv(sys.executable, [sys.executable, "-S"] + argv)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
script = os.path.basename(argv[0]) if argv else ""
DESIGN_CODE
if script == "plot.py" and "--print-design" in argv:
    kind, sw, values, fmt, i = "one-at-a-time", None, [], "json", 2
    while i < len(argv):
        if argv[i] == "--design": kind = argv[i + 1]
        elif argv[i] == "--switches": sw = argv[i + 1]
        elif argv[i] == "--switch": values.append(argv[i + 1])
        elif argv[i] == "--format": fmt = argv[i + 1]
        else: sys.exit("fake plot.py: unexpected " + argv[i])
        i += 2
    try:
        exps, js = design(kind, sw, values)
    except DesignError as e:
        print("plot.py: error: " + str(e), file=sys.stderr)
        sys.exit(2)
    if fmt == "tsv":
        print("\n".join(n + "\t" + " ".join(a) for n, a in exps))
    else:
        print(json.dumps(js, indent=2))
    sys.exit(0)
if script == "plot.py":
    rep = argv[argv.index("--report") + 1]
    open(rep, "w").write("pdf")
    sys.exit(int(os.environ.get("FAKE_PLOT_EXIT", "0")))
if argv[1:] == ["--list-switches"]:
    for n, kind, d in REGISTRY:
        print("\t".join([n, "use_" + n, kind, d, "help of " + n]))
    sys.exit(0)
steps_in = [a for a in argv if a.startswith("--steps-in=")]
if steps_in:
    time.sleep(float(os.environ.get("FAKE_STEPS_SLEEP", "0")))
    if os.environ.get("FAKE_STEPS_EXIT"):
        print("error: the probe failed", file=sys.stderr)
        sys.exit(int(os.environ["FAKE_STEPS_EXIT"]))
    cost = json.loads(os.environ.get("FAKE_STEPS_COST", "{{}}"))
    print("fake probe: diagnostics on stderr", file=sys.stderr)
    print(1000 - sum(cost.get(a, 0) for a in argv))
    sys.exit(0)
out = [a.split("=", 1)[1] for a in argv if a.startswith("--out_dir=")][-1]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "log.txt"), "a").write("iter 0 loss 1.0\n")
for spec in filter(None, os.environ.get("FAKE_FAIL", "").split(",")):
    suffix, code = spec.rsplit(":", 1)
    if out.endswith(suffix):
        sys.exit(int(code))
if os.environ.get("FAKE_WAIT_SIGNAL"):
    def stop(sig, frame):
        open(os.path.join(out, "ckpt.pt"), "w").write("ckpt")
        open(os.environ["FAKE_LOG"] + ".signals", "a").write(f"{{sig}}\n")
        sys.exit(75)
    for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    open(os.environ["FAKE_LOG"] + ".started", "w").write(out)
    time.sleep(120)  # a safety net: the test's signal ends this wait
    sys.exit(99)
code = int(os.environ.get("FAKE_EXIT", "0"))
open(os.path.join(out, "ckpt.pt"), "w").write("ckpt")
if code == 0:
    open(os.path.join(out, "results.json"), "w").write("{{}}")
sys.exit(code)
'''

STUB_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
exit "${SCONTROL_EXIT:-0}"
"""

# the default design of the fake registry
EXPS = [n for n, _ in design()[0]]                   # baseline swiglu rope rmsnorm warmup cosine all
SWITCHES = [f"use_{n}" for n, _, _ in REGISTRY]     # every registered switch (all set on every run)


@pytest.fixture
def env(tmp_path):
    """A scratch repo with the scripts, a fake python and a stub scontrol."""
    repo = tmp_path / "repo"
    (repo / "slurm").mkdir(parents=True)
    for name in ["ablate.sh", "prepare_small.sh", "slurm/ablate.sbatch", "slurm/train.sbatch"]:
        shutil.copy(ROOT / name, repo / name)
    for name in ["train.py", "plot.py"]:
        (repo / name).write_text("raise SystemExit('the fake python never runs this')\n")
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PY.format(python=sys.executable).replace("DESIGN_CODE", DESIGN_CODE))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sc = bindir / "scontrol"
    sc.write_text(STUB_SCONTROL)
    sc.chmod(0o755)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FAKE_", "ABLATE_"))}
    e.update(
        PYTHON=str(fake),
        FAKE_LOG=str(tmp_path / "calls.jsonl"),
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
    )
    for k in ["SEEDS", "OUT", "CONFIG", "DATA", "SEED", "REPO", "ENV_SETUP"]:
        e.pop(k, None)
    return {"repo": repo, "env": e, "tmp": tmp_path}


def bash(env, *args, extra_env=None, cwd=None):
    e = dict(env["env"], **(extra_env or {}))
    return subprocess.run(["bash", *args], cwd=cwd or env["repo"], env=e,
                          capture_output=True, text=True, timeout=300)  # a safety net, also on a busy machine


def calls(env):
    log = Path(env["env"]["FAKE_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def train_calls(env):
    """The training runs (not --list-switches, not --steps-in probes)."""
    return [c for c in calls(env) if c and c[0].endswith("train.py") and c[1:] != ["--list-switches"]
            and not any(a.startswith("--steps-in=") for a in c)]


def probe_calls(env):
    return [c for c in calls(env) if any(a.startswith("--steps-in=") for a in c)]


def design_calls(env):
    return [c for c in calls(env) if c and c[0].endswith("plot.py") and "--print-design" in c]


def opt(argv, key):
    """Value of the last --key=value in argv (what train.py would use), else None."""
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    return vals[-1] if vals else None


def switches(argv):
    return {s: opt(argv, s) for s in SWITCHES}


def expected_switches(exp):
    return {s: ("True" if (exp == "all" and REGISTRY[i][2] == "default") or s == f"use_{exp}" else "False")
            for i, s in enumerate(SWITCHES)}


def scontrol_calls(env):
    p = Path(env["env"]["SCONTROL_LOG"])
    return p.read_text().splitlines() if p.exists() else []


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ablate.sh: error:")]


# --------------------------------------------------------------------------- ablate.sh
def test_full_ablation_runs_every_experiment_x2_with_right_dirs_and_switches(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--no-report",
             "config/x.py", "--max_iters=7")
    assert r.returncode == 0, r.stderr
    tc = train_calls(env)
    assert len(tc) == 2 * len(EXPS) == 14
    expected = [(e, s) for e in EXPS for s in (1, 2)]
    args = dict(design()[0])
    for argv, (exp, seed) in zip(tc, expected):
        assert argv[1:3] == ["config/x.py", "--max_iters=7"], argv  # user args first
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}"
        assert opt(argv, "seed") == str(seed)
        assert argv[5:] == args[exp], (exp, argv)                   # exactly the design's switches
        assert switches(argv) == expected_switches(exp), (exp, argv)
        assert opt(argv, "resume") is None
        assert (out / exp / f"seed{seed}" / "results.json").exists()
    # spot checks
    assert set(switches(tc[0]).values()) == {"False"}          # baseline
    assert switches(tc[-1]) == {**{s: "True" for s in SWITCHES}, "use_qknorm": "False"}   # all (default set)
    sw = switches(tc[2])                                        # swiglu seed 1
    assert sw["use_swiglu"] == "True" and list(sw.values()).count("True") == 1
    # the design was asked for once; its json is saved for the report and the array tasks
    assert [c[-2:] for c in design_calls(env)] == [["--format", "json"]]
    assert json.loads((out / "design.json").read_text()) == design()[1]


def test_a_progress_line_per_finished_run_with_elapsed_and_time_left(env):
    """Issue 15 item 5: after each run, runs done / total, the elapsed time and the time left; an array
    task counts the runs finished on disk (every task's)."""
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--no-report", "config/x.py")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "runs done]" in ln]
    assert len(lines) == 14
    for k, (ln, (exp, seed)) in enumerate(zip(lines, [(e, s) for e in EXPS for s in (1, 2)]), 1):
        assert re.match(rf"ablate.sh: \[{k}/14 runs done\] done {exp} seed {seed}; elapsed \d+m\d\ds", ln), ln
        assert (", about " in ln and ln.endswith(" left")) == (k < 14), ln
    (out / "baseline" / "seed1" / "results.json").unlink()
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--task", "0", "config/x.py")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[14/14 runs done\] done baseline seed 1; elapsed \d+m\d\ds$", r.stderr.strip()), r.stderr


def test_switches_are_explicit_even_for_baseline(env):
    """A config that turns a switch on cannot leak it into the baseline: the explicit
    --use_x=False comes after the config on the command line."""
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "config/all_on.py")
    assert r.returncode == 0, r.stderr
    base = train_calls(env)[0]
    for s in SWITCHES:
        assert base.index(f"--{s}=False") > base.index("config/all_on.py")


def test_rerun_skips_finished_runs(env):
    out = env["tmp"] / "out"
    args = ["ablate.sh", "--seeds", "2", "--out", str(out), "--no-report"]
    assert bash(env, *args).returncode == 0
    n = len(train_calls(env))
    r = bash(env, *args)
    assert r.returncode == 0, r.stderr
    assert len(train_calls(env)) == n          # no new runs
    assert r.stderr.count("ablate.sh: skip ") == 2 * len(EXPS)


def test_interrupted_run_is_resumed(env):
    out = env["tmp"] / "out"
    args = ["ablate.sh", "--seeds", "2", "--out", str(out), "--no-report"]
    assert bash(env, *args).returncode == 0
    (out / "rope/seed2/results.json").unlink()           # interrupted: ckpt.pt only
    (out / "cosine/seed1/results.json").unlink()         # never started: nothing
    (out / "cosine/seed1/ckpt.pt").unlink()
    n = len(train_calls(env))
    r = bash(env, *args)
    assert r.returncode == 0, r.stderr
    new = train_calls(env)[n:]
    assert [opt(c, "out_dir") for c in new] == [f"{out}/rope/seed2", f"{out}/cosine/seed1"]
    assert new[0][-1] == "--resume=auto"      # train.py continues it (and refuses another run's checkpoint)
    assert opt(new[1], "resume") is None
    assert "resume rope seed 2" in r.stderr


@pytest.mark.parametrize("code", [3, 75, 1])
def test_failed_run_stops_with_its_exit_code(env, code):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report",
             extra_env={"FAKE_FAIL": f"rope/seed1:{code}"})
    assert r.returncode == code
    assert "rope seed 1" in r.stderr and f"code {code}" in r.stderr
    dirs = [opt(c, "out_dir") for c in train_calls(env)]
    assert dirs == [f"{out}/baseline/seed1", f"{out}/swiglu/seed1", f"{out}/rope/seed1"]


DESIGNS = [  # (ablate.sh design options, the fake's design call)
    ([], {}),
    (["--design", "leave-one-out"], {"kind": "leave-one-out"}),
    (["--design", "leave-one-out", "--switches", "swiglu,rope,qknorm"],
     {"kind": "leave-one-out", "switches": "swiglu,rope,qknorm"}),
    (["--design", "factorial", "--switches", "swiglu,rope,warmup"],
     {"kind": "factorial", "switches": "swiglu,rope,warmup"}),
    (["--design=factorial", "--switches=rope", "--switch", "n_layer=2"],
     {"kind": "factorial", "switches": "rope", "values": ["n_layer=2"]}),
    (["--switches", "cosine", "--switch=learning_rate=3e-3", "--switch", "n_kv_head=1"],
     {"switches": "cosine", "values": ["learning_rate=3e-3", "n_kv_head=1"]}),
]


def split_opts(opts):
    """--design=x -> --design x (how ablate.sh passes them on)"""
    return [a for o in opts for a in (o.split("=", 1) if o.startswith("--") and "=" in o else [o])]


@pytest.mark.parametrize("opts,spec", DESIGNS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_task_index_maps_to_experiment_and_seed_for_every_design(env, opts, spec):
    out = env["tmp"] / "out"
    exps = design(**spec)[0]
    n = 2 * len(exps)
    for i in range(n):
        r = bash(env, "ablate.sh", "--task", str(i), "--seeds", "2", "--out", str(out), *opts, "c.py")
        assert r.returncode == 0, r.stderr
    tc = train_calls(env)
    assert len(tc) == n
    for i, argv in enumerate(tc):
        (exp, args), seed = exps[i // 2], i % 2 + 1
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}", i
        assert opt(argv, "seed") == str(seed)
        assert argv[1] == "c.py" and argv[4:] == args, (i, argv)
    assert not any("--report" in c for c in calls(env))              # --task: no report
    # ablate.sh passed the design options to plot.py unchanged
    assert {tuple(c[2:-2]) for c in design_calls(env)} == {tuple(split_opts(opts))}
    r = bash(env, "ablate.sh", "--task", str(n), "--seeds", "2", "--out", str(out), *opts)
    assert r.returncode == 2 and "out of range" in r.stderr and f"{len(exps)} experiments" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_task_index_with_three_seeds(env):
    # seeds=3, index 7 -> experiment 7 // 3 = 2 (rope), seed 7 % 3 + 1 = 2
    out3 = env["tmp"] / "out3"
    r = bash(env, "ablate.sh", "--task", "7", "--seeds", "3", "--out", str(out3), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert EXPS[2] == "rope" and f"--out_dir={out3}/rope/seed2 --seed=2 " in r.stdout


@pytest.mark.parametrize("opts,spec", DESIGNS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_print_slurm_array_size_follows_the_design(env, opts, spec):
    out = env["tmp"] / "out"
    exps = design(**spec)[0]
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--print-slurm", *opts, "cfg.py",
             "--max_iters=9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == " ".join([f"sbatch --array=0-{2 * len(exps) - 1} slurm/ablate.sbatch --seeds 2 --out {out}",
                                 *split_opts(opts), "cfg.py --max_iters=9"])
    tasks = [line for line in lines if line.startswith("# task ")]
    assert len(tasks) == 2 * len(exps)
    for i, line in enumerate(tasks):
        (exp, args), seed = exps[i // 2], i % 2 + 1
        assert line.startswith(f"# task {i} ({exp} seed {seed}): ")
        assert line.endswith(f"--out_dir={out}/{exp}/seed{seed} --seed={seed} " + " ".join(args))
    assert train_calls(env) == [] and not out.exists()


def test_dry_run_and_print_slurm_run_nothing(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--dry-run", "cfg.py")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 14 and all(" train.py cfg.py --out_dir=" in line for line in lines)
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--print-slurm", "cfg.py",
             "--max_iters=9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sbatch --array=0-13 slurm/ablate.sbatch --seeds 2 --out {out} cfg.py --max_iters=9"
    tasks = [line for line in lines if line.startswith("# task ")]
    assert len(tasks) == 14 and f"--out_dir={out}/all/seed2" in tasks[13]
    assert lines[-1].endswith(f"write the report: bash ablate.sh --seeds 2 --out {out} cfg.py --max_iters=9")
    assert train_calls(env) == [] and not out.exists()         # not even design.json


def test_design_options_and_value_switches_reach_train_py(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--design", "factorial", "--switches",
             "swiglu,rope", "--switch", "n_layer=2", "--switch", "learning_rate=3e-3", "--n_layer=4")
    assert r.returncode == 0, r.stderr
    assert design_calls(env)[0][2:] == ["--design", "factorial", "--switches", "swiglu,rope", "--switch",
                                        "n_layer=2", "--switch", "learning_rate=3e-3", "--format", "json"]
    tc = train_calls(env)
    assert len(tc) == 16                                       # 2^4 combinations
    names = [opt(c, "out_dir").split("/")[-2] for c in tc]
    assert names[:5] == ["baseline", "swiglu", "rope", "n_layer=2", "learning_rate=3e-3"]
    assert names[-1] == "all"
    for name, argv in zip(names, tc):
        on = name.split("+") if name != "all" else ["swiglu", "rope", "n_layer=2", "learning_rate=3e-3"]
        assert opt(argv, "n_layer") == ("2" if "n_layer=2" in on else "4"), argv   # the switch wins when on
        assert opt(argv, "learning_rate") == ("3e-3" if "learning_rate=3e-3" in on else None)
        assert opt(argv, "use_swiglu") == str("swiglu" in on) and opt(argv, "use_rope") == str("rope" in on)
    assert (out / "n_layer=2+learning_rate=3e-3" / "seed1" / "results.json").exists()


def test_design_json_is_written_once_and_another_design_is_refused(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--design", "leave-one-out")
    assert r.returncode == 0, r.stderr
    saved = (out / "design.json").read_text()
    assert json.loads(saved) == design("leave-one-out")[1]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    n = len(train_calls(env))
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report")             # one-at-a-time: refused
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "design.json" in r.stderr and "leave-one-out" in r.stderr and "new --out" in r.stderr
    for extra in (["--dry-run"], ["--print-slurm"], ["--task", "0"]):
        r = bash(env, "ablate.sh", "--out", str(out), *extra, "--design", "factorial")
        assert r.returncode == 2 and "design.json" in r.stderr, extra
    assert len(train_calls(env)) == n and (out / "design.json").read_text() == saved
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--design", "leave-one-out")  # same: fine
    assert r.returncode == 0 and r.stderr.count("ablate.sh: skip ") == len(design("leave-one-out")[0]), r.stderr
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "new"), "--no-report")                 # new --out
    assert r.returncode == 0, r.stderr


def test_design_json_compares_experiments_not_formatting(env):
    out = env["tmp"] / "out"
    out.mkdir()
    js = dict(design()[1], added_later="a key a newer plot.py writes")
    (out / "design.json").write_text(json.dumps(js))                  # same design, other layout
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--task", "0")
    assert r.returncode == 0, r.stderr
    js["experiments"][1]["args"][-1] = "--use_qknorm=True"               # other arguments: refused
    (out / "design.json").write_text(json.dumps(js))
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--task", "1")
    assert r.returncode == 2 and "holds another design" in r.stderr
    (out / "design.json").write_text("{not json")
    r = bash(env, "ablate.sh", "--out", str(out), "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot read" in r.stderr
    assert len(train_calls(env)) == 1


@pytest.mark.parametrize("opts,message", [
    (["--switches", "swiglu,nope"], "unknown switch 'nope'"),
    (["--switch", "n_layer"], "expects KEY=VALUE"),
    (["--design", "fractional"], "unknown design"),
    (["--design"], "--design needs a value"),
])
def test_design_errors_are_one_line(env, opts, message):
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "out"), *opts)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert train_calls(env) == []


def test_user_cannot_set_managed_flags(env):
    for bad in ["--use_rope=True", "--use_rope", "--use-rmsnorm=1", "--use_qknorm=False", "--out_dir=x",
                "--out-dir=x", "--seed=3", "--resume=True", "--resume=auto"]:
        r = bash(env, "ablate.sh", "--dry-run", bad)
        assert r.returncode == 2, bad
        assert len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    assert bash(env, "ablate.sh", "--seeds", "0", "--dry-run").returncode == 2


def test_a_new_switch_in_the_registry_needs_no_edit_of_ablate_sh(env):
    """The registry alone (here the fake's) defines the experiments, the task count, the
    array size and the switches a user may not set."""
    registry = json.dumps([*map(list, REGISTRY), ["throwaway", "shape", "default"]])
    e = {"FAKE_SWITCHES": registry}
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--dry-run", extra_env=e)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(EXPS) + 1
    assert f"--out_dir={out}/throwaway/seed1 --seed=1 " in r.stdout and "--use_throwaway=True" in r.stdout
    r = bash(env, "ablate.sh", "--out", str(out), "--print-slurm", "--seeds", "3", extra_env=e)
    assert r.stdout.startswith(f"sbatch --array=0-{3 * (len(EXPS) + 1) - 1} ")
    r = bash(env, "ablate.sh", "--out", str(out), "--dry-run", "--use_throwaway=True", extra_env=e)
    assert r.returncode == 2 and "sets the switches itself" in r.stderr
    r = bash(env, "ablate.sh", "--list-switches", extra_env=e)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("throwaway\tuse_throwaway\tshape\t")


def test_ablate_sh_names_no_experiment_and_no_count():
    """No experiment list and no literal 7 (the old count) in ablate.sh: everything comes from the design."""
    text = (ROOT / "ablate.sh").read_text()
    assert not re.search(r"(?<![\w.-])7(?![\w.])", text)
    for name in ["swiglu", "rope", "rmsnorm", "warmup", "cosine", "qknorm"]:
        assert name not in text, name


def test_ablate_sh_guards_every_possibly_empty_array():
    """bash < 4.4 (RHEL 7's 4.2) with set -u fails on "${a[@]}" when a is empty: every expansion is
    ${a[@]+"${a[@]}"} unless the array was assigned a non-empty list before."""
    lines = (ROOT / "ablate.sh").read_text().splitlines()
    for n, line in enumerate(lines):
        code = "" if line.lstrip().startswith("#") else line
        for m in re.finditer(r"\$\{(\w+)\[[@*]\]\}", code):
            name = m.group(1)
            if re.search(r"\$\{%s\[@\]\+\"\$\{%s\[@\]\}\"\}" % (name, name), code):
                continue
            assert any(re.search(r"\b%s=\((?!\))" % name, earlier) for earlier in lines[:n]), \
                f"ablate.sh:{n + 1}: {name} may be empty here: {line.strip()}"


def test_array_size_warning_names_the_derived_count(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--task", "0", "--out", str(out), "--design", "leave-one-out",
             "--switches", "swiglu,rope,rmsnorm", extra_env={"SLURM_ARRAY_TASK_MAX": "6"})
    assert r.returncode == 0, r.stderr
    assert "4 experiments x 1 seed(s) need --array=0-3" in r.stderr


def test_report_runs_plot_py_on_all_logs(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--design", "leave-one-out",
             "--switches", "swiglu,rope")
    assert r.returncode == 0, r.stderr
    plot = [c for c in calls(env) if c[0].endswith("plot.py") and "--report" in c]
    assert len(plot) == 1
    argv = plot[0]
    assert argv[-2:] == ["--report", f"{out}/report.pdf"]
    assert argv[1:-2] == [f"{out}/{e}/seed{s}/log.txt" for e in ["all", "no_swiglu", "no_rope"] for s in (1, 2)]
    # a failing plot.py is reported with its code
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--design", "leave-one-out",
             "--switches", "swiglu,rope", extra_env={"FAKE_PLOT_EXIT": "4"})
    assert r.returncode == 4 and "plot.py failed" in r.stderr


def test_missing_plot_py_is_an_error(env):
    (env["repo"] / "plot.py").unlink()
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "out"))
    assert r.returncode == 2 and "plot.py not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert calls(env) == []


# --------------------------------------------------------------------------- ablate.sh --budget
COST = {"--use_swiglu=True": 100, "--use_rope=True": 30, "--n_layer=2": 500}   # fake probe: 1000 - cost


def budget_env(**kw):
    return {"FAKE_STEPS_COST": json.dumps(COST), "ABLATE_BUDGET_POLL": "0.05", **kw}


def test_budget_gives_every_run_the_slowest_arms_step_count(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--no-report", "--budget", "2h",
             "cfg.py", "--batch_size=8", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    # one probe per distinct model: warmup and cosine (schedule switches) run the baseline's model
    probes = probe_calls(env)
    args = dict(design()[0])
    assert [p[3:-1] for p in probes] == [["--seed=1", *args[e]] for e in ["baseline", "swiglu", "rope", "rmsnorm",
                                                                          "all"]]
    assert all(p[1:3] == ["cfg.py", "--batch_size=8"] and p[-1] == "--steps-in=2h" for p in probes)
    tc = train_calls(env)
    assert len(tc) == 14
    for argv in tc:                                            # all = 1000 - 100 - 30 is the slowest
        assert argv[-2:] == ["--max_iters=870", "--max_time="], argv
    b = json.loads((out / "budget.json").read_text())
    assert b["budget"] == "2h" and b["max_iters"] == 870 and b["host"] == socket.gethostname()
    assert b["per_arm"] == {"baseline": 1000, "swiglu": 900, "rope": 970, "rmsnorm": 1000, "warmup": 1000,
                            "cosine": 1000, "all": 870}
    assert b["train_args"] == ["cfg.py", "--batch_size=8"]
    assert not (out / ".budget.lock").exists()
    assert "max_iters 870" in r.stderr


def test_budget_with_a_value_switch(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--budget", "30m", "--switches", "rope",
             "--switch", "n_layer=2", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert [opt(c, "max_iters") for c in train_calls(env)] == ["470"] * 4        # all: 1000 - 30 - 500
    assert json.loads((out / "budget.json").read_text())["per_arm"]["n_layer=2"] == 500


def test_budget_json_is_reused_by_reruns_resumes_and_tasks(env):
    out = env["tmp"] / "out"
    args = ["ablate.sh", "--out", str(out), "--no-report", "--budget", "2h"]
    assert bash(env, *args, extra_env=budget_env()).returncode == 0
    n_probes = len(probe_calls(env))
    b = json.loads((out / "budget.json").read_text())
    b["max_iters"] = 123                                       # what budget.json says is what runs get
    (out / "budget.json").write_text(json.dumps(b, indent=2))
    (out / "rope/seed1/results.json").unlink()                 # interrupted: resumes
    (out / "all/seed1/results.json").unlink()
    (out / "all/seed1/ckpt.pt").unlink()                       # never ran
    r = bash(env, *args, extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    new = train_calls(env)[-2:]
    assert [opt(c, "max_iters") for c in new] == ["123", "123"] and new[0][-1] == "--resume=auto"
    (out / "all/seed1/results.json").unlink()
    r = bash(env, "ablate.sh", "--task", "6", "--out", str(out), "--budget", "2h", extra_env=budget_env())
    assert r.returncode == 0 and opt(train_calls(env)[-1], "max_iters") == "123"
    assert len(probe_calls(env)) == n_probes                   # never calibrated again
    # another budget, or none, in the same folder: refused in one line
    for extra in (["--budget", "4h"], []):
        r = bash(env, "ablate.sh", "--out", str(out), "--dry-run", *extra, extra_env=budget_env())
        assert r.returncode == 2 and len(error_lines(r.stderr)) == 1 == len(r.stderr.strip().splitlines())
        assert "budget" in r.stderr and "2h" in r.stderr
    # other train.py arguments than at calibration: a warning
    r = bash(env, *args, "--batch_size=8", "--dry-run", extra_env=budget_env())
    assert r.returncode == 0 and "other train.py arguments" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--budget", "2h", "--max_iters=5"], "--budget sets max_iters"),
    (["--budget", "2h", "--max_time=1h"], "--budget replaces max_time"),
    (["--budget", "4x"], "--budget expects a duration"),
    (["--budget", "0"], "--budget expects a duration"),
    (["--budget"], "--budget needs a value"),
])
def test_budget_errors_are_one_line(env, args, message):
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "out"), *args, extra_env=budget_env())
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert calls(env) == [] or probe_calls(env) == []


def test_budget_refused_where_runs_without_one_exist(env):
    out = env["tmp"] / "out"
    assert bash(env, "ablate.sh", "--out", str(out), "--no-report").returncode == 0
    r = bash(env, "ablate.sh", "--out", str(out), "--no-report", "--budget", "1h", extra_env=budget_env())
    assert r.returncode == 2 and "without --budget" in r.stderr and len(error_lines(r.stderr)) == 1
    assert probe_calls(env) == [] and not (out / "budget.json").exists()


def test_max_time_in_an_ablation_warns_and_suggests_budget(env):
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "out"), "--dry-run", "--max_time=4h")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "different numbers of tokens" in r.stderr and "--budget 4h" in r.stderr
    r = bash(env, "ablate.sh", "--out", str(env["tmp"] / "out"), "--dry-run", "--max_iters=4")
    assert "warning" not in r.stderr


def test_budget_probe_failure_stops_with_its_code(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--budget", "1h", extra_env=budget_env(FAKE_STEPS_EXIT="2"))
    assert r.returncode == 2
    assert len(error_lines(r.stderr)) == 1 and "budget probe of arm baseline failed" in r.stderr
    assert train_calls(env) == [] and not (out / "budget.json").exists()
    assert not (out / ".budget.lock").exists()                # the lock is released on failure


def test_budget_dry_run_and_print_slurm_calibrate_nothing(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out), "--dry-run", "--budget", "4h", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert all(line.endswith("--max_iters=CALIBRATED --max_time=") for line in r.stdout.splitlines())
    r = bash(env, "ablate.sh", "--out", str(out), "--print-slurm", "--seeds", "2", "--budget", "4h",
             "cfg.py", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (f"sbatch --array=0-13 slurm/ablate.sbatch --seeds 2 --out {out} "
                                        "--budget 4h cfg.py")
    assert "first task to start probes the arms" in r.stdout
    assert calls(env) == design_calls(env) and not out.exists()


def wait_for(condition, what, timeout=300):
    """Polls condition() until it returns true (the event); the timeout is only a safety net for a
    broken script, and its failure says what was awaited. No test depends on how fast a script runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_ablate(env, err, *args, extra_env=None):
    """ablate.sh ARGS in the background, its stderr to the file err."""
    with open(err, "w") as f:
        return subprocess.Popen(["bash", "ablate.sh", *args], cwd=env["repo"], env=dict(env["env"], **(extra_env or {})),
                                stdout=subprocess.DEVNULL, stderr=f)


def test_budget_concurrent_array_tasks_calibrate_once(env):
    """Array tasks start together: one takes the lock and probes, the others wait for budget.json.
    The probes are held at a gate until every other task says it waits, so no task can find the
    calibration finished before it looks, however slowly the tasks start on a busy machine."""
    out, tmp = env["tmp"] / "out", env["tmp"]
    gated = tmp / "gated-python"  # a probe (--steps-in) leaves a mark and waits for the gate file
    gated.write_text(f'#!/bin/sh\ncase "$*" in *--steps-in=*) touch "{tmp}/at-gate.$$"\n'
                     f'    while [ ! -e "{tmp}/gate" ]; do sleep 0.05; done;; esac\nexec "{env["env"]["PYTHON"]}" "$@"\n')
    gated.chmod(0o755)
    errs = [tmp / f"task{i}.err" for i in range(len(EXPS))]
    procs = [start_ablate(env, err, "--task", str(i), "--out", str(out), "--budget", "2h",
                          extra_env=dict(PYTHON=str(gated), **budget_env(ABLATE_BUDGET_WAIT="600")))
             for i, err in enumerate(errs)]

    def all_but_one_wait():
        assert len(list(tmp.glob("at-gate.*"))) <= 1, "two tasks probe at once: the lock does not hold"
        for p, err in zip(procs, errs):
            assert p.poll() is None, f"a task ended (exit {p.returncode}) before the calibration: {err.read_text()}"
        return sum("waiting for" in err.read_text() for err in errs) == len(EXPS) - 1

    try:
        wait_for(all_but_one_wait, "every task but the calibrating one to say 'waiting for'")
        (tmp / "gate").touch()
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stderr = [err.read_text() for err in errs]
    assert codes == [0] * len(EXPS), stderr
    assert len(probe_calls(env)) == 5                          # one calibration
    assert sorted(opt(c, "max_iters") for c in train_calls(env)) == ["870"] * len(EXPS)
    assert not (out / ".budget.lock").exists()


def test_budget_waits_for_a_live_lock_and_gives_up_after_the_bound(env):
    out = env["tmp"] / "out"
    (out / ".budget.lock").mkdir(parents=True)
    (out / ".budget.lock" / "owner").write_text(f"{socket.gethostname()} {os.getpid()} 2024-01-01T00:00:00Z\n")
    r = bash(env, "ablate.sh", "--task", "0", "--out", str(out), "--budget", "2h",
             extra_env=budget_env(ABLATE_BUDGET_WAIT="1"))
    assert r.returncode == 1 and "waiting for" in r.stderr, r.stderr
    assert len(error_lines(r.stderr)) == 1 and "waited 1s" in r.stderr, r.stderr
    assert "remove " + str(out / ".budget.lock") in r.stderr
    assert probe_calls(env) == [] and train_calls(env) == []
    # the same wait ends as soon as the calibrating task writes budget.json: written once the script
    # says it waits (an event, not a delay); a wait that missed it would end with exit 1 after 120 s
    err = env["tmp"] / "wait.err"
    p = start_ablate(env, err, "--task", "0", "--out", str(out), "--budget", "2h",
                     extra_env=budget_env(ABLATE_BUDGET_WAIT="120"))
    try:
        wait_for(lambda: "waiting for" in err.read_text() or p.poll() is not None, "ablate.sh to say 'waiting for'")
        (out / "budget.json").write_text(json.dumps({"budget": "2h", "max_iters": 77, "per_arm": {},
                                                     "host": "other", "train_args": []}))
        assert p.wait(timeout=300) == 0, err.read_text()
    finally:
        if p.poll() is None:
            p.kill()
    assert "waiting for" in err.read_text() and opt(train_calls(env)[-1], "max_iters") == "77"
    assert probe_calls(env) == []


def test_budget_stale_lock_of_a_dead_process_is_taken_over(env):
    out = env["tmp"] / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".budget.lock").mkdir(parents=True)
    (out / ".budget.lock" / "owner").write_text(f"{socket.gethostname()} {dead.pid} 2024-01-01T00:00:00Z\n")
    r = bash(env, "ablate.sh", "--task", "0", "--out", str(out), "--budget", "2h", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert "stale" in r.stderr and len(probe_calls(env)) == 5
    assert opt(train_calls(env)[-1], "max_iters") == "870" and not (out / ".budget.lock").exists()


# --------------------------------------------------------------------------- slurm
def sbatch_env(env, task, **kw):
    e = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "4242",
         "SLURM_JOB_ID": "5000", "SEEDS": "2", "OUT": str(env["tmp"] / "out"), "CONFIG": ""}
    e.update(kw)
    return e


def test_ablate_sbatch_runs_its_task(env):
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 5))
    assert r.returncode == 0, r.stderr
    (argv,) = train_calls(env)
    assert opt(argv, "out_dir") == f"{env['tmp']}/out/rope/seed2"      # 5 -> rope, seed 2
    assert switches(argv) == expected_switches("rope")
    assert scontrol_calls(env) == []


def test_ablate_sbatch_arguments_replace_defaults(env):
    out2 = env["tmp"] / "out2"
    r = bash(env, "slurm/ablate.sbatch", "--seeds", "3", "--out", str(out2), "c.py",
             extra_env=sbatch_env(env, 4, CONFIG="config/ignored.py"))
    assert r.returncode == 0, r.stderr
    (argv,) = train_calls(env)
    assert argv[1] == "c.py" and "config/ignored.py" not in argv
    assert opt(argv, "out_dir") == f"{out2}/swiglu/seed2"              # 4 -> swiglu, seed 2


def test_ablate_sbatch_requeues_on_75(env):
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 13, FAKE_EXIT="75"))
    assert r.returncode == 0, r.stderr
    assert scontrol_calls(env) == ["requeue 4242_13"]
    # resubmitted task resumes
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 13))
    assert r.returncode == 0, r.stderr
    assert train_calls(env)[-1][-1] == "--resume=auto"


def test_ablate_sbatch_passes_other_failures_without_requeue(env):
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 0, FAKE_EXIT="3"))
    assert r.returncode == 3
    assert scontrol_calls(env) == []


def run_until_started(env, args, extra, sig):
    """Start a script, wait until the fake train.py is running, send `sig` to the script."""
    e = dict(env["env"], FAKE_WAIT_SIGNAL="1", **extra)
    p = subprocess.Popen(["bash", *args], cwd=env["repo"], env=e, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = Path(env["env"]["FAKE_LOG"] + ".started")
    wait_for(lambda: started.exists() or p.poll() is not None, "the fake train.py to start")
    assert p.poll() is None, p.communicate()
    os.kill(p.pid, sig)
    out, err = p.communicate(timeout=300)
    sigs = Path(env["env"]["FAKE_LOG"] + ".signals")
    return p.returncode, err, (sigs.read_text().split() if sigs.exists() else [])


def test_ablate_sbatch_forwards_usr1_to_train_and_requeues(env):
    rc, err, sigs = run_until_started(env, ["slurm/ablate.sbatch"], sbatch_env(env, 3),
                                      signal.SIGUSR1)
    assert sigs == [str(int(signal.SIGUSR1))], err     # reached python through ablate.sh
    assert rc == 0, err
    assert scontrol_calls(env) == ["requeue 4242_3"]
    assert (env["tmp"] / "out/swiglu/seed2/ckpt.pt").exists()


def test_ablate_sbatch_sigterm_stops_without_requeue(env):
    rc, err, sigs = run_until_started(env, ["slurm/ablate.sbatch"], sbatch_env(env, 3),
                                      signal.SIGTERM)
    assert sigs == [str(int(signal.SIGTERM))]
    assert rc == 75, err
    assert scontrol_calls(env) == []


def test_train_sbatch_single_run_requeue_and_resume(env):
    # train.py itself decides (--resume=auto, always last) whether to skip, resume or start afresh;
    # test_slurm.py runs the real train.py through this script on a real SLURM cluster
    out = env["tmp"] / "single"
    e = {"OUT": str(out), "SEED": "3", "CONFIG": "", "SLURM_JOB_ID": "777"}
    r = bash(env, "slurm/train.sbatch", "--use_rope=True", "--resume=false", extra_env=dict(e, FAKE_EXIT="75"))
    assert r.returncode == 0, r.stderr
    assert scontrol_calls(env) == ["requeue 777"]
    argv = train_calls(env)[0]
    assert opt(argv, "out_dir") == str(out) and opt(argv, "seed") == "3"
    assert opt(argv, "use_rope") == "True" and argv[-1] == "--resume=auto"
    r = bash(env, "slurm/train.sbatch", "--use_rope=True", extra_env=e)     # requeued
    assert r.returncode == 0, r.stderr
    assert train_calls(env)[-1][-1] == "--resume=auto"


def test_train_sbatch_forwards_usr1(env):
    e = {"OUT": str(env["tmp"] / "single"), "CONFIG": "", "SLURM_JOB_ID": "778"}
    rc, err, sigs = run_until_started(env, ["slurm/train.sbatch"], e, signal.SIGUSR1)
    assert sigs == [str(int(signal.SIGUSR1))] and rc == 0, err
    assert scontrol_calls(env) == ["requeue 778"]


# --------------------------------------------------------------------------- prepare_small.sh
@pytest.fixture
def big(env):
    p = env["tmp"] / "big.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i} " + "x" * (i % 7)}) + "\n" for i in range(500)))
    return p


def test_prepare_small_writes_exactly_n_lines(env, big):
    out = env["tmp"] / "small.jsonl"
    r = bash(env, "prepare_small.sh", str(big), "123", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data == b"".join(big.read_bytes().splitlines(keepends=True)[:123])
    assert f"123 lines, {len(data)} bytes" in r.stdout
    assert not [p for p in env["tmp"].iterdir() if ".tmp." in p.name]      # no temp left


def test_prepare_small_default_name_and_fewer_lines(env, big):
    r = bash(env, "prepare_small.sh", str(big), "1000")
    assert r.returncode == 0, r.stderr
    out = env["tmp"] / "big.small1000.jsonl"
    assert out.read_bytes() == big.read_bytes() and "only 500 lines" in r.stderr


def test_prepare_small_refuses_to_overwrite_input(env, big):
    before = big.read_bytes()
    link = env["tmp"] / "link.jsonl"
    link.symlink_to(big)
    for target in [big, link]:
        r = bash(env, "prepare_small.sh", str(big), "10", str(target))
        assert r.returncode != 0 and "refusing" in r.stderr
    assert big.read_bytes() == before


def test_prepare_small_errors_are_one_line(env, big):
    r = bash(env, "prepare_small.sh", str(env["tmp"] / "nope.jsonl"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr
    r = bash(env, "prepare_small.sh", str(big), "12x")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    r = bash(env, "prepare_small.sh", "-h")
    assert r.returncode == 0 and "usage" in r.stdout


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_prepare_small_reads_zst(env, big):
    lines = [json.dumps({"i": i}) + "\n" for i in range(200000)]   # more than a pipe buffer
    src = env["tmp"] / "z.jsonl"
    src.write_text("".join(lines))
    subprocess.run(["zstd", "-q", str(src), "-o", str(src) + ".zst"], check=True)
    r = bash(env, "prepare_small.sh", str(src) + ".zst", "50")
    assert r.returncode == 0, r.stderr
    assert (env["tmp"] / "z.small50.jsonl").read_text() == "".join(lines[:50])
    # a corrupt archive is an error, not a short file
    bad = env["tmp"] / "bad.jsonl.zst"
    bad.write_bytes(b"not zstd at all")
    r = bash(env, "prepare_small.sh", str(bad), "5")
    assert r.returncode != 0 and not (env["tmp"] / "bad.small5.jsonl").exists()


def test_prepare_small_killed_run_leaves_no_partial_output(env):
    """Killed mid-way (decompressor still streaming): nothing under OUT's name, no temp."""
    stub = env["tmp"] / "stubbin"
    stub.mkdir()
    z = stub / "zstd"
    z.write_text('#!/bin/sh\nprintf \'{"a": 1}\\n{"a": 2}\\n\'\nexec sleep 30\n')
    z.chmod(0o755)
    src = env["tmp"] / "slow.jsonl.zst"
    src.write_bytes(b"whatever")
    out = env["tmp"] / "slow_out.jsonl"
    e = dict(env["env"], PATH=f"{stub}{os.pathsep}{env['env']['PATH']}")
    p = subprocess.Popen(["bash", "prepare_small.sh", str(src), "100", str(out)], cwd=env["repo"],
                         env=e, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(".tmp." in q.name for q in env["tmp"].iterdir()) or p.poll() is not None,
             "prepare_small.sh to create its temporary file")
    assert p.poll() is None, p.communicate()
    os.killpg(p.pid, signal.SIGTERM)          # like Ctrl-C / scancel: the whole group
    p.communicate(timeout=300)
    assert p.returncode != 0
    assert not out.exists()
    assert not [q for q in env["tmp"].iterdir() if ".tmp." in q.name]


# ---------------------------------------------------------------------------
# prepare_manpages.py: the second corpus

def manpages(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "prepare_manpages.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_prepare_manpages_bad_input_is_one_line_and_nothing_is_overwritten(tmp_path):
    kept = tmp_path / "man.jsonl"
    kept.write_text("mine\n")
    for args, msg in [((kept,), "exists"), ((tmp_path / "no" / "x.jsonl",), "folder not found"),
                      ((tmp_path / "x.jsonl", "many"), "MAX_PAGES must be a whole number"),
                      ((tmp_path / "x.jsonl", "0"), "MAX_PAGES must be a whole number of 1 or more")]:
        r = manpages(*args)
        assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert kept.read_text() == "mine\n" and not (tmp_path / "x.jsonl").exists()


@pytest.mark.skipif(shutil.which("groff") is None or not list(Path("/usr/share/man/man1").glob("*.gz")),
                    reason="needs groff and manual pages")
def test_prepare_manpages_writes_plain_text_pages(tmp_path):
    r = manpages(tmp_path / "man.jsonl", 3)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in (tmp_path / "man.jsonl").read_text().splitlines()]
    assert len(docs) == 3 and "3 pages" in r.stdout and not list(tmp_path.glob("*.tmp"))
    for d in docs:
        assert len(d["text"]) >= 1000 and "\x1b" not in d["text"] and "\b" not in d["text"]   # no terminal codes
        assert d["meta"]["source"].startswith("/usr/share/man/man")
