"""Teacher replicas: online training against 1, 2, 4, ... replicas of a teacher that costs accelerator time.

Each replica is ``benchmarks.accelerator_teacher`` (the real server; every request holds the replica's
one "accelerator" ``--hold-ms`` while the CPU stays free), the student (MLP 64-32, batch 64, 4 batches
per request, 1 torch thread) reaches them as one ``teacher.url=ip:port,ip:port,...`` list with
``max_in_flight=auto``, on the digits student split repeated ``--epochs`` times. The reference is the
same student trained offline from soft labels computed beforehand (c). Samples/s are steady state (after
the first logging window). Targets: 2 replicas >= 1.8x one; with enough replicas, online >= 0.95x
offline. Each run also says how busy the machine's CPUs were (``/proc/stat``) and how many cores the
student's own process used, which tells whether the replicas' serving shares the student's CPUs
(here) rather than running on machines of their own (a cluster). Prints a table and writes
``<results>.json`` / ``.md``; asserts nothing.

    .venv/bin/python -m benchmarks.replicas [--replicas 1,2,4,8] [--hold-ms 20] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchmarks.latency import _teacher, train
from benchmarks.report import write_results

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


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in jiffies (0, 0 where /proc/stat is missing)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def measured(run: Callable[[], tuple[float, int]]) -> tuple[float, dict[str, float]]:
    """``run()``'s samples/s (a benchmark ``train``) and how busy the CPUs were meanwhile: the machine's share of all its cores,
    and the cores this process (the student) used."""
    busy0, total0 = _cpu_jiffies()
    own0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rate = run()[0]
    own1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    busy1, total1 = _cpu_jiffies()
    own = (own1.ru_utime - own0.ru_utime + own1.ru_stime - own0.ru_stime) / max(wall, 1e-9)
    return rate, {"machine_busy": (busy1 - busy0) / max(total1 - total0, 1), "student_cores": own}


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
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; figures are medians")
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

    def offline_run() -> tuple[float, dict[str, float]]:
        return measured(partial(train, data, work / "student-offline", args.epochs, mode="offline",
                                soft_labels=[soft]))

    def online(n: int, hold_ms: float) -> tuple[float, dict[str, float]]:
        procs, ports = _start(n, model, work, hold_ms)
        try:
            url = ",".join(f"127.0.0.1:{p}" for p in ports)
            return measured(partial(train, data, work / f"student-{n}", args.epochs, mode="online",
                                    rpc_batches=4, teacher={"url": url, "max_in_flight": "auto"}))
        finally:
            _stop(procs)

    # Every setting once per repeat, in turn, so a slow spell of this machine (tens of percent from run to run)
    # hits them all; each figure is the median over the repeats. The pool with no accelerator time at all
    # shows what serving itself costs on this machine's CPUs.
    counts = [int(v) for v in args.replicas.split(",")]
    most = max(counts)
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for repeat in range(args.repeats):
        for key, run in [("offline", offline_run), *((str(n), partial(online, n, args.hold_ms)) for n in counts),
                         ("instant", partial(online, most, 0.0))]:
            runs.setdefault(key, []).append(run())
            print(f"repeat {repeat + 1}, {key}: {runs[key][-1][0]:,.0f} samples/s", flush=True)

    def median(key: str) -> tuple[float, dict[str, float]]:
        ordered = sorted(runs[key], key=lambda r: r[0])
        return ordered[len(ordered) // 2]

    offline, offline_cpu = median("offline")
    instant, instant_cpu = median("instant")
    rows = [{"replicas": n, "samples_per_s": median(str(n))[0], **median(str(n))[1],
             "per_repeat": [r[0] for r in runs[str(n)]]} for n in counts]
    one = rows[0]["samples_per_s"] if rows and rows[0]["replicas"] == 1 else None
    ceiling = 256 / (args.hold_ms / 1000)
    lines = [f"median of {args.repeats} interleaved repeats; accelerator time {args.hold_ms:g} ms per 256-row request "
             f"(one replica's ceiling {ceiling:,.0f} samples/s); offline (c) {offline:,.0f} samples/s "
             f"(per repeat {', '.join(f'{r[0]:,.0f}' for r in runs['offline'])}; machine CPUs "
             f"{offline_cpu['machine_busy']:.0%} busy, student {offline_cpu['student_cores']:.2f} cores)", "",
             f"| replicas | samples/s | vs 1 replica | vs offline | machine CPUs busy ({os.cpu_count()}) | "
             "student process (cores) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs_one = f"{r['samples_per_s'] / one:.2f}" if one else ""
        lines.append(f"| {r['replicas']} | {r['samples_per_s']:,.0f} | {vs_one} | {r['samples_per_s'] / offline:.2f} | "
                     f"{r['machine_busy']:.0%} | {r['student_cores']:.2f} |")
    lines.append(f"| {most}, no accelerator time | {instant:,.0f} | | {instant / offline:.2f} | "
                 f"{instant_cpu['machine_busy']:.0%} | {instant_cpu['student_cores']:.2f} |")
    two = next((r["samples_per_s"] for r in rows if r["replicas"] == 2), None)
    best = max((r["samples_per_s"] for r in rows), default=0.0)
    targets = []
    if one and two:
        targets.append(f"2 replicas / 1: {two / one:.2f} (target >= 1.8: {'met' if two / one >= 1.8 else 'NOT met'})")
    targets.append(f"best online / offline: {best / offline:.2f} (target >= 0.95: "
                   f"{'met' if best / offline >= 0.95 else 'NOT met'})")
    targets.append(f"accelerator time hidden: {most} replicas at {args.hold_ms:g} ms / the same pool at 0 ms: "
                   f"{best / instant:.2f} (the rest, {instant / offline:.2f} of offline, is serving on this machine's "
                   "CPUs)")
    write_results(args.results, "replicas", lines, targets, hold_ms=args.hold_ms, offline_samples_per_s=offline,
                  offline_cpu=offline_cpu, runs=rows, no_accelerator_time={"replicas": most, "samples_per_s": instant,
                                                                           **instant_cpu})


if __name__ == "__main__":
    main()
