"""Tests of the speed and scale paths of train.py: DDP with torchrun (2 CPU processes, gloo) against one
process with the same global batch, resume of a distributed run, the document sharding, the fused loss,
the KV cache, MFU. Run with: python -m pytest -q test_speed.py"""

import json
import os
import socket
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from train import Config, GPT, UserError
from test_train import write_corpus

HERE = Path(__file__).resolve().parent
DDP_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=2, val_docs=2, eval_iters=1,
                eval_interval=1000, log_interval=1, ckpt_interval=1000, device="cpu", dtype="float32",
                dropout=0.0, learning_rate=3e-3, seed=7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.jsonl", 40)


def torchrun(nproc, corpus, out, **kw):
    args = {**DDP_ARGS, "data_path": str(corpus), "out_dir": str(out), **kw}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    env.pop("WORLD_SIZE", None)
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(HERE / "train.py"),
           *[f"--{k}={v}" for k, v in args.items()]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def reference_losses(corpus, steps, world=2):
    """One process, global batch = the batches of all ranks side by side: what DDP must reproduce."""
    cfg = Config(**{**DDP_ARGS, "data_path": str(corpus)})
    ds = train.JSONLDataset(train.resolve_data_paths(cfg.data_path))
    n_train, _, _ = train.split_validation(ds, cfg.val_docs)
    streams = [train.TrainStream(ds, n_train, cfg.seed, cfg.batch_size, cfg.block_size, rank=r, world_size=world)
               for r in range(world)]
    torch.manual_seed(cfg.seed)
    model = GPT(cfg)
    opt = model.configure_optimizer(cfg, "cpu")
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = train.get_lr(step, cfg, cfg.max_iters)
        batches = [s.next_batch() for s in streams]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch_and_resume(corpus, tmp_path):
    out = tmp_path / "ddp"
    r = torchrun(2, corpus, out, max_iters=2)
    assert "global batch 4 x 16" in r.stdout and r.stdout.count("model:") == 1  # rank 0 alone prints
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert len(ckpt["ranks"]) == 2  # each rank's own data position
    torchrun(2, corpus, out, max_iters=4, resume=True)  # continues each rank's own data stream
    rows = [json.loads(line) for line in open(out / "log.txt")]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["mfu"] > 0 for r in train_rows)
    got = [r["train_nll"] for r in train_rows]
    want = reference_losses(corpus, 4)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["tokens"] == 4 * 4 * 16 and results["tokens_per_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "log.txt", "results.json"]


def test_each_rank_takes_disjoint_documents_and_one_rank_keeps_the_order():
    n, seed = 103, 5
    def take(order, k):  # the first k documents of an endless order
        return list(islice((d for group in order for d in group), k))

    full = take(train.DocumentOrder(n, seed, group=16), n)
    assert full == train.np.random.default_rng([seed, 0]).permutation(n).tolist()
    shares = []
    for rank in range(3):
        shares.append(take(train.DocumentOrder(n, seed, group=16, rank=rank, world=3), len(range(rank, n, 3))))
        assert shares[-1] == full[rank::3]
    assert sorted(sum(shares, [])) == list(range(n))
    # a rank resuming at pos continues its own share
    later = take(train.DocumentOrder(n, seed, pos=5, rank=1, world=3), 3)
    assert later == full[1::3][5:8]


def test_distributed_misconfiguration_is_one_clear_error():
    with pytest.raises(UserError, match="torchrun"):
        train.Distributed({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(UserError, match="RANK=3"):
        train.Distributed({"WORLD_SIZE": "2", "RANK": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "x",
                           "MASTER_PORT": "1"})
    one = train.Distributed({})
    assert (one.world, one.rank, one.enabled, one.is_main) == (1, 0, False, True)
    assert one.agree(5) == 5 and one.first(None) is None and one.gather("a") == ["a"]


def test_resharding_a_checkpoint_for_another_world_size():
    one = train.Distributed({})
    ckpt = {"data": {"epoch": 0, "pos": 3}, "rng": {"torch": torch.get_rng_state()},
            "ranks": [{"data": {"epoch": 1, "pos": 10, "skipped": {}}, "rng": torch.get_rng_state()},
                      {"data": {"epoch": 1, "pos": 9, "skipped": {}}, "rng": torch.get_rng_state()}]}
    state = one.rank_state(ckpt, n_train=100, seed=0, data_state=ckpt["data"])
    assert state["epoch"] == 1 and state["pos"] == 18  # both ranks had reached 2 x 9 documents


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_loss_equals_cross_entropy_on_fp32_logits(dtype):
    torch.manual_seed(0)
    x0, w0 = torch.randn(64, 16), torch.randn(1000, 16) * 0.3
    t = torch.randint(0, 1000, (64,))
    grads = []
    for fused in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with train.autocast_context("cpu", dtype):
            loss = (train.linear_cross_entropy(x, w, t) if fused
                    else F.cross_entropy(F.linear(x, w).float(), t))
        loss.backward()
        grads.append((loss.detach(), x.grad, w.grad))
    (l0, gx0, gw0), (l1, gx1, gw1) = grads
    tol = 1e-6 if dtype == "float32" else 1e-2
    assert l1.dtype == torch.float32 and torch.allclose(l0, l1, rtol=1e-6)
    assert torch.allclose(gx0, gx1, rtol=tol, atol=tol * 1e-2) and torch.allclose(gw0, gw1, rtol=tol, atol=tol * 1e-2)
    with torch.no_grad():  # evaluation: the chunked loss-only path, mean and sum
        assert torch.allclose(train.linear_cross_entropy(x0, w0, t, "sum"),
                              F.cross_entropy(x0 @ w0.t(), t, reduction="sum"), rtol=1e-5)


@pytest.mark.parametrize("use_rope", [False, True])
def test_kv_cache_greedy_output_equals_no_cache_past_block_size(use_rope):
    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_head=2, n_embd=32, block_size=16, use_rope=use_rope), vocab_size=512).eval()
    with torch.no_grad():  # sharper weights: the next token depends on the whole window, not only the last one
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    idx = torch.randint(0, 512, (2, 5))
    cached = model.generate(idx, 40, temperature=0, use_cache=True)  # 45 tokens: the window slides
    plain = model.generate(idx, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


def test_mfu_ingredients():
    with torch.device("meta"):  # shapes only
        gpt2 = GPT(Config(n_layer=12, n_head=12, n_embd=768, block_size=1024))
    # nanoGPT's estimate: 6 N + 12 L T C with N = 124M parameters less the position table
    n = sum(p.numel() for p in gpt2.parameters()) - gpt2.wpe.weight.numel()
    assert train.flops_per_token(gpt2) == pytest.approx(6 * n + 12 * 12 * 1024 * 768, rel=1e-3)
    names = {"NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe", "NVIDIA H200": "H200",
             "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA L40S": "L40S", "NVIDIA L4": "L4", "NVIDIA A10": "A10",
             "Tesla V100-SXM2-32GB": "V100", "NVIDIA GeForce RTX 4090": "RTX 4090", "NVIDIA A10G": None}
    for name, label in names.items():
        hit = next((row[0] for row in train.GPU_PEAK_FLOPS if train.re.search(row[1], name)), None)
        assert hit == label, name
    peak, where = train.peak_flops("cpu", "float32")
    assert peak > 1e9 and "measured" in where
