"""Tests of train.py's data path at scale: the line index and its cache, many files (folder, glob),
.jsonl.zst streaming (split, seeded order, exact resume), and every bad input of the data issue.
Run with: python -m pytest -q test_data.py (about 20 s)."""

import json
import os
import pickle
import sys
import time

import numpy as np
import pytest

import train
from train import UserError

zstandard = pytest.importorskip("zstandard")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def doc(text):
    return json.dumps({"text": text, "meta": {"pile_set_name": "Test"}}).encode()


def texts(n, start=0):
    return [f"document {i}: " + " ".join(["word"] * (i % 7 + 12)) for i in range(start, start + n)]


def write(path, lines, end=b"\n"):
    path.write_bytes(b"".join(line + end for line in lines))
    return path


def write_zst(path, data, frames=2):
    """data compressed as `frames` concatenated zstd frames (as pzstd writes), so that a reader which
    stops after the first frame is caught."""
    cut = [len(data) * k // frames for k in range(frames + 1)]
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(data[a:b]) for a, b in zip(cut, cut[1:])))
    return path


def one_line(excinfo):
    return "\n" not in str(excinfo.value) and str(excinfo.value)


def flatten(order, n):
    out = []
    for group in order:
        out += group
        if len(out) >= n:
            return out[:n]


def run_stream(ds, n_train, batches, state=None, workers=0, seed=3, shuffle_tokens=16 * 64):
    stream = train.TrainStream(ds, n_train, seed=seed, batch_size=4, block_size=16, num_workers=workers, state=state,
                               shuffle_tokens=shuffle_tokens)
    out = [stream.next_batch()[0] for _ in range(batches)]
    stream.close()
    return out, stream


# -----------------------------------------------------------------------------
# the line index

def test_index_finds_every_line_in_long_and_short_line_chunks(tmp_path):
    # > 1 MB: chunks of few long lines (bytes.find) and of many short ones (numpy), CRLF, no final newline
    lines = [b"x" * 5000] * 150 + [b"y" * 10 + b"\r"] * 60_000 + [b"z" * 70_000] * 20 + [b"end"]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"\n".join(lines))
    data = f.read_bytes()
    expected = np.concatenate([[0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1, [len(data)]])
    assert np.array_equal(train.build_line_index(f), expected)
    cached = train.load_line_index(f)  # streamed into its .npy file
    assert isinstance(cached, np.memmap) and np.array_equal(cached, expected)
    ds = train.JSONLDataset([f])
    assert ds.read_line(150) == b"y" * 10 + b"\r\n" and ds.read_line(len(lines) - 1) == b"end"


def test_index_cache_is_reused_checked_and_rebuilt(tmp_path, monkeypatch):
    f = write(tmp_path / "c.jsonl", [doc(t) for t in texts(5)])
    builds = []
    real_build = train.build_line_index
    monkeypatch.setattr(train, "build_line_index", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    first = np.array(train.load_line_index(f))
    assert len(first) == 6 and len(builds) == 1
    [cached] = tmp_path.glob(".c.jsonl.*.idx.npy")
    assert np.array_equal(train.load_line_index(f), first) and len(builds) == 1  # loaded, not rebuilt

    # a half-written index (a killed run, a full disk) is never trusted
    cached.write_bytes(cached.read_bytes()[:150])
    assert np.array_equal(train.load_line_index(f), first) and len(builds) == 2
    cached.write_bytes(b"garbage")
    assert np.array_equal(train.load_line_index(f), first) and len(builds) == 3
    np.save(cached, np.array([0, 5], dtype=np.int64))  # well-formed, but not this file's index
    assert np.array_equal(train.load_line_index(f), first) and len(builds) == 4

    # a changed file (same size, new mtime; then a new size) is indexed again; stale indexes go
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert len(train.load_line_index(f)) == 6 and len(builds) == 5
    with open(f, "ab") as out:
        out.write(doc("one more") + b"\n")
    assert len(train.load_line_index(f)) == 7 and len(builds) == 6
    assert len(list(tmp_path.glob(".c.jsonl.*.idx.npy"))) == 1

    # temporary files of a run killed while indexing: removed once old, never read
    old_tmp = tmp_path / (cached.name + ".tmp99999")
    old_tmp.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    with open(f, "ab") as out:
        out.write(doc("and another") + b"\n")
    assert len(train.load_line_index(f)) == 8 and not old_tmp.exists()


def test_read_only_data_folder_indexes_into_the_cache_folder(tmp_path, monkeypatch):
    data = tmp_path / "ro"
    data.mkdir()
    f = write(data / "c.jsonl", [doc(t) for t in texts(4)])
    real_open = open

    def no_writes_in_data(path, mode="r", *a, **k):  # root ignores chmod: refuse writes here instead
        if "w" in mode and os.path.dirname(os.path.abspath(path)) == str(data):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(train, "open", no_writes_in_data, raising=False)
    os.chmod(data, 0o555)
    try:
        ds = train.JSONLDataset([f])
        assert len(ds) == 4 and ds.document(3)[0] == texts(4)[3]
        assert list(data.iterdir()) == [f]
        assert len(list((tmp_path / "cache" / "gpt-ablate" / "index").glob("*.c.jsonl.*.idx.npy"))) == 1
        monkeypatch.setattr(train, "build_line_index", None)  # the second run loads it
        assert len(train.JSONLDataset([f])) == 4
    finally:
        os.chmod(data, 0o755)


def test_dataset_travels_to_workers_without_copying_the_index(tmp_path):
    f = write(tmp_path / "c.jsonl", [doc(t) for t in texts(5)])
    ds = train.JSONLDataset([f])
    ds.document(0)
    copy = pickle.loads(pickle.dumps(ds))
    assert isinstance(copy.indexes[0], np.memmap) and copy._fds == {}
    assert [copy.document(i)[0] for i in range(5)] == texts(5)


def test_progress_line():
    lines = []
    report = train.progress_reporter("indexing x", 4e9, lines.append, every=0)
    report(1e9)
    assert len(lines) == 1 and lines[0].startswith("indexing x: 1.0/4.0 GB (") and "GB/s)" in lines[0]


# -----------------------------------------------------------------------------
# many files

def test_folder_and_glob_form_one_dataset_with_validation_at_the_end(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write(folder / "b.jsonl", [doc(t) for t in texts(5, 5)])
    write(folder / "a.jsonl", [doc(t) for t in texts(5, 0)])
    write(folder / "c.jsonl", [doc(t) for t in texts(3, 10)], end=b"\r\n")
    (folder / "notes.txt").write_text("not data")
    files = train.resolve_data_paths(str(folder))
    assert [p.name for p in files] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert [p.name for p in train.resolve_data_paths(str(folder / "[ab].jsonl"))] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in train.resolve_data_paths(str(folder / "*.jsonl"))] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    ds = train.JSONLDataset(files)
    assert len(ds) == 13 and [ds.document(i)[0] for i in range(13)] == texts(13)
    n_train, val, skipped = train.split_validation(ds, 4)  # spans the last two files
    assert n_train == 9 and val == texts(13)[9:] and skipped == {}
    assert sorted(flatten(train.DocumentOrder(n_train, seed=0), n_train)) == list(range(9))


def test_many_files_keep_few_descriptors_open(tmp_path):
    files = [write(tmp_path / f"{i:03d}.jsonl", [doc(t)]) for i, t in enumerate(texts(70))]
    ds = train.JSONLDataset(files)
    for i in list(range(70)) * 2:
        assert ds.document(i)[0] == texts(70)[i]
    assert len(ds._fds) <= 64


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "missing.jsonl"), "data file not found"),
    (lambda p: str(p / "nothing-*.jsonl"), "glob matches no file"),
    (lambda p: str(p), "no .jsonl or .jsonl.zst files in folder"),
])
def test_bad_paths_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as e:
        train.resolve_data_paths(make(tmp_path))
    assert one_line(e)


def test_empty_and_mixed_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="data file is empty") as e:
        train.JSONLDataset([empty])
    assert one_line(e)
    plain = write(tmp_path / "a.jsonl", [doc("x")])
    packed = write_zst(tmp_path / "b.jsonl.zst", doc("y") + b"\n")
    with pytest.raises(UserError, match="mixes .jsonl.zst") as e:
        train.JSONLDataset(train.resolve_data_paths(str(tmp_path / "*.jsonl*")))
    assert one_line(e)
    assert len(train.JSONLDataset([plain])) == len(train.JSONLDataset([packed])) == 1


# -----------------------------------------------------------------------------
# bad lines: each is skipped and counted, or read as documented; nothing crashes

NESTED = b'{"text": "deep", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_LINES = [  # (raw line, why it is unusable or '' with the text it must give)
    (b"\xef\xbb\xbf" + doc("a BOM opens the file " * 3), ("", "a BOM opens the file " * 3)),
    (doc("a CRLF line " * 3) + b"\r", ("", "a CRLF line " * 3)),
    (b"", ("blank", None)),
    (b"   \t", ("blank", None)),
    (b'{"text": "raw \x00 NUL inside"}', ("bad_json", None)),
    (b"\x00" * 40, ("bad_json", None)),
    (doc("escaped \x00 NUL is text " * 2), ("", "escaped \x00 NUL is text " * 2)),
    (NESTED, ("bad_json", None)),
    (b'{"text": "first", "text": "duplicate keys: the last one wins"}', ("", "duplicate keys: the last one wins")),
    (b'{"text": "lone surrogates \\ud800 and \\udfff in JSON escapes"}',
     ("", "lone surrogates \ud800 and \udfff in JSON escapes")),
    (b'{"text": "a surrogate as raw bytes \xed\xa0\x80"}', ("not_utf8", None)),
    (b'{"text": "latin-1 caf\xe9"}', ("not_utf8", None)),
    (b'{"text": 7}', ("no_text", None)),
    (b'["a list"]', ("not_object", None)),
    (doc("   "), ("too_short", None)),
    (doc("a usable line between the bad ones " * 3), ("", "a usable line between the bad ones " * 3)),
    (doc("the validation document " * 4), ("", "the validation document " * 4)),
    (b'{"text": "a final object cut off by a crash', ("bad_json", None)),  # and no final newline
]


def bad_input_bytes():
    return b"\n".join(line for line, _ in BAD_LINES)


def check_bad_input_dataset(ds, workers):
    assert len(ds) == len(BAD_LINES)
    n_train, val, val_skipped = train.split_validation(ds, 1)
    assert val == ["the validation document " * 4] and n_train == len(BAD_LINES) - 2
    assert val_skipped == {"bad_json": 1}
    out, stream = run_stream(ds, n_train, batches=12, workers=workers)  # > 1 epoch
    expected = {}
    for _, (why, _) in BAD_LINES[:n_train]:
        if why:
            expected[why] = expected.get(why, 0) + 1
    assert stream.epoch >= 1 and stream.skipped == expected  # counted once, on the first pass


def test_every_bad_line_is_skipped_and_counted_or_read(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(bad_input_bytes())
    ds = train.JSONLDataset([f])
    for i, (_, (why, text)) in enumerate(BAD_LINES):
        assert ds.document(i) == (text if not why else None, why), i
        tokens, got = ds[i]
        assert got == why and (len(tokens) == 0 if why else tokens[-1] == train.EOT and len(tokens) > 1)
    check_bad_input_dataset(ds, workers=1)  # a worker process survives every line


def test_every_bad_line_in_a_zst_file(tmp_path):
    ds = train.JSONLDataset([write_zst(tmp_path / "bad.jsonl.zst", bad_input_bytes())])
    check_bad_input_dataset(ds, workers=0)


def test_a_20_mb_document_is_read_whole(tmp_path):
    big = "twenty megabytes of one document. " * 600_000
    lines = [doc("a small document before"), doc(big), doc("a small one after it")]
    f = write(tmp_path / "big.jsonl", lines)
    ds = train.JSONLDataset([f])
    assert len(ds) == 3 and ds.document(1) == (big, "")
    assert train.split_validation(ds, 1)[:2] == (2, ["a small one after it"])
    packed = train.JSONLDataset([write_zst(tmp_path / "big.jsonl.zst", f.read_bytes())])
    [raw] = [line for line in flatten(train.StreamOrder(packed, 2, seed=0), 2) if len(line) > 1000]
    assert packed.document(raw) == (big, "")


def test_files_without_enough_usable_documents_are_one_line_errors(tmp_path):
    junk = write(tmp_path / "junk.jsonl", [b"", b"not json", b'{"meta": {}}'])
    for ds in (train.JSONLDataset([junk]), train.JSONLDataset([write_zst(tmp_path / "j.jsonl.zst", junk.read_bytes())])):
        with pytest.raises(UserError, match="no usable document") as e:
            train.split_validation(ds, 1)
        assert one_line(e)
    few = write(tmp_path / "few.jsonl", [doc(t) for t in texts(3)])
    for ds in (train.JSONLDataset([few]), train.JSONLDataset([write_zst(tmp_path / "f.jsonl.zst", few.read_bytes())])):
        with pytest.raises(UserError, match="val_docs=5 but the data has only 3") as e:
            train.split_validation(ds, 5)
        assert one_line(e)
        with pytest.raises(UserError, match="no training documents left"):
            train.split_validation(ds, 3)


def test_training_lines_that_are_all_unusable_are_a_one_line_error(tmp_path):
    # the validation documents are fine, every training line is not: one pass over them says so
    # (without the check the stream would read the unusable lines forever)
    lines = [b"", b"not json", b'{"text": 3}', b"[1]"] + [doc(t) for t in texts(2)]
    for ds in (train.JSONLDataset([write(tmp_path / "t.jsonl", lines)]),
               train.JSONLDataset([write_zst(tmp_path / "t.jsonl.zst", b"".join(l + b"\n" for l in lines))])):
        n_train = train.split_validation(ds, 2)[0]
        stream = train.TrainStream(ds, n_train, seed=0, batch_size=2, block_size=8)
        with pytest.raises(UserError, match="no usable training document in 4 lines") as e:
            for _ in range(n_train):
                stream.next_document()
        assert one_line(e)
        stream.close()


# -----------------------------------------------------------------------------
# .jsonl.zst

def make_pair(tmp_path):
    """The same two shards as .jsonl and as multi-frame .jsonl.zst, a few bad lines included."""
    lines = [doc(t) for t in texts(60)]
    lines[7], lines[31], lines[35], lines[58] = b"", b"not json", b"  ", b'{"text": 3}'
    shards = [lines[:35], lines[35:]]
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    for i, shard in enumerate(shards):
        write(plain / f"{i:02d}.jsonl", shard)
        write_zst(packed / f"{i:02d}.jsonl.zst", b"".join(line + b"\n" for line in shard), frames=3)
    return (train.JSONLDataset(train.resolve_data_paths(str(plain))),
            train.JSONLDataset(train.resolve_data_paths(str(packed))))


def test_zst_gives_the_same_lines_and_split_as_uncompressed(tmp_path):
    plain, packed = make_pair(tmp_path)
    assert packed.streaming and not plain.streaming
    assert len(packed) == len(plain) == 60 and list(packed.first_line) == [0, 35, 60]
    for val_docs in (3, 30):  # within the last file; across both
        assert train.split_validation(packed, val_docs) == train.split_validation(plain, val_docs)
    assert train.split_validation(packed, 30)[2] == {"no_text": 1, "blank": 1, "bad_json": 1}


def test_zst_split_when_the_last_lines_are_mostly_unusable(tmp_path):
    # the tail of a .zst that is parsed first (the last 2*val_docs + 1000 lines) holds too few documents
    lines = [doc(t) for t in texts(50)] + [b"", b"not json"] * 600 + [doc("the very last")]
    plain = write(tmp_path / "tail.jsonl", lines)
    packed = write_zst(tmp_path / "tail.jsonl.zst", plain.read_bytes())
    expected = train.split_validation(train.JSONLDataset([plain]), 4)
    assert expected[0] == 47 and expected[2] == {"blank": 600, "bad_json": 600}
    assert train.split_validation(train.JSONLDataset([packed]), 4) == expected


def test_zst_line_counts_are_cached(tmp_path, monkeypatch):
    _, packed = make_pair(tmp_path)
    assert len(list((tmp_path / "packed").glob(".*.lines.npy"))) == 2
    monkeypatch.setattr(train, "count_zst_lines", None)
    assert len(train.JSONLDataset(packed.files)) == 60


def test_zst_order_is_seeded_covers_every_line_and_reshuffles(tmp_path):
    plain, packed = make_pair(tmp_path)
    n_train = train.split_validation(packed, 5)[0]
    lines = [plain.read_line(i) for i in range(n_train)]
    order = flatten(train.StreamOrder(packed, n_train, seed=1), 2 * n_train)
    assert sorted(order[:n_train]) == sorted(lines) and sorted(order[n_train:]) == sorted(lines)
    assert order[:n_train] != lines and order[:n_train] != order[n_train:]  # shuffled, and again each epoch
    assert flatten(train.StreamOrder(packed, n_train, seed=1), 2 * n_train) == order
    assert flatten(train.StreamOrder(packed, n_train, seed=2), n_train) != order[:n_train]
    resumed = flatten(train.StreamOrder(packed, n_train, seed=1, epoch=1, pos=17), n_train - 17)
    assert resumed == order[n_train + 17:]
    second_file = set(lines[35:])
    assert {flatten(train.StreamOrder(packed, n_train, seed=s), 1)[0] in second_file for s in range(8)} == {
        True, False}  # the file order is shuffled too


def test_shuffle_buffer_is_a_bounded_seeded_permutation():
    items = [b"%d" % i for i in range(1000)]
    pulled = []

    def source():
        for item in items:
            pulled.append(item)
            yield item

    out = []
    for item in train.shuffle_buffer(source(), np.random.default_rng(0), max_items=50):
        assert len(pulled) - len(out) <= 51  # never more than max_items held (+ the one arriving)
        out.append(item)
    assert sorted(out) == sorted(items) and out != items
    assert list(train.shuffle_buffer(iter(items), np.random.default_rng(0), max_items=50)) == out
    pulled.clear()
    by_bytes = []
    for item in train.shuffle_buffer(source(), np.random.default_rng(0), max_bytes=100):
        assert sum(map(len, pulled)) - sum(map(len, by_bytes)) <= 100 + 4  # + the one arriving (<= 4 bytes)
        by_bytes.append(item)
    assert sorted(by_bytes) == sorted(items) and by_bytes != out


def test_zst_order_shards_lines_among_ranks(tmp_path):
    # distributed: rank r of 3 takes lines r::3 of each epoch's order, and resumes at pos in its own share
    _, packed = make_pair(tmp_path)
    n_train = train.split_validation(packed, 5)[0]
    full = flatten(train.StreamOrder(packed, n_train, seed=1), 2 * n_train)
    epochs = full[:n_train], full[n_train:]
    for rank in range(3):
        share = len(range(rank, n_train, 3))
        got = flatten(train.StreamOrder(packed, n_train, seed=1, rank=rank, world=3), 2 * share)
        assert got == epochs[0][rank::3] + epochs[1][rank::3], rank
        later = flatten(train.StreamOrder(packed, n_train, seed=1, epoch=1, pos=4, rank=rank, world=3), 3)
        assert later == epochs[1][rank::3][4:7], rank


def test_zst_stream_resumes_exactly_for_any_worker_count(tmp_path):
    _, packed = make_pair(tmp_path)
    n_train = train.split_validation(packed, 5)[0]
    full, _ = run_stream(packed, n_train, batches=40)  # about two epochs
    first, stream = run_stream(packed, n_train, batches=25)
    state = stream.state_dict()
    assert state["epoch"] >= 1 and state["pos"] > 0 and len(state["buffer"]) > 0  # mid-epoch, a buffer full
    rest, _ = run_stream(packed, n_train, batches=15, state=state, workers=1)
    assert all((a == b).all() for a, b in zip(first + rest, full))


# -----------------------------------------------------------------------------
# the training order across epochs, for every kind of data (one file, several files, .jsonl.zst)

def shards(tmp_path, kind):
    """60 lines (bad ones among them) as one .jsonl, as 4 .jsonl shards, or as 4 multi-frame .jsonl.zst
    shards; -> (dataset, training lines, {tokens: document number} of the usable training lines,
    the shard of each document number)."""
    lines = [doc(t) for t in texts(60)]
    lines[5], lines[22], lines[40] = b"", b"not json", b'{"text": 3}'
    folder = tmp_path / kind
    folder.mkdir()
    shard = [0 if kind == "one_file" else i // 15 for i in range(60)]
    for k in sorted(set(shard)):
        part = b"".join(line + b"\n" for line, s in zip(lines, shard) if s == k)
        if kind == "zst":
            write_zst(folder / f"{k}.jsonl.zst", part, frames=2)
        else:
            (folder / f"{k}.jsonl").write_bytes(part)
    ds = train.JSONLDataset(train.resolve_data_paths(str(folder)))
    n_train = train.split_validation(ds, 4)[0]
    usable = {tuple(train.tokenize(t).tolist()): i for i, t in enumerate(texts(n_train)) if i not in (5, 22, 40)}
    return ds, n_train, usable, shard


def documents_by_epoch(ds, n_train, usable, epochs, state=None, workers=0):
    """The document numbers TrainStream hands out, per epoch as the stream itself counts epochs, until
    it has finished `epochs` epochs (or read as many lines as that takes from its start)."""
    stream = train.TrainStream(ds, n_train, seed=3, batch_size=2, block_size=8, num_workers=workers, state=state)
    got = {}
    for _ in range(epochs * n_train - stream.epoch * n_train - stream.pos):
        epoch, tokens = stream.epoch, stream.next_document()
        if len(tokens):
            got.setdefault(epoch, []).append(usable[tuple(tokens.tolist())])
    assert (stream.epoch, stream.pos) == (epochs, 0), "the stream did not count its epochs"
    stream.close()
    return got


@pytest.mark.parametrize("kind", ["one_file", "several_files", "zst"])
def test_every_epoch_reshuffles_and_a_resume_inside_epoch_1_continues_its_order(tmp_path, kind):
    ds, n_train, usable, shard = shards(tmp_path, kind)
    epochs = documents_by_epoch(ds, n_train, usable, 3)
    assert sorted(epochs) == [0, 1, 2]
    for order in epochs.values():  # each epoch: every usable training document once
        assert sorted(order) == sorted(usable.values())
    for a, b in ((0, 1), (1, 2), (0, 2)):  # no epoch repeats another's order, nor any shard's order in it
        assert epochs[a] != epochs[b], (a, b)
        for k in set(shard[:n_train]):
            assert [d for d in epochs[a] if shard[d] == k] != [d for d in epochs[b] if shard[d] == k], (a, b, k)
    if kind == "zst":  # the shards are read one after another, in an order reshuffled each epoch too
        shard_orders = {tuple(dict.fromkeys(shard[d] for d in order)) for order in epochs.values()}
        assert len(shard_orders) > 1
    # stopped inside epoch 1 (the state a checkpoint saves), resumed by a new stream: epoch 1 goes on
    stream, before = train.TrainStream(ds, n_train, seed=3, batch_size=2, block_size=8), []
    for _ in range(n_train + 20):
        epoch, tokens = stream.epoch, stream.next_document()
        if epoch == 1 and len(tokens):
            before.append(usable[tuple(tokens.tolist())])
    state = stream.state_dict()
    assert (state["epoch"], state["pos"]) == (1, 20)
    stream.close()
    rest = documents_by_epoch(ds, n_train, usable, 3, state=state, workers=1 if kind == "zst" else 0)
    assert before and rest[1] and before + rest[1] == epochs[1] and rest[2] == epochs[2]


def test_zst_errors_are_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken.jsonl.zst"
    broken.write_bytes(b"this is not zstd data at all")
    with pytest.raises(UserError, match="not valid zstd data") as e:
        train.JSONLDataset([broken])
    assert one_line(e)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed
    with pytest.raises(UserError, match="pip install zstandard") as e:
        train.JSONLDataset([write_zst(tmp_path / "ok.jsonl.zst", doc("x") + b"\n")])
    assert one_line(e)


def test_truncated_zst_keeps_the_lines_before_the_cut(tmp_path):
    data = b"".join(doc(t) + b"\n" for t in texts(2000))
    whole = zstandard.ZstdCompressor().compress(data)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole[:len(whole) // 2])
    ds = train.JSONLDataset([cut])
    assert 0 < len(ds) < 2000
    n_train, val, skipped = train.split_validation(ds, 1)
    assert skipped == {"bad_json": 1} and val == [texts(2000)[n_train]]


def test_training_runs_and_resumes_on_zst_shards(tmp_path, capsys):
    folder = tmp_path / "pile"
    folder.mkdir()
    for i in range(2):
        write_zst(folder / f"{i:02d}.jsonl.zst", b"".join(doc(t) + b"\n" for t in texts(40, 40 * i)))
    args = [f"--data_path={folder}/*.jsonl.zst", f"--out_dir={tmp_path / 'out'}", "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=2", "--val_docs=4", "--eval_iters=1",
            "--eval_interval=2", "--log_interval=1", "--ckpt_interval=2", "--device=cpu", "--dtype=float32"]
    assert train.main(args + ["--max_iters=2"]) == 0
    assert train.main(args + ["--max_iters=4", "--resume=True"]) == 0
    assert "80 lines in 2 file(s)" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["steps"] == 4
    assert train.main(args[2:] + [f"--out_dir={tmp_path / 'out2'}", f"--data_path={folder}/*.jsonl"]) == 2
    assert "glob matches no file" in capsys.readouterr().err
