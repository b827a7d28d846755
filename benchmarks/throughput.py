"""Remote vs co-located vs offline teacher: student-training throughput and bytes on the wire.

Same teacher (the demo's Keras MLP), student (MLP 64-32) and data (digits, student owner's split):
  (a) the teacher inside the student's process, called sequentially before every step;
  (b) the teacher in its own server process over gRPC, several batches in flight;
  (c) offline, from soft labels the teacher computed once beforehand (that labelling is not timed).
Each setup runs in a fresh process with every framework pinned to one thread (torch.set_num_threads,
TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, OMP_NUM_THREADS); the teacher server gets one
thread too. So (a) does teacher and student work on one core in turn, (b) can overlap them on two.
The three setups run in turn ``--repeats`` times (a, b, c, a, b, c, ...) so drift in the machine's load
touches them alike; the table gives the median and range of each setup's steady-state rate, and the
ratios are medians of the per-repeat ratios. Prints a table and writes
benchmarks/results/throughput.json. Asserts nothing.

    .venv/bin/python benchmarks/throughput.py [--epochs 40] [--batch-size 64] [--in-flight 4] [--rpc-batches 4]
                                              [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
          "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


def _train(setup: str, args: argparse.Namespace) -> dict:
    """One timed student-train run (called in a child process)."""
    import torch

    from crossdistill.train.trainer import StudentTrainConfig, train_student

    torch.set_num_threads(1)
    cfg = {"train_data": args.data, "out": str(Path(args.work) / f"student-{setup}"), "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": 3e-3, "threads": 1, "resume": False, "progress": False,
           "model": {"name": "mlp", "kwargs": {"hidden": [64, 32]}}}
    if setup == "c":
        cfg.update(mode="offline", soft_labels=args.soft_labels)
    else:
        url = f"inprocess:{args.teacher}" if setup == "a" else args.endpoint
        cfg.update(mode="online", teacher={"url": url, "max_in_flight": 1 if setup == "a" else args.in_flight},
                   rpc_batches=1 if setup == "a" else args.rpc_batches)
    start = time.perf_counter()
    result = train_student(StudentTrainConfig.parse(cfg))
    seconds = time.perf_counter() - start
    # Steady state: the trainer's own per-window rates after the first window (imports, connection,
    # first RPCs and allocator warm-up are one-time costs, reported separately as wall seconds).
    windows = result.history[1:]
    prev = result.history[0]["samples_seen"]
    busy = 0.0
    for w in windows:
        busy += (w["samples_seen"] - prev) / w["samples_per_s"]
        prev = w["samples_seen"]
    steady = (prev - result.history[0]["samples_seen"]) / busy
    return {"setup": setup, "samples": result.samples_seen, "steps": result.steps, "seconds": seconds,
            "samples_per_s": steady, "wall_samples_per_s": result.samples_seen / seconds}


def _child(setup: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", setup, "--data", args.data, "--work", args.work,
           "--teacher", args.teacher, "--endpoint", args.endpoint or "", "--soft-labels", args.soft_labels or "",
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--in-flight", str(args.in_flight),
           "--rpc-batches", str(args.rpc_batches)]
    out = subprocess.run(cmd, env={**os.environ, **PINNED}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"setup {setup} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wire_bytes(endpoint: str, data: str, batch: int) -> list[dict]:
    from crossdistill.data import read_dataset
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

    ds = read_dataset(data)
    ids, x = ds.ids[:batch], ds["x"][:batch]
    rows = []
    for label, opts in (("dense FP32", {}), ("dense FP16", {"fp16": True}), ("top-5 FP32", {"top_k": 5}),
                        ("top-5 FP16", {"top_k": 5, "fp16": True}), ("top-1 FP16", {"top_k": 1, "fp16": True})):
        with TeacherClient(TeacherClientConfig(url=endpoint, **opts)) as client:
            req, resp = client.wire_bytes(ids, x)
        rows.append({"signal": label, "request_bytes_per_sample": req / batch,
                     "response_bytes_per_sample": resp / batch})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rpc-batches", type=int, default=4, help="student batches per teacher request in (b)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each setup (median reported)")
    parser.add_argument("--work", default="runs/bench-throughput")
    parser.add_argument("--results", default="benchmarks/results/throughput.json")
    parser.add_argument("--child", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    for hidden in ("--data", "--teacher", "--endpoint", "--soft-labels"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_train(args.child, args)))
        return
    os.environ.update(PINNED)
    from crossdistill import storage
    from crossdistill.data.splits import PrepareDataConfig, prepare_data
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    work = Path(args.work)
    splits = prepare_data(PrepareDataConfig(out=str(work / "data")))
    args.data = splits["student"]
    args.teacher = str(work / "teacher.keras")
    if not storage.exists(args.teacher):
        train_keras_teacher(TeacherTrainConfig(train=splits["train"], val=splits["val"], out=args.teacher))
    serve = TeacherServeConfig(model_uri=args.teacher, name="bench-teacher", workdir=str(work / "server"),
                               workers_threads=1)
    endpoint = deploy_teacher(serve)
    try:
        args.endpoint = endpoint.grpc
        args.soft_labels = run_pseudo_label(PseudoLabelConfig(
            data=args.data, teacher_url=endpoint.grpc, out=str(work / "soft"), progress=False))
        repeats = [{s: _child(s, args) for s in ("a", "b", "c")} for _ in range(args.repeats)]
        wire = _wire_bytes(endpoint.grpc, args.data, args.batch_size)
    finally:
        teardown_teacher(serve)
    names = {"a": "(a) co-located teacher, sequential",
             "b": f"(b) remote over gRPC, {args.in_flight} in flight x {args.rpc_batches} batches",
             "c": "(c) offline, precomputed soft labels"}
    rates = {s: [r[s]["samples_per_s"] for r in repeats] for s in names}
    walls = {s: [r[s]["seconds"] for r in repeats] for s in names}
    ratio = {pair: [r[pair[0]]["samples_per_s"] / r[pair[1]]["samples_per_s"] for r in repeats]
             for pair in ("ba", "bc")}
    print(f"\nstudent-train throughput: digits student split, MLP 64-32 student, Keras MLP teacher, "
          f"{args.epochs} epochs, batch {args.batch_size}, {repeats[0]['a']['samples']} samples per run")
    print("threads: 1 per framework per process (torch, TF intra/inter-op, OMP); teacher server: 1 thread; "
          f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"samples/s: steady state (after the first logging window), median [min-max] of {args.repeats} runs; "
          "wall s: median whole run incl. start-up")
    print(f"{'setup':<50} {'samples/s':>10} {'range':>15} {'wall s':>7}")
    for s, name in names.items():
        lo, hi = min(rates[s]), max(rates[s])
        print(f"{name:<50} {statistics.median(rates[s]):>10.0f} {f'{lo:.0f}-{hi:.0f}':>15} "
              f"{statistics.median(walls[s]):>7.2f}")
    b_a, b_c = statistics.median(ratio["ba"]), statistics.median(ratio["bc"])
    print(f"b/a = {b_a:.2f} [{min(ratio['ba']):.2f}-{max(ratio['ba']):.2f}] (target >= 1.0)   "
          f"b/c = {b_c:.2f} [{min(ratio['bc']):.2f}-{max(ratio['bc']):.2f}] (target >= 0.9)")
    print(f"\nbytes per sample on the wire (batch {args.batch_size}, 8x8 inputs, 10 classes, protobuf sizes)")
    print(f"{'teacher signal':<14} {'request':>9} {'response':>9}")
    for w in wire:
        print(f"{w['signal']:<14} {w['request_bytes_per_sample']:>9.1f} {w['response_bytes_per_sample']:>9.1f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "config": {"epochs": args.epochs, "batch_size": args.batch_size, "in_flight": args.in_flight,
                   "rpc_batches": args.rpc_batches, "repeats": args.repeats,
                   "threads": PINNED, "cpus": os.cpu_count()},
        "repeats": repeats, "ratios": {"b_over_a": b_a, "b_over_c": b_c, "per_repeat": ratio}, "wire": wire},
        indent=2))
    print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
