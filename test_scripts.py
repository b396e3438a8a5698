"""Tests for the shell tooling: slurm/*.sbatch, prepare_small.sh, prepare_manpages.py.

No real training: PYTHON points at the fake interpreter of test_ablate.py (FAKE_PY), which records its argv and
fakes train.py (a run leaves log.txt / ckpt.pt / results.json; FAKE_EXIT, FAKE_WAIT_SIGNAL) and runs the real
ablate.py. The scripts, ablate.py and train.py are copied into a scratch repo in tmp_path with a stub scontrol on
PATH (test_slurm.py runs them on a real SLURM cluster; test_ablate.py tests ablate.py itself).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_ablate import expected_switches, opt, signal_until_it_exits, switches, wait_for, write_fake

ROOT = Path(__file__).resolve().parent

STUB_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
exit "${SCONTROL_EXIT:-0}"
"""
SMALL = "n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n"   # ablate.py builds the model once


@pytest.fixture
def env(tmp_path):
    """A scratch repo with the scripts, ablate.py and train.py, a fake python and a stub scontrol."""
    repo = tmp_path / "repo"
    (repo / "slurm").mkdir(parents=True)
    for name in ["ablate.py", "train.py", "prepare_small.sh", "slurm/ablate.sbatch", "slurm/train.sbatch",
                 "slurm/run_forwarding.sh"]:
        shutil.copy(ROOT / name, repo / name)
    (repo / "plot.py").write_text("raise SystemExit('the fake python never runs this')\n")
    for name in ("small.py", "c.py"):
        (repo / name).write_text(SMALL)
    fake = write_fake(tmp_path / "fakepy")
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
    """The training runs (not --steps-in probes)."""
    return [c for c in calls(env) if c and c[0].endswith("train.py") and not any(a.startswith("--steps-in=") for a in c)]


def scontrol_calls(env):
    p = Path(env["env"]["SCONTROL_LOG"])
    return p.read_text().splitlines() if p.exists() else []


# --------------------------------------------------------------------------- slurm
def sbatch_env(env, task, **kw):
    e = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "4242",
         "SLURM_JOB_ID": "5000", "SEEDS": "2", "OUT": str(env["tmp"] / "out"), "CONFIG": "small.py"}
    e.update(kw)
    return e


def test_ablate_sbatch_runs_its_task(env):
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 5))
    assert r.returncode == 0, r.stderr
    (argv,) = train_calls(env)
    assert opt(argv, "out_dir") == f"{env['tmp']}/out/rope/seed2"      # 5 -> rope, seed 2
    assert switches(argv) == expected_switches("rope")
    assert scontrol_calls(env) == []


def test_ablate_task_that_ends_as_the_warning_comes_exits_0(env):
    """SLURM's warning and SIGTERM keep coming as an array task's run ends: ablate.py --task (as ablate.sbatch runs
    it) still exits 0, not 138 or 143 (killed by a late signal while it shuts down: a failed task to SLURM)."""
    p = subprocess.Popen([sys.executable, "ablate.py", "--task", "5", "--seeds", "2", "--out", str(env["tmp"] / "out"),
                          "small.py"], cwd=env["repo"], env=env["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    results = env["tmp"] / "out/rope/seed2/results.json"
    wait_for(lambda: results.exists() or p.poll() is not None, "the run's results.json")
    signal_until_it_exits(p)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err


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
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 0, FAKE_EXIT="1"))
    assert r.returncode == 1 and "crash" in r.stderr
    assert scontrol_calls(env) == []
    # a diverged run (exit code 3) is a result, recorded: the task succeeds (afterok releases what waits on it)
    r = bash(env, "slurm/ablate.sbatch", extra_env=sbatch_env(env, 1, FAKE_EXIT="3"))
    assert r.returncode == 0 and (env["tmp"] / "out/baseline/seed2/diverged.json").is_file(), r.stderr
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
    assert sigs == [str(int(signal.SIGUSR1))], err     # reached python through ablate.py
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


# A stand-in for python that ignores the stop signals and exits with $EXIT_CODE while a process it leaves behind
# sends SLURM's warning to the script ($SCRIPT_PID holds its pid) as fast as it can: the warnings come as the run
# exits, while the script waits for it.
IGNORING_PY = """#!/bin/sh
trap '' USR1 TERM
: > "$STARTED"
while [ ! -s "$SCRIPT_PID" ]; do sleep 0.01; done
sleep 0.05
pid=$(cat "$SCRIPT_PID")
(i=0; while [ $i -lt 200 ] && kill -USR1 "$pid" 2>/dev/null; do i=$((i+1)); done) &
exit "${EXIT_CODE:-0}"
"""


@pytest.mark.parametrize("script", ["slurm/train.sbatch", "slurm/ablate.sbatch"])
def test_sbatch_keeps_the_exit_status_when_signals_come_as_the_run_exits(env, script):
    """SLURM's warning as a run ends: the script exits with the run's own status, not with the 138 (or -1) that
    bash 5.2's `wait`, interrupted by the trapped signal just as the child exits, gave for a run that exited 0."""
    py = env["tmp"] / "ignoring_py"
    py.write_text(IGNORING_PY)
    py.chmod(0o755)
    started = env["tmp"] / "started"
    pid_file = env["tmp"] / "script.pid"
    e = dict(env["env"], **sbatch_env(env, 5, CONFIG=""), PYTHON=str(py), STARTED=str(started),
             SCRIPT_PID=str(pid_file))
    codes = []
    for code in [0, 0, 0, 0, 0, 0, 0, 0, 0, 3]:
        started.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        p = subprocess.Popen(["bash", script], cwd=env["repo"], env=dict(e, EXIT_CODE=str(code)),
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid_file.write_text(str(p.pid))
        codes.append(p.wait(timeout=60))
    # ablate.sbatch passes ablate.py's code through; train.sbatch too (3: a NaN loss)
    assert codes == [0] * 9 + [3]


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
