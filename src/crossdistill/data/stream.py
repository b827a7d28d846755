"""Training batches streamed row group by row group, in an order that is a pure function of (seed, epoch).

Per epoch, ``rng = default_rng([seed, epoch])`` first permutes the fragments (row groups) of this
rank's part; their rows enter a shuffle buffer one fragment at a time, and whenever the buffer would
still hold ``shuffle_buffer`` rows after a batch, ``batch_size`` rows drawn by ``rng`` leave it as a
batch; at the end of the epoch the rest leaves in random batches. Memory is bounded by the buffer
plus one row group (and the fragments in flight to DataLoader workers), whatever the dataset's size.

Only row counts feed ``rng``, so the order can be replayed without reading data: a resume at
``(epoch, batch)`` replays the draws on row keys alone, re-reads only the fragments whose rows are
still in the buffer at that point and goes on; nothing skipped reaches a model or a teacher.

Reading a fragment, reading its soft labels in step (same global rows of the soft-label dataset, ids
checked) and decoding the inputs (:class:`Preprocessor`) run in ``num_workers`` DataLoader workers
(in this process when 0, by one read-ahead thread); the buffer holds the decoded values as stored
(uint8 pixels stay uint8) and each drawn batch is normalised to float32. Fragments come back in job
order whatever the number of workers, so the batch order does not depend on ``num_workers``.

A text dataset (import-data ``text=``) streams the same way: ``Batch.x`` holds its token ids as int64
``[B, seq_len + 1]`` (never normalised to float) and ``Batch.soft["length"]`` (int64 ``[B]``) how many of
each row's tokens are real (the rest is padding: only a dataset's last row has any).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossdistill.data.finite import first_nonfinite
from crossdistill.data.preprocess import Preprocessor, input_column
from crossdistill.data.shards import UNLABELED, DatasetReader
from crossdistill.errors import CrossdistillError, DataError

READ_AHEAD = 2  # fragments read ahead of training when num_workers is 0
FRAGMENTS_PER_RANK = 4  # below this many row groups per rank, ranks share every row group (rows interleaved)
LENGTH = "length"  # a text dataset's real tokens per row
KEY = "_key"  # the row's position in the stream's row space (global row index when no row is dropped)


@dataclass
class Batch:
    """One training batch: its place in the run, ids, model-ready inputs, labels and aligned soft columns."""

    epoch: int
    index: int  # batch number inside the epoch
    keys: np.ndarray
    ids: np.ndarray
    x: np.ndarray  # float32 [B, ...], after preprocessing; a text dataset: int64 token ids [B, seq_len + 1]
    y: np.ndarray  # int64 [B], -1 = unlabeled
    soft: dict[str, np.ndarray] = field(default_factory=dict)  # a text dataset's "length" too

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Failure:
    """A user-facing error raised in a DataLoader worker, re-raised in the main process without a traceback."""

    kind: type[CrossdistillError]
    message: str


def _uris(uri: str | Sequence[str]) -> list[str]:
    return [uri] if isinstance(uri, str) else list(uri)


class _FragmentLoader:
    """Reads one training fragment with its soft labels and decodes it (picklable: readers open lazily)."""

    def __init__(self, train: list[str], soft: list[str] | None, soft_columns: Sequence[str],
                 labeled_only: bool, num_classes: int, preprocess: dict[str, Any] | None,
                 key_starts: np.ndarray, interleave: tuple[int, int] | None = None) -> None:
        self.train_uris, self.soft_uris = train, soft
        self.soft_columns = [c for c in soft_columns if c != "id"]
        self.labeled_only, self.num_classes = labeled_only, num_classes
        self.interleave = interleave  # (rank, world): keep the rows whose global index is rank modulo world
        self.preprocess, self.key_starts = preprocess, key_starts
        self._readers: tuple[DatasetReader, DatasetReader | None, Preprocessor, list[str]] | None = None
        self._pid = 0  # the process that opened _readers: a forked worker must not share its open files

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": None}

    def _open(self) -> tuple[DatasetReader, DatasetReader | None, Preprocessor, list[str]]:
        if self._readers is None or self._pid != os.getpid():
            self._pid = os.getpid()
            train = DatasetReader(self.train_uris)
            same = self.soft_uris == self.train_uris  # a set that carries its own inputs (assembled)
            soft = None if self.soft_uris is None or same else DatasetReader(self.soft_uris)
            names = train.column_names()
            inputs = input_column(names, train.description)
            columns = [inputs, *(["y"] if "y" in names else []),
                       *([LENGTH] if inputs == "tokens" and LENGTH in names else [])]
            if same:
                columns += [c for c in self.soft_columns if c not in columns]
            self._readers = (train, soft, Preprocessor(train.meta, self.preprocess, train.description), columns)
        return self._readers

    def load(self, index: int) -> dict[str, np.ndarray] | _Failure:
        try:
            return self._load(index)
        except CrossdistillError as exc:
            return _Failure(type(exc), str(exc))

    def _load(self, index: int) -> dict[str, np.ndarray]:
        train, soft, preprocess, columns = self._open()
        frag = train.fragments[index]
        cols = train.read(frag, columns)
        ids = cols["id"]
        y = cols["y"].astype(np.int64) if "y" in cols else np.full(len(ids), UNLABELED, dtype=np.int64)
        bad = np.flatnonzero((y < UNLABELED) | (y >= self.num_classes))
        if len(bad):
            raise DataError(f"{train.description}: row {frag.start + int(bad[0])} (id {int(ids[bad[0]])}) has label "
                            f"{int(y[bad[0]])}, expected -1 (unlabeled) or a class index 0..{self.num_classes - 1}")
        out = {"id": ids, "y": y, "x": preprocess.decode(cols)}  # normalised per batch: the buffer stays compact
        if LENGTH in cols:  # a text dataset: real tokens per row, handed on in Batch.soft
            out[LENGTH] = cols[LENGTH].astype(np.int64)
        if soft is not None:
            aligned = soft.read_rows(frag.start, frag.start + frag.num_rows, self.soft_columns)
            wrong = np.flatnonzero(aligned["id"] != ids)
            if len(wrong):
                row = frag.start + int(wrong[0])
                raise DataError(f"{soft.description}: row {row} has id {int(aligned['id'][wrong[0]])} but row {row} "
                                f"of {train.description} has id {int(ids[wrong[0]])}: soft labels must be in the "
                                "same row order as their inputs (pseudo-label shards 0..n-1, in order)")
            cols = aligned
        for c in self.soft_columns:
            values = cols[c]
            bad = first_nonfinite(values)
            if bad is not None:
                row = bad[0]
                raise DataError(f"{(soft or train).description}: column '{c}' holds NaN or Inf at row "
                                f"{frag.start + row} (id {int(ids[row])})")
            out[c] = values
        if "weight" in out and (out["weight"] < 0).any():
            row = int(np.flatnonzero(out["weight"] < 0)[0])
            raise DataError(f"{(soft or train).description}: column 'weight' is negative at row {frag.start + row} "
                            "(expected per-example weights >= 0)")
        keep = _kept_rows(frag.start, out["y"], self.labeled_only, self.interleave)
        if keep is not None:
            out = {k: v[keep] for k, v in out.items()}
        out[KEY] = self.key_starts[index] + np.arange(len(out["id"]), dtype=np.int64)
        return out


def _kept_rows(start: int, y: np.ndarray, labeled_only: bool,
              interleave: tuple[int, int] | None) -> np.ndarray | None:
    """Which rows of a fragment starting at global row ``start`` a stream keeps (None = all)."""
    keep = y != UNLABELED if labeled_only else None
    if interleave is not None:
        rank, world = interleave
        mine = (start + np.arange(len(y))) % world == rank
        keep = mine if keep is None else keep & mine
    return keep


class _Jobs:
    """One epoch's fragments as a map-style dataset: the DataLoader hands item ``i`` back ``i``-th."""

    def __init__(self, loader: _FragmentLoader, jobs: list[int]) -> None:
        self.loader, self.jobs = loader, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray] | _Failure:
        return self.loader.load(self.jobs[i])


def _as_is(item: Any) -> Any:
    return item


class _Buffer:
    """Rows waiting to be drawn; a drawn row's slot is refilled by a row from the end (deterministic)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.size = capacity, 0
        self.cols: dict[str, np.ndarray] = {}

    def _allocate(self, like: dict[str, np.ndarray]) -> None:
        if not self.cols:
            self.cols = {k: np.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in like.items()}

    def add(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols[KEY])
        self._allocate(cols)
        for k, v in self.cols.items():
            v[self.size:self.size + n] = cols[k]
        self.size += n

    def fill(self, cols: dict[str, np.ndarray], keys: np.ndarray) -> None:
        """Put the rows of ``cols`` whose keys sit in slots ``keys`` (a replayed buffer) back in place."""
        self._allocate(cols)
        lo = int(cols[KEY][0]) if len(cols[KEY]) else 0
        slots = np.flatnonzero((keys >= lo) & (keys < lo + len(cols[KEY])))
        rows = keys[slots] - lo
        for k, v in self.cols.items():
            v[slots] = cols[k][rows]

    def take(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: v[positions] for k, v in self.cols.items()}
        remaining = self.size - len(positions)
        chosen = np.zeros(self.size, dtype=bool)
        chosen[positions] = True
        holes = np.flatnonzero(chosen[:remaining])
        movers = remaining + np.flatnonzero(~chosen[remaining:])
        for v in self.cols.values():
            v[holes] = v[movers]
        self.size = remaining
        return out


_ADD, _TAKE = 0, 1


def _draws(order: np.ndarray, counts: np.ndarray, rng: np.random.Generator, batch_size: int,
           buffer_rows: int) -> Iterator[tuple[int, Any]]:
    """One epoch's events: ``(_ADD, fragment)`` and ``(_TAKE, buffer positions of a batch)``."""
    size = 0
    for f in order:
        yield _ADD, int(f)
        size += int(counts[f])
        while size >= batch_size and size - batch_size >= buffer_rows:
            yield _TAKE, rng.choice(size, batch_size, replace=False)
            size -= batch_size
    while size > 0:
        k = min(batch_size, size)
        yield _TAKE, rng.choice(size, k, replace=False)
        size -= k


class BatchStream:
    """Batches of a dataset (one or several URIs, concatenated) with their soft labels read in step.

    ``labeled_only`` drops unlabeled rows (hard-label training). ``rank``/``world`` select a disjoint part
    for data-parallel ranks: contiguous fragments (:meth:`DatasetReader.partition`) where there are at least
    ``FRAGMENTS_PER_RANK`` per rank, else every ``world``-th row of every fragment (a small dataset, read whole
    by every rank).
    """

    def __init__(self, train: str | Sequence[str], *, batch_size: int, seed: int, shuffle_buffer: int,
                 num_classes: int, soft: str | Sequence[str] | None = None, soft_columns: Sequence[str] = (),
                 labeled_only: bool = False, num_workers: int = 0, preprocess: dict[str, Any] | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.reader = DatasetReader(train)
        self.soft_reader = None if soft is None else DatasetReader(soft)
        if self.soft_reader is not None and self.soft_reader.num_examples != self.reader.num_examples:
            raise DataError(f"{self.soft_reader.description} has {self.soft_reader.num_examples} rows but "
                            f"{self.reader.description} has {self.reader.num_examples}: soft labels must cover "
                            "every input row, in the same order")
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.num_workers = num_workers
        self.interleave = (rank, world) if 1 < world and len(self.reader.fragments) < FRAGMENTS_PER_RANK * world \
            else None
        part = set(self.reader.partition(rank, world)) if world > 1 and self.interleave is None else None
        self.fragments = [i for i, f in enumerate(self.reader.fragments) if part is None or f in part]
        self.rank, self.world = rank, world
        if labeled_only and "y" not in self.reader.spec:
            raise DataError(f"{self.reader.description} has no 'y' column: no labeled example to train on")
        counts = np.array([self._count(i, labeled_only) for i in range(len(self.reader.fragments))], dtype=np.int64)
        self.counts = counts
        self.key_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.num_rows = int(counts[self.fragments].sum()) if self.fragments else 0
        self.batches_per_epoch = -(-self.num_rows // batch_size)
        self._loader = _FragmentLoader(self.reader.uris, None if soft is None else _uris(soft), soft_columns,
                                       labeled_only, num_classes, preprocess, self.key_starts, self.interleave)
        self._prep = Preprocessor(self.reader.meta, preprocess, self.reader.description)

    def _count(self, index: int, labeled_only: bool) -> int:
        frag = self.reader.fragments[index]
        y = self.reader.read(frag, ["y"])["y"] if labeled_only else np.zeros(frag.num_rows, dtype=np.int64)
        keep = _kept_rows(frag.start, y, labeled_only, self.interleave)
        return frag.num_rows if keep is None else int(keep.sum())

    @property
    def meta(self) -> dict[str, Any]:
        return self.reader.meta

    @property
    def description(self) -> str:
        return self.reader.description

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model-ready example (decodes the first non-empty fragment)."""
        for i in self.fragments:
            if self.counts[i]:
                cols = self._checked(self._loader.load(i))
                return tuple(cols["x"].shape[1:])
        raise DataError(f"{self.description} holds no example to train on")

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the order besides seed and batch size: the layout of the rows, the buffer and the number
        of ranks (the same on every rank: they share one checkpoint)."""
        layout = json.dumps([self.reader.num_examples, [f.num_rows for f in self.reader.fragments],
                             self.interleave is not None])
        return {"layout": hashlib.sha256(layout.encode()).hexdigest()[:16],
                "shuffle_buffer": self.shuffle_buffer, "world": self.world}

    def _order(self, epoch: int) -> tuple[np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([self.seed, epoch])
        return np.asarray(self.fragments, dtype=np.int64)[rng.permutation(len(self.fragments))], rng

    def batch_keys(self, epoch: int) -> Iterator[np.ndarray]:
        """Row keys of each batch of ``epoch`` without reading data (keys are global row indices unless
        ``labeled_only`` dropped rows)."""
        order, rng = self._order(epoch)
        buf = _Buffer(self.shuffle_buffer + int(self.counts.max(initial=0)) + self.batch_size)
        for kind, arg in _draws(order, self.counts, rng, self.batch_size, self.shuffle_buffer):
            if kind == _ADD:
                buf.add({KEY: self.key_starts[arg] + np.arange(self.counts[arg], dtype=np.int64)})
            else:
                yield buf.take(arg)[KEY]

    def batches(self, start_epoch: int, start_batch: int, epochs: int) -> Iterator[Batch]:
        """Every batch from position ``(start_epoch, start_batch)`` to the end of epoch ``epochs - 1``."""
        for epoch in range(start_epoch, epochs):
            yield from self._epoch(epoch, start_batch if epoch == start_epoch else 0)

    def _epoch(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        order, rng = self._order(epoch)
        capacity = self.shuffle_buffer + int(self.counts.max(initial=0)) + self.batch_size
        events = _draws(order, self.counts, rng, self.batch_size, self.shuffle_buffer)
        buf, restore, held, added, index = _Buffer(capacity), [], np.empty(0, np.int64), 0, 0
        if start_batch:  # replay the draws on keys alone up to the resume point
            keys = _Buffer(capacity)
            for kind, arg in events:
                if kind == _ADD:
                    keys.add({KEY: self.key_starts[arg] + np.arange(self.counts[arg], dtype=np.int64)})
                    added += 1
                    continue
                keys.take(arg)
                index += 1
                if index == start_batch:
                    break
            held = keys.cols[KEY][:keys.size]
            restore = [int(f) for f in order[:added]
                       if ((held >= self.key_starts[f]) & (held < self.key_starts[f] + self.counts[f])).any()]
            buf.size = keys.size
        results = self._results([*restore, *map(int, order[added:])])
        try:
            for _ in restore:
                buf.fill(self._checked(next(results)), held)
            for kind, arg in events:
                if kind == _ADD:
                    buf.add(self._checked(next(results)))
                    continue
                cols = buf.take(arg)
                soft = {k: v for k, v in cols.items() if k not in ("id", "x", "y", KEY)}
                yield Batch(epoch, index, cols[KEY], cols["id"], self._prep.normalize(cols["x"]), cols["y"], soft)
                index += 1
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def _results(self, jobs: list[int]) -> Iterator[dict[str, np.ndarray] | _Failure]:
        if self.num_workers == 0:
            return self._read_ahead(jobs)
        import torch.utils.data

        # a generator of its own: the loader's worker seeds must not consume the global torch RNG (dropout)
        return iter(torch.utils.data.DataLoader(_Jobs(self._loader, jobs), batch_size=None,
                                                num_workers=self.num_workers, collate_fn=_as_is,
                                                generator=torch.Generator().manual_seed(self.seed)))

    def _read_ahead(self, jobs: list[int]) -> Iterator[dict[str, np.ndarray] | _Failure]:
        """Fragments in job order, the next ``READ_AHEAD`` read and decoded by one background thread while
        the current one trains (Parquet decoding releases the GIL); memory: that many more fragments."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="crossdistill-read")
        pending: deque[Future] = deque()
        todo = iter(jobs)
        try:
            for job in itertools.islice(todo, READ_AHEAD):
                pending.append(pool.submit(self._loader.load, job))
            while pending:
                done = pending.popleft().result()
                for job in itertools.islice(todo, 1):
                    pending.append(pool.submit(self._loader.load, job))
                yield done
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _checked(item: dict[str, np.ndarray] | _Failure) -> dict[str, np.ndarray]:
        if isinstance(item, _Failure):
            raise item.kind(item.message)
        return item

