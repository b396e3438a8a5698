"""Tests of studies (issue 16, the running side): train.py's tuning set, and ablate.py's stages, sizes,
budgets, resume, --jobs and job arrays.

* train.py: the tuning documents are held out from training and disjoint from the validation set;
  tune_docs=0 changes nothing; eval_set=tune evaluates on them without changing the training.
* ablate.py with a fake train.py (PYTHON points at a fake interpreter that writes results.json from a
  known function of the learning rate, so a study runs in a second or two): the layout, the choice per
  arm (mean over tuning seeds, a diverged value skipped, its margin against the noise), a grid that misses
  the optimum growing round by round until every choice is inside it (or the bound stops it, and says so),
  locally and as chained job arrays, tuning seeds never the comparison seeds, per-size budgets and warmup,
  resume, a different study refused, --jobs, --task.
(A real tiny study, real train.py in both stages, runs as two dependent job arrays in test_slurm.py.)
"""

import json
import math
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import ablate
import train
from test_ablate import run_main
from test_train import TINY, write_corpus

HERE = Path(__file__).resolve().parent


# -----------------------------------------------------------------------------
# train.py: the tuning set

@pytest.fixture(scope="module")
def unique_corpus(tmp_path_factory):
    """60 documents, each with its number in it, so a document is known by its text."""
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"document {i}: " + "the cat sat on the mat. " * 10}) + "\n")
    return path


def doc_ids(texts):
    return {int(re.match(r"document (\d+):", t).group(1)) for t in texts}


def test_tuning_set_is_disjoint_from_training_and_validation(unique_corpus):
    ds = train.JSONLDataset([str(unique_corpus)])
    n_train, tune, val, _ = train.held_out_sets(ds, val_docs=10, tune_docs=7)
    training = doc_ids(ds.document(i)[0] for i in range(n_train))
    assert doc_ids(val) == set(range(50, 60)) and doc_ids(tune) == set(range(43, 50))
    assert training == set(range(43)) and len(tune) == 7 and len(val) == 10
    assert not (training & doc_ids(tune)) and not (training & doc_ids(val)) and not (doc_ids(tune) & doc_ids(val))


def test_tune_docs_zero_is_the_old_split(unique_corpus):
    ds = train.JSONLDataset([str(unique_corpus)])
    n_train, tune, val, skipped = train.held_out_sets(ds, val_docs=10, tune_docs=0)
    assert (n_train, val, skipped) == train.split_validation(ds, 10) and tune == []
    assert train.Config().tune_docs == 0 and train.Config().eval_set == "val"


def test_eval_set_needs_a_tuning_set(capsys):
    assert train.main(["--eval_set=tune"]) == train.EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: eval_set=tune needs a tuning set: set tune_docs > 0\n"


def test_eval_set_tune_changes_the_evaluation_not_the_training(tmp_path):
    """Same tune_docs, eval_set val vs tune: identical training (the train NLL of every logged step),
    different evaluated documents; results.json names the set and holds the training FLOPs."""
    corpus = write_corpus(tmp_path / "c.jsonl")
    res, logs = {}, {}
    for s in ("val", "tune"):
        cfg = train.Config(**{**TINY, "data_path": str(corpus), "out_dir": str(tmp_path / s), "max_iters": 10,
                              "tune_docs": 10, "eval_set": s})
        res[s] = train.train(cfg)
        logs[s] = [(e["step"], e["train_nll"]) for e in train.read_log(tmp_path / s / "log.txt")
                   if e.get("event") == "train"]
    assert logs["val"] == logs["tune"] and len(logs["val"]) >= 2
    assert res["val"]["val_nll"] != res["tune"]["val_nll"]
    assert (res["val"]["eval_set"], res["tune"]["eval_set"]) == ("val", "tune")
    on_disk = json.loads((tmp_path / "tune" / "results.json").read_text())
    model = train.GPT(train.Config(**{**TINY, "tune_docs": 10}))
    assert on_disk["flops_per_token"] == train.flops_per_token(model) > 0
    assert on_disk["train_flops"] == on_disk["flops_per_token"] * on_disk["tokens"] == \
        on_disk["flops_per_token"] * 10 * TINY["batch_size"] * TINY["block_size"]


# -----------------------------------------------------------------------------
# ablate.py with a fake train.py: PYTHON points at a fake interpreter. `fake train.py ARGS` appends its
# argv to calls.jsonl and writes log.txt and results.json with val_nll = a known function of the learning
# rate (each arm has its own best value), unless FAKE_NLL ({"exp|lr|seed": nll}) says otherwise;
# FAKE_DIVERGE ["exp|lr" or "exp|lr|seed"] exits 3 after a nan event; FAKE_HANG "exp|lr|seed" saves ckpt.pt and waits for a
# signal (then exits 75, as train.py does); FAKE_LAST "exp|lr|seed" waits until ablate.py has written two
# diverged.json files (which it does as it reaps diverged runs).
# `fake plot.py` records its call.

FAKE_PY = r'''#!{python}
import json, math, os, signal, sys, time
from pathlib import Path
argv = sys.argv[1:]
calls = Path(os.environ["FAKE_CALLS"])
with open(calls, "a") as f:
    f.write(json.dumps(argv) + "\n")
if Path(argv[0]).name == "plot.py":
    sys.exit(0)
a = {{}}
for x in argv[1:]:
    if x.startswith("--"):
        k, _, v = x[2:].partition("=")
        a[k] = v
if "steps-in" in a:
    print(1000 if a.get("use_rope") != "True" else 800)
    sys.exit(0)
exp = "rope" if a.get("use_rope") == "True" else "baseline"
lr, seed = a.get("learning_rate", "6e-4"), a["seed"]
out = Path(a["out_dir"])
out.mkdir(parents=True, exist_ok=True)
log = open(out / "log.txt", "a")
log.write(json.dumps({{"event": "start", "step": 0}}) + "\n")
if f"{{exp}}|{{lr}}|{{seed}}" == os.environ.get("FAKE_HANG") and a.get("resume") != "auto":
    (out / "ckpt.pt").write_text("fake")
    if not os.environ.get("FAKE_UNCAUGHT"):  # else: killed by the signal, as train.py is while it imports torch
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
    while True:
        time.sleep(0.05)
if f"{{exp}}|{{lr}}|{{seed}}" == os.environ.get("FAKE_LAST"):  # ends after ablate.py recorded 2 diverged runs
    deadline = time.time() + 120
    while len(list(out.parents[2].glob("*/*/*/diverged.json"))) < 2:
        if time.time() > deadline:
            sys.exit("fake: ablate.py never recorded the 2 diverged tuning runs")
        time.sleep(0.05)
if {{f"{{exp}}|{{lr}}", f"{{exp}}|{{lr}}|{{seed}}"}} & set(json.loads(os.environ.get("FAKE_DIVERGE", "[]"))):
    log.write(json.dumps({{"event": "nan", "step": 3, "message": "loss is nan at step 3"}}) + "\n")
    sys.exit(3)
best = {{"baseline": 3e-3, "rope": 1e-2}}[exp]
nll = 3 + (math.log10(float(lr)) - math.log10(best)) ** 2 - 0.1 * a.get("n_embd", "16").count("3")
nll = json.loads(os.environ.get("FAKE_NLL", "{{}}")).get(f"{{exp}}|{{lr}}|{{seed}}", nll)
tokens = int(a.get("max_iters", 10)) * 64
log.write(json.dumps({{"event": "end", "step": 10, "val_nll": nll}}) + "\n")
# whole, then renamed, as train.py does: ablate.py reads other runs' results.json while this one runs (--jobs 2)
(out / "results.json.tmp").write_text(json.dumps({{"val_nll": nll, "eval_set": a.get("eval_set", "val"),
                                                  "tokens": tokens, "config": a}}))
os.replace(out / "results.json.tmp", out / "results.json")
'''

# A config file for the small model (keys in a file, not flags, so --scale n_embd may still set n_embd):
# ablate.py builds each size's model once for its parameter count, and a small one builds fast.
SMALL_CONFIG = Path(tempfile.mkdtemp(prefix="test_study-")) / "small.py"
SMALL_CONFIG.write_text("n_layer = 1\nn_head = 2\nn_embd = 16\n")
STUDY_ARGS = [str(SMALL_CONFIG), "--data_path=unused.jsonl", "--block_size=32", "--batch_size=2",
              "--max_iters=10", "--val_docs=4", "--tune_docs=4"]
GRID = "learning_rate=1e-3,3e-3,1e-2,3e-2"


@pytest.fixture
def fake(tmp_path, monkeypatch, capsys):
    py = tmp_path / "fakepy"
    py.write_text(FAKE_PY.format(python=sys.executable))
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(ablate, "PY", str(py))   # in-process ablate.main(): no second torch import per call
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.chdir(HERE)
    return {"PYTHON": str(py), "FAKE_CALLS": str(tmp_path / "calls.jsonl"), "OUT": tmp_path / "study",
            "capsys": capsys, "monkeypatch": monkeypatch}


def study(fake, *args, extra_env=None, out=None, cli=False):
    """ablate.py in this process (or `python ablate.py` in a subprocess): its exit code, stdout and stderr."""
    args = ["--out", str(out or fake["OUT"]), *args]
    if cli:
        env = {**os.environ, "PYTHON": fake["PYTHON"], **(extra_env or {})}
        return subprocess.run([sys.executable, "ablate.py", *args], cwd=HERE, env=env, capture_output=True,
                              text=True, timeout=300)
    return run_main(fake["capsys"], args, extra_env)


def calls(fake, kind="train.py"):
    p = Path(fake["FAKE_CALLS"])
    rows = [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []
    return [r for r in rows if Path(r[0]).name == kind and not any(a.startswith("--steps-in") for a in r)]


def opts(argv):
    return {k: v for k, _, v in (a[2:].partition("=") for a in argv if a.startswith("--"))}


def test_two_stage_study_layout_choice_and_seeds(fake):
    """Both stages at both sizes: the layout, each arm's choice from the tuning set (rope's 3e-2 diverged,
    baseline's 1e-2 at one seed: recorded and skipped, the study goes on), comparison seeds never tuning
    seeds, --tune_docs in both."""
    r = study(fake, "--switches", "rope", "--tune", GRID, "--tune-seeds", "2", "--scale", "n_embd=16,32",
              "--seeds", "2", "--no-report", *STUDY_ARGS, extra_env={"FAKE_DIVERGE": '["rope|3e-2", "baseline|1e-2|1002"]'}, cli=True)
    assert r.returncode == 0, r.stderr
    out = fake["OUT"]
    spec = json.loads((out / "study.json").read_text())
    assert spec["tune"] == {"key": "learning_rate", "values": ["1e-3", "3e-3", "1e-2", "3e-2"], "seeds": [1001, 1002],
                            "max_extend": 3}
    assert spec["sizes"] == [{"name": "n_embd=16", "args": {"n_embd": "16"}}, {"name": "n_embd=32", "args": {"n_embd": "32"}}]
    assert spec["seeds"] == 2 and spec["train_args"] == STUDY_ARGS
    assert [e["name"] for e in spec["design"]["experiments"]] == ["baseline", "rope"]
    tune_calls = [opts(c) for c in calls(fake) if "eval_set" in opts(c)]
    compare_calls = [opts(c) for c in calls(fake) if "eval_set" not in opts(c)]
    assert len(tune_calls) == 2 * 2 * 4 * 2 and len(compare_calls) == 2 * 2 * 2
    assert {c["seed"] for c in tune_calls} == {"1001", "1002"} and {c["seed"] for c in compare_calls} == {"1", "2"}
    assert all(c["eval_set"] == "tune" for c in tune_calls)
    assert all(c["tune_docs"] == "4" for c in tune_calls + compare_calls)
    for size in ("n_embd=16", "n_embd=32"):
        choice = json.loads((out / size / "choice.json").read_text())
        base, rope = choice["by_experiment"]["baseline"], choice["by_experiment"]["rope"]
        # baseline's 1e-2 diverged at one tuning seed of two: out of the choice (its other seed is not a score)
        assert (base["chosen"], base["edge"], base["diverged"]) == ("3e-3", False, {"1e-2": [1002]})
        assert base["scores"]["1e-2"] is None and base["scores"]["1e-3"] is not None
        assert (rope["chosen"], rope["edge"]) == ("1e-2", False)
        assert rope["diverged"] == {"3e-2": [1001, 1002]} and rope["scores"]["3e-2"] is None
        assert base["scores"]["3e-3"] == pytest.approx(3 - 0.1 * size.count("3"))
        assert (out / size / "tune" / "rope" / "learning_rate=3e-2" / "seed1001" / "diverged.json").is_file()
        assert (out / size / "tune" / "baseline" / "learning_rate=1e-3" / "seed1002" / "results.json").is_file()
        for exp, lr in (("baseline", "3e-3"), ("rope", "1e-2")):
            for seed in (1, 2):
                res = json.loads((out / size / exp / f"seed{seed}" / "results.json").read_text())
                assert res["config"]["learning_rate"] == lr and res["config"]["n_embd"] == size[7:]
    assert "rope at n_embd=16: learning_rate=3e-2 diverged" in r.stderr


def test_choice_is_the_mean_over_tuning_seeds_with_its_margin_against_the_noise(fake):
    """Two tuning seeds by default. 1e-3 has the best single run (seed 1001) but 3e-3 the best mean: 3e-3 is
    chosen, by 0.75 over 1e-3, less than the standard error of their paired difference (-1.0 and +2.5: 1.75):
    a warning. Rope's runs agree across seeds (the fake's law): noise 0, not within noise."""
    nll = {"baseline|1e-3|1001": 1.0, "baseline|1e-3|1002": 5.0, "baseline|3e-3|1001": 2.0, "baseline|3e-3|1002": 2.5,
           "baseline|1e-2|1001": 4.0, "baseline|1e-2|1002": 4.0}
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-3,3e-3,1e-2",
              "--no-report", *STUDY_ARGS, extra_env={"FAKE_NLL": json.dumps(nll)})
    assert r.returncode == 0, r.stderr
    choice = json.loads((fake["OUT"] / "choice.json").read_text())
    base, rope = choice["by_experiment"]["baseline"], choice["by_experiment"]["rope"]
    assert choice["tuning_seeds"] == [1001, 1002]
    assert base["scores"] == {"1e-3": 3.0, "3e-3": 2.25, "1e-2": 4.0} and base["chosen"] == "3e-3"
    assert (base["runner_up"], base["margin"], base["noise"], base["within_noise"]) == ("1e-3", 0.75, 1.75, True)
    assert (rope["chosen"], rope["noise"], rope["within_noise"]) == ("1e-2", 0, False) and rope["margin"] > 0
    w = ("baseline: learning_rate=3e-3 beat 1e-3 by 0.7500, less than the noise of that difference (1.7500, its "
         "standard error over 2 tuning seeds): equally good within noise")
    assert choice["warnings"] == [w] and f"warning: {w}" in r.stderr


@pytest.mark.parametrize("grid, tried", [
    # the fake's optimum: baseline 3e-3, rope 1e-2, both above this grid: it grows upward by decades
    ("1e-4,3e-4,1e-3", {"baseline": [("3e-3", 1), ("1e-2", 2)], "rope": [("3e-3", 1), ("1e-2", 2), ("3e-2", 3)]}),
    # both below this one: it grows downward
    ("3e-2,1e-1", {"baseline": [("1e-2", 1), ("3e-3", 2), ("1e-3", 3)], "rope": [("1e-2", 1), ("3e-3", 2)]}),
])
def test_a_grid_that_misses_the_optimum_grows_until_every_choice_is_inside(fake, grid, tried):
    """Each arm's grid grows one value per round on the side of its best value, until that value is inside the
    values tried; only then do the comparison runs start, at the optimum. choice.json lists every value tried,
    its round and why; the rerun trains nothing."""
    args = ["--switches", "rope", "--tune", f"learning_rate={grid}", "--jobs", "2", "--no-report", *STUDY_ARGS]
    r = study(fake, *args)
    assert r.returncode == 0, r.stderr
    choice = json.loads((fake["OUT"] / "choice.json").read_text())
    first = [(v, 0) for v in grid.split(",")]
    for exp, best in (("baseline", "3e-3"), ("rope", "1e-2")):
        c = choice["by_experiment"][exp]
        assert [(t["value"], t["round"]) for t in c["tried"]] == first + tried[exp]
        assert (c["chosen"], c["edge"], c["edge_reason"]) == (best, False, None)
        assert set(c["scores"]) == {v for v, _ in first + tried[exp]}
        up = float(tried[exp][0][0]) > float(first[-1][0])
        assert c["tried"][len(first)]["why"] == (f"after round 0 the best value learning_rate={first[-1 if up else 0][0]} "
                                                 f"was the {'highest' if up else 'lowest'} tried")
    assert choice["max_extend"] == 3 and choice["tuning_seeds"] == [1001, 1002] and not choice["warnings"]
    assert "rules" in choice and "bad result" in choice["rules"]["extend"]
    kinds = [("tune" if "--eval_set=tune" in c else "compare", opts(c)["learning_rate"]) for c in calls(fake)]
    n_tune = sum(2 * (len(first) + len(t)) for t in tried.values())
    assert [k for k, _ in kinds] == ["tune"] * n_tune + ["compare"] * 2      # every tuning run before any comparison
    assert sorted(v for k, v in kinds if k == "compare") == ["1e-2", "3e-3"]
    assert f"[{n_tune + 2}/{n_tune + 2} runs done]" in r.stderr and "[tune round 1]" in r.stderr
    n = len(calls(fake))
    r = study(fake, *args)
    assert r.returncode == 0 and len(calls(fake)) == n
    assert f"{n_tune + 2} of {n_tune + 2} runs already finished" in r.stderr


def test_the_bound_stops_the_growth_and_the_choice_says_it_stayed_on_the_edge(fake):
    """--tune-max-extend 1: one value beyond the grid, the best still on its edge: chosen there, with the reason
    (choice.json, a warning). --tune-max-extend 0: the grid as given."""
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-4,3e-4,1e-3", "--tune-max-extend", "1",
              "--no-report", *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    choice = json.loads((fake["OUT"] / "choice.json").read_text())
    for exp in ("baseline", "rope"):
        c = choice["by_experiment"][exp]
        assert [(t["value"], t["round"]) for t in c["tried"]] == [("1e-4", 0), ("3e-4", 0), ("1e-3", 0), ("3e-3", 1)]
        assert (c["chosen"], c["edge"]) == ("3e-3", True)
        assert c["edge_reason"] == "--tune-max-extend 1 values beyond the grid on that side, all tried"
        assert any(w.startswith(f"{exp}: the best learning_rate=3e-3 is on the edge of the values tried "
                                "(--tune-max-extend 1") for w in choice["warnings"])
    assert "warning: baseline: the best learning_rate=3e-3 is on the edge of the values tried" in r.stderr
    assert {opts(c)["learning_rate"] for c in calls(fake) if "--eval_set=tune" not in c} == {"3e-3"}
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-4,3e-4", "--tune-max-extend", "0",
              "--no-report", *STUDY_ARGS, out=fake["OUT"].parent / "zero")
    assert r.returncode == 0, r.stderr
    c = json.loads((fake["OUT"].parent / "zero" / "choice.json").read_text())["by_experiment"]["baseline"]
    assert (c["chosen"], c["edge"], len(c["tried"])) == ("3e-4", True, 2) and "--tune-max-extend 0" in c["edge_reason"]


@pytest.mark.parametrize("key, grid, low, high", [
    ("learning_rate", "1e-3,3e-3,1e-2", ["3e-4", "1e-4", "3e-5"], ["3e-2", "1e-1", "3e-1"]),   # by decades
    ("learning_rate", "1e-4,3e-4", ["3e-5", "1e-5", "3e-6"], ["1e-3", "3e-3", "1e-2"]),
    ("learning_rate", "1e-3,2e-3,5e-3,1e-2", ["5e-4", "2e-4", "1e-4"], ["2e-2", "5e-2", "1e-1"]),
    ("learning_rate", "0.001,0.002,0.004", ["0.0005", "0.00025", "0.000125"], ["0.008", "0.016", "0.032"]),  # x 2
    ("dropout", "0,0.1,0.2", [None] * 3, ["0.3", "0.4", "0.5"]),                    # arithmetic, never below 0
    ("warmup_iters", "8,16,32", ["4", "2", "1"], ["64", "128", "256"]),              # an integer key
    ("warmup_iters", "1,2", [None] * 3, ["4", "8", "16"]),                           # geometric: stays > 0
])
def test_the_grid_grows_by_its_own_step(key, grid, low, high):
    values = grid.split(",")
    assert [ablate.extension(key, values, "low", j)[0] for j in (1, 2, 3)] == low
    assert [ablate.extension(key, values, "high", j)[0] for j in (1, 2, 3)] == high
    assert ablate.extension("dtype", ["float32", "bfloat16"], "low", 1) == (None, "dtype is not numeric")


def test_an_arm_whose_every_value_diverged_stops_with_a_clear_error(fake):
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-2,3e-2", "--no-report", *STUDY_ARGS,
              extra_env={"FAKE_DIVERGE": '["rope|1e-2", "rope|3e-2"]'})
    assert r.returncode == 1
    assert "rope: every learning_rate value diverged in tuning (1e-2, 3e-2)" in r.stderr.splitlines()[-1]


@pytest.mark.parametrize("uncaught", [False, True])
def test_stopped_study_resumes_and_a_rerun_retrains_nothing(fake, uncaught):
    """A signal mid-study: the running train.py checkpoints (75) and no new run starts; the rerun resumes
    that run with --resume=auto and runs only what is missing; a third run trains nothing. (uncaught: the
    forwarded signal kills a train.py that has no handler yet: still a stop, 75, not a crash.)"""
    args = ["--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--tune-seeds", "1", "--tune-max-extend", "0",
            "--seeds", "2", "--no-report", *STUDY_ARGS]
    env = {**os.environ, "PYTHON": fake["PYTHON"], "FAKE_HANG": "rope|1e-3|1001", **({"FAKE_UNCAUGHT": "1"} if uncaught else {})}
    p = subprocess.Popen([sys.executable, "ablate.py", "--out", str(fake["OUT"]), *args], cwd=HERE, env=env,
                         stderr=subprocess.PIPE, text=True)
    ckpt = fake["OUT"] / "tune" / "rope" / "learning_rate=1e-3" / "seed1001" / "ckpt.pt"
    for line in p.stderr:  # wait for the hanging run's start line, then for its checkpoint
        if "run rope seed 1001 learning_rate=1e-3" in line:
            break
    deadline = time.time() + 60
    while not ckpt.exists():
        assert time.time() < deadline, f"the fake run never wrote {ckpt}"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    assert p.wait(timeout=60) == 75, rest
    first = calls(fake)
    assert "rerun the same command to resume" in rest.splitlines()[-1]
    assert "STOPPED with exit code 75" in rest and "[2/8 runs done]" in rest and "[3/8" not in rest
    r = study(fake, *args)
    assert r.returncode == 0, r.stderr
    second = calls(fake)[len(first):]
    resumed = [c for c in second if "--resume=auto" in c]
    assert len(resumed) == 1 and opts(resumed[0])["out_dir"] == str(ckpt.parent)
    done_first = {opts(c)["out_dir"] for c in first} - {str(ckpt.parent)}
    assert not done_first & {opts(c)["out_dir"] for c in second}           # nothing finished is retrained
    assert len(first) + len(second) - 1 == 2 * 2 + 2 * 2                  # every run once (+ the resume)
    r = study(fake, *args)
    assert r.returncode == 0 and len(calls(fake)) == len(first) + len(second)
    assert "8 of 8 runs already finished" in r.stderr


@pytest.mark.parametrize("change, named", [
    (["--tune", "learning_rate=1e-3,1e-2"], "tune"),
    (["--tune", GRID, "--scale", "n_embd=16,32"], "sizes"),
    (["--tune", GRID, "--seeds", "3"], "seeds"),
    (["--tune", GRID, "--switches", "rope,swiglu"], "design"),
])
def test_another_study_in_the_same_folder_is_refused(fake, change, named):
    r = study(fake, "--switches", "rope", "--tune", GRID, "--no-report", *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    n = len(calls(fake))
    args = ["--switches", "rope", "--no-report", *STUDY_ARGS]
    for i, a in enumerate(change):   # later options win: --switches, --seeds
        args.append(a)
    r = study(fake, *args)
    assert r.returncode == 2 and len(calls(fake)) == n
    assert r.stderr.count("\n") == 1 and "holds another study" in r.stderr and named in r.stderr.split("differs in:")[1]


def test_per_size_token_budgets_are_printed_before_any_run(fake):
    r = study(fake, "--switches", "rope", "--scale", "n_embd=16,32", "--tokens", "640,1.28k", "--no-report",
              *[a for a in STUDY_ARGS if not a.startswith("--max_iters")])
    assert r.returncode == 0, r.stderr
    steps = {opts(c)["n_embd"]: opts(c)["max_iters"] for c in calls(fake)}
    assert steps == {"16": "10", "32": "20"}                  # tokens / (batch 2 x block 32)
    plan = r.stderr[:r.stderr.index("$ ")]
    assert "size n_embd=16:" in plan and "10 steps x 64 = 640 tokens" in plan and "20 steps x 64 = 1,280 tokens" in plan
    assert "4 runs in all" in plan
    spec = json.loads((fake["OUT"] / "study.json").read_text())
    assert spec["budget"]["rule"] == "tokens" and spec["budget"]["max_iters"] == [10, 20]
    r = study(fake, "--switches", "rope", "--scale", "n_embd=16,32", "--tokens-per-param", "0.1", "--dry-run",
              *[a for a in STUDY_ARGS if not a.startswith("--max_iters")], out=fake["OUT"].parent / "tpp")
    import train
    non_emb = [train.GPT(train.parse_args(STUDY_ARGS + [f"--n_embd={n}"])).num_params()["non_embedding"] for n in (16, 32)]
    want = [math.ceil(0.1 * p / 64) for p in non_emb]
    assert r.returncode == 0, r.stderr
    assert {opts(ln.split())["n_embd"]: int(opts(ln.split())["max_iters"]) for ln in r.stdout.splitlines()} == \
        {"16": want[0], "32": want[1]}


def test_warmup_is_a_fraction_of_each_size_steps(fake, tmp_path):
    """--tokens gives the two sizes 10 and 20 steps. By default warmup_iters keeps the config's fraction (4 of 40
    steps: 0.1): 1 and 2; --warmup-frac 0.25: 2 (2.5 rounded) and 5; a --warmup_iters=3 given is kept; at the
    config's own steps nothing changes. Said in the plan, study.json and choice.json."""
    config = tmp_path / "warmup.py"
    config.write_text("warmup_iters = 4\nmax_iters = 40\n")
    base = [*[a for a in STUDY_ARGS if not a.startswith("--max_iters")], str(config)]
    sizes = ["--switches", "rope", "--scale", "n_embd=16,32", "--tokens", "640,1.28k"]
    r = study(fake, *sizes, "--tune", GRID, "--tune-seeds", "1", "--no-report", *base)
    assert r.returncode == 0, r.stderr
    assert {(opts(c)["n_embd"], opts(c)["warmup_iters"]) for c in calls(fake)} == {("16", "1"), ("32", "2")}
    assert "20 steps x 64 = 1,280 tokens (" in r.stderr and "warmup_iters 2 (10% of the steps)" in r.stderr
    assert "warmup_iters: 0.1 x each size's steps (the config's warmup_iters / max_iters)" in r.stderr
    assert json.loads((fake["OUT"] / "study.json").read_text())["budget"]["warmup"] == \
        {"rule": "the config's warmup_iters / max_iters", "fraction": 0.1, "warmup_iters": [1, 2]}
    for size, steps, warmup in (("n_embd=16", 10, 1), ("n_embd=32", 20, 2)):
        choice = json.loads((fake["OUT"] / size / "choice.json").read_text())
        assert (choice["max_iters"], choice["warmup_iters"]) == (steps, warmup)

    def dry(*args):
        r = study(fake, *args, "--dry-run", out=tmp_path / "dry")
        assert r.returncode == 0, r.stderr
        return {(opts(ln.split())["n_embd"], opts(ln.split()).get("warmup_iters")) for ln in r.stdout.splitlines()}
    assert dry(*sizes, "--warmup-frac", "0.25", *base) == {("16", "2"), ("32", "5")}
    assert dry(*sizes, *base, "--warmup_iters=3") == {("16", "3"), ("32", "3")}
    assert dry("--switches", "rope", "--scale", "n_embd=16,32", *base, "--max_iters=40") == {("16", None), ("32", None)}


def test_a_scale_key_may_repeat_a_value_when_the_sizes_differ(fake):
    """--scale n_layer=1,1,2 --scale n_embd=16,32,32: three sizes, two of them one layer deep."""
    r = study(fake, "--switches", "rope", "--scale", "n_layer=1,1,2", "--scale", "n_embd=16,32,32", "--dry-run",
              *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    sizes = {(opts(ln.split())["n_layer"], opts(ln.split())["n_embd"]) for ln in r.stdout.splitlines()}
    assert sizes == {("1", "16"), ("1", "32"), ("2", "32")}


def test_budget_calibrates_each_size_once_from_the_slowest_arm(fake):
    """--budget D per size: every arm probed (fake: rope fits 800 steps, baseline 1000), the slowest arm's
    count for every run of that size, saved in SIZE/budget.json and reused by the rerun (no new probe)."""
    args = ["--switches", "rope", "--scale", "n_embd=16,32", "--budget", "1h", "--no-report",
            *[a for a in STUDY_ARGS if not a.startswith("--max_iters")]]
    r = study(fake, *args)
    assert r.returncode == 0, r.stderr
    for size in ("n_embd=16", "n_embd=32"):
        b = json.loads((fake["OUT"] / size / "budget.json").read_text())
        assert (b["budget"], b["max_iters"], b["per_arm"]) == ("1h", 800, {"baseline": 1000, "rope": 800})
    assert {opts(c)["max_iters"] for c in calls(fake)} == {"800"} and len(calls(fake)) == 4
    probes = [c for c in map(json.loads, Path(fake["FAKE_CALLS"]).read_text().splitlines()) if "--steps-in=1h" in c]
    assert len(probes) == 4
    r = study(fake, *args)
    assert r.returncode == 0 and len([c for c in map(json.loads, Path(fake["FAKE_CALLS"]).read_text().splitlines())
                                      if "--steps-in=1h" in c]) == 4


def test_budget_waits_for_a_live_calibration_lock_and_takes_over_a_dead_one(fake):
    """[SIZE/].lock held by a live process (this one): the study says it waits, and once budget.json is there
    (written, then the lock released) it uses it and probes nothing, even though it then gets the lock. A lock
    of a process that is gone (this host) is taken over: the study calibrates."""
    args = ["--switches", "rope", "--budget", "1h", "--no-report",
            *[a for a in STUDY_ARGS if not a.startswith("--max_iters")]]
    out = fake["OUT"]
    out.mkdir()
    (out / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    env = {**os.environ, "PYTHON": fake["PYTHON"], "ABLATE_BUDGET_POLL": "0.05"}
    p = subprocess.Popen([sys.executable, "ablate.py", "--out", str(out), *args], cwd=HERE, env=env,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "waiting for" in line:
            break
    (out / "budget.json").write_text(json.dumps({"budget": "1h", "max_iters": 77, "per_arm": {}}))
    (out / ".lock").unlink()
    rest = p.stderr.read()
    assert p.wait(timeout=300) == 0, rest
    assert {opts(c)["max_iters"] for c in calls(fake)} == {"77"} and len(calls(fake)) == 2
    assert not any("--steps-in=1h" in c for c in map(json.loads, Path(fake["FAKE_CALLS"]).read_text().splitlines()))
    dead = subprocess.Popen(["true"])
    dead.wait()
    other = out.parent / "other"
    other.mkdir()
    (other / ".lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    r = study(fake, *args, out=other)
    assert r.returncode == 0, r.stderr
    assert json.loads((other / "budget.json").read_text())["max_iters"] == 800 and not (other / ".lock").exists()


@pytest.mark.parametrize("args, message", [
    (["--tune", GRID, "--tune_docs=0"], "--tune needs a tuning set held out from training and validation"),
    (["--tune", "learnin_rate=1e-3,1e-2"], "--tune learnin_rate=1e-3,1e-2: unknown config key 'learnin_rate'"),
    (["--tune", "learning_rate=fast,1e-2"], "learning_rate in --tune expects float, got 'fast'"),
    (["--tune", "use_rope=True,False"], "use_rope is a switch"),
    (["--scale", "n_embd=16,32", "--scale", "n_layer=1"], "--scale: every key needs the same number of values"),
    (["--scale", "n_embd=16,32", "--n_embd=64"], "n_embd is set per size by --scale"),
    (["--scale", "n_layer=1,1", "--scale", "n_embd=16,16"], "--scale: the size n_layer=1+n_embd=16 is listed twice"),
    (["--tune", "learning_rate=1e-3,1e-3"], "--tune learning_rate=1e-3,1e-3: a value is listed twice"),
    (["--tokens", "1M,2M"], "--tokens gives 2 budgets for 1 size(s)"),
    (["--tokens", "1M", "--budget", "1h"], "--tokens and --budget: choose one budget rule"),
    (["--seed=3"], "ablate.py sets --seed itself"),
    (["--jobs", "0"], "--jobs must be a positive integer"),
    (["--experiments", "baseline,nope"], "--experiments: nope not in the design (its experiments: baseline, rope)"),
    (["--tune", GRID, "--tune-max-extend", "x"], "--tune-max-extend must be an integer from 0 to 20 (got 'x')"),
    (["--tune-max-extend", "2"], "--tune-max-extend needs --tune"),
    (["--tune-seeds", "2"], "--tune-seeds needs --tune"),
    (["--tune", GRID, "--round", "1"], "--round goes with --task"),
    (["--tune", GRID, "--task", "0", "--stage", "tune", "--round", "4"], "--round must be a positive integer <= 3"),
    (["--tune", GRID, "--task", "0", "--stage", "compare", "--round", "1"], "--round goes with --stage tune"),
    (["--warmup-frac", "1.5"], "--warmup-frac must be a number between 0 and 1, e.g. 0.1 (got '1.5')"),
    (["--warmup-frac", "0.1", "--warmup_iters=5"], "--warmup-frac sets warmup_iters per size: do not also set warmup_iters"),
])
def test_study_errors_are_one_line(fake, args, message):
    r = study(fake, "--switches", "rope", *[a for a in STUDY_ARGS if not a.startswith("--max_iters")], *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not fake["OUT"].exists() and calls(fake) == []


def test_the_report_is_plot_py_study_or_for_a_plain_ablation_plot_py_report(fake):
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--scale", "n_embd=16,32", *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    out = fake["OUT"]
    assert [c[1:] for c in calls(fake, "plot.py")] == [["--study", str(out)]]
    r = study(fake, "--switches", "rope", "--jobs", "2", *STUDY_ARGS, out=out.parent / "plain")
    assert r.returncode == 0, r.stderr
    plain = out.parent / "plain"
    assert calls(fake, "plot.py")[-1][1:] == [f"{plain}/{exp}/seed1/log.txt" for exp in ("baseline", "rope")] + \
        ["--report", f"{plain}/report.pdf"]


def test_experiments_keeps_a_subset_of_the_design(fake):
    r = study(fake, "--switches", "rope,swiglu", "--experiments", "baseline,all", "--no-report", *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    assert sorted(opts(c)["out_dir"].rsplit("/", 2)[1] for c in calls(fake)) == ["all", "baseline"]
    assert [e["name"] for e in json.loads((fake["OUT"] / "design.json").read_text())["experiments"]] == ["baseline", "all"]


def test_jobs_run_at_once_with_one_progress_line_per_run(fake):
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--tune-seeds", "1", "--tune-max-extend",
              "0", "--jobs", "3", "--no-report", *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "runs done]" in ln]
    assert [int(re.search(r"\[(\d+)/6 runs done\]", ln).group(1)) for ln in lines] == list(range(1, 7))
    assert all("elapsed" in ln for ln in lines) and "left" in lines[0]
    assert (fake["OUT"] / "console" / "tune" / "rope" / "learning_rate=1e-3" / "seed1001" / "console.txt").is_file()


def test_with_jobs_no_comparison_run_starts_before_its_size_is_tuned(fake):
    """4 tuning runs at once; two diverge and one ends only after ablate.py has recorded both: the slots freed
    meanwhile wait for it (a comparison run needs its size's choice), then the comparison runs start."""
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--tune-seeds", "1", "--tune-max-extend",
              "0", "--jobs", "4", "--no-report", *STUDY_ARGS,
              extra_env={"FAKE_LAST": "rope|3e-3|1001", "FAKE_DIVERGE": '["baseline|1e-3", "rope|1e-3"]'})
    assert r.returncode == 0, r.stderr
    kinds = ["tune" if "--eval_set=tune" in c else "compare" for c in calls(fake)]
    assert kinds == ["tune"] * 4 + ["compare"] * 2
    assert [opts(c)["learning_rate"] for c in calls(fake)[4:]] == ["3e-3", "3e-3"]


def sbatch_lines(stdout):
    """The printed sbatch lines as argument lists (TUNE=$( ... ) unwrapped) and what follows the script name."""
    out = []
    for ln in stdout.splitlines():
        if ln.startswith(("sbatch", "TUNE=$(sbatch")):
            words = shlex.split(ln.removeprefix("TUNE=$(").removesuffix(")"))
            out.append((words, words[words.index("slurm/ablate.sbatch") + 1:]))
    return out


def test_print_slurm_chains_the_tuning_rounds_and_tasks_run_in_that_order(fake):
    """With --tune: the grid's tuning array, one array per round beyond the grid (--tune-max-extend 3), then
    the comparison array, each waiting for the one before (afterok on $TUNE, the previous array's id). Run
    task by task in that order (as SLURM would), the grid grows as it does locally; a task run before the
    round it waits for fails, a round task of an arm already decided exits 0 at once."""
    args = ["--switches", "rope", "--tune", "learning_rate=1e-4,3e-4,1e-3", "--tune-seeds", "1",
            "--scale", "n_embd=16,32", *STUDY_ARGS]
    r = study(fake, *args, "--print-slurm")
    assert r.returncode == 0, r.stderr
    lines = sbatch_lines(r.stdout)
    assert [w[:4] for w, _ in lines] == [
        ["sbatch", "--parsable", "--array=0-11", "slurm/ablate.sbatch"],     # size, experiment, value, seed
        *[["sbatch", "--parsable", "--array=0-3", "--dependency=afterok:$TUNE"]] * 3,   # size, experiment, seed
        ["sbatch", "--array=0-3", "--dependency=afterok:$TUNE", "slurm/ablate.sbatch"]]
    assert [ln.startswith("TUNE=$(") for ln in r.stdout.splitlines() if "sbatch " in ln and not ln.startswith("#")] \
        == [True] * 4 + [False]
    assert [t[t.index("--stage"):t.index("--stage") + 4] for _, t in lines] == [
        ["--stage", "tune", "--seeds", "1"], *[["--stage", "tune", "--round", str(k)] for k in (1, 2, 3)],
        ["--stage", "compare", "--seeds", "1"]]
    assert not fake["OUT"].exists()
    tasks = [t for _, t in lines]
    # task 7 of the grid's array = size 2 (n_embd=32), baseline, 3e-4, seed 1001 (size, experiment, value, seed)
    r = study(fake, *tasks[0], "--task", "7")
    assert r.returncode == 0, r.stderr
    (c,) = calls(fake)
    assert (opts(c)["n_embd"], opts(c)["use_rope"], opts(c)["learning_rate"], opts(c)["seed"]) == ("32", "False", "3e-4", "1001")
    r = study(fake, *tasks[1], "--task", "0")                         # round 1 before the grid's array is done
    assert r.returncode == 1 and "baseline at n_embd=16: tuning round 0 is not finished" in r.stderr
    r = study(fake, *tasks[4], "--task", "0")
    assert r.returncode == 1 and "the tuning stage of size n_embd=16 is not finished" in r.stderr
    r = study(fake, *tasks[0], "--task", "12")
    assert r.returncode == 2 and "--task 12 out of range: the tune stage has tasks 0..11" in r.stderr
    for k, (words, argv) in enumerate(lines):
        for t in range(int(next(a for a in words if a.startswith("--array=0-"))[len("--array=0-"):]) + 1):
            r = study(fake, *argv, "--task", str(t))
            assert r.returncode == 0, (k, t, r.stderr)
            if k == 3 and t in (0, 2):  # baseline is decided after round 2 (its best 3e-3 inside 1e-3..1e-2)
                assert "nothing to do in tuning round 3: baseline at n_embd=" in r.stderr
    for size in ("n_embd=16", "n_embd=32"):
        choice = json.loads((fake["OUT"] / size / "choice.json").read_text())["by_experiment"]
        assert [(t["value"], t["round"]) for t in choice["rope"]["tried"]][3:] == [("3e-3", 1), ("1e-2", 2), ("3e-2", 3)]
        assert (choice["baseline"]["chosen"], choice["rope"]["chosen"]) == ("3e-3", "1e-2")
        assert not choice["baseline"]["edge"] and not choice["rope"]["edge"]
    assert sorted(opts(c)["learning_rate"] for c in calls(fake) if "--eval_set=tune" not in c) == ["1e-2", "1e-2", "3e-3", "3e-3"]
    n = len(calls(fake))
    r = study(fake, *args, "--no-report")   # the local command: nothing left (per size 6 + 2 + 3 tuning, 2 comparison)
    assert r.returncode == 0 and len(calls(fake)) == n and "26 of 26 runs already finished" in r.stderr


def test_submit_chains_each_array_to_the_one_before(fake, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path / 'sbatch.txt'}\n"
                                   f"echo $((100 + $(wc -l < {tmp_path / 'sbatch.txt'})))\";cluster\"\n")
    (bindir / "sbatch").chmod(0o755)
    fake["monkeypatch"].setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    r = study(fake, "--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--tune-max-extend", "2", "--submit",
              *STUDY_ARGS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["101", "102", "103", "104"]
    sub = [ln.split() for ln in (tmp_path / "sbatch.txt").read_text().splitlines()]
    assert [ln[0] for ln in sub] == ["--parsable"] * 4
    assert [next((a for a in ln if a.startswith("--dependency")), None) for ln in sub] == \
        [None, "--dependency=afterok:101", "--dependency=afterok:102", "--dependency=afterok:103"]
    assert [ln[ln.index("--stage") + 1] for ln in sub] == ["tune", "tune", "tune", "compare"]
    assert [ln[ln.index("--round") + 1] if "--round" in ln else None for ln in sub] == [None, "1", "2", None]
    assert "--tune-max-extend" in sub[0] and calls(fake) == []


def test_a_diverged_tuning_task_exits_0_so_afterok_still_releases_the_comparison(fake):
    args = ["--switches", "rope", "--tune", "learning_rate=1e-3,3e-3", "--tune-seeds", "1", "--tune-max-extend", "0",
            *STUDY_ARGS]
    r = study(fake, *args, "--task", "3", "--stage", "tune", extra_env={"FAKE_DIVERGE": '["rope|3e-3"]'})
    assert r.returncode == 0 and "DIVERGED" in r.stderr
    for t in range(3):
        assert study(fake, *args, "--task", str(t), "--stage", "tune").returncode == 0
    r = study(fake, *args, "--task", "1", "--stage", "compare")
    assert r.returncode == 0, r.stderr
    assert opts(calls(fake)[-1])["learning_rate"] == "1e-3" and opts(calls(fake)[-1])["use_rope"] == "True"
    rope = json.loads((fake["OUT"] / "choice.json").read_text())["by_experiment"]["rope"]
    assert (rope["noise"], rope["within_noise"]) == (None, None)      # one tuning seed: no noise estimate
