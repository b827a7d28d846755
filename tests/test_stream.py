"""The training stream: order a pure function of (seed, epoch), bounded shuffling, exact resume, soft labels in step."""

from __future__ import annotations

import numpy as np
import pytest

from crossdistill.data.shards import DatasetWriter
from crossdistill.data.stream import READ_AHEAD, BatchStream, _FragmentLoader
from crossdistill.errors import DataError

N = 1000


def _write(uri, columns: dict[str, np.ndarray], rows_per_shard: int, row_group_rows: int, meta=None) -> str:
    with DatasetWriter(str(uri), meta or {}, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows) as w:
        w.write(columns)
    return str(uri)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """1,000 rows in 4 shards of 64-row groups; a third unlabeled; soft labels cut into other row groups."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    x = rng.normal(size=(N, 2, 3)).astype(np.float32)
    y = np.where(np.arange(N) % 3 == 0, -1, np.arange(N) % 5)
    logits = rng.normal(size=(N, 5)).astype(np.float32)
    inputs = _write(root / "inputs", {"id": ids, "x": x, "y": y}, 250, 64, {"class_names": list("abcde")})
    soft = _write(root / "soft", {"id": ids, "logits": logits}, 600, 150)
    return {"inputs": inputs, "soft": soft, "ids": ids, "x": x, "y": y, "logits": logits, "root": root}


def _stream(data, **kw) -> BatchStream:
    args = dict(batch_size=32, seed=3, shuffle_buffer=150, num_classes=5, soft=data["soft"], soft_columns=["logits"])
    return BatchStream(data["inputs"], **{**args, **kw})


def _run(stream: BatchStream, start=(0, 0), epochs=2) -> list[tuple[int, int, np.ndarray]]:
    return [(b.epoch, b.index, b.ids) for b in stream.batches(*start, epochs)]


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch(data):
    first, again = _run(_stream(data)), _run(_stream(data))
    assert [(e, i) for e, i, _ in first] == [(e, i) for e in range(2) for i in range(32)]  # ceil(1000 / 32)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    for epoch in range(2):
        ids = np.concatenate([b for e, _, b in first if e == epoch])
        assert sorted(ids) == sorted(data["ids"])
    e0 = np.concatenate([b for e, _, b in first if e == 0])
    e1 = np.concatenate([b for e, _, b in first if e == 1])
    other_seed = np.concatenate([b for _, _, b in _run(_stream(data, seed=4), epochs=1)])
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, other_seed)
    # the order is known without reading any data
    keys = list(_stream(data).batch_keys(1))
    assert all(np.array_equal(data["ids"][k], b) for k, (_, _, b) in zip(keys, first[32:], strict=True))


@pytest.mark.parametrize("buffer", [0, 150, 5000])
def test_rows_held_are_bounded_by_the_buffer_plus_a_row_group(data, buffer, monkeypatch):
    """Rows read but not yet batched never exceed shuffle_buffer + one row group (64) + a batch (32), plus
    the row groups read ahead."""
    loaded = []
    load = _FragmentLoader.load
    monkeypatch.setattr(_FragmentLoader, "load", lambda self, i: loaded.append(self.key_starts[i]) or load(self, i))
    stream, held, emitted = _stream(data, shuffle_buffer=buffer), [], 0
    for batch in stream.batches(0, 0, 1):
        emitted += len(batch)
        read = sum(int(stream.counts[stream.key_starts.tolist().index(k)]) for k in loaded)
        held.append(read - emitted + len(batch))
    assert max(held) <= min(buffer + 64 + 32 + READ_AHEAD * 64, N)
    assert max(held) >= min(buffer, N - 64)  # the buffer does fill: rows are mixed across row groups


def test_resume_anywhere_replays_the_same_batches_with_any_number_of_workers(data):
    full = _run(_stream(data))
    for workers in (0, 2):
        for start in ((0, 1), (0, 17), (1, 31)):
            rest = _run(_stream(data, num_workers=workers), start)
            expected = [b for b in full if (b[0], b[1]) >= start]
            assert [(e, i) for e, i, _ in rest] == [(e, i) for e, i, _ in expected]
            assert all(np.array_equal(a[2], b[2]) for a, b in zip(rest, expected, strict=True)), (workers, start)


def test_inputs_labels_and_soft_labels_stay_together(data):
    row = {int(i): r for r, i in enumerate(data["ids"])}
    for b in _stream(data, num_workers=1).batches(0, 0, 1):
        rows = np.array([row[int(i)] for i in b.ids])
        assert np.array_equal(b.x, data["x"][rows]) and np.array_equal(b.y, data["y"][rows])
        assert np.array_equal(b.soft["logits"], data["logits"][rows])


def test_labeled_only_drops_unlabeled_rows_and_still_resumes(data):
    stream = _stream(data, labeled_only=True, soft=None, soft_columns=())
    labeled = int((data["y"] != -1).sum())
    assert stream.num_rows == labeled and stream.batches_per_epoch == -(-labeled // 32)
    full = _run(stream, epochs=1)
    assert (np.concatenate([b.y for b in stream.batches(0, 0, 1)]) != -1).all()
    rest = _run(_stream(data, labeled_only=True, soft=None, soft_columns=()), (0, 9), epochs=1)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(rest, full[9:], strict=True))


def test_ranks_read_disjoint_parts(data):
    parts = [np.concatenate([b for _, _, b in _run(_stream(data, rank=r, world=3), epochs=1)]) for r in range(3)]
    assert sorted(np.concatenate(parts)) == sorted(data["ids"])
    # the ranks of one run share one checkpoint; another number of ranks is another data order
    assert _stream(data, rank=0, world=3).fingerprint() == _stream(data, rank=1, world=3).fingerprint()
    assert _stream(data, rank=0, world=3).fingerprint() != _stream(data, rank=0, world=2).fingerprint()


def test_ranks_of_a_dataset_with_few_row_groups_share_them_row_by_row(data):
    # 16 row groups: fewer than 4 per rank for 5 ranks, so each rank keeps every fifth row of every group
    streams = [_stream(data, rank=r, world=5) for r in range(5)]
    assert [s.num_rows for s in streams] == [N // 5] * 5
    row = {int(i): r for r, i in enumerate(data["ids"])}
    for r, stream in enumerate(streams):
        for b in stream.batches(0, 0, 1):
            rows = np.array([row[int(i)] for i in b.ids])
            assert (rows % 5 == r).all()
            assert np.array_equal(b.soft["logits"], data["logits"][rows])  # soft labels stay with their rows
    ids = np.concatenate([b.ids for s in streams for b in s.batches(1, 0, 2)])
    assert sorted(ids) == sorted(data["ids"])
    assert streams[0].fingerprint() == streams[4].fingerprint()
    labeled = [_stream(data, rank=r, world=5, labeled_only=True) for r in range(5)]
    assert sum(s.num_rows for s in labeled) == int((data["y"] != -1).sum())


@pytest.mark.parametrize("workers", [0, 1])
def test_soft_labels_out_of_step_are_named(data, workers):
    ids = data["ids"].copy()
    ids[[400, 401]] = ids[[401, 400]]
    bad = _write(data["root"] / f"bad{workers}", {"id": ids, "logits": data["logits"]}, 600, 150)
    with pytest.raises(DataError, match=rf"bad{workers}: row 400 has id {data['ids'][401]} but row 400 of "
                                        rf".*inputs has id {data['ids'][400]}: soft labels must be in the same row "
                                        r"order as their inputs") as err:
        _run(_stream(data, soft=bad, num_workers=workers))
    assert "Traceback" not in str(err.value)
    short = _write(data["root"] / f"short{workers}", {"id": ids[:-1], "logits": data["logits"][:-1]}, 600, 150)
    with pytest.raises(DataError, match=f"short{workers} has {N - 1} rows but .*inputs has {N}"):
        _stream(data, soft=short)


def test_labels_outside_the_classes_are_named(data):
    with pytest.raises(DataError, match=r"row \d+ \(id \d+\) has label 4, expected -1 \(unlabeled\) or a class "
                                        r"index 0\.\.3"):
        _run(_stream(data, num_classes=4))
