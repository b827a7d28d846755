"""Data-parallel student: one process vs two torchrun ranks (DDP, gloo) on this machine's CPUs.

The student is the CNN of ``model.name=cnn`` on Fashion-MNIST's 60,000 training images (Debian's
``dataset-fashion-mnist``; 15 row groups of 4,096), trained on its labels (``mode=hard``: the student's
side of distillation, whatever the teacher) for ``--epochs`` epochs at 128 rows per optimizer step, each setting ``--repeats`` times (interleaved):

- 1 process, 1 torch thread, batch 128;
- 1 process, 2 torch threads, batch 128 (what one process makes of both cores);
- 2 ranks (``workers=2``, the local torchrun backend), 1 thread each, batch 64 per rank.

Samples/s is the steady state (after the first logging window, as in benchmarks/scale.py), the median
over repeats with its range (this machine's speed varies by tens of percent from run to run); the test
accuracy of each student shows the runs learn alike. Prints a table, writes ``<results>.json`` /
``.md``; asserts nothing.

    .venv/bin/python -m benchmarks.data_parallel [--epochs 3] [--repeats 3] [--results benchmarks/results/data_parallel]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.report import write_results
from benchmarks.scale import _steady

STEP_ROWS = 128  # rows per optimizer step in every setting


def _accuracy(model_uri: str, test: Any) -> float:
    import torch

    from crossdistill.train import load_student

    model, _ = load_student(model_uri)
    right = 0
    with torch.no_grad():
        for start in range(0, len(test), 2048):
            logits = model(torch.from_numpy(test["x"][start:start + 2048]))
            right += int((logits.argmax(1).numpy() == test["y"][start:start + 2048]).sum())
    return right / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=60_000, help="training rows (of Fashion-MNIST's 60,000)")
    parser.add_argument("--work", default="runs/bench-data-parallel")
    parser.add_argument("--results", default="benchmarks/results/data_parallel")
    args = parser.parse_args()
    import numpy as np

    from crossdistill.data.shards import read_dataset, write_dataset
    from crossdistill.data.sources import load_fashion_mnist
    from crossdistill.deploy.student import run_student_train
    from crossdistill.train.trainer import StudentTrainConfig

    work = Path(args.work)
    train_uri, test_uri = str(work / f"train-{args.rows}"), str(work / "test")
    if not Path(train_uri).exists():
        data = load_fashion_mnist()
        first_test = data.meta["official_test_from_id"]  # Fashion-MNIST's own split: 60,000 + 10,000
        write_dataset(train_uri, data.take(np.arange(min(args.rows, first_test))), num_shards=1)
        write_dataset(test_uri, data.take(np.arange(first_test, len(data))), num_shards=1)
    test = read_dataset(test_uri)
    settings = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 ranks, 1 thread each", 2, 1)]
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):  # settings interleaved: a slow spell of the machine hits all of them
        for name, workers, threads in settings:
            out = work / name.replace(" ", "-").replace(",", "")
            cfg = StudentTrainConfig(train_data=train_uri, out=str(out), mode="hard", epochs=args.epochs,
                                     batch_size=STEP_ROWS // workers, threads=threads, workers=workers, resume=False,
                                     progress=False, log_every=20, model={"name": "cnn"})
            t0 = time.perf_counter()
            result = run_student_train(cfg)
            wall = time.perf_counter() - t0
            runs.append({"setting": name, "repeat": repeat, "workers": workers, "threads": threads,
                         "samples_per_s": _steady(out / "train_log.jsonl"), "wall_s": wall, "steps": result.steps,
                         "samples": result.samples_seen, "test_accuracy": _accuracy(result.model_uri, test)})
            print(f"{name} (repeat {repeat + 1}): {runs[-1]['samples_per_s']:,.0f} samples/s, {wall:.0f} s, "
                  f"{result.steps} steps, test accuracy {runs[-1]['test_accuracy']:.3f}", flush=True)
    rows = []
    for name, *_ in settings:
        mine = [r for r in runs if r["setting"] == name]
        rates = sorted(r["samples_per_s"] for r in mine)
        rows.append({"setting": name, "samples_per_s": statistics.median(rates), "low": rates[0], "high": rates[-1],
                     "wall_s": statistics.median(r["wall_s"] for r in mine), "steps": mine[0]["steps"],
                     "test_accuracy": statistics.median(r["test_accuracy"] for r in mine)})
    base = rows[0]["samples_per_s"]
    lines = [f"CNN student on Fashion-MNIST ({args.rows:,} rows, {args.epochs} epoch(s), {STEP_ROWS} rows per step), "
             f"{os.cpu_count()} CPUs, median of {args.repeats} interleaved repeats", "",
             "| setting | samples/s (median) | range | vs 1 process, 1 thread | wall s | steps | test accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['samples_per_s']:,.0f} | {r['low']:,.0f}-{r['high']:,.0f} | "
              f"{r['samples_per_s'] / base:.2f} | {r['wall_s']:.0f} | {r['steps']} | {r['test_accuracy']:.3f} |"
              for r in rows]
    write_results(args.results, "data_parallel", lines, [], summary=rows, runs=runs)


if __name__ == "__main__":
    main()
