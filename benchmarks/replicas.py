"""Teacher replicas: online training against 1, 2, 4, ... replicas of a teacher that costs accelerator time.

Each replica is ``benchmarks.accelerator_teacher`` (the real server; every request holds the replica's
one "accelerator" ``--hold-ms`` while the CPU stays free), the student (MLP 64-32, batch 64, 4 batches
per request, 1 torch thread) reaches them as one ``teacher.url=ip:port,ip:port,...`` list with
``max_in_flight=auto``, on the digits student split repeated ``--epochs`` times. The reference is the
same student trained offline from soft labels computed beforehand (c). Samples/s are steady state (after
the first logging window). Targets: 2 replicas >= 1.8x one; with enough replicas, online >= 0.95x
offline. Prints a table and writes ``<results>.json`` / ``.md``; asserts nothing.

    .venv/bin/python -m benchmarks.replicas [--replicas 1,2,4,8] [--hold-ms 20] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.latency import _teacher, train

ROOT = Path(__file__).resolve().parents[1]


def _start(n: int, model: Path, work: Path, hold_ms: float) -> tuple[list[subprocess.Popen], list[int]]:
    """n accelerator-teacher processes on free loopback ports; their processes and gRPC ports."""
    procs, ready = [], []
    for i in range(n):
        cfg = work / f"replica-{i}.json"
        cfg.write_text(json.dumps({"model_uri": str(model), "name": f"replica-{i}", "workers_threads": 1}))
        ready_file = work / f"replica-{i}.ready"
        ready_file.unlink(missing_ok=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.accelerator_teacher", "--hold-ms",
                                       str(hold_ms), "--config", str(cfg), "--ready-file", str(ready_file)],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(work / f"replica-{i}.log").open("w"),
                                      start_new_session=True))
        ready.append(ready_file)
    ports = []
    for proc, ready_file in zip(procs, ready, strict=True):
        end = time.monotonic() + 120
        while not ready_file.exists():
            if proc.poll() is not None or time.monotonic() > end:
                _stop(procs)
                raise SystemExit(f"a replica did not start: see {work}/replica-*.log")
            time.sleep(0.1)
        ports.append(json.loads(ready_file.read_text())["grpc_port"])
    return procs, ports


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2,4,8", help="pool sizes, comma-separated")
    parser.add_argument("--hold-ms", type=float, default=20.0, help="accelerator time per request (256 rows)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work", default="runs/bench-replicas")
    parser.add_argument("--results", default="benchmarks/results/replicas")
    args = parser.parse_args()
    import torch

    from crossdistill.data.splits import PrepareDataConfig, prepare_data
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(PrepareDataConfig(out=str(work / "data")))["student"]
    model = work / "teacher.pt"
    _teacher(model)
    soft = run_pseudo_label(PseudoLabelConfig(data=data, teacher_url=f"inprocess:{model}", out=str(work / "soft"),
                                              progress=False))
    offline, _ = train(data, work / "student-offline", args.epochs, mode="offline", soft_labels=[soft])
    print(f"offline (c): {offline:,.0f} samples/s", flush=True)
    rows = []
    for n in [int(v) for v in args.replicas.split(",")]:
        procs, ports = _start(n, model, work, args.hold_ms)
        try:
            url = ",".join(f"127.0.0.1:{p}" for p in ports)
            rate, _ = train(data, work / f"student-{n}", args.epochs, mode="online", rpc_batches=4,
                            teacher={"url": url, "max_in_flight": "auto"})
        finally:
            _stop(procs)
        rows.append({"replicas": n, "samples_per_s": rate})
        print(f"{n} replica(s): {rate:,.0f} samples/s", flush=True)
    one = rows[0]["samples_per_s"] if rows and rows[0]["replicas"] == 1 else None
    ceiling = 256 / (args.hold_ms / 1000)
    lines = [f"accelerator time {args.hold_ms:g} ms per 256-row request (one replica's ceiling {ceiling:,.0f} "
             f"samples/s); offline (c) {offline:,.0f} samples/s", "",
             "| replicas | samples/s | vs 1 replica | vs offline |", "|---:|---:|---:|---:|"]
    for r in rows:
        vs_one = f"{r['samples_per_s'] / one:.2f}" if one else ""
        lines.append(f"| {r['replicas']} | {r['samples_per_s']:,.0f} | {vs_one} | {r['samples_per_s'] / offline:.2f} |")
    two = next((r["samples_per_s"] for r in rows if r["replicas"] == 2), None)
    best = max((r["samples_per_s"] for r in rows), default=0.0)
    targets = []
    if one and two:
        targets.append(f"2 replicas / 1: {two / one:.2f} (target >= 1.8: {'met' if two / one >= 1.8 else 'NOT met'})")
    targets.append(f"best online / offline: {best / offline:.2f} (target >= 0.95: "
                   f"{'met' if best / offline >= 0.95 else 'NOT met'})")
    print("\n".join(["", *lines, "", *targets]))
    results = {"command": "python -m benchmarks.replicas " + " ".join(sys.argv[1:]),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "hold_ms": args.hold_ms, "offline_samples_per_s": offline, "runs": rows, "targets": targets}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text("\n".join([f"`{results['command']}` ({results['date']})", "", *lines, "",
                                                 *targets, ""]))
    print(f"written: {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
