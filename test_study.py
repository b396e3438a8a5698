"""Tests of studies (issue 16, the running side): train.py's tuning set, and ablate.py's stages, sizes,
budgets, resume, --jobs and job arrays.

* train.py: the tuning documents are held out from training and disjoint from the validation set;
  tune_docs=0 changes nothing; eval_set=tune evaluates on them without changing the training.
* ablate.py with a fake train.py (PYTHON points at a fake interpreter that writes results.json from a
  known function of the learning rate, so a study runs in a second or two): the layout, the choice per
  arm (mean over tuning seeds, a diverged value skipped, the edge warning), tuning seeds never the
  comparison seeds, per-size budgets, resume, a different study refused, --jobs, --task.
* one real tiny study end to end (real train.py, both stages, two sizes).
"""

import json
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import train
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
