"""Tests for the shell tooling: ablate.sh, slurm/*.sbatch, prepare_small.sh.

No real training: PYTHON points at a fake interpreter (written into tmp_path) that records
its argv and fakes what train.py / plot.py leave on disk. The scripts are copied into a
scratch repo in tmp_path, so these tests do not depend on train.py or plot.py existing.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
EXPS = ["baseline", "swiglu", "rope", "warmup", "cosine", "rmsnorm", "all"]
SWITCHES = ["use_swiglu", "use_rope", "use_rmsnorm", "use_warmup", "use_cosine"]

FAKE_PY = r'''#!{python} -S
# fake interpreter: `fake train.py ARGS` / `fake plot.py ARGS`
import json, os, signal, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
script = os.path.basename(argv[0]) if argv else ""
if script == "plot.py":
    rep = argv[argv.index("--report") + 1]
    open(rep, "w").write("pdf")
    sys.exit(int(os.environ.get("FAKE_PLOT_EXIT", "0")))
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
    time.sleep(20)
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


@pytest.fixture
def env(tmp_path):
    """A scratch repo with the scripts, a fake python and a stub scontrol."""
    repo = tmp_path / "repo"
    (repo / "slurm").mkdir(parents=True)
    for name in ["ablate.sh", "prepare_small.sh", "slurm/ablate.sbatch", "slurm/train.sbatch"]:
        shutil.copy(ROOT / name, repo / name)
    (repo / "train.py").write_text("raise SystemExit('the fake python never runs this')\n")
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PY.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sc = bindir / "scontrol"
    sc.write_text(STUB_SCONTROL)
    sc.chmod(0o755)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FAKE_"))}
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
                          capture_output=True, text=True, timeout=60)


def calls(env):
    log = Path(env["env"]["FAKE_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def train_calls(env):
    return [c for c in calls(env) if c and c[0].endswith("train.py")]


def opt(argv, key):
    """Value of the last --key=value in argv (what train.py would use), else None."""
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    return vals[-1] if vals else None


def switches(argv):
    return {s: opt(argv, s) for s in SWITCHES}


def expected_switches(exp):
    return {s: ("True" if exp == "all" or s == f"use_{exp}" else "False") for s in SWITCHES}


def scontrol_calls(env):
    p = Path(env["env"]["SCONTROL_LOG"])
    return p.read_text().splitlines() if p.exists() else []


# --------------------------------------------------------------------------- ablate.sh
def test_full_ablation_runs_7x2_with_right_dirs_and_switches(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--no-report",
             "config/x.py", "--max_iters=7")
    assert r.returncode == 0, r.stderr
    tc = train_calls(env)
    assert len(tc) == 14
    expected = [(e, s) for e in EXPS for s in (1, 2)]
    for argv, (exp, seed) in zip(tc, expected):
        assert argv[1:3] == ["config/x.py", "--max_iters=7"], argv  # user args first
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}"
        assert opt(argv, "seed") == str(seed)
        assert switches(argv) == expected_switches(exp), (exp, argv)
        assert opt(argv, "resume") is None
        assert (out / exp / f"seed{seed}" / "results.json").exists()
    # spot checks of the three the issue names
    assert set(switches(tc[0]).values()) == {"False"}          # baseline
    assert set(switches(tc[-1]).values()) == {"True"}          # all
    sw = switches(tc[2])                                        # swiglu seed 1
    assert sw["use_swiglu"] == "True" and list(sw.values()).count("True") == 1


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
    n = len(calls(env))
    r = bash(env, *args)
    assert r.returncode == 0, r.stderr
    assert len(calls(env)) == n          # no new calls
    assert r.stderr.count("ablate.sh: skip ") == 14


def test_interrupted_run_is_resumed(env):
    out = env["tmp"] / "out"
    args = ["ablate.sh", "--seeds", "2", "--out", str(out), "--no-report"]
    assert bash(env, *args).returncode == 0
    (out / "rope/seed2/results.json").unlink()           # interrupted: ckpt.pt only
    (out / "cosine/seed1/results.json").unlink()         # never started: nothing
    (out / "cosine/seed1/ckpt.pt").unlink()
    n = len(calls(env))
    r = bash(env, *args)
    assert r.returncode == 0, r.stderr
    new = calls(env)[n:]
    assert [opt(c, "out_dir") for c in new] == [f"{out}/rope/seed2", f"{out}/cosine/seed1"]
    assert opt(new[0], "resume") == "True"
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


def test_task_index_maps_to_experiment_and_seed(env):
    out = env["tmp"] / "out"
    for i in range(14):
        r = bash(env, "ablate.sh", "--task", str(i), "--seeds", "2", "--out", str(out))
        assert r.returncode == 0, r.stderr
    tc = train_calls(env)
    assert len(tc) == 14
    for i, argv in enumerate(tc):
        exp, seed = EXPS[i // 2], i % 2 + 1
        assert opt(argv, "out_dir") == f"{out}/{exp}/seed{seed}", i
        assert opt(argv, "seed") == str(seed)
        assert switches(argv) == expected_switches(exp)
    assert not any(c[0].endswith("plot.py") for c in calls(env))   # --task: no report
    # another N: seeds=3, index 7 -> experiment 7 // 3 = 2 (rope), seed 7 % 3 + 1 = 2
    out3 = env["tmp"] / "out3"
    r = bash(env, "ablate.sh", "--task", "7", "--seeds", "3", "--out", str(out3), "--dry-run")
    assert f"--out_dir={out3}/rope/seed2 --seed=2 " in r.stdout
    r = bash(env, "ablate.sh", "--task", "14", "--seeds", "2", "--out", str(out))
    assert r.returncode == 2 and "out of range" in r.stderr


def test_dry_run_and_print_slurm_run_nothing(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--dry-run", "cfg.py")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 14 and all(" train.py cfg.py --out_dir=" in l for l in lines)
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), "--print-slurm", "cfg.py",
             "--max_iters=9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sbatch --array=0-13 slurm/ablate.sbatch --seeds 2 --out {out} cfg.py --max_iters=9"
    tasks = [l for l in lines if l.startswith("# task ")]
    assert len(tasks) == 14 and f"--out_dir={out}/all/seed2" in tasks[13]
    assert calls(env) == [] and not out.exists()


def test_user_cannot_set_managed_flags(env):
    for bad in ["--use_rope=True", "--use_rope", "--use-rmsnorm=1", "--out_dir=x", "--out-dir=x",
                "--seed=3", "--resume=True"]:
        r = bash(env, "ablate.sh", "--dry-run", bad)
        assert r.returncode == 2, bad
        assert len(r.stderr.strip().splitlines()) == 1
    assert bash(env, "ablate.sh", "--seeds", "0", "--dry-run").returncode == 2


def test_report_runs_plot_py_on_all_logs(env):
    out = env["tmp"] / "out"
    (env["repo"] / "plot.py").write_text("")
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    plot = [c for c in calls(env) if c[0].endswith("plot.py")]
    assert len(plot) == 1
    argv = plot[0]
    assert argv[-2:] == ["--report", f"{out}/report.pdf"]
    assert sorted(argv[1:-2]) == sorted(f"{out}/{e}/seed{s}/log.txt" for e in EXPS for s in (1, 2))
    # a failing plot.py is reported with its code
    r = bash(env, "ablate.sh", "--seeds", "2", "--out", str(out), extra_env={"FAKE_PLOT_EXIT": "4"})
    assert r.returncode == 4 and "plot.py failed" in r.stderr


def test_missing_plot_py_only_warns(env):
    out = env["tmp"] / "out"
    r = bash(env, "ablate.sh", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "plot.py is missing" in r.stderr
    assert len(train_calls(env)) == 7


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
    assert opt(train_calls(env)[-1], "resume") == "True"


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
    deadline = time.time() + 15
    while not started.exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.02)
    os.kill(p.pid, sig)
    out, err = p.communicate(timeout=15)
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
    deadline = time.time() + 10
    while not any(".tmp." in q.name for q in env["tmp"].iterdir()):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.02)
    time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)          # like Ctrl-C / scancel: the whole group
    p.communicate(timeout=10)
    assert p.returncode != 0
    assert not out.exists()
    assert not [q for q in env["tmp"].iterdir() if ".tmp." in q.name]
