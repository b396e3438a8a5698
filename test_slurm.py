"""The sbatch scripts on a REAL single-node SLURM cluster, started by this file.

    python -m pytest -q -m slurm          # only these tests

The module fixture `cluster` brings up munged (as user munge), slurmctld and slurmd from Debian's
slurm-wlm/munge packages (`apt-get install slurm-wlm munge`; .ci/run installs them) with a generated
slurm.conf in a private temporary folder: its own ports, state, spool, pid and log files, its own munge
key and socket, so it cannot clash with a cluster on the machine. Every daemon it started is stopped at
the end, also when a test fails. Without the binaries, or where the cluster cannot start (not root, no
munge user), the tests are skipped with the reason.

The jobs run the real train.py (tiny model, CPU, float32) through the real slurm/*.sbatch scripts and
ablate.py; only their resource lines are overridden on the sbatch command line so they fit the node.
"""
import json
import os
import pwd
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
# the tiny model every job trains (plus data_path / out_dir / max_iters per test)
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2",
        "--dtype=float32", "--device=cpu", "--val_docs=20", "--eval_iters=2", "--log_interval=1"]
MEM_PER_JOB = "1500M"
# The node offers more CPUs than the machine has (slurm.conf: SlurmdParameters=config_overrides): the jobs of
# the four train tests and the arrays run at once, sharing the real cores; they mostly wait on SLURM.
NODE_CPUS = 8
# Requeued jobs may not start before their credential expires (slurm.conf: AuthInfo cred_expire,
# default 120 s); the main scheduler then runs every sched_interval (default 60 s). Short here.
CRED_EXPIRE = 5
SCHED_INTERVAL = 1


def _which(name):
    for d in (os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin").split(":"):
        p = Path(d or ".") / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    """A one-node SLURM cluster in `base`; `env` is the environment for its client commands."""

    def __init__(self, base, cred_expire=CRED_EXPIRE, sched_interval=SCHED_INTERVAL, kill_wait=10):
        self.base = Path(base)
        self.cred_expire, self.sched_interval, self.kill_wait = cred_expire, sched_interval, kill_wait
        self.procs = {}
        self.bins = {n: _which(n) for n in DAEMONS + CLIENTS}

    # ------------------------------------------------------------------ start / stop
    def start(self):
        b = self.base
        os.chmod(b, 0o755)  # munge must reach its own folder below
        for d in ("munge", "state", "spool", "log", "dev", "jobs"):
            (b / d).mkdir()
        mu = pwd.getpwnam("munge")
        # munge: its own key, socket, pid, log and seed files, owned by munge and private to it
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for p in (b / "munge", key):
            os.chown(p, mu.pw_uid, mu.pw_gid)
        (b / "munge").chmod(0o755)  # munged: the socket folder must be searchable by all
        sock = b / "munge" / "munge.socket"
        self._spawn("munged", [self.bins["munged"], "-F", "--key-file", str(key), "--socket", str(sock),
                               "--pid-file", str(b / "munge/munged.pid"), "--log-file", str(b / "munge/munged.log"),
                               "--seed-file", str(b / "munge/munged.seed"), "--num-threads", "4"],
                    user=mu.pw_uid, group=mu.pw_gid)
        self._wait(lambda: sock.exists(), 10, "munged did not create its socket")

        # two fake GPUs: gres.conf File= must name device files; character devices made with mknod
        for i in range(2):
            os.mknod(b / "dev" / f"fakegpu{i}", 0o666 | 0o020000, os.makedev(1, 3))  # like /dev/null
        host = socket.gethostname().split(".")[0]
        mem = int(subprocess.run(["free", "-m"], capture_output=True, text=True).stdout.split("\n")[1].split()[1])
        self.node_mem = mem - 1024
        if self.node_mem < 4000:
            raise RuntimeError(f"{mem} MB of memory: the tests need about 5000")
        ctld_port, d_port = _free_ports(2)
        conf = f"""\
ClusterName=gptablate
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={self.cred_expire}
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval={self.sched_interval},bf_interval=1
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={b}/log/jobcomp.txt
MinJobAge=86400
KillWait={self.kill_wait}
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={self.node_mem} Gres=gpu:2 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        (b / "slurm.conf").write_text(conf)
        (b / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={b}/dev/fakegpu[0-1]\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
        self.env["SLURM_CONF"] = str(b / "slurm.conf")
        self._spawn("slurmctld", [self.bins["slurmctld"], "-D", "-c", "-i", "-f", str(b / "slurm.conf")])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 20,
                   "slurmctld did not answer scontrol ping")
        self._spawn("slurmd", [self.bins["slurmd"], "-D", "-f", str(b / "slurm.conf")])

        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", 30,
                   "the node did not become idle")

    def _spawn(self, name, argv, **kw):
        log = open(self.base / "log" / f"{name}.stdout", "w") if (self.base / "log").exists() else subprocess.DEVNULL
        env = dict(getattr(self, "env", os.environ))
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, **kw)

    def _wait(self, cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: {name} exited with {p.returncode}; {self.logs()}")
            if cond():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout} s; {self.logs()}")

    def logs(self, tail=1500):
        out = []
        for f in sorted((self.base / "log").glob("*")) + [self.base / "munge" / "munged.log"]:
            try:
                out.append(f"--- {f.name}:\n{f.read_text(errors='replace')[-tail:]}")
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        """Cancel every job of this cluster, then stop the daemons this object started."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.time() + 30
            while time.time() < deadline:
                r = self.run("squeue", "-h", "-t", "all", "-o", "%T", check=False)
                if r.returncode != 0 or not (set(r.stdout.split()) & {"RUNNING", "COMPLETING", "CONFIGURING"}):
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    # ------------------------------------------------------------------ client commands
    def run(self, *argv, check=True, timeout=30, env=None, cwd=ROOT):
        r = subprocess.run([self.bins.get(argv[0]) or argv[0], *argv[1:]], env=env or self.env, cwd=cwd,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def jobs(self, jobid):
        """scontrol's records of a job, or of every task of a job array, as dicts."""
        r = self.run("scontrol", "-o", "show", "job", str(jobid), check=False)
        recs = []
        for line in r.stdout.splitlines() if r.returncode == 0 else []:
            if line.strip():
                recs.append(dict(tok.partition("=")[::2] for tok in re.split(r" (?=[A-Za-z:/]+=)", line.strip())))
        return recs

    def job(self, jobid):
        recs = self.jobs(jobid)
        return recs[0] if recs else {}


@pytest.fixture(scope="module")
def cluster():
    missing = [n for n in DAEMONS + CLIENTS if not _which(n)]
    if missing:
        pytest.skip(f"SLURM/munge binaries not installed ({', '.join(missing)}): "
                    "apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged needs root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("no 'munge' user (install the munge package)")
    base = tempfile.mkdtemp(prefix="gpt-ablate-slurm-")
    c = Cluster(base)
    try:
        try:
            c.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            c.stop()
            pytest.skip(f"could not start a SLURM cluster: {e}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- helpers
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="module")
def corpus(cluster):
    """A few hundred short documents (deterministic)."""
    words = ("the a cat dog bird runs sat on mat and with blue red green fast slow tree house river "
             "stone light dark over under small large").split()
    rng = random.Random(0)
    p = cluster.base / "data.jsonl"
    with open(p, "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))}) + "\n")
    return p


def job_env(cluster, **kw):
    """The environment sbatch passes on to the job (--export=ALL): the scripts' settings, one thread."""
    env = dict(cluster.env, OMP_NUM_THREADS="1", PYTHON=sys.executable, CONFIG="", DATA="",
               OUT=str(cluster.base / "not-used"), SEED="1")
    env.update({k: str(v) for k, v in kw.items()})
    return env


def sbatch(cluster, script, *args, opts=(), env=None, output=None):
    """Submit from the repo root; the script's resource lines are overridden to fit the node."""
    argv = ["sbatch", "--parsable", f"--output={output or cluster.base / 'jobs' / '%x-%j.out'}",
            "--cpus-per-task=1", f"--mem={MEM_PER_JOB}", *opts, script, *map(str, args)]
    r = cluster.run(*argv, env=env or job_env(cluster))
    return r.stdout.strip().split(";")[0]


def output(cluster, rec):
    try:
        return Path(rec.get("StdOut", "")).read_text(errors="replace")
    except OSError:
        return "(no job output)"


# Each scontrol call is a process and an authenticated RPC (munged, slurmctld): four threads polling every
# 0.1 s would start 40 of them a second beside the jobs. Once a second is enough.
POLL_S = 1.0


def wait_final(cluster, jobid, timeout=120):
    """Poll scontrol until the job (every task of an array) has ended; its records."""
    deadline = time.time() + timeout
    while True:
        recs = cluster.jobs(jobid)
        if recs and all(r.get("JobState") in FINAL for r in recs):
            return recs
        if time.time() > deadline:
            raise AssertionError(f"job {jobid} not done within {timeout} s: "
                                 + "; ".join(f"{r.get('JobId')}_{r.get('ArrayTaskId', '')} {r.get('JobState')} "
                                             f"{r.get('Reason')} restarts={r.get('Restarts')}" for r in recs)
                                 + "\n" + "\n".join(output(cluster, r)[-3000:] for r in recs[:2])
                                 + "\n" + cluster.logs())
        time.sleep(POLL_S)


def wait_done(cluster, jobid, timeout=120):
    (rec,) = wait_final(cluster, jobid, timeout)
    return rec


def events(run):
    p = Path(run) / "log.txt"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def wait_step(cluster, jobid, run, step, timeout=60):
    """Wait until the run has logged a train step >= step (train.py runs, its signal handlers set): the log
    read every 0.1 s, the job's state (has it ended?) every POLL_S."""
    deadline, asked = time.time() + timeout, 0.0
    while True:
        try:
            if any(e.get("event") == "train" and e.get("step", 0) >= step for e in events(run)):
                return
        except ValueError:
            pass  # a line being written
        if time.time() - asked >= POLL_S:
            rec, asked = cluster.job(jobid), time.time()
            assert rec.get("JobState") not in FINAL, f"job ended before step {step}: {rec}\n{output(cluster, rec)}"
            assert time.time() < deadline, f"no step {step} within {timeout} s: {rec}\n{output(cluster, rec)}"
        time.sleep(0.1)


def assert_trained_once(run, max_iters, resumes):
    """log.txt: one start, `resumes` resumes, every step 1..max_iters logged exactly once, in order."""
    ev = events(run)
    kinds = [e["event"] for e in ev]
    assert kinds.count("start") == 1, kinds
    assert kinds.count("resume") == resumes, kinds
    steps = [e["step"] for e in ev if e["event"] == "train"]
    assert steps == list(range(1, max_iters + 1)), steps  # log_interval=1
    res = json.loads((Path(run) / "results.json").read_text())
    assert res["steps"] == max_iters
    return ev


def config_file(cluster, name, **settings):
    """A train.py config file (key = value lines) that sets out_dir and the tiny model."""
    base = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, dtype="float32", device="cpu",
                val_docs=20, eval_iters=2, log_interval=1, eval_interval=100)
    base.update(settings)
    p = cluster.base / f"{name}.py"
    p.write_text("".join(f"{k} = {v!r}\n" for k, v in base.items()))
    return p


def opt(argv, key):
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    return vals[-1] if vals else None


# --------------------------------------------------------------------------- the ablation array
# Submitted once, at the first test, with a low priority (--nice): its 2 short tasks (2 experiments x 1
# seed) run beside the four train jobs, and every job those tests submit goes first.
# test_ablation_job_array_then_report (after them) waits for it and checks it.
ABLATION_TEST = "test_ablation_job_array_then_report"


@pytest.fixture(scope="module")
def ablation(request, cluster, corpus):
    if not any(item.name == ABLATION_TEST for item in request.session.items):
        return None  # not selected: don't spend the CPU
    out = cluster.base / "runs" / "ablation"
    # two experiments (baseline, rope) x 1 seed: the array mechanics; every design's runs are test_ablate.py's
    args = ["--switches", "rope", "--seeds", "1", "--out", str(out), f"--data_path={corpus}", *TINY,
            "--max_iters=6", "--eval_interval=3"]
    env = job_env(cluster)
    a = dict(out=out, args=args, env=env, error=None)
    r = subprocess.run([sys.executable, "ablate.py", *args, "--print-slurm"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    a["print_slurm"] = r.stdout
    lines = r.stdout.splitlines()
    if r.returncode != 0 or not lines or not lines[0].startswith("sbatch --array=0-"):
        a["error"] = f"ablate.py --print-slurm exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return a  # only the ablation test fails
    a["submit"] = shlex.split(lines[0])
    a["tasks"] = {}
    for line in lines[1:]:
        m = re.match(r"# task (\d+) \(.*?\): (.*)", line)
        if m:
            a["tasks"][int(m.group(1))] = shlex.split(m.group(2))
    r = cluster.run("sbatch", "--parsable", f"--output={cluster.base / 'jobs' / 'ablate-%A_%a.out'}",
                    "--cpus-per-task=1", f"--mem={MEM_PER_JOB}", "--nice=10000", *a["submit"][1:],
                    env=env, check=False)
    if r.returncode != 0:
        a["error"] = f"sbatch exited {r.returncode}: {r.stdout}{r.stderr}"
    a["jobid"] = r.stdout.strip()
    return a


# --------------------------------------------------------------------------- the study's arrays
# A tuning stage, one round beyond the grid and a comparison stage (ablate.py --submit):
# each array must wait for the one before (--dependency=afterok). Submitted at the first test too, low priority.
STUDY_TEST = "test_study_stages_as_dependent_job_arrays"


@pytest.fixture(scope="module")
def study_arrays(request, cluster, corpus):
    if not any(item.name == STUDY_TEST for item in request.session.items):
        return None
    out = cluster.base / "runs" / "study"
    # one arm (the stages' mechanics; the per-arm choices are test_study.py's, against a stand-in trainer)
    args = ["--experiments", "baseline", "--tune", "learning_rate=1e-3,1e-2", "--tune-seeds", "1", "--tune-max-extend", "1",
            "--seeds", "1", "--out", str(out), f"--data_path={corpus}", *TINY, "--max_iters=6", "--eval_interval=3",
            "--tune_docs=20"]
    # `sbatch` on PATH for --submit: the real one with this node's resource lines (as sbatch() above)
    bindir = cluster.base / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "sbatch").write_text(
        f"#!/bin/bash\nexec {shlex.quote(cluster.bins.get('sbatch') or 'sbatch')} "
        f"--output={cluster.base / 'jobs' / 'study-%A_%a.out'} --cpus-per-task=1 --mem={MEM_PER_JOB} "
        f'--nice=10000 "$@"\n')
    (bindir / "sbatch").chmod(0o755)
    env = dict(job_env(cluster), PATH=f"{bindir}:{cluster.env.get('PATH', os.environ['PATH'])}")
    s = dict(out=out, args=args, env=env, error=None)
    r = subprocess.run([sys.executable, "ablate.py", *args, "--submit"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    ids = r.stdout.split()
    if r.returncode != 0 or len(ids) != 3:
        s["error"] = f"ablate.py --submit exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return s
    s["ids"], s["dependency"] = ids, [cluster.job(i).get("Dependency", "") for i in ids[1:]]
    return s


def slurm_test(f):
    """A test on the cluster; the first one to run also starts the four train jobs and the two arrays."""
    return pytest.mark.slurm(pytest.mark.usefixtures("concurrent", "ablation", "study_arrays")(f))


# --------------------------------------------------------------------------- the four train jobs, at once
# Each train test drives one job: submit, signal it at a step, wait, resubmit, check. One after another they
# took ~2.5 min, most of it waiting on SLURM (a requeue's delay; the time-limit check every 30 s). So the
# first test starts all four, each in its own thread (fixture `concurrent`, before the arrays are submitted),
# and each test waits for its own thread and re-raises what it raised: the file takes about as long as its
# longest job. A test selected alone (-k) starts only its own job.
CONCURRENT = {}  # test name -> its body(cluster, corpus), in the order the jobs are started


def concurrent_test(body):
    """The test named like `body`: its body runs in a thread started at the file's first test."""
    CONCURRENT[body.__name__] = body

    def test(concurrent):
        concurrent[body.__name__].result()
    test.__name__ = test.__qualname__ = body.__name__
    test.__doc__ = body.__doc__
    return slurm_test(test)


@pytest.fixture(scope="module")
def concurrent(request, cluster, corpus):
    selected = {item.name for item in request.session.items}
    pool = ThreadPoolExecutor(max_workers=len(CONCURRENT))
    try:
        yield {name: pool.submit(body, cluster, corpus) for name, body in CONCURRENT.items() if name in selected}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # (the cluster's teardown cancels what still runs)


# --------------------------------------------------------------------------- train.sbatch
# --time=1 --signal=B:USR1@WARN: slurmctld checks time limits every 30 s and sends the warning at the
# first check that finds fewer than WARN + 30 s left, so 30 - WARN to 60 - WARN s after the start: late
# enough that train.py has installed its signal handlers (it starts in ~5 s alone, slower beside the other
# jobs here; a USR1 before that kills it).
WARN = 8


@concurrent_test
def test_time_limit_warning_checkpoints_requeues_and_resumes_until_done(cluster, corpus):
    """A real time limit. The first attempt trains until SLURM's warning stops it (its config file asks
    for a million steps): checkpoint, exit 75, requeue. The config file is Python: once a checkpoint
    exists it asks for 30 steps more than were logged, so the resumed attempt finishes long before its
    own warning could come. The log shows every step trained once."""
    run = cluster.base / "runs" / "timelimit"
    cfg = config_file(cluster, "cfg_timelimit", out_dir=str(run), data_path=str(corpus), eval_interval=10**6)
    cfg.write_text(cfg.read_text() + (
        "import json as _json, pathlib as _pathlib\n"
        "_run = _pathlib.Path(out_dir)\n"
        "max_iters = 10**6\n"
        "if (_run / 'ckpt.pt').exists():\n"
        "    max_iters = 30 + max(_json.loads(l).get('step', 0) for l in (_run / 'log.txt').read_text().splitlines())\n"))
    jid = sbatch(cluster, "slurm/train.sbatch", cfg, opts=["--time=1", f"--signal=B:USR1@{WARN}"])
    rec = wait_done(cluster, jid, timeout=150)
    out = output(cluster, rec)
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), out
    restarts = int(rec["Restarts"])
    assert restarts >= 1 and out.count("checkpointed (exit 75): scontrol requeue") == restarts, out
    assert "SIGUSR1" in out  # train.py saw SLURM's warning: nobody else sent one
    ev = events(run)
    final = json.loads((run / "results.json").read_text())["steps"]
    assert_trained_once(run, final, resumes=restarts)
    assert [e["step"] for e in ev if e["event"] == "resume"][-1] == final - 30


@concurrent_test
def test_train_sbatch_config_file_requeue_resumes_and_resubmit_does_nothing(cluster, corpus):
    """A config file sets out_dir (overrides follow it). The warning (sent at once here, with
    scancel --signal=USR1 --batch): checkpoint, exit 75, scontrol requeue, and the requeued job resumes
    in that out_dir; the finished run, resubmitted, is not trained again. (The scripts used to look
    only at --out_dir=... arguments: such a run restarted from step 0 on every requeue and resubmit.)"""
    run = cluster.base / "runs" / "from_config"
    cfg = config_file(cluster, "cfg_requeue", out_dir=str(run), data_path=str(corpus), max_iters=1000)
    args = (cfg, "--max_iters=80")  # an override after the config file wins
    jid = sbatch(cluster, "slurm/train.sbatch", *args, opts=["--time=5"])
    wait_step(cluster, jid, run, 10)
    cluster.run("scancel", "--signal=USR1", "--batch", jid)
    rec = wait_done(cluster, jid)
    out = output(cluster, rec)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out
    assert "checkpointed (exit 75): scontrol requeue" in out
    ev = assert_trained_once(run, 80, resumes=1)
    assert [e for e in ev if e["event"] == "resume"][0]["step"] >= 10
    assert json.loads((run / "results.json").read_text())["config"]["out_dir"] == str(run)
    assert not (cluster.base / "not-used").exists()  # the script's own --out_dir=$OUT was overridden
    before = {f: (run / f).read_bytes() for f in ("log.txt", "results.json", "ckpt.pt")}

    rec = wait_done(cluster, sbatch(cluster, "slurm/train.sbatch", *args))  # resubmitted: nothing to do
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "0"), output(cluster, rec)
    assert "already finished" in output(cluster, rec)
    assert {f: (run / f).read_bytes() for f in before} == before


@concurrent_test
def test_scancel_checkpoints_without_requeue_and_resubmit_resumes(cluster, corpus):
    """scancel = SIGTERM: checkpoint, exit 75, no requeue; resubmitting resumes (--out-dir spelling)."""
    run = cluster.base / "runs" / "scancel"
    args = (f"--out-dir={run}", f"--data_path={corpus}", *TINY, "--max_iters=80", "--eval_interval=100")
    jid = sbatch(cluster, "slurm/train.sbatch", *args)
    wait_step(cluster, jid, run, 10)
    cluster.run("scancel", jid)
    rec = wait_done(cluster, jid)
    out = output(cluster, rec)
    assert (rec["JobState"], rec["Restarts"]) == ("CANCELLED", "0"), out
    assert "not requeueing" in out
    assert (run / "ckpt.pt").exists() and not (run / "results.json").exists()
    stopped = max(e["step"] for e in events(run) if e["event"] == "train")
    assert stopped >= 10

    rec = wait_done(cluster, sbatch(cluster, "slurm/train.sbatch", *args))
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "0"), output(cluster, rec)
    ev = assert_trained_once(run, 80, resumes=1)
    assert [e for e in ev if e["event"] == "resume"][0]["step"] == stopped


# --------------------------------------------------------------------------- ddp.sbatch
@concurrent_test
def test_ddp_sbatch_two_cpu_ranks_through_srun_with_a_requeue(cluster, corpus):
    run = cluster.base / "runs" / "ddp"
    jid = sbatch(cluster, "slurm/ddp.sbatch", f"--data_path={corpus}", *TINY, "--max_iters=60",
                 "--eval_interval=100", opts=["--ntasks-per-node=2", "--gres=none", "--time=5"],
                 env=job_env(cluster, OUT=run))
    wait_step(cluster, jid, run, 10)
    cluster.run("scancel", "--signal=USR1", "--batch", jid)
    rec = wait_done(cluster, jid)
    out = output(cluster, rec)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out
    assert "2 processes" in out and "checkpointed (exit 75): scontrol requeue" in out
    assert "global batch 4 x 32" in out  # 2 ranks x batch_size 2: rank 0 prints the global batch
    assert_trained_once(run, 60, resumes=1)
    assert json.loads((run / "results.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------------- the ablation, checked
@slurm_test
def test_ablation_job_array_then_report(cluster, ablation):
    """Every task of the array (as `ablate.py --print-slurm` submits it) completed, in its own folder,
    with exactly the settings of its printed command; then ablate.py with the same arguments writes
    the report from the finished runs."""
    assert ablation["error"] is None, ablation["error"]
    ntasks = int(ablation["submit"][1].split("-")[-1]) + 1
    tasks = ablation["tasks"]
    assert sorted(tasks) == list(range(ntasks)) and ntasks % 2 == 0, ablation["print_slurm"]
    recs = wait_final(cluster, ablation["jobid"], timeout=300)
    assert len(recs) == ntasks
    bad = [(r.get("ArrayTaskId"), r["JobState"], r["ExitCode"]) for r in recs
           if (r["JobState"], r["ExitCode"]) != ("COMPLETED", "0:0")]
    assert not bad, (bad, "\n".join(output(cluster, r)[-2000:] for r in recs
                                     if (r["JobState"], r["ExitCode"]) != ("COMPLETED", "0:0")))
    dirs = set()
    for i, cmd in tasks.items():
        run = Path(opt(cmd, "out_dir"))
        dirs.add(run)
        assert run.parent.parent == ablation["out"], cmd
        res = json.loads((run / "results.json").read_text())
        assert res["steps"] == 6
        for a in cmd[2:]:  # every setting the task's command line gave is what the run used
            key, _, value = a[2:].partition("=")
            assert str(res["config"][key.replace("-", "_")]) == value, (i, key, res["config"][key], value)
    assert len(dirs) == ntasks

    r = subprocess.run([sys.executable, "ablate.py", *ablation["args"]], cwd=ROOT, env=ablation["env"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ablation["out"] / "report.pdf").is_file()


@slurm_test
def test_study_stages_as_dependent_job_arrays(cluster, study_arrays):
    """`ablate.py --tune ... --tune-max-extend 1 --submit`: the tuning array (1 arm x 2 values), one round
    beyond the grid (its next value if its best was on the edge, else it exits at once) and the comparison
    array (1 task), each submitted with afterok on the one before and started only after it
    ended; each comparison run used its arm's choice; the same command afterwards retrains nothing."""
    s = study_arrays
    assert s["error"] is None, s["error"]
    tune_id, round_id, compare_id = s["ids"]
    assert f"afterok:{tune_id}" in s["dependency"][0] and f"afterok:{round_id}" in s["dependency"][1], s["dependency"]
    tune, extra, compare = (wait_final(cluster, i, timeout=400) for i in s["ids"])
    assert (len(tune), len(extra), len(compare)) == (2, 1, 1)
    bad = [(r.get("JobId"), r.get("ArrayTaskId"), r["JobState"], r["ExitCode"]) for r in tune + extra + compare
           if (r["JobState"], r["ExitCode"]) != ("COMPLETED", "0:0")]  # (a diverged tuning run exits 0: a result)
    assert not bad, (bad, "\n".join(output(cluster, r)[-2000:] for r in tune + extra + compare))
    assert min(r["StartTime"] for r in extra) >= max(r["EndTime"] for r in tune)  # ISO times, 1 s resolution
    assert min(r["StartTime"] for r in compare) >= max(r["EndTime"] for r in extra)
    out = s["out"]
    choice = json.loads((out / "choice.json").read_text())["by_experiment"]
    exp = "baseline"
    for value in ("1e-3", "1e-2"):
        res = json.loads((out / "tune" / exp / f"learning_rate={value}" / "seed1001" / "results.json").read_text())
        assert (res["eval_set"], res["config"]["learning_rate"], res["steps"]) == ("tune", float(value), 6)
    tried = [t["value"] for t in choice[exp]["tried"]]
    assert tried[:2] == ["1e-3", "1e-2"] and len(tried) <= 3  # at most one value beyond the grid
    for value in tried[2:]:  # the round's run: a result, or a diverged one (also a result)
        folder = out / "tune" / exp / f"learning_rate={value}" / "seed1001"
        assert (folder / "results.json").is_file() or (folder / "diverged.json").is_file(), folder
    res = json.loads((out / exp / "seed1" / "results.json").read_text())
    assert res["eval_set"] == "val" and res["config"]["learning_rate"] == float(choice[exp]["chosen"])
    n = len(choice[exp]["tried"]) + 1
    r = subprocess.run([sys.executable, "ablate.py", *s["args"], "--no-report"], cwd=ROOT, env=s["env"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and f"{n} of {n} runs already finished" in r.stderr, r.stderr[-3000:]


# --------------------------------------------------------------------------- bash 4.2
def test_sbatch_scripts_expand_no_possibly_empty_array_unguarded():
    """bash < 4.4 (RHEL 7: 4.2) with set -u fails on "${a[@]}" when a is empty: every array expansion
    must be guarded as ${a[@]+"${a[@]}"} unless the array got an element unconditionally before."""
    for script in sorted((ROOT / "slurm").glob("*.sbatch")):
        lines = script.read_text().splitlines()
        for n, line in enumerate(lines):
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            for m in re.finditer(r"\$\{(\w+)\[[@*]\]\}", code):
                name = m.group(1)
                if re.search(r"\$\{%s\[@\]\+\"\$\{%s\[@\]\}\"\}" % (name, name), code):
                    continue  # guarded
                filled = any(re.match(r"%s\+?=\((?!\))" % name, earlier) for earlier in lines[:n])
                assert filled, f"{script.name}:{n + 1}: {name} may be empty here: {line.strip()}"
