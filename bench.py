"""
Benchmark of train.py's speed: training tokens/s and MFU of the baseline and of all the switches, against
the same code forced to plain fp32 eager (what a nanoGPT-style loop runs on a CPU); generation tokens/s
with and without the KV cache. A script, not a test: numbers depend on the machine and on what else runs
on it, so the training variants are run in interleaved rounds and each is reported as the median of its
steps (with the spread of the round medians).

    python bench.py                       # CPU size; the GPU size too where CUDA is available
    python bench.py --sizes gpu --compile # GPT-2 124M, largest batch that fits, with torch.compile rows
    python bench.py --json bench.json     # also write every number to a file
    python bench.py --sizes gpu --device cpu --skip_training --gen_batch 1   # GPT-2 124M generation on a CPU

Sizes: cpu = 4 layers, 4 heads, 256 wide, block 256, batch 8; gpu = GPT-2 124M (12 x 12 x 768), block
1024, the largest power-of-two batch that fits. Training goes through train.train() itself (the real
data stream, logging and all), on --data_path (default: the built-in demo corpus).
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time

import torch

import train
from train import Config, GPT

SIZES = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=8),
    "gpu": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=0),  # 0: largest that fits
}
ALL_SWITCHES = {key: True for key in train.SWITCHES.values()}  # every registered switch


def variants(compile_rows):
    """(label, overrides) of the training rows; the first is the reference the others are compared with."""
    rows = [("fp32 eager (reference)", dict(dtype="float32", compile=False)),
            ("default", dict(dtype="auto", compile=False)),
            ("default, all switches", dict(dtype="auto", compile=False, **ALL_SWITCHES)),
            ("default, per-row streams (shuffle_tokens=0)", dict(dtype="auto", compile=False, shuffle_tokens=0))]
    if compile_rows:
        rows += [("default + compile", dict(dtype="auto", compile=True)),
                 ("default + compile, all switches", dict(dtype="auto", compile=True, **ALL_SWITCHES))]
    return rows


def quiet_train(cfg):
    """train.train(cfg) with its printing captured (shown if it fails); -> the train rows of its log."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            train.train(cfg)
    except BaseException:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise
    return [r for r in train.read_log(f"{cfg.out_dir}/log.txt") if r.get("event") == "train"]


def largest_batch(size, device, dtype, limit=256):
    """The largest power-of-two batch whose training step fits in the GPU's memory."""
    cfg = Config(**{**size, "batch_size": 1, "device": device})
    model = GPT(cfg).to(device)
    opt = model.configure_optimizer(cfg, device.split(":")[0])
    best, batch = 0, 1
    while batch <= limit:
        try:
            x = torch.randint(0, 50257, (batch, cfg.block_size), device=device)
            with train.autocast_context(device, dtype):
                loss = model(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            best, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            loss = x = None
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    del model, opt
    torch.cuda.empty_cache()
    if not best:
        raise SystemExit("bench.py: not even batch 1 fits on this GPU")
    return best


def bench_training(size_name, args, device):
    size = dict(SIZES[size_name])
    if size_name == "gpu" and not size["batch_size"]:
        size["batch_size"] = largest_batch(size, device, train.pick_dtype("auto", device))
        print(f"  largest batch that fits: {size['batch_size']}", flush=True)
    rows = variants(args.compile)
    rates = {label: [] for label, _ in rows}
    mfus = {label: [] for label, _ in rows}
    round_medians = {label: [] for label, _ in rows}
    dtypes, batches = {}, {label: size["batch_size"] for label, _ in rows}
    val_docs = args.val_docs if size_name == "cpu" else max(args.val_docs, 20)  # windows of 1024 tokens
    for r in range(args.rounds):
        for label, overrides in rows:
            while True:
                with tempfile.TemporaryDirectory() as out:
                    cfg = Config(**{**size, **overrides, "batch_size": batches[label], "data_path": args.data_path,
                                    "out_dir": out, "device": device, "max_iters": args.warmup + args.steps,
                                    "log_interval": 1, "eval_interval": 10**6, "ckpt_interval": 10**6,
                                    "eval_iters": 1, "val_docs": val_docs, "warmup_iters": 10, "dropout": 0.0})
                    train.check_config(cfg)
                    try:
                        log = quiet_train(cfg)
                        break
                    except torch.cuda.OutOfMemoryError:  # e.g. float32 at the largest bfloat16 batch
                        if batches[label] == 1:
                            raise
                        batches[label] //= 2
                        torch.cuda.empty_cache()
                        print(f"  {label}: out of memory, batch {batches[label]}", flush=True)
            measured = [row for row in log if row["step"] > args.warmup]
            step_rates = [row["tokens_per_s"] for row in measured]
            rates[label] += step_rates
            mfus[label] += [row["mfu"] for row in measured]
            round_medians[label].append(statistics.median(step_rates))
            dtypes[label] = train.pick_dtype(overrides["dtype"], device) + (" + compile" if overrides["compile"] else "")
            print(f"  round {r + 1}/{args.rounds} {label:<34} {round_medians[label][-1]:>10,.0f} tok/s", flush=True)
    table = []
    ref = statistics.median(rates[rows[0][0]])
    for label, _ in rows:
        med = statistics.median(rates[label])
        table.append({"size": size_name, "run": label, "numeric path": dtypes[label], "batch": batches[label],
                      "tokens_per_s": med, "spread": [min(round_medians[label]), max(round_medians[label])],
                      "mfu": statistics.median(mfus[label]), "vs_fp32_eager": med / ref})
    return table


def time_generation(model, prompt, new_tokens, use_cache):
    t0 = time.perf_counter()
    model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return prompt.size(0) * new_tokens / (time.perf_counter() - t0)


def bench_generation(size_name, args, device):
    """Greedy generation of args.gen_tokens tokens after a 16-token prompt, float32 weights (as sample.py
    runs), for each batch in --gen_batch: at the size's block_size and, where that is shorter than the
    text, also with a block_size that holds it all (the KV cache cannot help once the window slides:
    every position moves, so each token is a full pass either way)."""
    size = SIZES[size_name]
    blocks = [size["block_size"]]
    if size["block_size"] < 16 + args.gen_tokens:
        blocks.append(1024)
    table = []
    for block in blocks:
        torch.manual_seed(0)
        model = GPT(Config(**{**size, "block_size": block})).to(device).eval()
        for batch in [int(b) for b in args.gen_batch.split(",")]:
            prompt = torch.randint(0, 50257, (batch, 16), device=device)
            time_generation(model, prompt, 8, True)  # warm up
            with_cache = time_generation(model, prompt, args.gen_tokens, True)
            without = time_generation(model, prompt, args.gen_tokens, False)
            table.append({"size": size_name, "block_size": block, "batch": batch, "new_tokens": args.gen_tokens,
                          "tokens_per_s_cache": with_cache, "tokens_per_s_no_cache": without,
                          "speedup": with_cache / without})
            print(f"  generation, block {block}, batch {batch}: {with_cache:,.0f} tok/s with the KV cache, "
                  f"{without:,.0f} without ({with_cache / without:.1f}x)", flush=True)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--sizes", default="auto", help="cpu, gpu, cpu,gpu or auto (cpu, plus gpu if CUDA is there)")
    p.add_argument("--device", default="auto", help="auto: cuda for the gpu size, cpu for the cpu size")
    p.add_argument("--steps", type=int, default=6, help="measured training steps per run")
    p.add_argument("--warmup", type=int, default=2, help="training steps not measured at the start of each run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the training variants")
    p.add_argument("--compile", action="store_true", help="also the torch.compile rows (slow to start on a CPU)")
    p.add_argument("--gen_tokens", type=int, default=512, help="new tokens in the generation benchmark")
    p.add_argument("--gen_batch", default="1,8", help="sequences generated at once (comma-separated list)")
    p.add_argument("--data_path", default="", help="training data (default: the built-in demo corpus)")
    p.add_argument("--val_docs", type=int, default=4, help="validation documents (few: only speed is measured)")
    p.add_argument("--skip_generation", action="store_true")
    p.add_argument("--skip_training", action="store_true")
    p.add_argument("--json", default="", help="write all numbers to this file")
    args = p.parse_args(argv)
    sizes = ["cpu"] + (["gpu"] if torch.cuda.is_available() else []) if args.sizes == "auto" else args.sizes.split(",")
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "training": [], "generation": []}
    for size in sizes:
        device = args.device if args.device != "auto" else ("cuda" if size == "gpu" else "cpu")
        what = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
        print(f"{size} size on {device} ({what}):", flush=True)
        if not args.skip_training:
            result["training"] += bench_training(size, args, device)
        if not args.skip_generation:
            result["generation"] += bench_generation(size, args, device)

    print("\n| size | run | numeric path | batch | tokens/s | (round medians) | MFU | vs fp32 eager |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["training"]:
        print(f"| {r['size']} | {r['run']} | {r['numeric path']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
              f"{r['spread'][0]:,.0f}-{r['spread'][1]:,.0f} | {r['mfu']:.1%} | {r['vs_fp32_eager']:.2f}x |")
    if result["generation"]:
        print("\n| size | block_size | batch | new tokens | tokens/s, KV cache | tokens/s, no cache | speedup |")
        print("|---|---|---|---|---|---|---|")
        for g in result["generation"]:
            print(f"| {g['size']} | {g['block_size']} | {g['batch']} | {g['new_tokens']} | {g['tokens_per_s_cache']:,.0f} | "
                  f"{g['tokens_per_s_no_cache']:,.0f} | {g['speedup']:.1f}x |")
    print()
    for size in sizes:
        rows = {r["run"]: r for r in result["training"] if r["size"] == size}
        if "default" in rows:
            fast, switches = rows["default"]["vs_fp32_eager"], rows["default, all switches"]["tokens_per_s"] / rows["default"]["tokens_per_s"]
            print(f"{size}: default vs fp32 eager {fast:.2f}x (target >= 1.4x: {'met' if fast >= 1.4 else 'MISSED'}); "
                  f"all switches vs default {switches:.2f}x (target >= 0.90x: {'met' if switches >= 0.9 else 'MISSED'})")
        for g in result["generation"]:
            if g["size"] == size:
                print(f"{size}: KV cache at {g['new_tokens']} new tokens, block {g['block_size']}, batch {g['batch']}: "
                      f"{g['speedup']:.1f}x "
                      f"(target >= 5x: {'met' if g['speedup'] >= 5 else 'MISSED'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
