"""A test-only reference GPT, written plainly from the formulas, and train.GPT compared with it.

The reference reads its weights from a train.GPT state_dict by parameter name and computes every step
explicitly (an explicit causal mask and softmax, the rotation from theta_i = pos * base^(-2i/hs), the
LayerNorm / RMSNorm / tanh-GELU / silu formulas), so a feature of train.py that is silently broken
(rotary not applied, a norm swapped, the head untied, the mask dropped, ...) changes train.GPT's logits,
loss or gradients and no longer matches. It is compared for every combination of the model-shape
switches (train.SWITCHES with metadata shape=True), so a new switch is included automatically; one the
reference does not know fails loudly. Then: get_lr against hand-computed values, the init statistics,
parameter counts, the optimizer's groups and update, bits per byte, and what one short train() run
hands the optimizer (learning rate per step, clipped gradient norm).

Run with: python -m pytest -q test_reference.py"""

import itertools
import json
import math
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import train
from train import Config, GPT

V = 48  # a small vocabulary: the tiny models below are fast
TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=16)
EPS = 1e-5  # the eps of every norm (LayerNorm, RMSNorm, QK-norm)

# The shape switches this reference implements. A new shape switch fails test_reference_knows_every_switch
# and its combinations in test_gpt_matches_reference until it is added here, in ref_logits and in
# expected_param_count.
REFERENCE_SHAPE_SWITCHES = {"use_swiglu", "use_rope", "use_rmsnorm", "use_qknorm"}
# The schedule switches get_lr is checked against by hand below.
REFERENCE_SCHEDULE_SWITCHES = {"use_warmup", "use_cosine"}
SHAPE_SWITCHES = [key for key in train.SWITCHES.values() if train.CONFIG_FIELDS[key].metadata["shape"]]
COMBOS = [c for r in range(len(SHAPE_SWITCHES) + 1) for c in itertools.combinations(SHAPE_SWITCHES, r)]


def combo_id(combo):
    return "+".join(k.removeprefix("use_") for k in combo) or "baseline"


def loss_variants():
    """Settings of non-shape keys that select a different code path for the same math."""
    if "fused_loss" in train.CONFIG_FIELDS:
        return [{"fused_loss": True}, {"fused_loss": False}]
    return [{}]


# -----------------------------------------------------------------------------
# The reference GPT (float64, explicit formulas)

class Weights(dict):
    """The state_dict by name; remembers which entries the reference read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.used = set()

    def __getitem__(self, name):
        if name not in self:
            raise AssertionError(f"the reference needs the parameter {name!r}, which train.GPT does not have "
                                 f"(it has: {sorted(self)})")
        self.used.add(name)
        return super().__getitem__(name)


def ref_linear(x, w, prefix, bias):
    y = x @ w[prefix + ".weight"].T
    return y + w[prefix + ".bias"] if bias else y


def ref_layernorm(x, w, prefix, bias):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    y = (x - mu) / torch.sqrt(var + EPS) * w[prefix + ".weight"]
    return y + w[prefix + ".bias"] if bias else y


def ref_rmsnorm(x, gain):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * gain


def ref_norm(x, w, prefix, cfg):
    return ref_rmsnorm(x, w[prefix + ".weight"]) if cfg.use_rmsnorm else ref_layernorm(x, w, prefix, cfg.bias)


def ref_rotate(x, base):
    """x (B, nh, T, hs): the pair (x[i], x[i + hs/2]) at position pos is rotated by the angle
    theta_i = pos * base^(-2i/hs) (the half-split "NeoX" pairing)."""
    T, hs = x.shape[-2], x.shape[-1]
    half = hs // 2
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(half, dtype=torch.float64)[None, :]
    theta = pos * base ** (-2.0 * i / hs)  # (T, hs/2)
    c, s = torch.cos(theta), torch.sin(theta)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def ref_softmax(z):
    z = z - z.max(-1, keepdim=True).values
    e = torch.exp(z)
    return e / e.sum(-1, keepdim=True)


def ref_gelu_tanh(a):
    return 0.5 * a * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a ** 3)))


def ref_silu(a):
    return a / (1.0 + torch.exp(-a))


def ref_logits(w, cfg, idx):
    """Logits (B, T, V) of the GPT whose parameters are in w (a Weights), for tokens idx (B, T)."""
    unknown = [k for k in SHAPE_SWITCHES if k not in REFERENCE_SHAPE_SWITCHES and getattr(cfg, k)]
    assert not unknown, (f"the reference GPT in test_reference.py does not implement the shape switch(es) "
                         f"{unknown}: add them to ref_logits (and to REFERENCE_SHAPE_SWITCHES)")
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    hs = C // nh
    x = w["wte.weight"][idx]
    if not cfg.use_rope:
        x = x + w["wpe.weight"][:T]  # learned absolute positions
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))  # query t sees keys 0..t
    for layer in range(cfg.n_layer):
        p = f"h.{layer}."
        h = ref_norm(x, w, p + "ln_1", cfg)
        qkv = ref_linear(h, w, p + "attn.c_attn", cfg.bias)
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, nh, hs).transpose(1, 2) for j in range(3))
        if cfg.use_qknorm:  # per head, before the rotation; one gain of size hs shared by the heads
            q = ref_rmsnorm(q, w[p + "attn.q_norm.weight"])
            k = ref_rmsnorm(k, w[p + "attn.k_norm.weight"])
        if cfg.use_rope:
            q, k = ref_rotate(q, cfg.rope_base), ref_rotate(k, cfg.rope_base)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        scores = scores.masked_fill(~causal, float("-inf"))
        y = (ref_softmax(scores) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + ref_linear(y, w, p + "attn.c_proj", cfg.bias)
        h = ref_norm(x, w, p + "ln_2", cfg)
        if cfg.use_swiglu:  # down(silu(gate(x)) * up(x)), c_fc the gate
            m = ref_silu(ref_linear(h, w, p + "mlp.c_fc", cfg.bias)) * ref_linear(h, w, p + "mlp.c_up", cfg.bias)
        else:
            m = ref_gelu_tanh(ref_linear(h, w, p + "mlp.c_fc", cfg.bias))
        x = x + ref_linear(m, w, p + "mlp.c_proj", cfg.bias)
    x = ref_norm(x, w, "ln_f", cfg)
    return x @ w["wte.weight"].T  # the LM head is the token embedding (tied)


def ref_nll(logits, targets):
    """Per-position NLL in nats, from an explicit log-sum-exp."""
    m = logits.max(-1, keepdim=True).values
    logz = m + torch.log(torch.exp(logits - m).sum(-1, keepdim=True))
    return (logz - logits).gather(-1, targets[..., None])[..., 0]


def reference_weights(model, requires_grad=False):
    """The model's state_dict as float64 leaves of a Weights; checks the head is tied."""
    sd = model.state_dict()
    assert "lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["wte.weight"]), \
        "the LM head must be tied to the token embedding"
    w = Weights({k: v.detach().double().clone().requires_grad_(requires_grad)
                 for k, v in sd.items() if k != "lm_head.weight"})
    return w


def check_all_used(w):
    unused = sorted(set(w) - w.used)
    assert not unused, f"train.GPT has parameters the reference GPT does not use: {unused}"


# -----------------------------------------------------------------------------
# A tiny GPT with random, non-trivial weights

def randomized_model(cfg, seed=0, regime="normal", vocab_size=V):
    """GPT(cfg) with every parameter drawn at random (gains away from 1, biases away from 0), so a dropped
    gain, bias or position table changes the output. regime "small": tiny embeddings and q/k
    projections, so the norms' eps matters (ln_1 and QK-norm see inputs of mean square ~1e-5)."""
    torch.manual_seed(seed)
    model = GPT(cfg, vocab_size=vocab_size)
    g = torch.Generator().manual_seed(1000 + seed)
    C = cfg.n_embd
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() >= 2:
                p.copy_(r * (0.5 if name in ("wte.weight", "wpe.weight") else 0.3))
            elif name.endswith(".bias"):
                p.copy_(0.2 * r)
            else:  # a norm's gain
                p.copy_(1.0 + 0.3 * r)
        if regime == "small":
            params = dict(model.named_parameters())
            for name in ("wte.weight", "wpe.weight"):
                if name in params:
                    params[name].mul_(0.003)
            params["ln_f.weight"].mul_(300.0)  # logits of order one again
            for layer in range(cfg.n_layer):
                for name in ("weight", "bias"):
                    if f"h.{layer}.attn.c_attn.{name}" in params:
                        params[f"h.{layer}.attn.c_attn.{name}"][:2 * C].mul_(0.01)  # q and k
    return model


def tokens(B, T, seed=0, vocab_size=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (B, T + 1), generator=g)


def close(actual, expected, what, atol=1e-5):
    """Equal up to atol times the larger of 1 and the reference's largest magnitude."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    scale = expected.abs().max().item() if expected.numel() else 1.0
    err = (actual - expected).abs().max().item()
    assert err <= atol * max(1.0, scale), \
        f"{what}: max |train.GPT - reference| = {err:.3g} (reference scale {scale:.3g})"


def compare_with_reference(cfg, regime, seed=0, B=2):
    model = randomized_model(cfg, seed, regime)
    model.eval()  # dropout (cfg.dropout > 0) must be off in eval mode
    T = cfg.block_size
    w = tokens(B, T, seed)
    idx, tgt = w[:, :-1], w[:, 1:]

    ref = reference_weights(model, requires_grad=True)
    logits = ref_logits(ref, cfg, idx)
    check_all_used(ref)
    nll = ref_nll(logits, tgt)
    nll.mean().backward()

    # the logits of the last position (no targets), also of shorter prefixes
    with torch.no_grad():
        for t in (1, T // 2 + 1, T):
            close(model(idx[:, :t]), logits[:, t - 1], f"last-position logits of a {t}-token prefix")
        # the loss without a gradient (the evaluation path): mean and sum
        close(model(idx, tgt), nll.mean(), "mean NLL (no grad)", atol=2e-6)
        close(model(idx, tgt, reduction="sum"), nll.sum(), "summed NLL (no grad)", atol=2e-6)
        close(model(idx, tgt, reduction="none"), nll, "NLL of every position (no grad)", atol=2e-6)
    # the loss with a gradient (the training path) and the gradient of every parameter
    loss = model(idx, tgt)
    close(loss, nll.mean(), "mean NLL (training path)", atol=2e-6)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        close(p.grad, ref[name].grad, f"gradient of {name}", atol=5e-5)


@pytest.mark.parametrize("variant", loss_variants(), ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "loss")
@pytest.mark.parametrize("regime", ["normal", "small"])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_gpt_matches_reference(combo, regime, variant):
    cfg = Config(**TINY, dropout=0.25, **{k: True for k in combo}, **variant)
    compare_with_reference(cfg, regime)


@pytest.mark.parametrize("combo", [(), tuple(SHAPE_SWITCHES)], ids=combo_id)
def test_gpt_without_biases_matches_reference(combo):
    cfg = Config(**TINY, bias=False, **{k: True for k in combo})
    compare_with_reference(cfg, "normal", seed=1)


def test_gpt_matches_reference_at_other_sizes():
    """Three layers, four heads of 6, an odd block size, rope_base 500, a batch of 3: nothing hard-wired."""
    cfg = Config(n_layer=3, n_head=4, n_embd=24, block_size=11, rope_base=500.0,
                 **{k: True for k in SHAPE_SWITCHES})
    compare_with_reference(cfg, "normal", seed=2, B=3)
    cfg = Config(n_layer=3, n_head=4, n_embd=24, block_size=11)
    compare_with_reference(cfg, "normal", seed=3, B=3)


def test_loss_with_a_large_vocabulary_matches_reference():
    """Vocabulary 65536: the loss is computed in chunks of rows; every chunk, the last one partial, counts."""
    vocab = 1 << 16
    for variant in loss_variants():
        cfg = Config(n_layer=1, n_head=2, n_embd=8, block_size=16, **variant)
        model = randomized_model(cfg, seed=4, vocab_size=vocab).eval()
        w = tokens(5, 16, seed=4, vocab_size=vocab)
        idx, tgt = w[:, :-1], w[:, 1:]
        ref = reference_weights(model, requires_grad=True)
        nll = ref_nll(ref_logits(ref, cfg, idx), tgt)
        nll.sum().backward()
        with torch.no_grad():
            close(model(idx, tgt, reduction="sum"), nll.sum(), f"summed NLL (no grad) {variant}", atol=2e-6)
        loss = model(idx, tgt, reduction="sum")
        close(loss, nll.sum(), f"summed NLL (training path) {variant}", atol=2e-6)
        loss.backward()
        close(model.wte.weight.grad, ref["wte.weight"].grad, f"gradient of wte.weight {variant}", atol=5e-5)
        close(model.ln_f.weight.grad, ref["ln_f.weight"].grad, f"gradient of ln_f.weight {variant}", atol=5e-5)


def test_reference_knows_every_switch():
    shape_unknown = sorted(set(SHAPE_SWITCHES) - REFERENCE_SHAPE_SWITCHES)
    assert not shape_unknown, (f"train.py has shape switch(es) {shape_unknown} that the reference GPT in "
                               "test_reference.py does not implement: add them to ref_logits")
    schedule = [k for k in train.SWITCHES.values() if not train.CONFIG_FIELDS[k].metadata["shape"]]
    schedule_unknown = sorted(set(schedule) - REFERENCE_SCHEDULE_SWITCHES)
    assert not schedule_unknown, (f"train.py has switch(es) {schedule_unknown} that test_reference.py does not "
                                  "check: add hand-computed values for them")
    assert all(not getattr(Config(), k) for k in train.SWITCHES.values()), "every switch is off by default"


def test_defaults_are_the_reference_values():
    cfg = Config()
    assert cfg.rope_base == 10000.0
    assert (cfg.beta1, cfg.beta2) == (0.9, 0.95)
    assert cfg.weight_decay == 0.1 and cfg.grad_clip == 1.0 and cfg.bias is True
    assert cfg.min_lr == pytest.approx(cfg.learning_rate / 10)


# -----------------------------------------------------------------------------
# get_lr against hand-computed values

def lr_cfg(**switches):
    return Config(learning_rate=1.0, min_lr=0.1, warmup_iters=10, **switches)


def cosine(p):
    return 0.1 + 0.5 * (1.0 + math.cos(math.pi * p)) * 0.9


@pytest.mark.parametrize("step, expected", [(0, 1.0), (9, 1.0), (10, 1.0), (500, 1.0), (10**6, 1.0)])
def test_lr_constant_without_switches(step, expected):
    assert train.get_lr(step, lr_cfg(), 110) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.1), (1, 0.2), (4, 0.5), (8, 0.9), (9, 1.0), (10, 1.0),
                                            (11, 1.0), (110, 1.0), (10**6, 1.0)])
def test_lr_warmup_only(step, expected):
    assert train.get_lr(step, lr_cfg(use_warmup=True), 110) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 1.0), (1, cosine(1 / 110)), (10, cosine(10 / 110)),
                                            (55, 0.55), (109, cosine(109 / 110)), (110, 0.1), (111, 0.1),
                                            (220, 0.1), (10**6, 0.1)])
def test_lr_cosine_only_has_no_hidden_warmup(step, expected):
    assert train.get_lr(step, lr_cfg(use_cosine=True), 110) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.1), (5, 0.6), (9, 1.0), (10, 1.0), (11, cosine(0.01)),
                                            (35, cosine(0.25)), (60, 0.55), (109, cosine(0.99)), (110, 0.1),
                                            (111, 0.1), (210, 0.1), (10**6, 0.1)])
def test_lr_warmup_then_cosine(step, expected):
    assert train.get_lr(step, lr_cfg(use_warmup=True, use_cosine=True), 110) == pytest.approx(expected, abs=1e-12)


def test_lr_cosine_floor_and_monotone():
    for switches in ({"use_cosine": True}, {"use_cosine": True, "use_warmup": True}):
        cfg = Config(learning_rate=3e-3, min_lr=2e-4, warmup_iters=7, **switches)
        lrs = [train.get_lr(s, cfg, 50) for s in range(200)]
        start = 7 if "use_warmup" in switches else 0
        assert all(a >= b - 1e-15 for a, b in zip(lrs[start:], lrs[start + 1:])), "the cosine never climbs"
        assert min(lrs) >= 2e-4 - 1e-15 and lrs[50:] == pytest.approx([2e-4] * 150, abs=1e-15)
        assert max(lrs) == pytest.approx(3e-3, abs=1e-15)


def test_lr_short_horizons_stay_between_min_lr_and_lr():
    """A horizon at or before the end of warmup (a tiny max_time) divides by nothing and stays in range."""
    for switches in ({"use_cosine": True}, {"use_cosine": True, "use_warmup": True}, {"use_warmup": True}):
        cfg = lr_cfg(**switches)
        for horizon in (0, 1, 5, 10, 11):
            for step in range(0, 30):
                lr = train.get_lr(step, cfg, horizon)
                assert math.isfinite(lr) and 0.1 - 1e-12 <= lr <= 1.0 + 1e-12, (switches, horizon, step, lr)


# -----------------------------------------------------------------------------
# Dropout: on in training, off in eval

def test_dropout_acts_in_training_only():
    cfg = Config(**TINY, dropout=0.5, **{k: True for k in SHAPE_SWITCHES})
    model = randomized_model(cfg, seed=8)
    w = tokens(2, cfg.block_size, seed=8)
    torch.manual_seed(0)
    train_losses = {model(w[:, :-1], w[:, 1:]).item() for _ in range(3)}
    assert len(train_losses) == 3, "dropout makes training losses differ from call to call"
    model.eval()
    assert len({model(w[:, :-1], w[:, 1:]).item() for _ in range(3)}) == 1


# -----------------------------------------------------------------------------
# Init statistics, tying, parameter counts

@pytest.mark.parametrize("combo", [(), tuple(SHAPE_SWITCHES)], ids=combo_id)
def test_init_statistics_and_tied_head(combo):
    n_layer = 8
    cfg = Config(n_layer=n_layer, n_head=4, n_embd=64, block_size=64, **{k: True for k in combo})
    torch.manual_seed(0)
    model = GPT(cfg, vocab_size=512)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    resid = 0.02 / math.sqrt(2 * n_layer)
    proj = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(proj) == 2 * n_layer, "every block has attn.c_proj and mlp.c_proj"
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = p.detach().double().std().item()
            expected = resid if name.endswith("c_proj.weight") else 0.02
            assert std == pytest.approx(expected, rel=0.12), f"{name}: init std {std:.5f}, expected {expected:.5f}"
            assert abs(p.detach().double().mean().item()) < 0.2 * expected, f"{name}: init mean not zero"
        elif name.endswith(".bias"):
            assert torch.all(p == 0), f"{name}: biases start at zero"
        else:
            assert torch.all(p == 1), f"{name}: norm gains start at one"
    pooled = torch.cat([p.detach().flatten() for p in proj]).double().std().item()
    assert pooled == pytest.approx(resid, rel=0.03)


def expected_param_count(cfg, vocab):
    d, L, T, hs = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.n_embd // cfg.n_head
    b = 1 if cfg.bias else 0
    norm = d if cfg.use_rmsnorm else d + b * d
    attn = 3 * d * d + b * 3 * d + d * d + b * d + (2 * hs if cfg.use_qknorm else 0)
    if cfg.use_swiglu:
        h = 8 * round(8 * d / 3 / 8)
        mlp = 2 * (d * h + b * h) + h * d + b * d
    else:
        mlp = d * 4 * d + b * 4 * d + 4 * d * d + b * d
    embedding = vocab * d + (0 if cfg.use_rope else T * d)
    return embedding + L * (2 * norm + attn + mlp) + norm, embedding  # the head is tied: no extra


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_param_counts(combo, bias):
    cfg = Config(n_layer=2, n_head=4, n_embd=48, block_size=32, bias=bias, **{k: True for k in combo})
    unknown = set(combo) - REFERENCE_SHAPE_SWITCHES
    assert not unknown, f"expected_param_count in test_reference.py does not know {sorted(unknown)}"
    model = GPT(cfg, vocab_size=100)
    total, embedding = expected_param_count(cfg, 100)
    assert sum(p.numel() for p in model.parameters()) == total
    assert model.num_params() == {"total": total, "non_embedding": total - embedding}


def test_swiglu_hidden_is_param_matched():
    for d, h in ((768, 2048), (256, 680), (48, 128), (16, 40)):
        model = GPT(Config(n_layer=1, n_head=4, n_embd=d, block_size=8, use_swiglu=True), vocab_size=8)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        assert shapes["h.0.mlp.c_fc.weight"] == (h, d) and shapes["h.0.mlp.c_up.weight"] == (h, d)
        assert shapes["h.0.mlp.c_proj.weight"] == (d, h)


def test_rope_removes_exactly_the_position_table():
    base = GPT(Config(**TINY), vocab_size=V).num_params()["total"]
    rope = GPT(Config(**TINY, use_rope=True), vocab_size=V).num_params()["total"]
    assert base - rope == TINY["block_size"] * TINY["n_embd"]


# -----------------------------------------------------------------------------
# The optimizer

def test_optimizer_groups_betas_and_update():
    cfg = Config(**TINY, use_rmsnorm=False, use_qknorm=True, weight_decay=0.3, beta1=0.8, beta2=0.7,
                 learning_rate=0.01)
    model = randomized_model(cfg, seed=5)
    opt = model.configure_optimizer(cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for group in opt.param_groups:
        assert group["betas"] == (0.8, 0.7) and group["lr"] == 0.01
        assert group.get("fused") is True, "fused AdamW on CPU"
        for p in group["params"]:
            seen.append(id(p))
            if p.dim() >= 2:
                assert group["weight_decay"] == 0.3, f"{names[id(p)]} (a matrix) is decayed"
            else:
                assert group["weight_decay"] == 0.0, f"{names[id(p)]} (a bias or norm gain) is not decayed"
    assert sorted(seen) == sorted(names), "every parameter in exactly one group"

    # two AdamW steps by hand: decoupled decay, bias-corrected moments with the configured betas
    g = torch.Generator().manual_seed(6)
    grads = [{n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}
             for _ in range(2)]
    expected = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(x) for n, x in expected.items()}
    v = {n: torch.zeros_like(x) for n, x in expected.items()}
    for t, gs in enumerate(grads, start=1):
        for n, p in model.named_parameters():
            p.grad = gs[n].float()
            wd = 0.3 if p.dim() >= 2 else 0.0
            x = expected[n] * (1 - 0.01 * wd)
            m[n] = 0.8 * m[n] + 0.2 * gs[n]
            v[n] = 0.7 * v[n] + 0.3 * gs[n] ** 2
            mhat, vhat = m[n] / (1 - 0.8 ** t), v[n] / (1 - 0.7 ** t)
            expected[n] = x - 0.01 * mhat / (vhat.sqrt() + 1e-8)
        opt.step()
    for n, p in model.named_parameters():
        close(p, expected[n], f"{n} after two AdamW steps", atol=1e-6)


# -----------------------------------------------------------------------------
# Bits per byte

def test_evaluate_bits_per_byte_by_hand():
    cfg = Config(**TINY, dropout=0.25, use_rope=True, use_swiglu=True)
    model = randomized_model(cfg, seed=7)
    model.train()
    windows = tokens(5, cfg.block_size, seed=7)  # 5 windows, batches of 2: the last one is partial
    byte_lengths = np.random.default_rng(7).integers(0, 6, size=V)
    ref = reference_weights(model)
    with torch.no_grad():
        nll = ref_nll(ref_logits(ref, cfg, windows[:, :-1]), windows[:, 1:])
    total_nats = nll.sum().item()
    n_tokens = windows[:, 1:].numel()
    n_bytes = int(sum(byte_lengths[t] for t in windows[:, 1:].flatten().tolist()))
    result = train.evaluate(model, windows, 2, "cpu", nullcontext(), byte_lengths)
    val_nll, val_bpb = result[:2]
    assert val_nll == pytest.approx(total_nats / n_tokens, rel=1e-6)
    assert val_bpb == pytest.approx(total_nats / math.log(2) / n_bytes, rel=1e-6)
    if len(result) > 2:  # the standard error of the mean NLL over windows
        per_window = nll.mean(dim=1)
        assert result[2] == pytest.approx(per_window.std().item() / math.sqrt(len(per_window)), rel=1e-4)
    assert model.training, "evaluate puts the model back in training mode"


def test_token_byte_lengths_add_up_to_the_utf8_bytes():
    lengths = train.token_byte_lengths()
    assert len(lengths) == 50257 and lengths[train.EOT] == 0
    text = "Grüße aus Köln — naïve café, 東京 and plain ASCII text.\n\ttabs"
    ids = train.tokenize(text)
    assert ids[-1] == train.EOT
    assert int(lengths[ids.astype(np.int64)].sum()) == len(text.encode("utf-8"))
    assert all(lengths[b] >= 1 for b in range(256))


# -----------------------------------------------------------------------------
# What a short train() run hands the optimizer

def write_corpus(path, n_docs=24, seed=0):
    rng = random.Random(seed)
    words = "the cat sat on a mat while dogs ran past trees by the river".split()
    with open(path, "w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 40)))}) + "\n")
    return path


def test_train_loop_schedule_clipping_and_optimizer(tmp_path):
    cfg = Config(data_path=str(write_corpus(tmp_path / "c.jsonl")), out_dir=str(tmp_path / "out"),
                 n_layer=1, n_head=2, n_embd=8, block_size=16, batch_size=2, val_docs=2, eval_iters=1,
                 eval_interval=100, log_interval=100, ckpt_interval=100, max_iters=6, device="cpu",
                 dtype="float32", use_warmup=True, use_cosine=True, warmup_iters=2, learning_rate=1e-2,
                 min_lr=1e-3, grad_clip=0.01, beta1=0.85, beta2=0.9, weight_decay=0.2)
    seen, fresh, grad_hooks = [], {}, []

    def hook(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad.double() for p in params]
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).item()
        # the gradient the optimizer sees is this step's own backward pass (clipped), nothing left from before
        if fresh:
            new = torch.cat([fresh[id(p)].double().flatten() for p in params])
            got = torch.cat([g.flatten() for g in grads])
            coef = got.norm() / new.norm()
            fresh_only = ((got - coef * new).norm() / got.norm()).item()
        else:  # the first step: watch the backward passes from now on
            grad_hooks.extend(p.register_hook(lambda g, key=id(p): fresh.__setitem__(key, g.detach().clone()))
                              for p in params)
            fresh_only = 0.0
        seen.append((norm, fresh_only, [(g["lr"], g["betas"], g["weight_decay"],
                                         all(p.dim() >= 2 for p in g["params"])) for g in opt.param_groups]))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train.train(cfg)
    finally:
        handle.remove()
        for h in grad_hooks:
            h.remove()
    assert len(seen) == 6
    for step, (norm, fresh_only, groups) in enumerate(seen):
        assert norm == pytest.approx(0.01, rel=1e-3), f"step {step}: gradient norm {norm} not clipped to 0.01"
        assert fresh_only < 1e-5, f"step {step}: the gradient is not this step's alone (zero_grad?)"
        for lr, betas, wd, matrices in groups:
            assert lr == pytest.approx(train.get_lr(step, cfg, 6), abs=1e-15), f"step {step} uses get_lr(step)"
            assert betas == (0.85, 0.9)
            assert wd == (0.2 if matrices else 0.0)
    assert seen[0][2][0][0] == pytest.approx(5e-3) and seen[-1][2][0][0] == pytest.approx(cosine_at(3, 4, 1e-2, 1e-3))


def cosine_at(i, n, lr, min_lr):
    return min_lr + 0.5 * (1 + math.cos(math.pi * i / n)) * (lr - min_lr)
