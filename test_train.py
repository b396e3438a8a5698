"""Tests of train.py: config, switches against their formulas, data, training, resume, sample.py, plot.py.
Run with: python -m pytest -q"""

import json
import re
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train
from train import Config, GPT, UserError

HERE = Path(__file__).resolve().parent
SWITCHES = list(train.SWITCHES.values())  # every registered switch: use_swiglu, use_rope, ...
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, val_docs=10, eval_iters=2,
            eval_interval=10, log_interval=5, ckpt_interval=10, device="cpu", dtype="float32",
            learning_rate=3e-3, min_lr=3e-4, warmup_iters=4)

WORDS = ("the model learns which word follows another in a small corpus of plain sentences about "
         "cats dogs trees rivers and the weather on a sunny or rainy day").split()


def write_corpus(path, n_docs=120, seed=0):
    """Pile-format JSONL of simple sentences: learnable in a few dozen steps."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 80))]
            f.write(json.dumps({"text": " ".join(words) + ".", "meta": {"pile_set_name": "Synthetic"}}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.jsonl")


def tiny(tmp_path, corpus, **kw):
    return Config(**{**TINY, "data_path": str(corpus), "out_dir": str(tmp_path / "out"), **kw})


# -----------------------------------------------------------------------------
# configuration

def test_config_files_and_overrides_apply_left_to_right(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("n_layer = 3\nlearning_rate = 1  # an int where a float is expected\nuse_rope = True\n")
    cfg = train.parse_args([str(f), "--n_layer=5", "--use_rmsnorm=true", "--use_rope=0", "--use_swiglu"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.use_rope, cfg.use_rmsnorm, cfg.use_swiglu) == (5, 1.0, False, True, True)
    assert isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize("argv, message", [
    (["--n_layr=3"], "unknown config key 'n_layr' in the command line (did you mean n_layer?)"),
    (["--n_layer=3.5"], "n_layer in the command line expects int, got '3.5'"),
    (["--use_rope=yes"], "use_rope in the command line expects bool, got 'yes'"),
    (["--learning_rate=fast"], "learning_rate in the command line expects float, got 'fast'"),
    (["--max_time=soon"], "max_time expects a duration like 4h, 30m, 90s or 1h30m, got 'soon'"),
    (["config/nope.py"], "config file not found: config/nope.py"),
    (["--n_embd=30", "--n_head=4"], "n_embd (30) must be divisible by n_head (4)"),
])
def test_config_errors_are_one_line(argv, message, capsys):
    assert train.main(argv) == train.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


def test_unknown_key_in_config_file_is_named(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("learning_rat = 1e-3\n")
    with pytest.raises(UserError, match=f"unknown config key 'learning_rat' in config file {f} "
                                        r"\(did you mean learning_rate\?\)"):
        train.parse_args([str(f)])
    f.write_text("n_layer = 'four'\n")
    with pytest.raises(UserError, match="n_layer in config file .* expects int, got 'four'"):
        train.parse_args([str(f)])


def test_help_lists_every_key_with_default(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, f in train.CONFIG_FIELDS.items():
        assert f"--{name}={f.default!r}" in out


def test_shipped_configs_parse():
    for f in sorted((HERE / "config").glob("*.py")):
        train.parse_args([str(f)])


def test_parse_duration():
    assert train.parse_duration("4h") == 4 * 3600
    assert train.parse_duration("1h30m") == 5400
    assert train.parse_duration("90s") == train.parse_duration("90") == 90
    assert train.parse_duration("") is None


# -----------------------------------------------------------------------------
# the switches against their formulas

def modules(cfg):
    return {name: type(m).__name__ for name, m in GPT(cfg, vocab_size=V).named_modules()}


V = 1000  # a small vocabulary keeps these model tests fast


def test_each_switch_changes_exactly_its_modules_and_params():
    base_cfg = Config(n_layer=2, n_head=4, n_embd=48, block_size=64)
    base, C, L, T = GPT(base_cfg, vocab_size=V), 48, 2, 64
    counts = base.num_params()
    # baseline: wte, wpe, per block 2 LayerNorms (w+b), attention, GELU MLP; final LayerNorm; tied head
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert counts["total"] == V * C + T * C + L * per_block + 2 * C
    assert counts["non_embedding"] == L * per_block + 2 * C
    assert base.lm_head.weight is base.wte.weight

    h = train.swiglu_hidden(C)
    expected_delta = {
        "use_swiglu": L * ((3 * C * h + 2 * h + C) - (8 * C * C + 4 * C + C)),
        "use_rope": -T * C,  # no position table
        "use_rmsnorm": -(2 * L + 1) * C,  # no biases in the norms
        "use_warmup": 0, "use_cosine": 0,
        "use_qknorm": L * 2 * (C // 4),  # a gain per head dimension, for q and for k
    }
    assert set(expected_delta) == set(SWITCHES), "a new switch needs its expected parameter change here"
    base_modules = modules(base_cfg)
    for switch, delta in expected_delta.items():
        cfg = Config(n_layer=2, n_head=4, n_embd=48, block_size=64, **{switch: True})
        assert GPT(cfg, vocab_size=V).num_params()["total"] - counts["total"] == delta, switch
        changed = {k for k in set(base_modules) | set(modules(cfg)) if base_modules.get(k) != modules(cfg).get(k)}
        if switch == "use_swiglu":
            assert changed == {f"h.{i}.mlp.c_up" for i in range(L)}
        elif switch == "use_rope":
            assert changed == {"wpe"}
        elif switch == "use_qknorm":
            assert changed == {f"h.{i}.attn.{n}_norm" for i in range(L) for n in "qk"}
        elif switch == "use_rmsnorm":
            assert changed == {f"h.{i}.ln_{j}" for i in range(L) for j in (1, 2)} | {"ln_f"}
            assert all(type(m) is nn.RMSNorm for n, m in GPT(cfg, V).named_modules() if "ln" in n)
        else:
            assert changed == set()


def test_swiglu_hidden_is_param_matched():
    assert train.swiglu_hidden(768) == 2048  # Shazeer 2020
    for d in (64, 256, 512, 1024):
        h = train.swiglu_hidden(d)
        assert h % 8 == 0 and abs(3 * h * d - 8 * d * d) / (8 * d * d) < 0.03


def test_swiglu_matches_formula():
    cfg = Config(n_embd=16, n_head=2, use_swiglu=True, bias=False)
    mlp = train.MLP(cfg)
    x = torch.randn(3, 5, 16)
    gate, up, down = mlp.c_fc.weight, mlp.c_up.weight, mlp.c_proj.weight
    expected = (F.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(mlp(x), expected)


def test_residual_projection_init_is_scaled_for_both_mlps():
    for swiglu in (False, True):
        torch.manual_seed(0)
        model = GPT(Config(n_layer=8, n_head=4, n_embd=256, use_swiglu=swiglu), vocab_size=V)
        std = model.h[0].mlp.c_proj.weight.std().item()
        assert abs(std - 0.02 / math.sqrt(16)) < 0.0005
        assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.0005


def test_rmsnorm_matches_formula():
    cfg = Config(n_embd=16, use_rmsnorm=True)
    norm = train.make_norm(cfg)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(4, 16) * 3 + 1
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert not any("bias" in n for n, _ in norm.named_parameters())


def test_norm_weights_and_biases_are_not_decayed():
    for rms in (False, True):
        model = GPT(Config(n_layer=1, n_head=2, n_embd=16, use_rmsnorm=rms), vocab_size=V)
        opt = model.configure_optimizer(Config(), "cpu")
        no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        for name, p in model.named_parameters():
            assert (id(p) in no_decay) == (name.startswith("ln") or ".ln_" in name or name.endswith("bias")), name


def test_rope_scores_depend_only_on_relative_position():
    hs = 16
    cos, sin = train.rope_tables(hs, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(m, n):
        qm = train.apply_rope(q, cos[m:m + 1], sin[m:m + 1])
        kn = train.apply_rope(k, cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    assert score(5, 3) == pytest.approx(score(45, 43), abs=1e-4)
    assert score(10, 0) == pytest.approx(score(60, 50), abs=1e-4)
    assert score(5, 3) != pytest.approx(score(5, 4), abs=1e-3)
    # a rotation: norms are kept; position 0 is the identity
    assert train.apply_rope(q, cos[7:8], sin[7:8]).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    torch.testing.assert_close(train.apply_rope(q, cos[:1], sin[:1]), q)


def test_rope_rotates_q_and_k_but_not_v():
    cfg = Config(n_layer=1, n_head=2, n_embd=16, block_size=8, use_rope=True)
    model = GPT(cfg, vocab_size=V)
    assert not hasattr(model, "wpe")
    assert "rope_cos" not in model.state_dict()  # non-persistent buffers
    # with q and k zeroed, attention is uniform over the causal past whatever the rotation: v unrotated
    attn = model.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight[:32].zero_()
        attn.c_attn.bias.zero_()
    x = torch.randn(1, 8, 16)
    rope = (model.rope_cos, model.rope_sin)
    v = attn.c_attn(x)[..., 32:].view(1, 8, 2, 8).transpose(1, 2)
    expected = torch.cumsum(v, dim=2) / torch.arange(1, 9).view(1, 1, 8, 1)
    expected = attn.c_proj(expected.transpose(1, 2).reshape(1, 8, 16))
    torch.testing.assert_close(attn(x, rope), expected)


def test_qknorm_gives_q_and_k_of_each_head_unit_rms(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q, k, v))
        return real(q, k, v, **kw)

    monkeypatch.setattr(train.F, "scaled_dot_product_attention", spy)
    x = torch.randint(0, V, (2, 8))
    for use_qknorm in (False, True):
        cfg = Config(n_layer=1, n_head=2, n_embd=16, block_size=8, use_qknorm=use_qknorm, use_rope=True)
        GPT(cfg, vocab_size=V)(x)
        q, k, v = seen.pop()
        rms = lambda t: t.pow(2).mean(-1).sqrt()  # per head and position: (B, nh, T)
        for t, normalized in ((q, use_qknorm), (k, use_qknorm), (v, False)):
            ones = torch.ones_like(rms(t))
            assert torch.allclose(rms(t), ones, atol=1e-2) == normalized  # gains start at 1; RoPE keeps norms


def test_get_lr_at_chosen_points():
    cfg = Config(learning_rate=1.0, min_lr=0.1, warmup_iters=10)
    assert train.get_lr(0, cfg, 100) == 1.0 and train.get_lr(99, cfg, 100) == 1.0  # constant baseline
    w = Config(learning_rate=1.0, min_lr=0.1, warmup_iters=10, use_warmup=True)
    assert train.get_lr(0, w, 100) == pytest.approx(0.1)  # > 0 at the first step
    assert train.get_lr(9, w, 100) == pytest.approx(1.0)  # warmup end
    assert train.get_lr(50, w, 100) == 1.0  # warmup alone: constant afterwards
    c = Config(learning_rate=1.0, min_lr=0.1, warmup_iters=10, use_cosine=True)
    assert train.get_lr(0, c, 100) == pytest.approx(1.0)  # no hidden warmup
    assert train.get_lr(50, c, 100) == pytest.approx(0.55)  # middle: halfway between lr and min_lr
    assert train.get_lr(100, c, 100) == pytest.approx(0.1)  # end
    assert train.get_lr(150, c, 100) == pytest.approx(0.1)  # clamped after the end
    both = Config(learning_rate=1.0, min_lr=0.1, warmup_iters=10, use_cosine=True, use_warmup=True)
    assert train.get_lr(4, both, 110) == pytest.approx(0.5)
    assert train.get_lr(10, both, 110) == pytest.approx(1.0)  # decay starts after the warmup
    assert train.get_lr(60, both, 110) == pytest.approx(0.55)
    assert train.get_lr(110, both, 110) == pytest.approx(0.1)


@pytest.mark.parametrize("switches", [[]] + [[s] for s in SWITCHES] + [SWITCHES])
def test_every_switch_combination_trains(switches):
    cfg = Config(**{**TINY, **{s: True for s in switches}})
    torch.manual_seed(0)
    model = GPT(cfg, vocab_size=V)
    opt = model.configure_optimizer(cfg, "cpu")
    x = torch.randint(0, V, (4, 32))
    losses = []
    for step in range(8):
        for g in opt.param_groups:
            g["lr"] = train.get_lr(step, cfg, 8)
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("use_rope", [False, True])
def test_kv_cache_generation_equals_full_recompute(use_rope):
    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_head=2, n_embd=32, block_size=16, use_rope=use_rope), vocab_size=V).eval()
    idx = torch.randint(0, V, (2, 5))
    a = model.generate(idx, 30, temperature=0, use_cache=True)  # runs past block_size
    b = model.generate(idx, 30, temperature=0, use_cache=False)
    assert torch.equal(a, b)


# -----------------------------------------------------------------------------
# tokenizer and data

def test_offline_tokenizer_is_gpt2():
    enc = train.get_tokenizer()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.n_vocab == 50257 and enc.eot_token == train.EOT
    assert train.tokenize("<|endoftext|>")[:-1].tolist() != [train.EOT]  # text, not a control token


def test_index_finds_every_line_and_bad_lines_are_counted(tmp_path):
    f = tmp_path / "mixed.jsonl"
    lines = [b'\xef\xbb\xbf{"text": "first document"}', b'{"text": "crlf line"}\r', b"",
             b"not json", b"[1, 2]", b'{"meta": {}}', b'{"text": 5}', b'{"text": "  "}',
             b'{"text": "bad \xff byte"}', b'{"text": "ok ' + b"x" * 50 + b'"}', b'{"text": "last, no newline"}']
    f.write_bytes(b"\n".join(lines))
    ds = train.JSONLDataset([f])
    assert len(ds) == len(lines)
    assert [ds.read_line(i).rstrip(b"\r\n") for i in range(len(ds))] == [l.rstrip(b"\r") for l in lines]
    reasons = [ds[i][1] for i in range(len(ds))]
    assert reasons == ["", "", "blank", "bad_json", "not_object", "no_text", "no_text", "too_short",
                       "not_utf8", "", ""]
    n_train, val_texts, _ = train.split_validation(ds, 2)
    assert val_texts == ["ok " + "x" * 50, "last, no newline"] and n_train == 9
    stream = train.TrainStream(ds, n_train, seed=0, batch_size=1, block_size=4)
    for _ in range(3):
        stream.next_batch()
    assert stream.skipped == {"blank": 1, "bad_json": 1, "not_object": 1, "no_text": 2, "too_short": 1,
                              "not_utf8": 1}


def test_index_is_cached_and_rebuilt_when_the_file_changes(tmp_path):
    f = write_corpus(tmp_path / "c.jsonl", 5)
    idx = train.load_line_index(f)
    cached = list(tmp_path.glob(".c.jsonl.*.idx.npy"))
    assert len(cached) == 1 and len(idx) == 6
    with open(f, "a") as out:
        out.write('{"text": "one more"}\n')
    assert len(train.load_line_index(f)) == 7
    assert len(list(tmp_path.glob(".c.jsonl.*.idx.npy"))) == 1  # the stale index is gone


def test_split_sizes_and_errors(tmp_path, corpus):
    ds = train.JSONLDataset([corpus])
    n_train, val_texts, _ = train.split_validation(ds, 15)
    assert n_train == 105 and len(val_texts) == 15
    assert val_texts[-1] == ds.document(119)[0]
    with pytest.raises(UserError, match="val_docs=500 but the data has only 120 usable documents"):
        train.split_validation(ds, 500)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="data file is empty"):
        train.JSONLDataset([empty])
    with pytest.raises(UserError, match="data file not found"):
        train.resolve_data_paths(str(tmp_path / "missing.jsonl"))


def stream_batches(corpus, n, **kw):
    ds = train.JSONLDataset([corpus])
    n_train = train.split_validation(ds, 10)[0]
    stream = train.TrainStream(ds, n_train, seed=3, batch_size=kw.pop("batch_size", 3),
                               block_size=kw.pop("block_size", 16), **kw)
    batches = [stream.next_batch() for _ in range(n)]
    stream.close()
    return ds, n_train, stream, batches


def test_per_row_streams_drop_and_pad_nothing(corpus):
    ds, n_train, stream, batches = stream_batches(corpus, 40, shuffle_tokens=0)
    assert all(b[0].shape == (3, 16) for b in batches)
    # the spec: documents in the seeded order, each to the row with the fewest tokens waiting (first of
    # equals), every row a stream of its own whose last target is its next first input
    order = np.random.default_rng([3, 0]).permutation(n_train)
    rows, waiting, docs = [[], [], []], [0, 0, 0], iter(order)
    for _ in range(40):
        while min(waiting) < 17:
            tokens = ds[int(next(docs))][0]
            r = int(np.argmin(waiting))
            rows[r].append(tokens)
            waiting[r] += len(tokens)
        waiting = [w - 16 for w in waiting]
    for r in range(3):
        x = torch.cat([b[0][r] for b in batches])
        y = torch.cat([b[1][r] for b in batches])
        assert torch.equal(x[1:], y[:-1])  # every target is the next input: no gap, no padding
        expected = np.concatenate(rows[r])[:len(x) + 1].astype(np.int64)
        assert torch.equal(x, torch.from_numpy(expected[:-1])) and torch.equal(y, torch.from_numpy(expected[1:]))
    first_rows = [b[0][:, 0] for b in batches[:1]][0]
    assert len(set(first_rows.tolist())) == 3  # the rows of a batch start in different documents


def test_batch_size_one_with_shuffle_tokens_0_is_one_stream(corpus):
    ds, n_train, _, batches = stream_batches(corpus, 30, batch_size=1, shuffle_tokens=0)
    x = torch.cat([b[0].reshape(-1) for b in batches])
    order = np.random.default_rng([3, 0]).permutation(n_train)
    expected = np.concatenate([ds[int(i)][0] for i in order])[:len(x)]
    assert torch.equal(x, torch.from_numpy(expected.astype(np.int64)))


def test_order_is_the_same_for_any_worker_count_and_epoch_reshuffles(corpus):
    # the spec: one stream (batch_size 1) is the documents of epoch e in the seeded order
    # permutation([3, e]), epoch after epoch, whatever the number of workers tokenizing them
    ds = train.JSONLDataset([corpus])
    n_train = train.split_validation(ds, 10)[0]
    orders = [np.random.default_rng([3, epoch]).permutation(n_train) for epoch in range(3)]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    epoch_tokens = [np.concatenate([ds[int(i)][0] for i in order]) for order in orders]
    expected = torch.from_numpy(np.concatenate(epoch_tokens).astype(np.int64))
    n = (len(epoch_tokens[0]) + len(epoch_tokens[1])) // 32 + 8  # into the third epoch
    for workers in (0, 2):
        _, _, stream, batches = stream_batches(corpus, n, batch_size=1, block_size=32, num_workers=workers,
                                               shuffle_tokens=0)
        assert stream.epoch == 2, workers
        x = torch.cat([b[0].reshape(-1) for b in batches])
        assert torch.equal(x, expected[:len(x)]), f"{workers} workers: not the documents of each epoch in its order"


@pytest.mark.parametrize("shuffle_tokens", [0, 16 * 40])
def test_stream_resumes_from_its_state(corpus, shuffle_tokens):
    ds, n_train, _, full = stream_batches(corpus, 30, shuffle_tokens=shuffle_tokens)
    _, _, first, part = stream_batches(corpus, 12, shuffle_tokens=shuffle_tokens)
    state = first.state_dict()
    resumed = train.TrainStream(ds, n_train, seed=3, batch_size=3, block_size=16, state=state,
                                shuffle_tokens=shuffle_tokens, num_workers=1)
    rest = [resumed.next_batch() for _ in range(18)]
    resumed.close()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, part + rest))
    if shuffle_tokens:  # the buffer is part of the state: without it the resumed order differs
        del state["buffer"], state["buffer_docs"]
        lost = train.TrainStream(ds, n_train, seed=3, batch_size=3, block_size=16, state=state,
                                 shuffle_tokens=shuffle_tokens)
        assert not torch.equal(torch.cat([lost.next_batch()[0] for _ in range(3)]),
                               torch.cat([b[0] for b in full[12:15]]))


def window_rows(batches):
    """The windows (block_size+1 tokens) of batches, as tuples: x with y's last token."""
    return [tuple(x.tolist()) + (int(y[-1]),) for b in batches for x, y in zip(*b)]


def test_shuffled_order_draws_every_window_of_the_stream_once_and_out_of_order(corpus):
    # the spec: the documents in the seeded order, epoch after epoch, as one stream cut into windows of
    # block_size+1 tokens overlapping by one; the windows drawn plus those still in the buffer are exactly
    # the stream's first windows (nothing dropped or repeated), drawn in another order
    ds, n_train, stream, batches = stream_batches(corpus, 60, shuffle_tokens=16 * 50)
    tokens = np.concatenate([ds[int(i)][0] for e in range(3) for i in np.random.default_rng([3, e]).permutation(n_train)])
    n_cut = 60 * 3 + stream.buffer.count
    stream_windows = [tuple(tokens[i * 16:i * 16 + 17].tolist()) for i in range(n_cut)]
    drawn = window_rows(batches)
    assert sorted(drawn + [tuple(w.tolist()) for w in stream.buffer.windows[:stream.buffer.count]]) == sorted(stream_windows)
    assert stream.buffer.count == 50 - 3  # shuffle_tokens / block_size windows, less the last batch drawn
    assert sum(a == b for a, b in zip(drawn, stream_windows)) < 10, "windows come out in the stream's order"


def test_shuffled_batches_rarely_share_a_document_with_the_step_before(corpus):
    # the old per-row streams stay in a document for several steps; the shuffle buffer (here one epoch,
    # its cap on a small corpus) mixes: measured and expected, per row and per 50 steps
    mixing = {}
    for shuffle_tokens in (0, 1 << 20):
        _, _, stream, _ = stream_batches(corpus, 150, batch_size=4, shuffle_tokens=shuffle_tokens)
        mixing[shuffle_tokens] = stream.mixing()
        assert stream.mixing()["steps"] == 150
    streams, shuffled = mixing[0], mixing[1 << 20]
    assert streams["doc_repeat"] > 0.5 and shuffled["doc_repeat"] < 0.1, mixing
    assert shuffled["docs_per_50_steps"] > 1.4 * streams["docs_per_50_steps"], mixing  # (of 110 documents)
    ds, n_train, stream, _ = stream_batches(corpus, 0, batch_size=4)
    expected = stream.expected_mixing()  # the buffer holds one epoch: every training document
    assert expected["buffer_docs"] == n_train - 0 and expected["doc_repeat"] < 0.05
    assert expected["doc_repeat"] == pytest.approx(shuffled["doc_repeat"], abs=0.03)


def test_a_large_buffer_fills_gradually_and_never_past_one_epoch(corpus, monkeypatch):
    ds = train.JSONLDataset([corpus])
    n_train = train.split_validation(ds, 10)[0]
    monkeypatch.setattr(train, "FIRST_FILL", 16 * 20)  # as if the corpus were large: 20 windows before step 1
    stream = train.TrainStream(ds, n_train, seed=3, batch_size=2, block_size=16, shuffle_tokens=1 << 20)
    counts = []
    for _ in range(30):
        stream.next_batch()
        counts.append(stream.buffer.count + 2)  # the buffer before this batch's draw
    assert counts[0] == 20 and all(b - a <= 4 * 2 for a, b in zip(counts, counts[1:])) and counts[-1] > 100
    # on and on: the buffer stops growing at one epoch of documents (no document twice in it)
    for _ in range(300):
        stream.next_batch()
    docs = stream.buffer.docs[:stream.buffer.count]
    assert docs.max() - docs.min() < n_train and len(np.unique(docs % n_train)) == len(np.unique(docs))
    stream.close()


def test_every_arm_of_a_seed_trains_on_the_same_windows(tmp_path, corpus, monkeypatch):
    # common random numbers: the switches, the evaluation settings and the worker count leave the batches alone
    seen = {}

    def record(run, optimizer, scaler, x, y):
        seen.setdefault(run.cfg.out_dir, []).append(x.clone())
        return torch.zeros(())

    monkeypatch.setattr(train, "train_step", record)
    monkeypatch.setattr(train, "evaluate", lambda *a, **kw: (1.0, 1.0, 0.1))
    arms = [{}, {"use_rope": True, "use_swiglu": True, "eval_interval": 3}, {"use_rmsnorm": True, "num_workers": 1}]
    for i, arm in enumerate(arms):
        train.train(tiny(tmp_path / str(i), corpus, max_iters=12, **arm))
    batches = list(seen.values())
    assert len(batches) == 3 and all(torch.equal(torch.stack(b), torch.stack(batches[0])) for b in batches)


def test_demo_corpus_is_pile_format(tmp_path):
    path = train.build_demo_corpus(tmp_path / "demo.jsonl")
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(rows) > 500
    assert {r["meta"]["pile_set_name"] for r in rows} == {"PythonHelpTopics", "PythonModule"}
    assert all(isinstance(r["text"], str) and r["text"] for r in rows)
    titles = [r["meta"]["title"] for r in rows]
    assert len(titles) == len(set(titles))
    # a module's documentation and its source are one document: no twin across the split
    json_docs = [r["text"] for r in rows if r["meta"]["title"] == "json/decoder.py"]
    assert len(json_docs) == 1 and "Help on module json.decoder" in json_docs[0] and "def py_scanstring" in json_docs[0]
    assert not any("cp437.py" in t for t in titles) or not any("cp865.py" in t for t in titles)  # near-copies


def test_near_duplicates_are_dropped_in_either_direction():
    base = " ".join(f"word{i}" for i in range(200))
    docs = [(base, "a"), ("intro " + base + " outro", "b"), (base[:400], "c"), ("different " * 50, "d"),
            (" ".join(f"other{i}" for i in range(100)), "e")]
    kept = [d[1] for d in train.drop_near_duplicates(docs)]
    assert kept == ["a", "d", "e"]  # b copies a; c is contained in a


# -----------------------------------------------------------------------------
# training runs end to end

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny(tmp, corpus, max_iters=30, use_rmsnorm=True)
    return cfg, train.train(cfg)


def test_short_run_lowers_val_nll_and_writes_outputs(finished_run):
    cfg, results = finished_run
    out = Path(cfg.out_dir)
    evals = [r for r in train.read_log(out / "log.txt") if r["event"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["val_nll"] < evals[0]["val_nll"] - 3.0  # from ~ln(50257) = 10.8 to a few nats
    rows = [r for r in train.read_log(out / "log.txt") if r["event"] == "train"]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {"tokens", "elapsed", "lr", "train_nll"} <= set(rows[0])
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps"] == 30 and saved["tokens"] == 30 * 4 * 32
    assert saved["val_nll"] == results["val_nll"] and saved["val_bpb"] > 0
    assert saved["params"] == GPT(cfg).num_params() and saved["config"]["use_rmsnorm"] is True
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 30 and set(ckpt) >= {"model", "optimizer", "config", "data", "rng"}


class StopAt(train.StopFlag):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def requested(self, step):
        return "TEST" if step >= self.at else None


def test_resume_gives_the_same_next_steps(tmp_path, corpus):
    kw = dict(max_iters=24, use_cosine=True, use_warmup=True, dropout=0.1, ckpt_interval=100)
    full = tiny(tmp_path / "full", corpus, **kw)
    train.train(full)
    part = tiny(tmp_path / "part", corpus, **kw)
    with pytest.raises(SystemExit) as stopped:
        train.train(part, stop=StopAt(13))
    assert stopped.value.code == train.EXIT_PREEMPTED
    train.train(Config(**{**part.__dict__, "resume": True}))

    def rows(cfg):
        return [(r["event"], r["step"], r.get("train_nll"), r.get("val_nll"), r.get("lr"))
                for r in train.read_log(Path(cfg.out_dir) / "log.txt") if r["event"] in ("train", "eval")]
    assert rows(part) == rows(full)


def test_resume_errors(tmp_path, corpus, finished_run):
    with pytest.raises(UserError, match="no checkpoint"):
        train.train(tiny(tmp_path, corpus, resume=True))
    cfg, _ = finished_run
    with pytest.raises(UserError, match="has n_layer=2 but the config says n_layer=3"):
        train.train(Config(**{**cfg.__dict__, "resume": True, "n_layer": 3}))


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=600)


def test_sample_and_plot_end_to_end(finished_run, tmp_path):
    cfg, _ = finished_run
    r = run_script("sample.py", "--ckpt", str(Path(cfg.out_dir) / "ckpt.pt"), "--prompt", "the cats",
                   "--num_samples", "2", "--max_new_tokens", "10", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("the cats") == 2 and "--- sample 2 ---" in r.stdout
    png = tmp_path / "nll.png"
    r = run_script("plot.py", str(Path(cfg.out_dir) / "log.txt"), "-o", str(png))
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 1000 and f"{json.loads((Path(cfg.out_dir) / 'results.json').read_text())['val_nll']:.4f}" in r.stdout


# -----------------------------------------------------------------------------
# less noise by design, equal budgets, resume=auto

def shared(a, b):
    """Names of the parameters two models have with the same shape."""
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if k in sb and sa[k].shape == sb[k].shape]


def test_modules_two_arms_share_start_from_the_same_weights():
    base = GPT(Config(n_layer=2, n_head=2, n_embd=32, block_size=16, seed=7), vocab_size=V)
    for switch in SWITCHES:
        other = GPT(Config(n_layer=2, n_head=2, n_embd=32, block_size=16, seed=7, **{switch: True}), vocab_size=V)
        names = shared(base, other)
        assert "wte.weight" in names and "h.1.attn.c_attn.weight" in names
        for k in names:
            assert torch.equal(base.state_dict()[k], other.state_dict()[k]), (switch, k)
    reseeded = GPT(Config(n_layer=2, n_head=2, n_embd=32, block_size=16, seed=8), vocab_size=V)
    assert not torch.equal(base.wte.weight, reseeded.wte.weight)
    assert not torch.equal(base.h[0].attn.c_attn.weight, base.h[1].attn.c_attn.weight)  # own generator each


def test_data_seed_fixes_the_order_across_seeds(corpus):
    ds = train.JSONLDataset([corpus])
    n_train = train.split_validation(ds, 10)[0]

    def first_batch(seed, data_seed):
        cfg = Config(seed=seed, data_seed=data_seed)
        stream = train.TrainStream(ds, n_train, train.data_seed(cfg), batch_size=2, block_size=16)
        return stream.next_batch()[0]

    assert torch.equal(first_batch(1, 5), first_batch(2, 5))
    assert not torch.equal(first_batch(1, -1), first_batch(2, -1))  # default: each seed its own order
    assert torch.equal(first_batch(5, -1), first_batch(1, 5))


def test_results_report_the_eval_noise_and_training_throughput(finished_run):
    cfg, results = finished_run
    assert 0 < results["val_nll_se"] < 0.5
    assert results["train_time"] + results["eval_time"] <= results["wall_time"] + 1e-6
    assert results["tokens_per_s"] == pytest.approx(results["tokens"] / results["train_time"])
    final = [r for r in train.read_log(Path(cfg.out_dir) / "log.txt") if r["event"] == "eval"][-1]
    assert final["val_nll_se"] == pytest.approx(results["val_nll_se"]) and final["windows"] > 1


def test_mfu_is_never_printed_above_100_percent_when_the_peak_probe_read_low(tmp_path, corpus, monkeypatch, capsys):
    # a machine busy at start-up: the matmul probe reads far below what the model then achieves; the run
    # measures again, prints "n/a" while the peak it has is still too low, and a number once it is not
    probes = []

    def probe(device, dtype, seconds=0.25, again=False):
        probes.append(again)
        return 1e15 if len(probes) > 3 else 1e3

    monkeypatch.setattr(train, "measure_matmul_flops", probe)
    cfg = tiny(tmp_path, corpus, max_iters=8, log_interval=1)
    results = train.train(cfg)
    mfus = re.findall(r"\| mfu ([^ ]+) \|", capsys.readouterr().out)
    assert len(mfus) == 8 and "n/a" in mfus and mfus[-1] != "n/a", mfus
    assert all(m == "n/a" or float(m.rstrip("%")) <= 100 for m in mfus), mfus
    assert probes[0] is False and probes[1:] == [True] * (len(probes) - 1)  # measured again only when too low
    rows = [r for r in train.read_log(Path(cfg.out_dir) / "log.txt") if r["event"] == "train"]
    assert all(r["mfu"] is None or 0 <= r["mfu"] <= 1 for r in rows)
    assert results["mfu"] is None or results["mfu"] <= 1


def test_max_time_plans_the_horizon_before_the_first_step(tmp_path, corpus, monkeypatch):
    # the probe's timing is given (8 s per step), so the plan does not depend on how busy the machine is:
    # ~10 steps in 120 s, which the run reaches long before its clock says 120 s (it stops at either)
    monkeypatch.setattr(train, "measure_step_time", lambda run, *a, **kw: (8.0, 0.5))
    cfg = tiny(tmp_path, corpus, max_iters=10_000, max_time="120s", use_cosine=True, log_interval=1)
    results = train.train(cfg)
    rows = train.read_log(Path(cfg.out_dir) / "log.txt")
    kinds = [r["event"] for r in rows]
    planned = rows[kinds.index("horizon")]
    assert kinds.index("horizon") < kinds.index("train") and planned["step"] == 0
    assert 0 < planned["horizon"] == results["horizon"] <= 120 / 8  # from the probe's 8 s per step
    lrs = [(r["step"], r["lr"]) for r in rows if r["event"] == "train"]
    assert all(lr == pytest.approx(train.get_lr(s - 1, cfg, planned["horizon"])) for s, lr in lrs)  # no jump
    assert results["stopped_by"] == "max_time" and results["steps"] <= planned["horizon"]


def test_steps_in_prints_one_number(tmp_path, corpus, capsys, monkeypatch):
    # main() as `python train.py ... --steps-in=10m` runs it (a budget of minutes: the probe itself takes ~2 s;
    # 3 s fitted no step when the machine was busy). stdout carries the one number, the rest goes to stderr.
    monkeypatch.chdir(tmp_path)
    assert train.main(["--data_path=" + str(corpus), "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32",
                       "--batch_size=2", "--val_docs=5", "--eval_iters=2", "--device=cpu", "--steps-in=10m"]) == 0
    out = capsys.readouterr()
    assert int(out.out.strip()) > 0, out
    assert not list(tmp_path.iterdir())  # no run folder: nothing trained, nothing written
    assert train.main(["--steps-in=soon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps-in" in err


def test_resume_auto_continues_finishes_or_refuses(tmp_path, corpus, capsys):
    cfg = tiny(tmp_path, corpus, max_iters=12, resume="auto")
    with pytest.raises(SystemExit):
        train.train(cfg, stop=StopAt(5))  # an interrupted run ...
    results = train.train(cfg)  # ... continues from its checkpoint
    steps = [r["step"] for r in train.read_log(Path(cfg.out_dir) / "log.txt") if r["event"] == "train"]
    assert steps == [5, 10, 12] and results["steps"] == 12
    log = (Path(cfg.out_dir) / "log.txt").read_text()
    assert train.train(cfg) == results  # finished: nothing to do, nothing written
    assert (Path(cfg.out_dir) / "log.txt").read_text() == log and "already finished" in capsys.readouterr().out
    with pytest.raises(UserError, match="has n_layer=2 but the config says n_layer=3"):
        train.train(Config(**{**cfg.__dict__, "n_layer": 3}))
    with pytest.raises(UserError, match="holds the checkpoint of another run .*seed=1337, not 4"):
        train.train(Config(**{**cfg.__dict__, "seed": 4}))
    fresh = tiny(tmp_path / "new", corpus, max_iters=3, resume="auto")
    assert train.train(fresh)["steps"] == 3  # nothing there: a fresh start
