"""Tests of the documented commands as a user types them, of out_dir safety (no run ever erases another,
one process per out_dir) and of TensorBoard / W&B logging. Tiny models on CPU; subprocesses where the real
command line, process or package matters. Run with: python -m pytest -q test_commands.py"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sample
import train
from test_train import StopAt, write_corpus

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# the tiny overrides appended to the documented commands (a tiny model and corpus, a few steps)
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, val_docs=4, eval_iters=2, eval_interval=3,
            log_interval=2, ckpt_interval=4, max_iters=6, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.jsonl", n_docs=40)


def tiny_args(corpus, **kw):
    return [f"--{k}={v}" for k, v in {**TINY, "data_path": str(corpus), **kw}.items()]


def run(cwd, command, timeout=300):
    """A shell command line (so out/*/log.txt is expanded as a user's shell does)."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def snapshot(folder):
    """{relative path: sha256} of every file under folder: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -----------------------------------------------------------------------------
# The three documented commands, in order, on a copy of the repository

def test_quick_start_and_the_three_documented_commands_in_order(corpus, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("train.py", "sample.py", "plot.py", "stats.py", "run_records.py", "ablation_report.py",
                 "study_report.py"):
        shutil.copy(HERE / name, repo / name)
    shutil.copytree(HERE / "config", repo / "config")
    tiny = " ".join(tiny_args(corpus))
    quick_start = f"python train.py config/baseline.py {tiny}"

    r = run(repo, quick_start)
    assert r.returncode == 0, r.stderr
    baseline = repo / "out" / "baseline"
    assert json.loads((baseline / "results.json").read_text())["config"]["use_rmsnorm"] is False
    kept = snapshot(baseline)

    r = run(repo, f"python train.py config/baseline.py --use_rmsnorm=True {tiny}")
    assert r.returncode == 0, r.stderr
    rmsnorm = repo / "out" / "rmsnorm"
    assert json.loads((rmsnorm / "results.json").read_text())["config"]["use_rmsnorm"] is True
    assert snapshot(baseline) == kept  # the baseline run is untouched

    # out/ckpt.pt: the checkpoint of the run trained last, named on stderr; the text is that run's
    r = run(repo, "python sample.py --ckpt out/ckpt.pt --prompt 'the cat' --temperature 0 --max_new_tokens 8 "
                  "--num_samples 1 --device cpu")
    assert r.returncode == 0, r.stderr
    assert "checkpoint out/rmsnorm/ckpt.pt (the most recent under out): rmsnorm, step 6" in r.stderr
    want = sample.generate_samples(rmsnorm / "ckpt.pt", "the cat", 1, 8, temperature=0.0, device="cpu")[0]
    assert r.stdout == f"--- sample 1 ---\n{want}\n"

    r = run(repo, "python plot.py out/*/log.txt")
    assert r.returncode == 0, r.stderr
    assert (repo / "nll.png").stat().st_size > 1000
    for name, folder in (("baseline", baseline), ("rmsnorm", rmsnorm)):
        val = json.loads((folder / "results.json").read_text())["val_nll"]
        assert any(name in line and f"{val:.4f}" in line for line in r.stdout.splitlines()), (name, r.stdout)

    # the same commands again: nothing to do, nothing changed
    before = snapshot(repo / "out")
    r = run(repo, quick_start)
    assert r.returncode == 0 and "out/baseline: this run already finished" in r.stdout, r.stderr
    # another setting into the baseline's folder: refused in one line, nothing changed
    r = run(repo, f"{quick_start} --learning_rate=0.003")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "out/baseline already holds a finished run" in line and "learning_rate=0.001 but the config says learning_rate=0.003" in line
    assert "--out_dir" in line and "--overwrite=True" in line
    assert snapshot(repo / "out") == before


def test_the_readme_quick_start_shows_exactly_these_commands():
    """The commands the test above runs are the README's, literally (its tiny overrides aside)."""
    readme = (HERE / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("    ")]
    assert ["pip install torch==2.13.0 -r requirements.txt && python train.py config/baseline.py",
                        "pip install -r requirements-dev.txt && python -m pytest -q",
                        "python train.py config/baseline.py --use_rmsnorm=True",
                        "python sample.py --ckpt out/ckpt.pt",
                        "python plot.py out/*/log.txt"] == commands[:5], commands


def test_ci_installs_with_the_readme_quick_start_lines():
    """The versions a user installs are the ones CI tests: .ci/run runs the quick start's pip commands."""
    readme = (HERE / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    installs = [line.split("&&")[0].strip() for line in block.splitlines() if line.startswith("    pip install")]
    ci = (HERE / ".ci" / "run").read_text().splitlines()
    assert len(installs) == 2 and "torch==" in installs[0], installs
    for pip in installs:
        assert f"python -m pip install --quiet {pip.removeprefix('pip install ')}" in ci, pip


def heading_anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-")


def test_the_readme_links_its_docs_and_every_link_between_them_resolves():
    """README.md stays short and links the rest: each docs/ page and results/README.md; a relative link in any
    of them names a file that exists and, with #anchor, a heading of that file."""
    readme = HERE / "README.md"
    docs = sorted((HERE / "docs").glob("*.md"))
    assert {"data.md", "switches.md", "outputs.md", "ablations.md", "results.md", "cluster.md", "speed.md",
            "testing.md"} <= {p.name for p in docs}
    text = readme.read_text()
    for page in [*docs, HERE / "results" / "README.md"]:
        assert f"]({page.relative_to(HERE)})" in text, f"README.md does not link {page.relative_to(HERE)}"
    checked = 0
    for page in [readme, *docs, HERE / "results" / "README.md"]:
        prose = "\n".join(line for line in page.read_text().splitlines() if not line.startswith("    "))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(HERE)}: link to {target}: no such file"
            if anchor:
                headings = [line.lstrip("#") for line in file.read_text().splitlines() if line.startswith("#")]
                assert anchor in {heading_anchor(h) for h in headings}, \
                    f"{page.relative_to(HERE)}: link to {target}: no such heading in {file.name}"
            checked += 1
    assert checked > 30, checked


def test_the_default_out_dir_is_named_by_the_switches_that_are_on():
    base = str(HERE / "config" / "baseline.py")
    assert train.parse_args([base]).out_dir == "out/baseline"
    assert train.parse_args([base, "--use_rmsnorm=True"]).out_dir == "out/rmsnorm"
    assert train.parse_args(["--use_rope", "--use_swiglu=True"]).out_dir == "out/swiglu+rope"
    assert train.parse_args([base, "--use_rope", "--out_dir=runs/x"]).out_dir == "runs/x"  # named: as named
    assert train.parse_args(["--out_dir=runs/{switches}/s1", "--use_qknorm"]).out_dir == "runs/qknorm/s1"
    # no config file shipped pins one folder for every switch setting
    for path in sorted((HERE / "config").glob("*.py")):
        off, on = train.parse_args([str(path), "--use_rope=False"]), train.parse_args([str(path), "--use_rope=True"])
        assert off.out_dir != on.out_dir, path.name


# -----------------------------------------------------------------------------
# No run erases another: each way a fresh run could land on an existing one



def test_a_fresh_run_over_a_finished_run_is_refused_unless_overwrite(corpus, tmp_path, capfd):
    out = tmp_path / "run"
    assert train.main(tiny_args(corpus, out_dir=out)) == 0
    kept = snapshot(out)
    capfd.readouterr()
    for other in ({"seed": 2}, {"use_rope": True, "out_dir": out}, {"resume": "auto", "learning_rate": 1e-3}):
        assert train.main(tiny_args(corpus, **{"out_dir": out, **other})) == 2, other
        line = one_error_line(capfd.readouterr().err)
        assert f"{out} already holds a finished run" in line and "--overwrite=True" in line, line
        # continuing it is offered where the model's shape allows it
        assert ("--resume=True to continue it with this config" in line) == ("use_rope" not in other), line
        assert snapshot(out) == kept
    # the same config again: nothing to do (also with overwrite=True under auto), nothing changed
    assert train.main(tiny_args(corpus, out_dir=out)) == 0
    assert train.main(tiny_args(corpus, out_dir=out, resume="auto", overwrite=True)) == 0
    assert "already finished" in capfd.readouterr().out and snapshot(out) == kept
    # asked for: the old run's files are deleted (and named), the new run is all that is there
    assert train.main(tiny_args(corpus, out_dir=out, seed=2, overwrite=True)) == 0
    said = capfd.readouterr().out
    assert f"--overwrite=True: deleting the run in {out} (ckpt.pt, log.txt, results.json)" in said
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 2
    assert [r["event"] for r in train.read_log(out / "log.txt")].count("start") == 1


def test_a_fresh_run_over_a_checkpoint_is_refused_and_auto_continues_it(corpus, tmp_path, capfd):
    out = tmp_path / "run"
    cfg = train.Config(**{**TINY, "data_path": str(corpus), "out_dir": str(out)})
    with pytest.raises(SystemExit):
        train.train(cfg, stop=StopAt(3))  # interrupted: ckpt.pt at step 3, no results
    (out / "ckpt_1.pt").write_bytes(b"an older checkpoint kept beside it")
    kept = snapshot(out)
    capfd.readouterr()
    assert train.main(tiny_args(corpus, out_dir=out)) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "already holds an unfinished run (checkpoint ckpt.pt, log up to step 3)" in line
    assert "--resume=auto to continue it" in line and "--overwrite=True" in line
    assert train.main(tiny_args(corpus, out_dir=out, learning_rate=1e-3)) == 2  # another config: no auto hint
    line = one_error_line(capfd.readouterr().err)
    assert "learning_rate=0.0006 but the config says learning_rate=0.001" in line
    assert "--resume=True to continue it with this config" in line and "resume=auto" not in line
    assert snapshot(out) == kept
    assert train.main(tiny_args(corpus, out_dir=out, resume="auto")) == 0  # the way out it named
    assert [r["event"] for r in train.read_log(out / "log.txt")].count("resume") == 1


def test_auto_never_replaces_another_run_and_a_run_without_checkpoint_starts_again(corpus, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    cfg = train.parse_args(tiny_args(corpus, out_dir=out, resume="auto"))
    (out / "results.json").write_text(json.dumps({"val_nll": 3.5, "config": {**vars(cfg), "seed": 9}}) + "\n")
    kept = snapshot(out)
    assert train.main(tiny_args(corpus, out_dir=out, resume="auto")) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "already holds a finished run (val nll 3.5000) that has seed=9 but the config says seed=1337;" in line
    assert snapshot(out) == kept
    # a run of this same config killed before its first checkpoint: only a log; auto starts it again
    other = tmp_path / "again"
    other.mkdir()
    (other / "log.txt").write_text(json.dumps({"event": "start", "step": 0, "config": vars(cfg)}) + "\n"
                                   + json.dumps({"event": "train", "step": 2, "train_nll": 10.0}) + "\n")
    assert train.main(tiny_args(corpus, out_dir=other, resume="auto")) == 0
    assert "stopped before its first checkpoint; starting it again" in capfd.readouterr().out
    rows = train.read_log(other / "log.txt")
    assert [r["event"] for r in rows].count("start") == 1 and rows[-1]["event"] == "end"
    assert all(r.get("train_nll") != 10.0 for r in rows)  # a new log
    (other / "results.json").unlink()
    (other / "ckpt.pt").unlink()
    assert train.main(tiny_args(corpus, out_dir=other)) == 0  # the same without --resume
    assert "stopped before its first checkpoint; starting it again" in capfd.readouterr().out
    # ... but a log of another config is another run
    third = tmp_path / "third"
    third.mkdir()
    (third / "log.txt").write_text(json.dumps({"event": "start", "step": 0, "config": {**vars(cfg), "seed": 5}}) + "\n")
    assert train.main(tiny_args(corpus, out_dir=third, resume="auto")) == 2
    assert "the log of a run stopped at step 0 before its first checkpoint that has seed=5" in \
        one_error_line(capfd.readouterr().err)


def wait_for(what, test, timeout=180):
    deadline = time.time() + timeout
    while not test():
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def test_one_out_dir_takes_one_process_at_a_time(corpus, tmp_path, capfd):
    out = tmp_path / "run"
    cmd = [sys.executable, str(HERE / "train.py"), *tiny_args(corpus, out_dir=out, max_iters=10**6, eval_interval=10**6,
                                                                 ckpt_interval=10**6)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".lock"
        wait_for("the first process's lock", lambda: lock.is_file() and lock.read_text().strip()
                 == f"{socket.gethostname()} {first.pid}")
        wait_for("the first process's first train row", lambda: (out / "log.txt").is_file()
                 and '"train"' in (out / "log.txt").read_text())
        for extra in ([], ["--overwrite=True", "--resume=auto"]):  # (even when asked to overwrite)
            # the second process: this one (main() as the command runs it, without a second torch start-up);
            # --max_iters=3: were the lock broken, this call would end (and fail below), not train for ever
            assert train.main(cmd[2:] + extra + ["--max_iters=3"]) == 2
            line = one_error_line(capfd.readouterr().err)
            assert f"{out} is in use by process {first.pid} on {socket.gethostname()}" in line, line
            assert first.poll() is None  # the first one trains on
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == train.EXIT_PREEMPTED
    finally:
        first.kill()
        first.communicate()
    assert not lock.exists()  # released at the end
    rows = train.read_log(out / "log.txt")
    assert [r["event"] for r in rows].count("start") == 1 and rows[-1]["event"] == "stopped"
    assert (out / "ckpt.pt").is_file()


def test_a_lock_left_by_a_dead_process_is_taken_over_one_from_another_host_is_not(corpus, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / ".lock").write_text(f"{socket.gethostname()} {gone.pid}\n")
    assert train.main(tiny_args(corpus, out_dir=out)) == 0
    assert f"taking over the lock of process {gone.pid}, which is gone" in capfd.readouterr().out
    assert not (out / ".lock").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / ".lock").write_text("node-17 4242\n")
    assert train.main(tiny_args(corpus, out_dir=other)) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "in use by process 4242 on node-17" in line and str(other / ".lock") in line
    assert sorted(p.name for p in other.iterdir()) == [".lock"]


# -----------------------------------------------------------------------------
# TensorBoard and W&B: the numbers of log.txt, one point per step across a resume

# the scalars TensorBoard and W&B must hold (docs/outputs.md's list): tag -> (log.txt event, its key)
TAGS = {"train/nll": ("train", "train_nll"), "train/lr": ("train", "lr"), "train/tokens_per_s": ("train", "tokens_per_s"),
        "train/mfu": ("train", "mfu"), "val/nll": ("eval", "val_nll"), "val/nll_se": ("eval", "val_nll_se"),
        "val/bpb": ("eval", "val_bpb")}


def log_series(out):
    """{tag: [(step, value), ...]} of log.txt's rows, as TensorBoard / W&B should hold them."""
    rows = train.read_log(out / "log.txt")
    return {tag: [(r["step"], r[key]) for r in rows if r["event"] == event] for tag, (event, key) in TAGS.items()}


class CrashAt(train.StopFlag):
    """A crash (no checkpoint) at a given step, as a kill -9 or a node failure would stop the run."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def requested(self, step):
        if step >= self.at:
            raise KeyboardInterrupt
        return None


def test_tensorboard_events_equal_log_txt_and_a_resumed_run_has_each_step_once(corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -r requirements-dev.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    kw = {**TINY, "data_path": str(corpus), "out_dir": str(out), "tensorboard": True, "max_iters": 10,
          "log_interval": 1, "eval_interval": 3, "ckpt_interval": 4}
    with pytest.raises(KeyboardInterrupt):
        train.train(train.Config(**kw), stop=CrashAt(7))  # steps 5 and 6 were logged after the checkpoint at 4
    train.train(train.Config(**{**kw, "resume": "true"}))
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    want = log_series(out)
    assert set(acc.Tags()["scalars"]) == set(TAGS)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(s, float(np.float32(v))) for s, v in points], tag  # (TensorBoard keeps float32)
    assert [s for s, _ in want["train/nll"]] == list(range(1, 11))  # each step once
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| use_rmsnorm | `False` |" in text and f"| data_path | `'{corpus}'` |" in text


def test_a_missing_tensorboard_or_wandb_is_one_line_before_anything_loads(corpus, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    for arg, package in (("--tensorboard=True", "tensorboard"), ("--wandb=offline", "wandb")):
        out = tmp_path / package
        assert train.main(tiny_args(corpus, out_dir=out) + [arg]) == 2
        assert f"needs the {package} package: pip install {package}" in one_error_line(capfd.readouterr().err)
        assert sorted(p.name for p in out.iterdir()) == []  # no log, no lock


def wandb_records(path):
    """The records of a .wandb file (LevelDB log format: 7-byte header, then 32 KiB blocks of
    [crc32 4, length 2, type 1, data] pieces; type 1 = a whole record, 2/3/4 = first/middle/last piece)."""
    from wandb.proto import wandb_internal_pb2
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, data = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        data = raw[pos + 7:pos + 7 + length] if kind in (1, 2) else data + raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            yield record


def test_wandb_offline_writes_its_run_without_network_and_a_resumed_run_continues_it(corpus, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -r requirements-dev.txt)")
    out = tmp_path / "run"
    home = tmp_path / "wandb_home"
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(home),
           "WANDB_CONFIG_DIR": str(home), "WANDB_CACHE_DIR": str(home), "WANDB_DATA_DIR": str(home),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # no network to reach
    base = [sys.executable, str(HERE / "train.py"), *tiny_args(corpus, out_dir=out, log_interval=1),
            "--wandb=offline", "--wandb_project=abl"]
    for extra in (["--max_iters=4"], ["--max_iters=8", "--resume=True"]):  # a finished run, then continued
        r = subprocess.run(base + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2  # one per attempt, in the run's folder
    history, ids = {}, set()
    for path in runs:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                assert (record.run.project, record.run.display_name) == ("abl", str(out))
                config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
                assert config["data_path"] == str(corpus) and config["use_rope"] is False
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for tag, value in items.items():
                    if "/" in tag:
                        history.setdefault(tag, []).append((items["_step"], value))
    assert len(ids) == 1  # the resumed attempt continued the same W&B run
    assert history == log_series(out)  # every logged number, each step once
    assert [s for s, _ in history["train/nll"]] == list(range(1, 9))
