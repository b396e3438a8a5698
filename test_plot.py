"""Tests for plot.py on synthetic run folders (no training, no checkpoints). Run: pytest -q test_plot.py"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import plot

HERE = Path(__file__).resolve().parent
EXPERIMENTS = ["baseline", "swiglu", "rope", "warmup", "cosine", "rmsnorm", "all"]
FLAGS = {"baseline": [], "swiglu": ["swiglu"], "rope": ["rope"], "warmup": ["warmup"], "cosine": ["cosine"],
         "rmsnorm": ["rmsnorm"], "all": ["swiglu", "rope", "warmup", "cosine", "rmsnorm"]}


def make_run(out_dir, final_nll, experiment="baseline", seed=1, steps=100, finished=True, max_time="",
             extra_lines=()):
    """Write a log.txt (and results.json when finished) in the train.py contract format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {f"use_{s}": s in FLAGS.get(experiment, []) for s in ["swiglu", "rope", "rmsnorm", "warmup", "cosine"]}
    config.update(seed=seed, max_iters=steps, max_time=max_time)
    params = {"total": 1_000_000, "non_embedding": 400_000}
    events = [{"event": "start", "step": 0, "config": config, "params": params, "horizon": steps}]
    for s in range(0, steps + 1, 10):
        frac = s / steps
        nll = final_nll + 8.0 * (1 - frac) ** 3
        if s > 0:
            events.append({"event": "train", "step": s, "tokens": s * 512, "elapsed": s * 0.1, "lr": 1e-3,
                           "train_nll": nll - 0.05 + 0.02 * ((s // 10) % 2), "tokens_per_s": 5000.0})
        if s % 50 == 0:
            events.append({"event": "eval", "step": s, "tokens": s * 512, "elapsed": s * 0.1, "lr": 1e-3,
                           "val_nll": nll, "val_bpb": nll / math.log(2) / 4.0, "unknown_key": 1})
    events.append({"event": "end", "step": steps})
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    (out_dir / "log.txt").write_text("\n".join(lines) + "\n")
    if finished:
        results = {"val_nll": final_nll, "val_bpb": final_nll / math.log(2) / 4.0, "train_nll": final_nll - 0.05,
                   "params": params, "steps": steps, "tokens": steps * 512, "wall_time": steps * 0.1,
                   "tokens_per_s": 5000.0, "horizon": steps,
                   "stopped_by": "max_time" if max_time else "max_iters", "config": config}
        (out_dir / "results.json").write_text(json.dumps(results))
    return out_dir / "log.txt"


# final val NLL per experiment and seed: swiglu clearly better, rmsnorm clearly worse, warmup within noise
FINALS = {
    "baseline": (3.0, 3.2), "swiglu": (2.9, 3.05), "rope": (2.95, 3.12), "warmup": (3.05, 3.1),
    "cosine": (2.98, 3.17), "rmsnorm": (3.1, 3.3), "all": (2.8, 3.0),
}


@pytest.fixture
def ablation_dir(tmp_path):
    root = tmp_path / "abl"
    for exp in EXPERIMENTS:
        for seed, nll in zip((1, 2), FINALS[exp]):
            make_run(root / exp / f"seed{seed}", nll, exp, seed, steps=100)
    return root


def all_logs(root):
    return sorted(str(p) for p in Path(root).glob("*/*/log.txt"))


# -----------------------------------------------------------------------------
# statistics on known numbers

def test_paired_diff_known_numbers():
    d = plot.paired_diff({1: 2.9, 2: 3.05}, {1: 3.0, 2: 3.2})
    assert d["seeds"] == [1, 2] and d["n"] == 2
    assert d["diffs"] == pytest.approx([-0.1, -0.15])
    assert d["mean"] == pytest.approx(-0.125)
    assert d["std"] == pytest.approx(math.sqrt(2) * 0.025)   # ddof=1 std of (-0.1, -0.15)
    assert d["se"] == pytest.approx(0.025)
    assert d["beyond_noise"] is True                         # 0.125 > 2 * 0.025


def test_paired_diff_pairs_only_shared_seeds_and_handles_noise():
    d = plot.paired_diff({1: 3.0, 2: 3.3, 5: 9.9}, {1: 3.1, 2: 3.1, 7: 0.0})
    assert d["seeds"] == [1, 2] and d["diffs"] == pytest.approx([-0.1, 0.2])
    assert d["mean"] == pytest.approx(0.05) and d["beyond_noise"] is False
    one = plot.paired_diff({1: 2.9}, {1: 3.0, 2: 3.2})
    assert one["n"] == 1 and one["std"] is None and one["beyond_noise"] is None


def test_mean_std_and_ema():
    assert plot.mean_std([3.0, 3.2]) == (pytest.approx(3.1), pytest.approx(0.1414213, rel=1e-5))
    assert plot.mean_std([3.0]) == (3.0, None)
    assert list(plot.ema([2.0, 2.0, 2.0], 0.9)) == pytest.approx([2.0, 2.0, 2.0])   # bias-corrected


def test_clean_events_resume_and_duplicates():
    events = [
        {"event": "start", "step": 0, "config": {}},
        {"event": "train", "step": 10, "train_nll": 5.0},
        {"event": "train", "step": 20, "train_nll": 4.0},
        {"event": "train", "step": 30, "train_nll": 99.0},   # logged after the checkpoint, then killed
        {"event": "resume", "step": 20},
        {"event": "train", "step": 20, "train_nll": 4.5},    # duplicate step: last occurrence wins
        {"event": "eval", "step": 20, "val_nll": 4.2},
        {"event": "mystery", "step": 25},
    ]
    _, train, evals = plot.clean_events(events)
    assert [(r["step"], r["train_nll"]) for r in train] == [(10, 5.0), (20, 4.5)]
    assert [r["step"] for r in evals] == [20]


def test_run_identity():
    assert plot.run_identity(Path("/x/abl/swiglu/seed3")) == ("swiglu/seed3", "swiglu", 3)
    assert plot.run_identity(Path("/x/out/shakespeare")) == ("shakespeare", "shakespeare", None)

# -----------------------------------------------------------------------------
# plain mode

def test_plain_mode_png_and_table(tmp_path, capsys):
    logs = [make_run(tmp_path / "runA", 3.0), make_run(tmp_path / "runB", 2.5, finished=False),
            make_run(tmp_path / "exp" / "seed2", 2.7, seed=2)]
    out = tmp_path / "nll.png"
    assert plot.main([str(p) for p in logs] + ["-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    lines = capsys.readouterr().out.splitlines()
    for name in ["runA", "runB", "exp/seed2"]:
        rows = [l for l in lines if l.split() and l.split()[0] == name]
        assert len(rows) == 1, (name, lines)
    row_b = next(l for l in lines if l.startswith("runB"))
    assert "2.5000" in row_b and "log (step 100)" in row_b           # unfinished: last eval from the log
    row_a = next(l for l in lines if l.startswith("runA"))
    assert "3.0000" in row_a and "1,000,000" in row_a and "results.json" in row_a


def test_malformed_and_unknown_lines_are_skipped(tmp_path, capsys):
    log = make_run(tmp_path / "run", 3.0, finished=False,
                   extra_lines=['{"event": "weird", "step": 3}', '{"event": "train", "step": 200, "train_n'])
    assert plot.main([str(log), "-o", str(tmp_path / "a.png")]) == 0
    run = plot.load_run(log)
    assert run.steps == 100 and run.val_nll == pytest.approx(3.0)

# -----------------------------------------------------------------------------
# error cases: exit 2 and a one-line message on stderr

@pytest.mark.parametrize("case", ["no_files", "missing", "no_rows"])
def test_errors_exit_2_one_line(tmp_path, capsys, case):
    if case == "no_files":
        argv = []
    elif case == "missing":
        argv = [str(tmp_path / "nope" / "log.txt")]
    else:
        bad = tmp_path / "empty" / "log.txt"
        bad.parent.mkdir()
        bad.write_text('{"event": "start", "step": 0, "config": {}}\nnot json\n{"event": "end", "step": 0}\n')
        argv = [str(bad)]
    assert plot.main(argv + ["-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("plot.py: error:")
    assert not (tmp_path / "x.png").exists()


def test_cli_error_exit_code():
    # the real entry point (also checks plot.py runs as a script)
    p = subprocess.run([sys.executable, str(HERE / "plot.py")], capture_output=True, text=True, cwd=HERE)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no log files" in p.stderr

# -----------------------------------------------------------------------------
# report mode

def test_report_seven_experiments(ablation_dir, capsys):
    pdf = ablation_dir / "report.pdf"
    assert plot.main(all_logs(ablation_dir) + ["--report", str(pdf), "--no_samples"]) == 0
    assert pdf.exists() and plot.count_pdf_pages(pdf) == 1
    png = ablation_dir / "report.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    md = (ablation_dir / "report.md").read_text()
    assert "![NLL vs step](report.png)" in md
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + 7                                    # header, separator, seven experiments
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[1:-1]] for l in table[2:]}
    assert list(rows) == EXPERIMENTS
    assert rows["baseline"][3] == "3.1000 ± 0.1414"
    assert rows["swiglu"][4].startswith("-0.1250 ± 0.0354") and rows["swiglu"][5] == "yes, better"
    assert rows["rmsnorm"][5] == "yes, worse" and rows["warmup"][5] == "no"
    assert rows["all"][1] == "all five" and rows["swiglu"][1] == "swiglu" and rows["baseline"][1] == "none"
    verdict = next(l for l in md.splitlines() if "Verdict" in l)
    assert "more than the noise: swiglu" in verdict and "all" in verdict
    assert "within the noise: warmup" in verdict and "beyond the noise: rmsnorm" in verdict
    assert "step-matched" in md
    assert not (ablation_dir / "nll.png").exists()                # -o not given in report mode


def test_report_one_seed_time_matched_and_missing_ckpt(tmp_path, capsys):
    root = tmp_path / "abl"
    logs = [make_run(root / exp / "seed1", FINALS[exp][0], exp, 1, max_time="30m") for exp in ["baseline", "swiglu"]]
    pdf = root / "report.pdf"
    # samples requested but no ckpt.pt exists (and sample.py may not exist): must not crash
    assert plot.main([str(p) for p in logs] + ["--report", str(pdf), "--sample_tokens", "5"]) == 0
    md = (root / "report.md").read_text()
    assert "n/a (1 seed)" in md and "time-matched: max_time = 30m" in md and md.count("(no checkpoint)") == 2
    assert plot.count_pdf_pages(pdf) == 1


def test_report_text_fits_on_page(ablation_dir):
    """Long, messy samples are cleaned, truncated and stay inside the page."""
    runs = [plot.load_run(p) for p in all_logs(ablation_dir)]
    groups = plot.group_by_experiment(runs)
    rows = plot.summarize(groups)
    messy = "word\x00\x1b[31m\tnew\nline " * 200 + "x" * 500
    samples = {e: (g[0].name, plot.clean_text(messy)) for e, g in groups.items()}
    assert "\n" not in samples["all"][1] and "\x00" not in samples["all"][1]
    fig = plot.build_report_figure(groups, rows, plot.verdict_line(rows), plot.matching_note(runs), samples,
                                   "Samples: test", 0.9, "t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    texts = fig.texts + [c.get_text() for c in fig.axes[1].tables[0].get_celld().values()]
    for t in texts:
        bb = t.get_window_extent(renderer)
        assert page.x0 - 1 <= bb.x0 and bb.x1 <= page.x1 + 1 and page.y0 - 1 <= bb.y0 and bb.y1 <= page.y1 + 1, \
            (t.get_text()[:60], bb, page)
    plot._pyplot().close(fig)


def test_count_pdf_pages(tmp_path):
    plt = plot._pyplot()
    from matplotlib.backends.backend_pdf import PdfPages
    path = tmp_path / "two.pdf"
    with PdfPages(path) as pdf:
        for _ in range(2):
            fig = plt.figure(figsize=plot.A4_PORTRAIT)
            pdf.savefig(fig)
            plt.close(fig)
    assert plot.count_pdf_pages(path) == 2
