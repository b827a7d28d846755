"""Latency hiding: online training against a teacher far away, ``max_in_flight=auto`` vs a fixed window.

A TorchScript teacher made here (an MLP 64-256-256-10) is served by ``crossdistill teacher-serve`` on
loopback; the student (MLP 64-32, batch 64, 4 batches per request) reaches it through
:class:`benchmarks.delay_proxy.DelayProxy`, which holds each direction RTT/2, at each injected round
trip of ``--rtt-ms``. Each setting is a fresh ``student-train mode=online`` run (1 torch thread) on the
digits student split repeated ``--epochs`` times; samples/s is its steady state (after the first
logging window, as in benchmarks/scale.py). Prints a table with the target (at 50 ms >= 0.9x the 0 ms
figure) and writes ``<results>.json``; asserts nothing.

    .venv/bin/python -m benchmarks.latency [--rtt-ms 0,10,50,100] [--epochs 40] [--results benchmarks/results/latency]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.delay_proxy import DelayProxy
from benchmarks.report import write_results
from benchmarks.scale import _steady


def _teacher(path: Path) -> None:
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    if path.exists():
        return
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})


def train(data: str, out: Path, epochs: int, **mode: Any) -> tuple[float, int]:
    """The benchmarks' student (MLP 64-32, batch 64, 1 thread) trained in ``mode``: (steady samples/s, samples)."""
    from crossdistill.train.trainer import StudentTrainConfig, train_student

    result = train_student(StudentTrainConfig(train_data=data, out=str(out), epochs=epochs, batch_size=64, threads=1,
                                              resume=False, progress=False, log_every=10,
                                              model={"name": "mlp", "kwargs": {"hidden": [64, 32]}}, **mode))
    return _steady(out / "train_log.jsonl"), result.samples_seen


def _run(url: str, in_flight: int | str, data: str, out: Path, epochs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rate, samples = train(data, out, epochs, mode="online", rpc_batches=4,
                          teacher={"url": url, "max_in_flight": in_flight})
    return {"steady_samples_per_s": rate, "wall_s": time.perf_counter() - t0, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", default="0,10,50,100", help="injected round trips, comma-separated")
    parser.add_argument("--fixed", type=int, default=4, help="the fixed window to compare with (0 = skip)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--work", default="runs/bench-latency")
    parser.add_argument("--results", default="benchmarks/results/latency")
    args = parser.parse_args()
    import torch

    from crossdistill.data.splits import PrepareDataConfig, prepare_data
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher

    torch.set_num_threads(1)
    work = Path(args.work)
    data = prepare_data(PrepareDataConfig(out=str(work / "data")))["student"]
    teacher = work / "teacher.pt"
    _teacher(teacher)
    serve = TeacherServeConfig(model_uri=str(teacher), name="bench-latency", workdir=str(work / "server"),
                               workers_threads=1)
    endpoint = deploy_teacher(serve)
    host, port = endpoint.grpc.rsplit(":", 1)
    rows = []
    try:
        for rtt in [float(v) for v in args.rtt_ms.split(",")]:
            with DelayProxy(host, int(port), delay_s=rtt / 2000) as proxy:
                url = f"127.0.0.1:{proxy.port}"
                for window in (["auto", args.fixed] if args.fixed else ["auto"]):
                    run = _run(url, window, data, work / f"student-{rtt:g}-{window}", args.epochs)
                    rows.append({"rtt_ms": rtt, "max_in_flight": window, **run})
                    print(f"rtt {rtt:>5g} ms  max_in_flight {window!s:>4}: {run['steady_samples_per_s']:>9,.0f} "
                          f"samples/s", flush=True)
    finally:
        teardown_teacher(serve)
    auto = {r["rtt_ms"]: r["steady_samples_per_s"] for r in rows if r["max_in_flight"] == "auto"}
    lines = ["| round trip | max_in_flight | samples/s (steady) | vs 0 ms, auto |", "|---:|---|---:|---:|"]
    for r in rows:
        base = auto.get(0.0)
        ratio = f"{r['steady_samples_per_s'] / base:.2f}" if base else ""
        lines.append(f"| {r['rtt_ms']:g} ms | {r['max_in_flight']} | {r['steady_samples_per_s']:,.0f} | {ratio} |")
    targets = []
    if 0.0 in auto and 50.0 in auto:
        ratio = auto[50.0] / auto[0.0]
        targets.append(f"at 50 ms, auto: {ratio:.2f}x the 0 ms figure (target >= 0.9: "
                       f"{'met' if ratio >= 0.9 else 'NOT met'})")
    write_results(args.results, "latency", lines, targets, runs=rows)


if __name__ == "__main__":
    main()
