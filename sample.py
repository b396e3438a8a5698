"""
Generate text from a gpt-ablate checkpoint (any switch combination; the model is rebuilt from the
checkpoint's own config).

    python sample.py --ckpt out/ckpt.pt --prompt "def main(" --num_samples 3 --max_new_tokens 200

Each run keeps its checkpoint in its own folder (out/baseline/ckpt.pt, out/rmsnorm/ckpt.pt, ...): a --ckpt
FOLDER/ckpt.pt that is not a file means the most recently saved ckpt.pt under FOLDER, so the default
out/ckpt.pt is the run trained last. Which checkpoint was loaded is printed (to stderr) first.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from train import (EXIT_USER_ERROR, UserError, get_tokenizer, load_checkpoint, model_from_checkpoint, pick_device,
                   switches_name)


def resolve_checkpoint(path):
    """path if it is a file; for a missing FOLDER/ckpt.pt, the most recently saved ckpt.pt in FOLDER's runs
    (at any depth), if there is one. -> (the path to load, True if it was found that way)."""
    path = Path(path)
    if path.is_file() or path.name != "ckpt.pt" or not path.parent.is_dir():
        return path, False
    runs = [p for p in path.parent.glob("**/ckpt.pt") if p.is_file()]
    if not runs:
        return path, False
    return max(runs, key=lambda p: p.stat().st_mtime), True


def load_model(ckpt_path, device="cpu"):
    """-> (model in eval mode, its Config) from a checkpoint file."""
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt_path, device), device)
    return model.eval(), cfg


def generate_samples(ckpt_path, prompt, num_samples=1, max_new_tokens=100, temperature=0.8, top_k=200,
                     seed=1337, device="cpu", use_cache=True, model=None, window=None):
    """-> list of num_samples strings, each the prompt followed by its continuation."""
    if max_new_tokens < 0 or num_samples < 1:
        raise UserError("max_new_tokens must be >= 0 and num_samples >= 1")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if model is None:
        model, _ = load_model(ckpt_path, device)
    enc = get_tokenizer()
    ids = enc.encode_ordinary(prompt) if prompt else [enc.eot_token]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    torch.manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, use_cache=use_cache,
                         window=window)
    start = 0 if prompt else 1  # without a prompt the run starts from <|endoftext|>: do not print it
    return [enc.decode(row[start:].tolist()) for row in out]


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a gpt-ablate checkpoint.")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint file; a missing FOLDER/ckpt.pt means the most "
                   "recently saved one under FOLDER (default out/ckpt.pt: the run trained last)")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--block_size", type=int, default=0, help="context window (default: the model's)")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context for every token")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        path, latest = resolve_checkpoint(args.ckpt)
        ckpt = load_checkpoint(path, device)
        model, cfg = model_from_checkpoint(ckpt, device)
        model.eval()
        if args.block_size < 0:
            raise UserError(f"--block_size must be >= 0 (0 = the model's), got {args.block_size}")
        if args.block_size > cfg.block_size:
            raise UserError(f"--block_size {args.block_size} is larger than the model's block_size "
                            f"{cfg.block_size} (its position tables end there)")
        print(f"checkpoint {path}" + (f" (the most recent under {Path(args.ckpt).parent})" if latest else "")
              + f": {switches_name(cfg)}, step {ckpt.get('step', '?')}", file=sys.stderr)
        t0 = time.time()
        texts = generate_samples(path, args.prompt, args.num_samples, args.max_new_tokens,
                                 args.temperature, args.top_k or None, args.seed, device,
                                 use_cache=not args.no_cache, model=model, window=args.block_size or None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}")
    seconds = time.time() - t0
    print(f"--- {args.num_samples} x {args.max_new_tokens} tokens in {seconds:.1f}s "
          f"({args.num_samples * args.max_new_tokens / max(seconds, 1e-9):,.0f} tokens/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
