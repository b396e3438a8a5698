"""End to end: tiny ablations through ablate.sh, train.py and plot.py (real training, CPU).

* the default design (one-at-a-time, every default switch), one seed;
* leave-one-out over two switches with 2 seeds (so the report tests the differences paired on seed), and
  factorial over two switches, one of them a value switch (--switch n_layer=2);
* a throwaway switch added to a copy of the repo (one config line + one `if` in the model, nothing
  else edited): train.py lists it, ablate.sh runs it and sizes the job array for it, the report has
  a row for it, and a resume with it flipped is refused with the named error.

The ablations run in two lanes at once (two single-threaded processes: one per core of a 2-core
machine); the file takes about a minute there.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import plot
from test_train import write_corpus

HERE = Path(__file__).resolve().parent
TINY_ARGS = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--max_iters=10",
             "--val_docs=4", "--eval_interval=5", "--eval_iters=1", "--log_interval=5", "--warmup_iters=2",
             "--ckpt_interval=10", "--device=cpu", "--dtype=float32"]
DEFAULT = [e["name"] for e in plot.make_design()["experiments"]]   # what the registry makes today


def train_fields():
    import dataclasses
    import train
    return dataclasses.fields(train.Config)


def run(args, cwd=HERE, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ablate(out, corpus, *extra, seeds=1, cwd=HERE):
    return run(["bash", "ablate.sh", "--seeds", str(seeds), "--out", str(out), *extra,
                f"--data_path={corpus}", *TINY_ARGS], cwd=cwd)


def add_throwaway_switch(repo):
    """A copy of the repo with one new switch: its config entry and its `if` in the model, nothing else."""
    for p in HERE.glob("*.py"):
        shutil.copy(p, repo / p.name)
    shutil.copy(HERE / "ablate.sh", repo / "ablate.sh")
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
    """Every ablation of this file, in two concurrent lanes; {name: CompletedProcess or value}."""
    tmp = tmp_path_factory.mktemp("ablate")
    corpus = write_corpus(tmp / "corpus.jsonl", 40)
    repo = tmp / "repo"
    repo.mkdir()
    add_throwaway_switch(repo)
    out = {k: tmp / k for k in ["default", "loo", "factorial", "throwaway"]}
    results = {"out": out, "corpus": corpus, "repo": repo}
    a = [("default", lambda: ablate(out["default"], corpus)),
         ("factorial", lambda: ablate(out["factorial"], corpus, "--design", "factorial",
                                      "--switches", "rope", "--switch", "n_layer=2"))]
    b = [("loo", lambda: ablate(out["loo"], corpus, "--design", "leave-one-out", "--switches", "swiglu,rope",
                                seeds=2)),
         ("list", lambda: run([sys.executable, "train.py", "--list-switches"], cwd=repo)),
         ("slurm", lambda: ablate(out["throwaway"], corpus, "--print-slurm", seeds=2, cwd=repo)),
         ("throwaway", lambda: ablate(out["throwaway"], corpus, "--switches", "throwaway", cwd=repo)),
         ("flipped", lambda: run([sys.executable, "train.py", f"--data_path={corpus}", *TINY_ARGS, "--seed=1",
                                  f"--out_dir={out['throwaway']}/throwaway/seed1", "--use_throwaway=False",
                                  "--resume=True"], cwd=repo))]
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


# --------------------------------------------------------------------------- the default design
def configs(out, names, seeds=(1,)):
    return {(e, s): json.loads((out / e / f"seed{s}" / "results.json").read_text()) for e in names for s in seeds}


def switches_on(cfg, design):
    return {s["name"] for s in design["switches"] if cfg[s["key"]]}


def test_default_design_runs_share_everything_but_the_switches(ablations):
    out = finished(ablations, "default")
    assert DEFAULT[0] == "baseline" and DEFAULT[-1] == "all" and len(DEFAULT) >= 3
    design = json.loads((out / "design.json").read_text())
    assert [e["name"] for e in design["experiments"]] == DEFAULT and design["design"] == "one-at-a-time"
    every = [f.name for f in train_fields() if f.metadata.get("switch")]   # all registered, set in every run
    names = {s["name"] for s in design["switches"]}
    for (e, s), r in configs(out, DEFAULT).items():
        cfg = r["config"]
        assert cfg["seed"] == 1 and r["steps"] == 10 and r["tokens"] == 10 * 2 * 32
        assert switches_on(cfg, design) == ({e} if e not in ("baseline", "all") else names if e == "all" else set())
        base = configs(out, ["baseline"])[("baseline", 1)]["config"]
        assert {k for k in cfg if cfg[k] != base[k]} - set(every) - {"out_dir"} == set()


def test_default_report_has_a_row_per_experiment_and_one_page(ablations):
    out = finished(ablations, "default")
    assert (out / "report.png").stat().st_size > 1000
    assert plot.count_pdf_pages(out / "report.pdf") == 1
    md, rows = report_rows(out, DEFAULT)
    assert all(len(r) >= 1 for r in rows.values()), rows
    assert "one-at-a-time" in md


def test_rerun_skips_finished_runs(ablations):
    out = finished(ablations, "default")
    before = (out / "baseline" / "seed1" / "results.json").stat().st_mtime_ns
    r = ablate(out, ablations["corpus"], "--no-report")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("ablate.sh: skip ") == len(DEFAULT)
    assert (out / "baseline" / "seed1" / "results.json").stat().st_mtime_ns == before


# --------------------------------------------------------------------------- other designs
def test_leave_one_out_end_to_end_with_two_seeds(ablations):
    out = finished(ablations, "loo")
    names = ["all", "no_swiglu", "no_rope"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    design = json.loads((out / "design.json").read_text())
    assert design["design"] == "leave-one-out" and [e["name"] for e in design["experiments"]] == names
    runs = configs(out, names, seeds=(1, 2))
    for (name, seed), r in runs.items():
        cfg = r["config"]
        assert cfg["seed"] == seed
        assert switches_on(cfg, design) == {"all": {"swiglu", "rope"}, "no_swiglu": {"rope"},
                                            "no_rope": {"swiglu"}}[name]
        ref = runs[("all", 1)]["config"]          # everything else is shared
        assert {k for k in cfg if cfg[k] != ref[k]} - {"use_swiglu", "use_rope", "seed", "out_dir"} == set()
    assert plot.count_pdf_pages(out / "report.pdf") == 1
    md, rows = report_rows(out, names)
    assert "leave-one-out" in md and all(rows.values()), md
    for name in ["no_swiglu", "no_rope"]:          # paired on seed against all: a test, not "1 seed"
        assert "no test possible" not in rows[name][0], rows[name]


def test_factorial_with_a_value_switch_end_to_end(ablations):
    out = finished(ablations, "factorial")
    names = ["baseline", "rope", "n_layer=2", "all"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    design = json.loads((out / "design.json").read_text())
    assert design["design"] == "factorial" and [e["name"] for e in design["experiments"]] == names
    for (name, _), r in configs(out, names).items():
        cfg = r["config"]
        assert cfg["use_rope"] == (name in ("rope", "all")), name
        assert cfg["n_layer"] == (2 if name in ("n_layer=2", "all") else 1), name   # off: the user's value
    params = {name: configs(out, [name])[(name, 1)]["params"] for name in names}
    total = {k: p["total"] if isinstance(p, dict) else p for k, p in params.items()}
    assert total["n_layer=2"] > total["baseline"]
    assert plot.count_pdf_pages(out / "report.pdf") == 1
    md, rows = report_rows(out, names)
    assert "factorial" in md and all(rows.values()), md


# --------------------------------------------------------------------------- a new switch, in one place
def test_throwaway_switch_is_listed_by_train_py(ablations):
    r = ablations["list"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("throwaway\tuse_throwaway\tshape\tdefault\t") for line in lines), lines
    assert len(lines) == len(plot.registered_switches()) + 1


def test_throwaway_switch_gets_its_experiment_and_array_slots(ablations):
    out = ablations["out"]["throwaway"]
    slurm = ablations["slurm"]
    assert slurm.returncode == 0, slurm.stderr
    n = len(DEFAULT) + 1                                               # one experiment more
    assert slurm.stdout.startswith(f"sbatch --array=0-{2 * n - 1} slurm/ablate.sbatch ")
    tasks = [line for line in slurm.stdout.splitlines() if line.startswith("# task ")]
    assert len(tasks) == 2 * n
    assert all("--use_throwaway=" in line for line in tasks)           # set explicitly in every run
    mine = [line for line in tasks if f"--out_dir={out}/throwaway/seed" in line]
    assert len(mine) == 2 and all("--use_throwaway=True" in line for line in mine)


def test_throwaway_switch_gets_a_report_row(ablations):
    out = finished(ablations, "throwaway")
    base = json.loads((out / "baseline" / "seed1" / "results.json").read_text())
    thrown = json.loads((out / "throwaway" / "seed1" / "results.json").read_text())
    assert thrown["config"]["use_throwaway"] is True and base["config"]["use_throwaway"] is False
    total = lambda p: p["total"] if isinstance(p, dict) else p
    assert total(thrown["params"]) > total(base["params"])           # the branch acted
    md, rows = report_rows(out, ["baseline", "throwaway"])
    assert rows["throwaway"], md


def test_throwaway_switch_flipped_on_resume_is_refused(ablations):
    finished(ablations, "throwaway")
    r = ablations["flipped"]
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(r"checkpoint \S+ckpt\.pt has use_throwaway=True but the config says use_throwaway=False",
                     err[0]), err
