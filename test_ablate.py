"""End to end: a tiny seven-experiment ablation with 2 seeds through ablate.sh, train.py and plot.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plot
from test_train import write_corpus

HERE = Path(__file__).resolve().parent
EXPERIMENTS = ["baseline", "swiglu", "rope", "warmup", "cosine", "rmsnorm", "all"]
TINY_ARGS = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=6",
             "--val_docs=4", "--eval_interval=3", "--eval_iters=1", "--log_interval=3", "--warmup_iters=2",
             "--device=cpu", "--dtype=float32"]


def ablate(out, corpus, *extra):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "ablate.sh", "--seeds", "2", "--out", str(out), *extra,
                           f"--data_path={corpus}", *TINY_ARGS], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    corpus = write_corpus(tmp / "corpus.jsonl", 40)
    out = tmp / "abl"
    r = ablate(out, corpus)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, corpus


def test_fourteen_runs_share_everything_but_switch_and_seed(ablation):
    out, _ = ablation
    results = {(e, s): json.loads((out / e / f"seed{s}" / "results.json").read_text())
               for e in EXPERIMENTS for s in (1, 2)}
    assert len(results) == 14
    switches = ["use_swiglu", "use_rope", "use_rmsnorm", "use_warmup", "use_cosine"]
    for (e, s), r in results.items():
        cfg = r["config"]
        assert cfg["seed"] == s and r["steps"] == 6 and r["tokens"] == 6 * 4 * 32
        on = {k for k in switches if cfg[k]}
        assert on == ({f"use_{e}"} if e not in ("baseline", "all") else set(switches) if e == "all" else set())
        base = results[("baseline", s)]["config"]
        differing = {k for k in cfg if cfg[k] != base[k]} - set(switches) - {"out_dir"}
        assert differing == set()


def test_report_has_a_seven_row_table_and_one_page(ablation):
    out, _ = ablation
    assert (out / "report.png").stat().st_size > 1000
    assert plot.count_pdf_pages(out / "report.pdf") == 1
    md = (out / "report.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("|") and any(f"| {e} " in l for e in EXPERIMENTS)]
    assert len(rows) == 7
    assert "noise" in md


def test_rerun_skips_finished_runs(ablation):
    out, corpus = ablation
    before = (out / "baseline" / "seed1" / "results.json").stat().st_mtime_ns
    r = ablate(out, corpus, "--no-report")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skip") + r.stderr.count("skip") >= 14
    assert (out / "baseline" / "seed1" / "results.json").stat().st_mtime_ns == before
