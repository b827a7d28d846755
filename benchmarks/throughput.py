"""Remote vs co-located vs offline teacher: student-training throughput and bytes on the wire.

Same teacher (the demo's Keras MLP), student (MLP 64-32) and data (digits, student owner's split):
  (a) the teacher inside the student's process, called sequentially before every step;
  (b) the teacher in its own server process over gRPC, several batches in flight;
  (c) offline, from soft labels the teacher computed once beforehand (that labelling is not timed).
Each setup runs in a fresh process with every framework pinned to one thread (torch.set_num_threads,
TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, OMP_NUM_THREADS); the teacher server gets one
thread too. So (a) does teacher and student work on one core in turn, (b) can overlap them on two.
Prints a table and writes benchmarks/results/throughput.json. Asserts nothing.

    .venv/bin/python benchmarks/throughput.py [--epochs 20] [--batch-size 64] [--in-flight 4] [--rpc-batches 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rpc-batches", type=int, default=4, help="student batches per teacher request in (b)")
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
        runs = {s: _child(s, args) for s in ("a", "b", "c")}
        wire = _wire_bytes(endpoint.grpc, args.data, args.batch_size)
    finally:
        teardown_teacher(serve)
    names = {"a": "(a) co-located teacher, sequential", "b": f"(b) remote over gRPC, {args.in_flight} in flight x {args.rpc_batches} batches",
             "c": "(c) offline, precomputed soft labels"}
    print(f"\nstudent-train throughput: digits student split, MLP 64-32 student, Keras MLP teacher, "
          f"{args.epochs} epochs, batch {args.batch_size}")
    print("threads: 1 per framework per process (torch, TF intra/inter-op, OMP); teacher server: 1 thread; "
          f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print("samples/s: steady state (after the first logging window); wall: whole run incl. start-up")
    print(f"{'setup':<50} {'samples':>8} {'wall s':>7} {'samples/s':>10} {'wall samples/s':>15}")
    for s, r in runs.items():
        print(f"{names[s]:<50} {r['samples']:>8} {r['seconds']:>7.2f} {r['samples_per_s']:>10.0f} "
              f"{r['wall_samples_per_s']:>15.0f}")
    b_a = runs["b"]["samples_per_s"] / runs["a"]["samples_per_s"]
    b_c = runs["b"]["samples_per_s"] / runs["c"]["samples_per_s"]
    print(f"b/a = {b_a:.2f} (target >= 1.0)   b/c = {b_c:.2f} (target >= 0.9)")
    print(f"\nbytes per sample on the wire (batch {args.batch_size}, 8x8 inputs, 10 classes, protobuf sizes)")
    print(f"{'teacher signal':<14} {'request':>9} {'response':>9}")
    for w in wire:
        print(f"{w['signal']:<14} {w['request_bytes_per_sample']:>9.1f} {w['response_bytes_per_sample']:>9.1f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "config": {"epochs": args.epochs, "batch_size": args.batch_size, "in_flight": args.in_flight,
                   "rpc_batches": args.rpc_batches,
                   "threads": PINNED, "cpus": os.cpu_count()},
        "runs": runs, "ratios": {"b_over_a": b_a, "b_over_c": b_c}, "wire": wire}, indent=2))
    print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
