"""Tests of ablate.py as the ablation orchestrator (the plain ablation: a design x seeds, no --tune/--scale; the
study side is test_study.py) and of the designs it owns.

* The designs (make_design, choose_switches): one-at-a-time, leave-one-out, factorial, value switches, errors,
  a new registered switch picked up with no edit.
* Orchestration against a stand-in trainer: PYTHON (here ablate.PY) points at a fake interpreter (FAKE_PY) that
  records its argv in calls.jsonl and fakes train.py: a run leaves log.txt, ckpt.pt and results.json (FAKE_EXIT,
  FAKE_FAIL make it fail; FAKE_WAIT_SIGNAL makes it wait for a signal, then checkpoint and exit 75), `--steps-in`
  answers a step count from the arm's arguments (FAKE_STEPS_COST), `plot.py` writes the report file
  (FAKE_PLOT_EXIT). ablate.main() runs in this process (no torch import per call): the runs and their
  arguments, the task index, resume, exit codes, design.json, --dry-run, --print-slurm, progress lines, and
  --budget's calibration, its lock and its refusals. test_scripts.py runs slurm/ablate.sbatch with this fake.
* One real ablation end to end (real train.py and plot.py, CPU, two runs at a time, 6 tiny runs): leave-one-out
  of a throwaway switch added to a copy of the repo (one config line + one `if` in the model, nothing else
  edited) and a value switch (n_layer=2), 2 seeds (the report pairs on seed): train.py lists the new switch,
  ablate.py runs it and sizes the job array for it, the report has a row for it, a resume with it flipped is
  refused, and the same command again trains nothing.
"""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest

import ablate
import ablation_report
import train
from test_train import write_corpus

HERE = Path(__file__).resolve().parent
REGISTRY = list(train.SWITCHES)                                     # swiglu rope rmsnorm warmup cosine qknorm
DEFAULT = [n for n, k in train.SWITCHES.items() if train.CONFIG_FIELDS[k].metadata["ablate"]]
EXPS = ["baseline", *DEFAULT, "all"]                                # the default design's experiments
SWITCH_KEYS = list(train.SWITCHES.values())                         # every registered switch, set in every run


def design(kind="one-at-a-time", switches=None, values=()):
    """[(name, args)] of a design in task order, and its json (design.json)."""
    names = None if switches is None else [n for n in switches.split(",") if n]   # as ablate.py reads --switches
    d = ablate.make_design(kind, ablate.choose_switches(names, values))
    return [(e["name"], e["args"]) for e in d["experiments"]], d


# -----------------------------------------------------------------------------
# the designs

def test_default_design_one_at_a_time():
    _, d = design()
    assert d["design"] == "one-at-a-time" and d["reference"] == "baseline"
    assert [s["name"] for s in d["switches"]] == DEFAULT and len(EXPS) >= 3
    assert d["switches"][0] == {"name": DEFAULT[0], "key": train.SWITCHES[DEFAULT[0]], "on": True, "off": False}
    assert [e["name"] for e in d["experiments"]] == EXPS
    for e in d["experiments"]:
        assert e["on"] == {"baseline": [], "all": DEFAULT}.get(e["name"], [e["name"]])
        # every registered switch set explicitly, chosen or not
        assert e["args"] == [f"--{k}={n in e['on']}" for n, k in train.SWITCHES.items()]


def test_leave_one_out_and_factorial_designs():
    _, d = design("leave-one-out", "rope,cosine,qknorm")
    assert d["reference"] == "all" and [e["name"] for e in d["experiments"]] == ["all", "no_rope", "no_cosine",
                                                                                 "no_qknorm"]
    assert d["experiments"][2]["on"] == ["rope", "qknorm"]
    assert "--use_cosine=False" in d["experiments"][2]["args"] and "--use_qknorm=True" in d["experiments"][2]["args"]
    assert "--use_swiglu=False" in d["experiments"][0]["args"]            # not chosen: off, explicitly
    _, d = design("factorial", "swiglu,rope,cosine")
    assert [e["name"] for e in d["experiments"]] == [
        "baseline", "swiglu", "rope", "cosine", "swiglu+rope", "swiglu+cosine", "rope+cosine", "all"]
    assert len({frozenset(e["on"]) for e in d["experiments"]}) == 8
    # one switch: no duplicate "all"
    assert [n for n, _ in design(switches="rope")[0]] == ["baseline", "rope"]
    assert [n for n, _ in design("factorial", "rope")[0]] == ["baseline", "rope"]


def test_value_switch_design():
    _, d = design("factorial", "swiglu", ["n_layer=6", "learning_rate=1e-3"])
    assert d["switches"][1:] == [{"name": "n_layer=6", "key": "n_layer", "on": 6, "off": None},
                                 {"name": "learning_rate=1e-3", "key": "learning_rate", "on": 0.001, "off": None}]
    exps = {e["name"]: e for e in d["experiments"]}
    assert len(exps) == 8 and "swiglu+n_layer=6" in exps and "all" in exps
    assert not any(a.startswith("--n_layer") for a in exps["baseline"]["args"])   # off: the config's value stays
    assert exps["n_layer=6"]["args"][-1] == "--n_layer=6" and "--use_swiglu=False" in exps["n_layer=6"]["args"]
    assert exps["all"]["args"][-2:] == ["--n_layer=6", "--learning_rate=1e-3"]
    assert [n for n, _ in design(switches="", values=["dropout=0.1"])[0]] == ["baseline", "dropout=0.1"]


def test_a_new_registered_switch_is_picked_up(monkeypatch):
    """A throwaway switch in train.py's registry appears in the designs without touching ablate.py or plot.py."""
    monkeypatch.setitem(train.SWITCHES, "zzz", "use_zzz")
    monkeypatch.setitem(train.CONFIG_FIELDS, "use_zzz", SimpleNamespace(metadata={"switch": True, "ablate": True,
                                                                                    "shape": False, "help": "t"}))
    _, d = design()
    assert [e["name"] for e in d["experiments"]] == ["baseline"] + DEFAULT + ["zzz", "all"]
    assert d["experiments"][-1]["args"][-1] == "--use_zzz=True"
    assert ablation_report.on_label(DEFAULT + ["zzz"], d["switches"], "one-at-a-time") == f"all ({len(DEFAULT) + 1})"


def test_ablate_py_names_no_switch_and_no_count():
    """No switch, no switch key and no literal 7 (the default design's count) in ablate.py's code (its help text
    may show examples; a json field may share a switch's name, as study.json's budget["warmup"]): everything comes
    from train.py's registry."""
    names = set(REGISTRY) | set(SWITCH_KEYS)
    toks = list(tokenize.generate_tokens(io.StringIO((HERE / "ablate.py").read_text()).readline))
    for before, t, after in zip(toks, toks[1:], toks[2:]):
        if t.type == tokenize.NUMBER:
            assert t.string != "7", t
        if t.type == tokenize.NAME:   # (a variable may be called warmup: warmup_iters is a config key too)
            assert t.string not in SWITCH_KEYS, t
        if t.type == tokenize.STRING and before.string != "[" and after.string != ":":   # not a json field
            assert t.string.strip("\"'rf") not in names, t


@pytest.mark.parametrize("argv, words", [
    (["--switches", "swiglu,ropee"], ["unknown switch 'ropee'", "swiglu, rope"]),
    (["--design", "fractional"], ["unknown design 'fractional'", "leave-one-out"]),
    (["--switch", "n_layer=6;rm"], ["only use the characters"]),
    (["--switch", "n_layer=six"], ["n_layer", "expects int"]),
    (["--switch", "n_layr=6"], ["unknown config key 'n_layr'", "n_layer"]),
    (["--switch", "use_rope=True"], ["registered switch", "--switches rope"]),
    (["--switch", "seed=3"], ["set by ablate.py"]),
    (["--switch", "n_layer"], ["expects KEY=VALUE"]),
    (["--switch", "n_layer=2", "--switch", "n_layer=4"], ["given twice"]),
    (["--switches", "rope,rope"], ["listed twice"]),
    (["--switches", ""], ["no switches chosen"]),
    (["--design"], ["--design needs a value"]),
])
def test_design_errors_are_one_line(fake, argv, words):
    r = ablate_(fake, *argv, "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("ablate.py: error:")
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert calls(fake) == [] and not fake["OUT"].exists()


# -----------------------------------------------------------------------------
# orchestration against a stand-in trainer

FAKE_PY = r'''#!{python} -S
# fake interpreter: `fake train.py ARGS` / `fake plot.py ARGS`; `fake ablate.py ARGS` runs the real ablate.py
import json, os, signal, sys, time
argv = sys.argv[1:]
script = os.path.basename(argv[0]) if argv else ""
if script == "ablate.py":
    os.execv(sys.executable, [sys.executable] + argv)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
if script == "plot.py":
    rep = argv[argv.index("--report") + 1]
    open(rep, "w").write("pdf")
    sys.exit(int(os.environ.get("FAKE_PLOT_EXIT", "0")))
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
open(os.path.join(out, "log.txt"), "a").write(json.dumps({{"event": "start", "step": 0}}) + "\n")
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
    # whole, then renamed, as train.py does: ablate.py may read it while this run ends (--jobs 2)
    open(os.path.join(out, "results.json.tmp"), "w").write(json.dumps({{"val_nll": 3.0}}))
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
sys.exit(code)
'''


def write_fake(path):
    path.write_text(FAKE_PY.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


SMALL = "n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n"   # ablate.py builds each size's model once


@pytest.fixture
def fake(tmp_path, monkeypatch, capsys):
    py = write_fake(tmp_path / "fakepy")
    monkeypatch.setattr(ablate, "PY", str(py))   # in-process ablate.main(): no torch import per call
    for k in list(os.environ):
        if k.startswith(("SLURM_", "FAKE_", "ABLATE_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.chdir(HERE)
    cfg = {name: tmp_path / name for name in ("cfg.py", "c.py", "all_on.py")}
    for name, p in cfg.items():
        p.write_text(SMALL + ("".join(f"{k} = True\n" for k in SWITCH_KEYS) if name == "all_on.py" else ""))
    return {"PYTHON": str(py), "LOG": tmp_path / "calls.jsonl", "OUT": tmp_path / "out", "tmp": tmp_path,
            "cfg": {k: str(v) for k, v in cfg.items()}, "capsys": capsys, "monkeypatch": monkeypatch}


def run_main(capsys, argv, extra_env=None):
    """ablate.main(argv) in this process (no torch import per call), with extra_env set: its exit code, stdout and
    stderr as a CompletedProcess."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (extra_env or {}).items():
            mp.setenv(k, v)
        capsys.readouterr()
        rc = ablate.main(argv)
        cap = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, cap.out, cap.err)


def ablate_(fake, *args, extra_env=None, out=None, config="cfg.py"):
    """ablate.main(--out OUT ARGS [config]) in this process."""
    argv = ["--out", str(out or fake["OUT"]), *args] + ([fake["cfg"][config]] if config else [])
    return run_main(fake["capsys"], argv, extra_env)


def calls(fake):
    return [json.loads(ln) for ln in fake["LOG"].read_text().splitlines()] if fake["LOG"].exists() else []


def train_calls(fake):
    """The training runs (not the --steps-in probes)."""
    return [c for c in calls(fake) if c[0].endswith("train.py") and not any(a.startswith("--steps-in=") for a in c)]


def probe_calls(fake, duration=None):
    return [c for c in calls(fake) if any(a.startswith(f"--steps-in={duration or ''}") for a in c)]


def opt(argv, key):
    """Value of the last --key=value in argv (what train.py would use), else None."""
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    return vals[-1] if vals else None


def switches(argv):
    return {s: opt(argv, s) for s in SWITCH_KEYS}


def expected_switches(exp):
    return {k: str((exp == "all" and n in DEFAULT) or n == exp) for n, k in train.SWITCHES.items()}


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ablate.py: error:")]


def test_full_ablation_runs_every_experiment_x2_with_right_dirs_and_switches(fake):
    out, cfg = fake["OUT"], fake["cfg"]["cfg.py"]
    r = ablate_(fake, "--seeds", "2", "--no-report", "--max_iters=7")
    assert r.returncode == 0, r.stderr
    tc = train_calls(fake)
    assert len(tc) == 2 * len(EXPS) == 14
    expected = [(e, s) for e in EXPS for s in (1, 2)]
    args = dict(design()[0])
    for argv, (exp, seed) in zip(tc, expected):
        assert argv[1:3] == ["--max_iters=7", cfg], argv   # user args first, in their order
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}"
        assert opt(argv, "seed") == str(seed)
        assert argv[5:] == args[exp], (exp, argv)                   # exactly the design's switches
        assert switches(argv) == expected_switches(exp), (exp, argv)
        assert opt(argv, "resume") is None
        assert (out / exp / f"seed{seed}" / "results.json").exists()
    assert set(switches(tc[0]).values()) == {"False"}          # baseline
    assert switches(tc[-1]) == {**{s: "True" for s in SWITCH_KEYS}, "use_qknorm": "False"}   # all (default set)
    sw = switches(tc[2])                                        # swiglu seed 1
    assert sw["use_swiglu"] == "True" and list(sw.values()).count("True") == 1
    # the design is saved for the report and the array tasks; plot.py is not asked for it
    assert json.loads((out / "design.json").read_text()) == design()[1]
    assert not [c for c in calls(fake) if c[0].endswith("plot.py")] and not (out / "study.json").exists()


def test_a_progress_line_per_finished_run_with_elapsed_and_time_left(fake):
    """Issue 15 item 5: after each run, runs done / total, the elapsed time and the time left; an array
    task counts the runs finished on disk (every task's)."""
    out = fake["OUT"]
    r = ablate_(fake, "--seeds", "2", "--no-report")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "runs done]" in ln]
    assert len(lines) == 14
    for k, (ln, (exp, seed)) in enumerate(zip(lines, [(e, s) for e in EXPS for s in (1, 2)]), 1):
        assert re.match(rf"ablate.py: \[{k}/14 runs done\] {exp} seed {seed}: val nll 3.0000 in \d+m\d\ds; "
                        rf"elapsed \d+m\d\ds", ln), ln
        assert (", about " in ln and ln.endswith(" left")) == (k < 14), ln
    (out / "baseline" / "seed1" / "results.json").unlink()
    r = ablate_(fake, "--seeds", "2", "--task", "0")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[14/14 runs done\] baseline seed 1: val nll 3.0000 in \d+m\d\ds; elapsed \d+m\d\ds$",
                     r.stderr.strip()), r.stderr


def test_switches_are_explicit_even_for_baseline(fake):
    """A config that turns a switch on cannot leak it into the baseline: the explicit
    --use_x=False comes after the config on the command line."""
    r = ablate_(fake, "--no-report", config="all_on.py")
    assert r.returncode == 0, r.stderr
    base = train_calls(fake)[0]
    for s in SWITCH_KEYS:
        assert base.index(f"--{s}=False") > base.index(fake["cfg"]["all_on.py"])


def test_rerun_skips_finished_runs(fake):
    args = ["--seeds", "2", "--no-report"]
    assert ablate_(fake, *args).returncode == 0
    n = len(train_calls(fake))
    r = ablate_(fake, *args)
    assert r.returncode == 0, r.stderr
    assert len(train_calls(fake)) == n          # no new runs
    assert "14 of 14 runs already finished" in r.stderr


def test_interrupted_run_is_resumed(fake):
    out, args = fake["OUT"], ["--seeds", "2", "--no-report"]
    assert ablate_(fake, *args).returncode == 0
    (out / "rope/seed2/results.json").unlink()           # interrupted: ckpt.pt only
    (out / "cosine/seed1/results.json").unlink()         # never started: nothing
    (out / "cosine/seed1/ckpt.pt").unlink()
    n = len(train_calls(fake))
    r = ablate_(fake, *args)
    assert r.returncode == 0, r.stderr
    new = train_calls(fake)[n:]
    assert [opt(c, "out_dir") for c in new] == [f"{out}/rope/seed2", f"{out}/cosine/seed1"]
    assert new[0][-1] == "--resume=auto"      # train.py continues it (and refuses another run's checkpoint)
    assert opt(new[1], "resume") is None
    assert "resume rope seed 2" in r.stderr


@pytest.mark.parametrize("code", [75, 1])
def test_failed_run_stops_with_its_exit_code(fake, code):
    out = fake["OUT"]
    r = ablate_(fake, "--no-report", extra_env={"FAKE_FAIL": f"rope/seed1:{code}"})
    assert r.returncode == code
    assert "rope seed 1" in r.stderr and f"code {code}" in r.stderr
    dirs = [opt(c, "out_dir") for c in train_calls(fake)]
    assert dirs == [f"{out}/baseline/seed1", f"{out}/swiglu/seed1", f"{out}/rope/seed1"]


def test_a_diverged_run_is_a_result_and_the_ablation_goes_on(fake):
    """train.py's exit code 3 (NaN/inf loss): recorded in diverged.json, not retrained, the report shows it."""
    out = fake["OUT"]
    r = ablate_(fake, "--no-report", extra_env={"FAKE_FAIL": "rope/seed1:3"})
    assert r.returncode == 0, r.stderr
    assert "DIVERGED (exit code 3" in r.stderr and (out / "rope/seed1/diverged.json").is_file()
    assert len(train_calls(fake)) == len(EXPS)
    r = ablate_(fake, "--no-report")
    assert r.returncode == 0 and len(train_calls(fake)) == len(EXPS)


DESIGNS = [  # (design options, design())
    ([], {}),
    (["--design", "leave-one-out"], {"kind": "leave-one-out"}),
    (["--design", "leave-one-out", "--switches", "swiglu,rope,qknorm"],
     {"kind": "leave-one-out", "switches": "swiglu,rope,qknorm"}),
    (["--design", "factorial", "--switches", "swiglu,rope,warmup"],
     {"kind": "factorial", "switches": "swiglu,rope,warmup"}),
    (["--design=factorial", "--switches=rope", "--switch", "n_layer=2"],
     {"kind": "factorial", "switches": "rope", "values": ["n_layer=2"]}),
    (["--switches", "cosine", "--switch=learning_rate=3e-3", "--switch", "dropout=0.1"],
     {"switches": "cosine", "values": ["learning_rate=3e-3", "dropout=0.1"]}),
]


def split_opts(opts):
    """--design=x -> --design x (how ablate.py passes them on)"""
    return [a for o in opts for a in (o.split("=", 1) if o.startswith("--") and "=" in o else [o])]


@pytest.mark.parametrize("opts,spec", DESIGNS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_task_index_maps_to_experiment_and_seed_for_every_design(fake, opts, spec):
    out, cfg = fake["OUT"], fake["cfg"]["c.py"]
    exps = design(**spec)[0]
    n = 2 * len(exps)
    for i in range(n):
        r = ablate_(fake, "--task", str(i), "--seeds", "2", *opts, config="c.py")
        assert r.returncode == 0, r.stderr
    tc = train_calls(fake)
    assert len(tc) == n
    for i, argv in enumerate(tc):
        (exp, args), seed = exps[i // 2], i % 2 + 1
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}", i
        assert opt(argv, "seed") == str(seed)
        assert argv[1] == cfg and argv[4:] == args, (i, argv)
    assert not any("--report" in c for c in calls(fake))              # --task: no report
    assert json.loads((out / "design.json").read_text()) == design(**spec)[1]
    r = ablate_(fake, "--task", str(n), "--seeds", "2", *opts, config="c.py")
    assert r.returncode == 2 and "out of range" in r.stderr and f"{len(exps)} experiments" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_task_index_with_three_seeds(fake):
    # seeds=3, index 7 -> experiment 7 // 3 = 2 (rope), seed 7 % 3 + 1 = 2
    out3 = fake["tmp"] / "out3"
    r = ablate_(fake, "--task", "7", "--seeds", "3", "--dry-run", out=out3)
    assert r.returncode == 0, r.stderr
    assert EXPS[2] == "rope" and f"--out_dir={out3}/rope/seed2 --seed=2 " in r.stdout
    assert train_calls(fake) == [] and not out3.exists()


@pytest.mark.parametrize("opts,spec", DESIGNS, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_print_slurm_array_size_follows_the_design(fake, opts, spec):
    out, cfg = fake["OUT"], fake["cfg"]["cfg.py"]
    exps = design(**spec)[0]
    r = ablate_(fake, "--seeds", "2", "--print-slurm", *opts, "--max_iters=9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == " ".join([f"sbatch --array=0-{2 * len(exps) - 1} slurm/ablate.sbatch --seeds 2 --out {out}",
                                 *split_opts(opts), f"--max_iters=9 {cfg}"])
    tasks = [line for line in lines if line.startswith("# task ")]
    assert len(tasks) == 2 * len(exps)
    for i, line in enumerate(tasks):
        (exp, args), seed = exps[i // 2], i % 2 + 1
        assert line.startswith(f"# task {i} ({exp} seed {seed}): ")
        assert line.endswith(f"--out_dir={out}/{exp}/seed{seed} --seed={seed} " + " ".join(args))
    assert train_calls(fake) == [] and not out.exists()


def test_dry_run_and_print_slurm_run_nothing(fake):
    out, cfg = fake["OUT"], fake["cfg"]["cfg.py"]
    r = ablate_(fake, "--seeds", "2", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 14 and all(f" train.py {cfg} --out_dir=" in line for line in lines)
    r = ablate_(fake, "--seeds", "2", "--print-slurm", "--max_iters=9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sbatch --array=0-13 slurm/ablate.sbatch --seeds 2 --out {out} --max_iters=9 {cfg}"
    tasks = [line for line in lines if line.startswith("# task ")]
    assert len(tasks) == 14 and f"--out_dir={out}/all/seed2" in tasks[13]
    assert lines[-1].endswith(f"write the report: python ablate.py --seeds 2 --out {out} --max_iters=9 {cfg}")
    assert train_calls(fake) == [] and not out.exists()         # not even design.json


def test_design_options_and_value_switches_reach_train_py(fake):
    out = fake["OUT"]
    r = ablate_(fake, "--no-report", "--design", "factorial", "--switches", "swiglu,rope", "--switch", "n_layer=2",
                "--switch", "learning_rate=3e-3", "--n_layer=4")
    assert r.returncode == 0, r.stderr
    tc = train_calls(fake)
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


def test_design_json_is_written_once_and_another_design_is_refused(fake):
    out = fake["OUT"]
    r = ablate_(fake, "--no-report", "--design", "leave-one-out")
    assert r.returncode == 0, r.stderr
    saved = (out / "design.json").read_text()
    assert json.loads(saved) == design("leave-one-out")[1]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    n = len(train_calls(fake))
    r = ablate_(fake, "--no-report")             # one-at-a-time: refused
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "design.json" in r.stderr and "leave-one-out" in r.stderr and "new --out" in r.stderr
    for extra in (["--dry-run"], ["--print-slurm"], ["--task", "0"]):
        r = ablate_(fake, *extra, "--design", "factorial")
        assert r.returncode == 2 and "design.json" in r.stderr, extra
    assert len(train_calls(fake)) == n and (out / "design.json").read_text() == saved
    r = ablate_(fake, "--no-report", "--design", "leave-one-out")  # same: fine
    n_loo = len(design("leave-one-out")[0])
    assert r.returncode == 0 and f"{n_loo} of {n_loo} runs already finished" in r.stderr, r.stderr
    r = ablate_(fake, "--no-report", "--design", "leave-one-out", "--seeds", "2")  # more seeds: the same ablation
    assert r.returncode == 0 and len(train_calls(fake)) == n + n_loo, r.stderr
    r = ablate_(fake, "--no-report", out=fake["tmp"] / "new")                 # new --out
    assert r.returncode == 0, r.stderr


def test_design_json_compares_experiments_not_formatting(fake):
    out = fake["OUT"]
    out.mkdir()
    js = dict(design()[1], added_later="a key a newer ablate.py writes")
    (out / "design.json").write_text(json.dumps(js))                  # same design, other layout
    r = ablate_(fake, "--no-report", "--task", "0")
    assert r.returncode == 0, r.stderr
    js["experiments"][1]["args"][-1] = "--use_qknorm=True"               # other arguments: refused
    (out / "design.json").write_text(json.dumps(js))
    r = ablate_(fake, "--no-report", "--task", "1")
    assert r.returncode == 2 and "holds another design" in r.stderr
    (out / "design.json").write_text("{not json")
    r = ablate_(fake, "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot read" in r.stderr
    assert len(train_calls(fake)) == 1


def test_user_cannot_set_managed_flags(fake):
    for bad in ["--use_rope=True", "--use_rope", "--use-rmsnorm=1", "--use_qknorm=False", "--out_dir=x",
                "--out-dir=x", "--seed=3", "--resume=True", "--resume=auto"]:
        r = ablate_(fake, "--dry-run", bad)
        assert r.returncode == 2, bad
        assert len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    assert "sets the switches itself" in ablate_(fake, "--dry-run", "--use_rope=True").stderr
    assert ablate_(fake, "--seeds", "0", "--dry-run").returncode == 2
    r = ablate_(fake, "--task", "0", "--print-slurm")
    assert r.returncode == 2 and "do not go together" in r.stderr
    assert calls(fake) == []


def test_array_size_warning_names_the_derived_count(fake):
    r = ablate_(fake, "--task", "0", "--design", "leave-one-out", "--switches", "swiglu,rope,rmsnorm",
                extra_env={"SLURM_ARRAY_TASK_MAX": "6"})
    assert r.returncode == 0, r.stderr
    assert "4 experiments x 1 seed(s) need --array=0-3" in r.stderr


def test_report_runs_plot_py_on_all_logs(fake):
    out = fake["OUT"]
    r = ablate_(fake, "--seeds", "2", "--design", "leave-one-out", "--switches", "swiglu,rope")
    assert r.returncode == 0, r.stderr
    plots = [c for c in calls(fake) if c[0].endswith("plot.py") and "--report" in c]
    assert len(plots) == 1
    argv = plots[0]
    assert argv[-2:] == ["--report", f"{out}/report.pdf"]
    assert argv[1:-2] == [f"{out}/{e}/seed{s}/log.txt" for e in ["all", "no_swiglu", "no_rope"] for s in (1, 2)]
    assert f"report written: {out}/report.pdf" in r.stderr
    # a failing plot.py is reported with its code and the command to rerun
    r = ablate_(fake, "--seeds", "2", "--design", "leave-one-out", "--switches", "swiglu,rope",
                extra_env={"FAKE_PLOT_EXIT": "4"})
    assert r.returncode == 4 and "plot.py failed" in r.stderr and "rerun: " in r.stderr


def test_list_switches_is_train_pys(monkeypatch, capfd):
    """ablate.py --list-switches prints what `python train.py --list-switches` prints (it runs it)."""
    monkeypatch.setattr(ablate, "PY", sys.executable)   # the real train.py, in a process
    monkeypatch.chdir(HERE)
    capfd.readouterr()
    assert ablate.main(["--list-switches"]) == 0
    listed = capfd.readouterr().out
    assert train.main(["--list-switches"]) == 0
    assert listed == capfd.readouterr().out and len(listed.splitlines()) == len(REGISTRY)
    assert ablate.main(["-h"]) == 0
    r = capfd.readouterr()
    assert "--print-slurm" in r.out and "--budget" in r.out and "--design" in r.out


# --------------------------------------------------------------------------- --budget
COST = {"--use_swiglu=True": 100, "--use_rope=True": 30, "--n_layer=2": 500}   # fake probe: 1000 - cost


def budget_env(**kw):
    return {"FAKE_STEPS_COST": json.dumps(COST), "ABLATE_BUDGET_POLL": "0.05", **kw}


def test_budget_gives_every_run_the_slowest_arms_step_count(fake):
    out, cfg = fake["OUT"], fake["cfg"]["cfg.py"]
    r = ablate_(fake, "--seeds", "2", "--no-report", "--budget", "2h", "--batch_size=8", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    # one probe per distinct model: warmup and cosine (schedule switches) run the baseline's model
    probes = probe_calls(fake)
    args = dict(design()[0])
    assert [p[3:-1] for p in probes] == [["--seed=1", *args[e]] for e in ["baseline", "swiglu", "rope", "rmsnorm",
                                                                          "all"]]
    assert all(p[1:3] == ["--batch_size=8", cfg] and p[-1] == "--steps-in=2h" for p in probes)
    tc = train_calls(fake)
    assert len(tc) == 14
    for argv in tc:                                            # all = 1000 - 100 - 30 is the slowest
        assert argv[-2:] == ["--max_iters=870", "--max_time="], argv
    b = json.loads((out / "budget.json").read_text())
    assert b["budget"] == "2h" and b["max_iters"] == 870 and b["host"] == socket.gethostname()
    assert b["per_arm"] == {"baseline": 1000, "swiglu": 900, "rope": 970, "rmsnorm": 1000, "warmup": 1000,
                            "cosine": 1000, "all": 870}
    assert b["train_args"] == ["--batch_size=8", cfg]
    assert not (out / ".lock").exists()
    assert "max_iters 870" in r.stderr and "warmup runs the same model as baseline" in r.stderr


def test_budget_with_a_value_switch(fake):
    r = ablate_(fake, "--no-report", "--budget", "30m", "--switches", "rope", "--switch", "n_layer=2",
                extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert [opt(c, "max_iters") for c in train_calls(fake)] == ["470"] * 4        # all: 1000 - 30 - 500
    assert json.loads((fake["OUT"] / "budget.json").read_text())["per_arm"]["n_layer=2"] == 500


def test_budget_json_is_reused_by_reruns_resumes_and_tasks(fake):
    out, args = fake["OUT"], ["--no-report", "--budget", "2h"]
    assert ablate_(fake, *args, extra_env=budget_env()).returncode == 0
    n_probes = len(probe_calls(fake))
    b = json.loads((out / "budget.json").read_text())
    b["max_iters"] = 123                                       # what budget.json says is what runs get
    (out / "budget.json").write_text(json.dumps(b, indent=2))
    (out / "rope/seed1/results.json").unlink()                 # interrupted: resumes
    (out / "all/seed1/results.json").unlink()
    (out / "all/seed1/ckpt.pt").unlink()                       # never ran
    r = ablate_(fake, *args, extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    new = train_calls(fake)[-2:]
    assert [opt(c, "max_iters") for c in new] == ["123", "123"] and new[0][-1] == "--resume=auto"
    (out / "all/seed1/results.json").unlink()
    r = ablate_(fake, "--task", "6", "--budget", "2h", extra_env=budget_env())
    assert r.returncode == 0 and opt(train_calls(fake)[-1], "max_iters") == "123"
    assert len(probe_calls(fake)) == n_probes                   # never calibrated again
    # another budget, or none, in the same folder: refused in one line
    for extra in (["--budget", "4h"], []):
        r = ablate_(fake, "--dry-run", *extra, extra_env=budget_env())
        assert r.returncode == 2 and len(error_lines(r.stderr)) == 1 == len(r.stderr.strip().splitlines()), r.stderr
        assert "budget" in r.stderr and "2h" in r.stderr
    # other train.py arguments than at calibration: a warning
    r = ablate_(fake, *args, "--batch_size=8", "--dry-run", extra_env=budget_env())
    assert r.returncode == 0 and "other train.py arguments" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--budget", "2h", "--max_iters=5"], "--budget sets max_iters"),
    (["--budget", "2h", "--max_time=1h"], "--budget replaces max_time"),
    (["--budget", "4x"], "--budget expects a duration"),
    (["--budget", "0"], "--budget expects a duration"),
    (["--budget"], "--budget needs a value"),
])
def test_budget_errors_are_one_line(fake, args, message):
    r = ablate_(fake, *args, extra_env=budget_env(), config=None)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert calls(fake) == []


def test_budget_refused_where_runs_without_one_exist(fake):
    out = fake["OUT"]
    assert ablate_(fake, "--no-report").returncode == 0
    r = ablate_(fake, "--no-report", "--budget", "1h", extra_env=budget_env())
    assert r.returncode == 2 and "without --budget" in r.stderr and len(error_lines(r.stderr)) == 1
    assert probe_calls(fake) == [] and not (out / "budget.json").exists()


def test_max_time_in_an_ablation_warns_and_suggests_budget(fake):
    r = ablate_(fake, "--dry-run", "--max_time=4h")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "different numbers of tokens" in r.stderr and "--budget 4h" in r.stderr
    r = ablate_(fake, "--dry-run", "--max_iters=4")
    assert "warning" not in r.stderr


def test_budget_probe_failure_stops_with_its_code(fake):
    out = fake["OUT"]
    r = ablate_(fake, "--budget", "1h", extra_env=budget_env(FAKE_STEPS_EXIT="2"))
    assert r.returncode == 2
    assert len(error_lines(r.stderr)) == 1 and "budget probe of arm baseline failed" in r.stderr
    assert train_calls(fake) == [] and not (out / "budget.json").exists()
    assert not (out / ".lock").exists()                # the lock is released on failure


def test_budget_dry_run_and_print_slurm_calibrate_nothing(fake):
    out, cfg = fake["OUT"], fake["cfg"]["cfg.py"]
    r = ablate_(fake, "--dry-run", "--budget", "4h", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert all(line.endswith("--max_iters=CALIBRATED --max_time=") for line in r.stdout.splitlines())
    r = ablate_(fake, "--print-slurm", "--seeds", "2", "--budget", "4h", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (f"sbatch --array=0-13 slurm/ablate.sbatch --seeds 2 --out {out} "
                                        f"--budget 4h {cfg}")
    assert "first task to start probes the arms" in r.stdout
    # the time estimate probes each model for an hour's steps (--steps-in=1h); nothing calibrates (4h)
    assert train_calls(fake) == [] and probe_calls(fake, "4h") == [] and not out.exists()


def wait_for(condition, what, timeout=300):
    """Polls condition() until it returns true (the event); the timeout is only a safety net for a
    broken script, and its failure says what was awaited. No test depends on how fast a script runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


def signal_until_it_exits(proc, timeout=600):
    """Sends SLURM's warning (SIGUSR1) and SIGTERM to proc every 10 ms until it exits, as a time limit reached
    just as a run ends would; the timeout is only a safety net. Returns its exit code."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        time.sleep(0.01)
    return proc.wait(timeout=60)


def test_budget_concurrent_array_tasks_calibrate_once(fake):
    """Array tasks start together: one takes the lock and probes, the others wait for budget.json.
    The probes are held at a gate until every other task says it waits, so no task can find the
    calibration finished before it looks, however slowly the tasks start on a busy machine."""
    out, tmp = fake["OUT"], fake["tmp"]
    gated = tmp / "gated-python"  # a probe (--steps-in) leaves a mark and waits for the gate file
    gated.write_text(f'#!/bin/sh\ncase "$*" in *--steps-in=*) touch "{tmp}/at-gate.$$"\n'
                     f'    while [ ! -e "{tmp}/gate" ]; do sleep 0.05; done;; esac\nexec "{fake["PYTHON"]}" "$@"\n')
    gated.chmod(0o755)
    n = 3   # tasks 0..2 of --switches swiglu,rope: baseline, swiglu, rope (and all: 4 models probed)
    errs = [tmp / f"task{i}.err" for i in range(n)]
    env = {**os.environ, "PYTHON": str(gated), **budget_env(ABLATE_BUDGET_WAIT="600")}
    procs = []
    for i, err in enumerate(errs):
        with open(err, "w") as f:
            procs.append(subprocess.Popen([sys.executable, "ablate.py", "--task", str(i), "--out", str(out),
                                           "--switches", "swiglu,rope", "--budget", "2h", fake["cfg"]["cfg.py"]],
                                          cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=f))

    def all_but_one_wait():
        assert len(list(tmp.glob("at-gate.*"))) <= 1, "two tasks probe at once: the lock does not hold"
        for p, err in zip(procs, errs):
            assert p.poll() is None, f"a task ended (exit {p.returncode}) before the calibration: {err.read_text()}"
        return sum("waiting for" in err.read_text() for err in errs) == n - 1

    try:
        wait_for(all_but_one_wait, "every task but the calibrating one to say 'waiting for'")
        (tmp / "gate").touch()
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stderr = [err.read_text() for err in errs]
    assert codes == [0] * n, stderr
    assert len(probe_calls(fake)) == 4                          # one calibration
    assert sorted(opt(c, "max_iters") for c in train_calls(fake)) == ["870"] * n
    assert not (out / ".lock").exists()


def test_budget_waits_for_a_live_lock_and_gives_up_after_the_bound(fake):
    """(test_study.py: the wait ends as soon as the calibrating task writes budget.json.)"""
    out = fake["OUT"]
    out.mkdir()
    (out / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")   # this process: alive
    r = ablate_(fake, "--task", "0", "--budget", "2h", extra_env=budget_env(ABLATE_BUDGET_WAIT="1"))
    assert r.returncode == 1 and "waiting for" in r.stderr, r.stderr
    assert len(error_lines(r.stderr)) == 1 and "waited 1s" in r.stderr, r.stderr
    assert "remove " + str(out / ".lock") in r.stderr
    assert probe_calls(fake) == [] and train_calls(fake) == []


def test_budget_stale_lock_of_a_dead_process_is_taken_over(fake):
    out = fake["OUT"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    out.mkdir()
    (out / ".lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    r = ablate_(fake, "--task", "0", "--budget", "2h", extra_env=budget_env())
    assert r.returncode == 0, r.stderr
    assert len(probe_calls(fake)) == 5
    assert opt(train_calls(fake)[-1], "max_iters") == "870" and not (out / ".lock").exists()


def test_a_signal_reaches_the_running_train_py_and_no_run_starts_after(fake):
    """SIGTERM to `python ablate.py` (a local ablation): the running train.py gets it, checkpoints, exits 75;
    ablate.py starts no further run and exits 75. (test_scripts.py: SIGUSR1 and SIGTERM through ablate.sbatch.)"""
    env = {**os.environ, "PYTHON": fake["PYTHON"], "FAKE_WAIT_SIGNAL": "1"}
    p = subprocess.Popen([sys.executable, "ablate.py", "--out", str(fake["OUT"]), "--no-report",
                          fake["cfg"]["cfg.py"]], cwd=HERE, env=env, stderr=subprocess.PIPE, text=True)
    started = Path(str(fake["LOG"]) + ".started")
    wait_for(lambda: started.exists() or p.poll() is not None, "the fake train.py to start")
    p.send_signal(signal.SIGINT)                               # Ctrl-C: forwarded as SIGTERM
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 75, err
    assert Path(str(fake["LOG"]) + ".signals").read_text().split() == [str(int(signal.SIGTERM))]
    assert len(train_calls(fake)) == 1 and "rerun the same command to resume" in err


# -----------------------------------------------------------------------------
# real ablations end to end (train.py and plot.py), in two lanes (one single-threaded process per core)

TINY_ARGS = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--max_iters=10",
             "--val_docs=4", "--eval_interval=5", "--eval_iters=1", "--log_interval=5", "--warmup_iters=2",
             "--ckpt_interval=10", "--device=cpu", "--dtype=float32"]


def run(args, cwd=HERE, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FAKE_", "ABLATE_"))}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def real_ablate(out, corpus, *extra, seeds=1, cwd=HERE):
    return run([sys.executable, "ablate.py", "--seeds", str(seeds), "--out", str(out), *extra,
                f"--data_path={corpus}", *TINY_ARGS], cwd=cwd)


def add_throwaway_switch(repo):
    """A copy of the repo with one new switch: its config entry and its `if` in the model, nothing else."""
    for p in HERE.glob("*.py"):
        shutil.copy(p, repo / p.name)
    shutil.copytree(HERE / "config", repo / "config")
    src = (repo / "train.py").read_text()
    first_switch = re.search(r"^( +)use_\w+: bool = switch\(", src, re.M)
    indent = first_switch.group(1)
    src = (src[:first_switch.start()]
           + f'{indent}use_throwaway: bool = switch("test-only: one extra Linear in the model", shape=True)\n'
           + src[first_switch.start():])
    init = re.compile(r"^class GPT\(.*?^( +)super\(\).__init__\(\)\n", re.M | re.S).search(src)
    indent = init.group(1)
    src = (src[:init.end()]
           + f"{indent}if cfg.use_throwaway:  # the model gets one more parameter\n"
           + f"{indent}    self.throwaway = nn.Linear(cfg.n_embd, 1)\n"
           + src[init.end():])
    (repo / "train.py").write_text(src)


def lane(steps, results):
    for name, fn in steps:
        try:
            results[name] = fn()
        except Exception as e:  # reported by the test that needs it
            results[name] = e


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    """Every real ablation of this file, in two concurrent lanes; {name: CompletedProcess or value}."""
    tmp = tmp_path_factory.mktemp("ablate")
    corpus = write_corpus(tmp / "corpus.jsonl", 40)
    repo = tmp / "repo"
    repo.mkdir()
    add_throwaway_switch(repo)
    out = {k: tmp / k for k in ["loo", "throwaway"]}   # throwaway: only --print-slurm, no runs
    results = {"out": out, "corpus": corpus, "repo": repo}
    # Leave-one-out of the throwaway switch and a value switch (n_layer=2), 2 seeds, two runs at a time, in the
    # copy of the repo that has the switch: 3 experiments x 2 seeds. (The other designs' runs differ only in
    # their arguments: make_design's tests and the stand-in trainer's above.)
    loo = ("--design", "leave-one-out", "--switches", "throwaway", "--switch", "n_layer=2")
    a = [("loo", lambda: real_ablate(out["loo"], corpus, *loo, "--jobs", "2", seeds=2, cwd=repo)),
         ("rerun", lambda: real_ablate(out["loo"], corpus, *loo, "--no-report", seeds=2, cwd=repo)),
         ("flipped", lambda: run([sys.executable, "train.py", f"--data_path={corpus}", *TINY_ARGS, "--seed=1",
                                  f"--out_dir={out['loo']}/no_n_layer=2/seed1", "--use_throwaway=False",
                                  "--resume=True"], cwd=repo))]
    b = [("list", lambda: run([sys.executable, "ablate.py", "--list-switches"], cwd=repo)),
         ("slurm", lambda: real_ablate(out["throwaway"], corpus, "--print-slurm", seeds=2, cwd=repo)),
         ("refused", lambda: real_ablate(out["throwaway"], corpus, "--dry-run", "--use_throwaway=True", cwd=repo))]
    threads = [threading.Thread(target=lane, args=(steps, results)) for steps in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def finished(results, name):
    r = results[name]
    if isinstance(r, Exception):
        raise r
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return results["out"].get(name)


def report_rows(out, names):
    md = (out / "report.md").read_text()
    return md, {n: [line for line in md.splitlines() if line.startswith(f"| {n} ")] for n in names}


def configs(out, names, seeds=(1,)):
    return {(e, s): json.loads((out / e / f"seed{s}" / "results.json").read_text()) for e in names for s in seeds}


def test_leave_one_out_with_a_value_switch_end_to_end_with_two_seeds(ablations):
    out = finished(ablations, "loo")
    names = ["all", "no_throwaway", "no_n_layer=2"]
    # (console/: with --jobs 2, each run's console output goes to a file there)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names + ["console"])
    assert sorted(p.name for p in (out / "console").iterdir()) == sorted(names)
    d = json.loads((out / "design.json").read_text())
    assert d["design"] == "leave-one-out" and d["reference"] == "all" and [e["name"] for e in d["experiments"]] == names
    runs = configs(out, names, seeds=(1, 2))
    every = set(SWITCH_KEYS) | {"use_throwaway"}              # all registered, set in every run
    ref = runs[("all", 1)]["config"]
    for (name, seed), r in runs.items():
        cfg = r["config"]
        assert cfg["seed"] == seed and r["steps"] == 10 and r["tokens"] == 10 * 2 * 32
        assert cfg["use_throwaway"] == (name != "no_throwaway"), name
        assert all(cfg[k] is False for k in SWITCH_KEYS), name    # the other switches: off, explicitly
        assert cfg["n_layer"] == (1 if name == "no_n_layer=2" else 2), name   # off: the user's value (1)
        assert {k for k in cfg if cfg[k] != ref[k]} - every - {"seed", "out_dir", "n_layer"} == set()
    total = {name: runs[(name, 1)]["params"]["total"] for name in names}
    assert total["all"] > total["no_throwaway"]            # the throwaway branch acted
    assert total["all"] > total["no_n_layer=2"]            # the value switch reached the model
    assert (out / "report.png").stat().st_size > 1000
    assert ablation_report.count_pdf_pages(out / "report.pdf") == 1
    md, rows = report_rows(out, names)
    assert "leave-one-out" in md and all(rows.values()), md   # a report row for the new switch
    for name in names[1:]:                         # paired on seed against all: a test, not "1 seed"
        assert "no test possible" not in rows[name][0], rows[name]


def test_rerun_of_a_real_ablation_trains_nothing(ablations):
    out = finished(ablations, "loo")
    finished(ablations, "rerun")
    r = ablations["rerun"]
    assert "6 of 6 runs already finished" in r.stderr and "ablate.py: run " not in r.stderr, r.stderr
    assert (out / "all" / "seed1" / "results.json").is_file()


def test_throwaway_switch_is_listed_and_cannot_be_set_by_hand(ablations):
    r = ablations["list"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("throwaway\tuse_throwaway\tshape\tdefault\t") for line in lines), lines
    assert len(lines) == len(REGISTRY) + 1
    r = ablations["refused"]
    assert r.returncode == 2 and "sets the switches itself" in r.stderr, r.stderr


def test_throwaway_switch_gets_its_experiment_and_array_slots(ablations):
    out = ablations["out"]["throwaway"]
    slurm = ablations["slurm"]
    assert slurm.returncode == 0, slurm.stderr
    n = len(EXPS) + 1                                                  # one experiment more
    assert slurm.stdout.startswith(f"sbatch --array=0-{2 * n - 1} slurm/ablate.sbatch ")
    tasks = [line for line in slurm.stdout.splitlines() if line.startswith("# task ")]
    assert len(tasks) == 2 * n
    assert all("--use_throwaway=" in line for line in tasks)           # set explicitly in every run
    mine = [line for line in tasks if f"--out_dir={out}/throwaway/seed" in line]
    assert len(mine) == 2 and all("--use_throwaway=True" in line for line in mine)


def test_throwaway_switch_flipped_on_resume_is_refused(ablations):
    finished(ablations, "loo")
    r = ablations["flipped"]
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(r"checkpoint \S+ckpt\.pt has use_throwaway=True but the config says use_throwaway=False",
                     err[0]), err
