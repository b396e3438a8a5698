"""
Benchmark of train.py's data path at Pile scale (a script, not a test).

    python bench_data.py                      # generates a 2 GB Pile-format file from the demo corpus
    python bench_data.py --size_gb=3 --seconds=20
    python bench_data.py --file=/data/pile/00.jsonl --zst=False

Prints, as a markdown table:
  - index build of the file (GB/s, page-cached), the same file through `wc -l`, their ratio, peak RSS;
  - index build and cached load of a 7M-line file (the Pile shard's line count, short lines);
  - start-up (open the dataset from its cached index + split off validation);
  - delivered tokens/s of TrainStream (DataLoader + tokenize + pack) with 0, 1, 2 workers, peak RSS;
  - RSS of main process and workers over 1.5 epochs of a small file (--epoch_gb): it must stay flat;
  - the same for the file compressed to .jsonl.zst (line count pass, start-up, tokens/s).
Every measurement runs in a fresh subprocess so that its peak RSS is its own. Generated files (and
their cached indexes) are deleted at the end unless --keep=True; a --file's index is rebuilt (that is
the measurement) and left in place. The machine's other load shows in every number: run it twice.
"""

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import train

ROOT = Path(__file__).resolve().parent


def rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def current_rss_mb(pid="self"):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def workers_rss_mb():
    """Current RSS of this process's children (the DataLoader workers), summed."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    total += current_rss_mb(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


def remove_indexes(path):
    """Delete the cached index of `path` wherever train.load_cached puts it, so the next load builds it."""
    path = Path(path).resolve()
    hashed = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    for folder, prefix in ((path.parent, "."), (train.cache_root() / "index", hashed + ".")):
        pattern = re.compile(re.escape(prefix + path.name) + r"\.\d+\.\d+\.(idx|lines)\.npy(\.tmp\d+)?")
        for f in folder.glob(prefix + "*") if folder.is_dir() else []:
            if pattern.fullmatch(f.name):
                f.unlink(missing_ok=True)


# ---- measurements, each run in its own process: `python bench_data.py _stage NAME ARGS-JSON`

def stage_baseline(_):
    train.get_tokenizer()
    return {"rss_mb": rss_mb()}


def stage_index(a):
    remove_indexes(a["file"])
    t = time.perf_counter()
    ds = train.JSONLDataset([a["file"]], progress=lambda msg: print(msg, file=sys.stderr))
    return {"s": time.perf_counter() - t, "lines": len(ds), "rss_mb": rss_mb()}


def stage_open(a):
    t = time.perf_counter()
    ds = train.JSONLDataset([a["file"]])
    t_open = time.perf_counter() - t
    n_train, _, _ = train.split_validation(ds, a["val_docs"])
    return {"open_s": t_open, "split_s": time.perf_counter() - t - t_open, "lines": len(ds), "rss_mb": rss_mb()}


def stage_loader(a):
    train.get_tokenizer()
    ds = train.JSONLDataset([a["file"]])
    n_train, _, _ = train.split_validation(ds, a["val_docs"])
    stream = train.TrainStream(ds, n_train, seed=1, batch_size=8, block_size=1024, num_workers=a["workers"])
    stream.next_batch()  # worker start-up is not throughput
    rss_start, batches, t = current_rss_mb(), 0, time.perf_counter()
    while time.perf_counter() - t < a["seconds"]:
        stream.next_batch()
        batches += 1
    dt = time.perf_counter() - t
    rss_end = current_rss_mb()
    stream.close()
    return {"tok_s": batches * 8 * 1024 / dt, "docs": stream.pos, "rss_mb": rss_mb(),
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "worker_rss_mb": rss_mb(resource.RUSAGE_CHILDREN)}


def stage_epoch(a):
    """More than one epoch of a small file: the RSS must not grow with the steps."""
    train.get_tokenizer()
    ds = train.JSONLDataset([a["file"]])
    n_train, _, _ = train.split_validation(ds, a["val_docs"])
    stream = train.TrainStream(ds, n_train, seed=1, batch_size=8, block_size=1024, num_workers=a["workers"])
    marks, t = {}, time.perf_counter()
    for mark in (0.1, 0.5, 1.0, 1.5):
        while stream.epoch + stream.pos / n_train < mark:
            stream.next_batch()
        marks[mark] = (current_rss_mb(), workers_rss_mb())
    stream.close()
    return {"marks": [[m, main, workers] for m, (main, workers) in marks.items()], "s": time.perf_counter() - t,
            "docs": n_train}


def run_stage(name, **args):
    r = subprocess.run([sys.executable, __file__, "_stage", name, json.dumps(args)], capture_output=True,
                       text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"stage {name} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the benchmark

def make_file(path, size_gb):
    """A Pile-format JSONL of about size_gb GB: the demo corpus's documents, repeated."""
    demo = train.demo_corpus_path().read_bytes()
    with open(path, "wb") as out:
        for _ in range(max(1, round(size_gb * 1e9 / len(demo)))):
            out.write(demo)


def make_many_lines_file(path, n_lines=7_000_000):
    with open(path, "w") as out:
        for start in range(0, n_lines, 100_000):
            out.write("".join(f'{{"text": "doc {i}", "meta": {{"pile_set_name": "Bench"}}}}\n'
                              for i in range(start, min(n_lines, start + 100_000))))


def best_of(n, fn):
    return min(fn() for _ in range(n))


def wc_seconds(path):
    t = time.perf_counter()
    subprocess.run(["wc", "-l", str(path)], check=True, capture_output=True)
    return time.perf_counter() - t


def compress(src, dst):
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-f", "-3", "-T0", str(src), "-o", str(dst)], check=True)
    else:
        import zstandard
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(fi, fo)


def main(argv):
    opts = {"size_gb": 2.0, "file": "", "workers": "0,1,2", "seconds": 10.0, "zst": True, "keep": False,
            "val_docs": 100, "tmp": tempfile.gettempdir(), "epoch_gb": 0.1}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            sys.exit(f"unknown option --{key}; options: {', '.join('--' + k for k in opts)}")
        opts[key] = type(opts[key])(value) if not isinstance(opts[key], bool) else value.lower() in ("1", "true")
    workers = [int(w) for w in opts["workers"].split(",")]
    folder = Path(opts["tmp"]) / f"gpt-ablate-bench-{os.getpid()}"
    folder.mkdir(parents=True)
    made = []
    try:
        if opts["file"]:
            big = Path(opts["file"])  # its cached index is rebuilt (the measurement) and left in place
        else:
            big = folder / "bench.jsonl"
            print(f"generating {opts['size_gb']} GB at {big} (free: {shutil.disk_usage(folder).free / 1e9:.0f} GB)")
            make_file(big, opts["size_gb"])
            made.append(big)
        size = big.stat().st_size
        rows = []
        base = run_stage("baseline")["rss_mb"]
        print(f"baseline RSS (python + torch + tokenizer): {base:.0f} MB")

        wc_seconds(big)  # into the page cache
        wc = best_of(3, lambda: wc_seconds(big))
        idx = min((run_stage("index", file=str(big)) for _ in range(3)), key=lambda r: r["s"])
        rows.append(("index build (page cache)", f"{size / 1e9 / idx['s']:.2f} GB/s ({idx['lines']:,} lines, "
                     f"{size / 1e9:.2f} GB)", f"`wc -l`: {size / 1e9 / wc:.2f} GB/s; ratio {wc / idx['s']:.2f}",
                     f"{idx['rss_mb']:.0f}"))

        many = folder / "7M_lines.jsonl"
        make_many_lines_file(many)
        made.append(many)
        wc_seconds(many)
        wc7 = best_of(3, lambda: wc_seconds(many))
        idx7 = min((run_stage("index", file=str(many)) for _ in range(2)), key=lambda r: r["s"])
        rows.append(("index build, 7M short lines", f"{idx7['s']:.2f} s ({many.stat().st_size / 1e9 / idx7['s']:.2f} GB/s)",
                     f"`wc -l`: {wc7:.2f} s; ratio {wc7 / idx7['s']:.2f}", f"{idx7['rss_mb']:.0f}"))
        load7 = min((run_stage("open", file=str(many), val_docs=opts["val_docs"]) for _ in range(3)),
                    key=lambda r: r["open_s"])
        rows.append(("cached index load, 7M lines", f"{load7['open_s'] * 1000:.1f} ms",
                     f"JSONLDataset() (mmap); + split validation: {load7['split_s'] * 1000:.0f} ms",
                     f"{load7['rss_mb']:.0f}"))
        start = run_stage("open", file=str(big), val_docs=opts["val_docs"])
        rows.append(("start-up: open + split validation", f"{start['open_s'] + start['split_s']:.2f} s",
                     f"val_docs={opts['val_docs']}", f"{start['rss_mb']:.0f}"))

        loaders = {}
        for w in workers:
            r = run_stage("loader", file=str(big), workers=w, seconds=opts["seconds"], val_docs=opts["val_docs"])
            loaders[w] = r
            rows.append((f"delivered tokens/s, num_workers={w}", f"{r['tok_s'] / 1e6:.2f} M",
                         f"{r['docs']:,} docs; main RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB"
                         + (f"; worker peak {r['worker_rss_mb']:.0f} MB" if w else ""), f"{r['rss_mb']:.0f}"))

        if opts["epoch_gb"] > 0:
            small = folder / "epoch.jsonl"
            make_file(small, opts["epoch_gb"])
            made.append(small)
            r = run_stage("epoch", file=str(small), workers=max(workers), val_docs=opts["val_docs"])
            rss = "; ".join(f"{m:g}: {main:.0f} + {w:.0f}" for m, main, w in r["marks"])
            rows.append((f"RSS over 1.5 epochs ({r['docs']:,} docs), num_workers={max(workers)}",
                         f"{r['marks'][-1][1] - r['marks'][0][1]:+.0f} MB main, "
                         f"{r['marks'][-1][2] - r['marks'][0][2]:+.0f} MB workers",
                         f"epoch: main + workers MB: {rss}", ""))

        if opts["zst"]:
            zst = folder / (big.name + ".zst")
            t = time.perf_counter()
            compress(big, zst)
            made.append(zst)
            print(f"compressed to {zst} ({zst.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
            cnt = run_stage("index", file=str(zst))
            rows.append(("zst: line count pass (first use)", f"{size / 1e9 / cnt['s']:.2f} GB/s decompressed",
                         f"{cnt['s']:.1f} s for {zst.stat().st_size / 1e9:.2f} GB compressed", f"{cnt['rss_mb']:.0f}"))
            zstart = run_stage("open", file=str(zst), val_docs=opts["val_docs"])
            rows.append(("zst: start-up (count cached; split streams the file)",
                         f"{zstart['open_s'] + zstart['split_s']:.1f} s", f"val_docs={opts['val_docs']}",
                         f"{zstart['rss_mb']:.0f}"))
            for w in workers:
                r = run_stage("loader", file=str(zst), workers=w, seconds=opts["seconds"], val_docs=opts["val_docs"])
                rows.append((f"zst: delivered tokens/s, num_workers={w}", f"{r['tok_s'] / 1e6:.2f} M",
                             f"{r['docs']:,} docs; main RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB"
                             + (f"; worker peak {r['worker_rss_mb']:.0f} MB" if w else ""), f"{r['rss_mb']:.0f}"))

        print(f"\n{os.cpu_count()} CPUs; baseline RSS of python + torch + tokenizer: {base:.0f} MB\n")
        print("| measurement | result | detail | peak RSS MB |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        if 1 in loaders:
            per_worker = loaders[1]["tok_s"]
            print(f"\none worker delivers {per_worker / 1e6:.2f} M tokens/s here: num_workers >= "
                  f"training tokens/s / {per_worker / 1e6:.1f}M, plus one")
    finally:
        if not opts["keep"]:
            for f in made:
                remove_indexes(f)
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_stage"]:
        result = globals()["stage_" + sys.argv[2]](json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
        print(json.dumps(result))
    else:
        main(sys.argv[1:])
