"""Tests of long runs on a cluster: exact resume, crash safety, preemption signals, NaN, bad input.
Tiny models on CPU; subprocesses only where the real process matters (signals, kill -9, one-line stderr).
Run with: python -m pytest -q test_resume.py"""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import sample
import train
from test_ablate import signal_until_it_exits

HERE = Path(__file__).resolve().parent
R = 14  # steps of every run compared with the reference
# every switch (cosine + warmup included) and dropout, so the schedule and the torch RNG must resume too
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, val_docs=6, eval_iters=2,
            eval_interval=5, log_interval=3, ckpt_interval=4, max_iters=R, device="cpu", dtype="float32",
            learning_rate=3e-3, min_lr=3e-4, warmup_iters=4, dropout=0.1, use_swiglu=True, use_rope=True,
            use_rmsnorm=True, use_warmup=True, use_cosine=True)
# steps that are multiples of none of log_interval, eval_interval, ckpt_interval
ODD_STEPS = [s for s in range(1, R) if s % 3 and s % 5 and s % 4]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same math as the in-process runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """36 short documents (R steps cross an epoch boundary) with unusable lines among the training ones."""
    rng = random.Random(5)
    words = "the cat sat on a mat while rain fell over the quiet river and dogs ran home".split()
    lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(10, 60)))})
             for _ in range(36)]
    lines[7], lines[19] = "not json", ""
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(corpus, out_dir, **kw):
    return {**TINY, "data_path": str(corpus), "out_dir": str(out_dir), **kw}


def config(corpus, out_dir, **kw):
    return train.Config(**settings(corpus, out_dir, **kw))


def argv(corpus, out_dir, **kw):
    return [f"--{k}={v}" for k, v in settings(corpus, out_dir, **kw).items()]


def rows(out_dir):
    """What must match an uninterrupted run: every train and eval row."""
    keys = ("event", "step", "tokens", "lr", "train_nll", "val_nll", "val_bpb")
    return [tuple(r.get(k) for k in keys) for r in train.read_log(Path(out_dir) / "log.txt")
            if r["event"] in ("train", "eval")]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run: (its folder, its rows, its results)."""
    out = tmp_path_factory.mktemp("reference")
    results = train.train(config(corpus, out))
    return out, rows(out), results


def assert_same_as_reference(out, reference, note=""):
    _, want, want_results = reference
    got = rows(out)
    assert [r[:2] for r in got] == [r[:2] for r in want], note
    assert got == want, note  # bit-identical NLLs, lr and tokens at every logged step
    results = json.loads((Path(out) / "results.json").read_text())
    assert (results["val_nll"], results["steps"], results["tokens"]) == \
        (want_results["val_nll"], want_results["steps"], want_results["tokens"]), note


class StopAt(train.StopFlag):
    """Stops the run after step `at`, as a signal arriving during that step would."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def requested(self, step):
        return "SIGTERM" if step == self.at else None


class SignalAt(train.StopFlag):
    """Sends real signals to this process during step `at`: StopFlag's own handlers must react. Use it
    inside `caught(...)`, so that a signal train.py fails to handle fails the test, not the test run."""

    def __init__(self, at, *signals):
        super().__init__()
        self.at, self.signals = at, signals

    def requested(self, step):
        if step == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)
        return super().requested(step)


@contextlib.contextmanager
def caught(*signals):
    """A stand-in handler for each signal, for the duration: a signal that train.py does not handle is
    recorded (the list it yields) instead of killing pytest (SIGUSR1, SIGTERM) or interrupting the whole
    test run (SIGINT's KeyboardInterrupt)."""
    leaked = []
    previous = {sig: signal.signal(sig, lambda signum, frame: leaked.append(signal.Signals(signum).name))
                for sig in signals}
    try:
        yield leaked
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_line(proc, prefix, timeout=600):
    """Reads the process's stdout until a line starts with prefix (the event). A watchdog kills its
    process group after timeout s, only as a safety net, so a hung run fails the test saying what it
    was waiting for instead of hanging the suite."""
    watchdog = threading.Timer(timeout, lambda: proc.poll() is None and os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                return
    finally:
        watchdog.cancel()
    pytest.fail(f"the run ended (exit {proc.wait()}, or killed after {timeout} s) before printing a line "
                f"starting with {prefix!r}: {proc.stderr.read()[-2000:]}")


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -----------------------------------------------------------------------------
# exact resume

# (workers, step): steps no interval falls on; fixed, so that a failure is reproducible (the shuffle buffer
# holds one epoch of this small corpus, so the stream reads into the next epoch as it goes)
@pytest.mark.parametrize("workers, at", [(0, 7), (0, 11), (2, 13)])
def test_stop_at_an_odd_step_and_resume_is_exact(workers, at, corpus, reference, tmp_path):
    assert at in ODD_STEPS
    cfg = config(corpus, tmp_path, num_workers=workers)
    with pytest.raises(SystemExit) as stopped:
        train.train(cfg, stop=StopAt(at))
    assert stopped.value.code == train.EXIT_PREEMPTED
    ckpt = train.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == at and ckpt["loss_window"][1] == at % 3  # the unlogged steps' NLL travels along
    assert "scaler" in ckpt and ckpt["horizon"] == R
    data = ckpt["data"]  # mid-epoch, with windows waiting in the shuffle buffer: all of it must travel
    assert data["pos"] > 0 and len(data["buffer"]) > 0 and data["batches"] == at
    train.train(config(corpus, tmp_path, num_workers=workers, resume=True))
    assert_same_as_reference(tmp_path, reference, f"stopped at step {at} with {workers} workers")


def test_signal_to_the_process_group_saves_exits_75_and_resumes_exactly(corpus, reference, tmp_path):
    """SIGTERM to every process of the run, as SLURM does on preemption or scancel, with DataLoader
    workers: they ignore it, the main process saves at the end of the step and exits 75."""
    proc = subprocess.Popen([sys.executable, "train.py", *argv(corpus, tmp_path, num_workers=2)], cwd=HERE,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_line(proc, "step 3/")
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == train.EXIT_PREEMPTED, err
    assert "stopped by SIGTERM" in out and "Traceback" not in err
    step = train.load_checkpoint(tmp_path / "ckpt.pt")["step"]
    assert 3 <= step < R
    train.train(config(corpus, tmp_path, num_workers=0, resume=True))  # the order ignores the worker count
    assert_same_as_reference(tmp_path, reference, f"SIGTERM at step {step}")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_usr1_term_and_a_first_ctrl_c_save_and_exit_75(sig, corpus, tmp_path, capfd):
    with caught(sig) as leaked:
        before = signal.getsignal(sig)
        out = tmp_path / sig.name
        try:
            train.train(config(corpus, out, max_iters=3), stop=SignalAt(1, sig))
            code = "no exit: the run finished"
        except SystemExit as stopped:
            code = stopped.code
        assert not leaked, f"train.py does not handle {sig.name}"
        assert code == train.EXIT_PREEMPTED
        assert train.load_checkpoint(out / "ckpt.pt")["step"] == 1
        assert signal.getsignal(sig) is before  # the handlers are put back
        assert f"{sig.name}: saving a checkpoint" in capfd.readouterr().err


def test_a_signal_during_the_final_evaluation_lets_the_run_finish(corpus, tmp_path, monkeypatch):
    """The handlers stay installed until the end: SLURM's warning arriving during the (long) final
    evaluation must not kill the run. A stand-in handler catches the signal if it leaks."""
    calls, real_evaluate = [], train.evaluate

    def evaluate(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # step 0's evaluation, then the final one (max_iters < eval_interval)
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_evaluate(*args, **kw)

    monkeypatch.setattr(train, "evaluate", evaluate)
    with caught(signal.SIGUSR1) as leaked:
        results = train.train(config(corpus, tmp_path, max_iters=2))
    assert len(calls) == 2 and not leaked
    assert results["steps"] == 2 and (tmp_path / "results.json").is_file()


def test_a_second_ctrl_c_exits_at_once(corpus, tmp_path):
    with caught(signal.SIGINT) as leaked, pytest.raises(KeyboardInterrupt):
        train.train(config(corpus, tmp_path, max_iters=3), stop=SignalAt(1, signal.SIGINT, signal.SIGINT))
    assert not leaked, "train.py does not handle SIGINT"
    assert not (tmp_path / "ckpt.pt").exists()  # no checkpoint written: it stopped at once


# -----------------------------------------------------------------------------
# crash safety

KILLED_DURING_SAVE = """
import sys, time, torch
import train
real_save = torch.save
def save(obj, f, *args, **kw):  # the checkpoint of step 8: write half of it, then hang until killed
    if isinstance(obj, dict) and obj.get("step") == 8:
        f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
        f.flush()
        print("SAVING", flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kw)
torch.save = save
sys.exit(train.main(sys.argv[1:]))
"""


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(corpus, reference, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DURING_SAVE, *argv(corpus, tmp_path, num_workers=2)],
                            cwd=HERE, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_line(proc, "SAVING")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, workers included, as a node failure
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert (tmp_path / "ckpt.pt.tmp").is_file()  # the torn write
    with pytest.raises(train.UserError):
        train.load_checkpoint(tmp_path / "ckpt.pt.tmp")
    assert train.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 4  # the previous checkpoint, intact
    # the requeued job: a fresh process (nothing cached from the killed one) that ignores the torn file; as it
    # ends, SLURM's warning and SIGTERM keep coming (a time limit reached just then): it still exits 0
    err = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while the signals come
    proc = subprocess.Popen([sys.executable, "train.py", *argv(corpus, tmp_path, num_workers=0, resume=True)],
                            cwd=HERE, env=ENV, stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
    wait_for_line(proc, "done:")  # the run's last lines: its results are written
    rc = signal_until_it_exits(proc)
    proc.communicate(timeout=60)
    assert rc == 0, err.read_text()[-3000:]  # not -10 / -15: a late signal has nothing to stop
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    assert_same_as_reference(tmp_path, reference, "killed while saving step 8")


def test_disk_full_while_saving_keeps_the_previous_checkpoint(corpus, tmp_path, capfd):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with pytest.raises(SystemExit):
        train.train(config(corpus, tmp_path, max_iters=6), stop=StopAt(2))
    before = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt.tmp").symlink_to("/dev/full")  # every write of the next checkpoint: ENOSPC
    capfd.readouterr()
    assert train.main(argv(corpus, tmp_path, max_iters=6, resume=True)) == train.EXIT_USER_ERROR
    line = one_error_line(capfd.readouterr().err)
    assert "No space left on device" in line and "previous one is intact" in line
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert not os.path.lexists(tmp_path / "ckpt.pt.tmp")


def test_keep_ckpts_keeps_the_last_k(corpus, tmp_path):
    kw = dict(max_iters=9, ckpt_interval=2, keep_ckpts=3, use_swiglu=False, use_rope=False)
    (tmp_path / "ckpt_100.pt").write_text("from an older run in this folder")
    train.train(config(corpus, tmp_path, overwrite=True, **kw))  # (without overwrite: refused, test_commands.py)
    kept = sorted(p.name for p in tmp_path.glob("ckpt*.pt"))
    assert kept == ["ckpt.pt", "ckpt_6.pt", "ckpt_8.pt"]
    for name, step in (("ckpt.pt", 9), ("ckpt_6.pt", 6), ("ckpt_8.pt", 8)):
        assert train.load_checkpoint(tmp_path / name)["step"] == step
    with pytest.raises(train.UserError, match="keep_ckpts must be > 0"):
        train.parse_args(["--keep_ckpts=0"])


# -----------------------------------------------------------------------------
# bad numbers

@pytest.mark.parametrize("where", ["loss", "weights"])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(where, corpus, tmp_path, monkeypatch, capfd):
    """loss: the loss is NaN from step 5 on, seen at the log step 6. weights: step 4's loss is finite
    but its update makes the weights NaN; the checkpoint of step 4 is refused."""
    steps, real_forward = [], train.GPT.forward

    def forward(self, idx, targets=None, *args, **kw):
        value = real_forward(self, idx, targets, *args, **kw)
        if targets is not None and torch.is_grad_enabled():  # a training step, not an evaluation
            steps.append(len(steps) + 1)
            if where == "loss" and steps[-1] >= 5:
                value = value * float("nan")
            if where == "weights" and steps[-1] == 4:  # an infinite gradient of the token embedding
                next(self.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return value

    monkeypatch.setattr(train.GPT, "forward", forward)
    kw = dict(max_iters=8, ckpt_interval=2, use_swiglu=False, use_rope=False)
    assert train.main(argv(corpus, tmp_path, **kw)) == train.EXIT_NAN
    line = one_error_line(capfd.readouterr().err)
    what, step = ("train loss is nan at step 6", 4) if where == "loss" else ("weight is not finite after step 4", 2)
    assert what in line and "last finite train loss:" in line and "at step 3" in line, line
    assert f"ckpt.pt (step {step}) is the last good checkpoint" in line and "learning_rate" in line, line
    ckpt = train.load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == step and all(t.isfinite().all() for t in ckpt["model"].values())
    assert train.read_log(tmp_path / "log.txt")[-1]["event"] == "nan"


# -----------------------------------------------------------------------------
# bad input and bad state: one line, no traceback, exit 2

def truncated(reference, tmp_path):
    data = (reference[0] / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[:len(data) // 2])


def no_training_state(reference, tmp_path):
    ckpt = train.load_checkpoint(reference[0] / "ckpt.pt")
    torch.save({"model": ckpt["model"], "config": ckpt["config"]}, tmp_path / "ckpt.pt")


BAD_RESUMES = {
    "no checkpoint": (lambda ref, tmp: None, {}, "--resume=True but there is no checkpoint at"),
    "model shape": (lambda ref, tmp: shutil.copy(ref[0] / "ckpt.pt", tmp), dict(n_layer=3, n_embd=64),
                    "has n_layer=2, n_embd=32 but the config says n_layer=3, n_embd=64"),
    "truncated": (truncated, {}, "cannot read checkpoint"),
    "not a checkpoint": (lambda ref, tmp: (tmp / "ckpt.pt").write_text("{}"), {}, "cannot read checkpoint"),
    "no training state": (no_training_state, {}, "holds no training state to resume from"),
}


@pytest.mark.parametrize("case", BAD_RESUMES)
def test_bad_resume_is_one_line(case, reference, corpus, tmp_path, capfd):
    make, kw, message = BAD_RESUMES[case]
    make(reference, tmp_path)
    capfd.readouterr()
    assert train.main(argv(corpus, tmp_path, resume=True, **kw)) == train.EXIT_USER_ERROR
    assert message in one_error_line(capfd.readouterr().err)


def test_out_dir_not_writable_is_one_line(corpus, tmp_path, capfd):
    (tmp_path / "a_file").write_text("")
    assert train.main(argv(corpus, tmp_path / "a_file" / "out")) == train.EXIT_USER_ERROR
    assert "is not writable" in one_error_line(capfd.readouterr().err)


def test_corrupted_checkpoint_through_the_real_command(reference, corpus, tmp_path):
    truncated(reference, tmp_path)
    r = subprocess.run([sys.executable, "train.py", *argv(corpus, tmp_path, resume=True)], cwd=HERE, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == train.EXIT_USER_ERROR
    assert "cannot read checkpoint" in one_error_line(r.stderr)


class Evil:
    def __reduce__(self):
        return os.mkdir, (os.environ["EVIL_MARKER"],)


def test_sample_never_runs_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "code_ran"
    os.environ["EVIL_MARKER"] = str(marker)
    try:
        torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    finally:
        del os.environ["EVIL_MARKER"]
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "evil.pt"), "--device", "cpu"],
                       cwd=HERE, env={**ENV, "EVIL_MARKER": str(marker)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == train.EXIT_USER_ERROR
    assert "cannot read checkpoint" in one_error_line(r.stderr)
    assert not marker.exists()


def bad_sample_inputs(reference, tmp):
    ckpt = reference[0] / "ckpt.pt"
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save({"model": {"transformer.wte.weight": torch.zeros(4, 4)}, "config": {"n_layer": 2}}, tmp / "other.pt")
    truncated(reference, tmp)
    return [
        ([str(tmp / "missing.pt")], "checkpoint not found"),
        ([str(tmp / "notes.txt")], "cannot read checkpoint"),
        ([str(tmp / "ckpt.pt")], "cannot read checkpoint"),  # truncated
        ([str(tmp / "tensor.pt")], "is not a gpt-ablate checkpoint"),
        ([str(tmp / "other.pt")], "checkpoint weights do not fit its config"),
        ([str(ckpt), "--block_size", "33"], "--block_size 33 is larger than the model's block_size 32"),
        ([str(ckpt), "--block_size", "-1"], "--block_size must be >= 0"),
    ]


def test_sample_bad_inputs_are_one_line(reference, tmp_path, capfd):
    for args, message in bad_sample_inputs(reference, tmp_path):
        capfd.readouterr()
        code = sample.main(["--ckpt", *args, "--device", "cpu", "--max_new_tokens", "2", "--num_samples", "1"])
        err = capfd.readouterr().err
        assert code == train.EXIT_USER_ERROR, (args, err)
        assert message in one_error_line(err), args
