"""Where a served teacher's CPU goes, per request: why serving costs what the throughput benchmark's s/i shows.

The teacher (the throughput benchmark's Keras teacher, same cache) is served by ``crossdistill
teacher-serve`` on the teacher's half of the CPUs and loaded by a client on the other half (as in
``benchmarks/throughput.py --pin``). For each request size the server's CPU time is read per thread from
``/proc/<pid>/task`` before and after a load of ``--seconds`` and split into:

- the event loop (the main thread: grpc.aio's receive and send, request checks, KServe's data plane);
- the forward pool (the Python threads that call the adapter: the framework's Python-side dispatch);
- the framework's compute threads (TensorFlow's ``tf_*``);
- gRPC's own threads (``event_engine``, ``grpc_*``) and any other.

Two references on the teacher's CPUs: the adapter called in-process one request at a time (CPU per
call), and the floor of gRPC itself: a bare grpc.aio server with one generic method that answers every
request of the same size with a fixed short reply (no protobuf, no framework).

    .venv/bin/python -m benchmarks.serving_cost [--rows 256,4096] [--seconds 5] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from queue import SimpleQueue

from benchmarks.report import write_results
from benchmarks.throughput import PINNED, cpu_sides, data_and_teacher, pin_process, stat_cpu_seconds

GROUPS = ("event loop", "forward pool (Python)", "framework compute", "gRPC threads", "other")
REPLY = b"\0" * 512  # the bare server's answer: about a 256-row logits reply's order of magnitude


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """``{tid: (thread name, CPU seconds)}`` of every thread of ``pid`` (user + system, from /proc)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = (Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip(),
                             stat_cpu_seconds(f"/proc/{pid}/task/{tid}/stat"))
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return out


def group_of(pid: int, tid: int, name: str, main_name: str) -> str:
    """Which of GROUPS a server thread belongs to (Python names no OS threads: they carry the main's name)."""
    if tid == pid:
        return "event loop"
    if name == main_name:
        return "forward pool (Python)"
    if name.startswith(("tf_", "torch", "onnx")):
        return "framework compute"
    if name.startswith(("event_engine", "grpc")):
        return "gRPC threads"
    return "other"


def cpu_by_group(pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict:
    """CPU seconds per group between two ``thread_cpu`` readings (threads born in between start at 0)."""
    main_name = after[pid][0]
    spent = dict.fromkeys(GROUPS, 0.0)
    for tid, (name, cpu) in after.items():
        spent[group_of(pid, tid, name, main_name)] += cpu - before.get(tid, (name, 0.0))[1]
    return spent


def _batch(data: str, rows: int) -> tuple:
    """``rows`` rows of the student split (repeated as needed) and their ids."""
    import numpy as np

    from crossdistill.data import read_dataset

    ds = read_dataset(data)
    x = np.resize(ds["x"].astype(np.float32), (rows, *ds["x"].shape[1:]))
    return np.arange(rows, dtype=np.int64), x


def load_server(endpoint: str, pid: int, ids: object, x: object, seconds: float, in_flight: int) -> dict:
    """Keep ``in_flight`` requests on the server for ``seconds``; requests/s and server CPU ms per request by group."""
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

    with TeacherClient(TeacherClientConfig(url=endpoint, max_in_flight=in_flight)) as client:
        client.wait_ready(60.0)
        list(client.stream([(ids, x, None)] * (2 * in_flight)))  # connection and warm-up, not measured
        end = time.perf_counter() + seconds
        batches = itertools.takewhile(lambda _: time.perf_counter() < end, itertools.repeat((ids, x, None)))
        before, start = thread_cpu(pid), time.perf_counter()
        requests = sum(1 for _ in client.stream(batches))
        wall, after = time.perf_counter() - start, thread_cpu(pid)
    spent = cpu_by_group(pid, before, after)
    return {"requests_per_s": requests / wall, "ms_per_request": {g: 1e3 * v / requests for g, v in spent.items()}}


def echo_server() -> None:
    """The bare grpc.aio server (child process): prints its port, answers every call with REPLY."""
    import grpc

    async def answer(_request: bytes, _context: object) -> bytes:
        return REPLY

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 30)])
        same = grpc.unary_unary_rpc_method_handler(answer, lambda b: b, lambda b: b)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bare", {"Call": same})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def load_echo(port: int, pid: int, size: int, seconds: float, in_flight: int) -> dict:
    """The floor: requests of ``size`` bytes on the bare server; its CPU ms per request (all threads)."""
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)])
    call = channel.unary_unary("/bare/Call", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    body, done, requests = b"\1" * size, SimpleQueue(), 0

    def send() -> None:
        call.future(body, timeout=30).add_done_callback(done.put)

    for _ in range(in_flight):  # warm-up round, not measured
        send()
    for _ in range(in_flight):
        done.get().result()
    cpu = f"/proc/{pid}/stat"  # the whole process: every thread
    before, start, end = stat_cpu_seconds(cpu), time.perf_counter(), time.perf_counter() + seconds
    for _ in range(in_flight):
        send()
    while time.perf_counter() < end:
        done.get().result()
        requests += 1
        send()
    for _ in range(in_flight):
        done.get().result()
        requests += 1
    wall = time.perf_counter() - start
    channel.close()
    return {"requests_per_s": requests / wall,
            "ms_per_request": 1e3 * (stat_cpu_seconds(cpu) - before) / requests}


def in_process_ms(teacher: str, x: object, calls: int) -> float:
    """CPU ms per call of the adapter in this process, one call at a time (run on the teacher's CPUs)."""
    from crossdistill.teacher.adapters import load_teacher

    adapter = load_teacher(teacher, threads=1)
    adapter.predict(x)
    start = time.process_time()
    for _ in range(calls):
        adapter.predict(x)
    return 1e3 * (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=lambda t: [int(n) for n in t.split(",")], default=[256, 4096],
                        help="rows per request, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per request size")
    parser.add_argument("--in-flight", type=int, default=8, help="requests kept on the server")
    parser.add_argument("--teacher-arch", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--teacher-hidden", default="256,128")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--work", default="runs/bench-throughput", help="shared with benchmarks/throughput.py")
    parser.add_argument("--results", default="benchmarks/results/serving_cost")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server()
        return
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher

    os.environ.update(PINNED)
    sides = cpu_sides(True)
    os.sched_setaffinity(0, sides["student"])
    work = Path(args.work)
    data, teacher = data_and_teacher(work, args.teacher_arch, args.teacher_hidden, args.teacher_epochs)
    serve = TeacherServeConfig(name="cost-teacher", model_uri=teacher, workdir=str(work / "server"), workers_threads=1)
    echo = subprocess.Popen([sys.executable, "-m", "benchmarks.serving_cost", "--echo-server"], stdout=subprocess.PIPE,
                            text=True)
    served, bare = {}, {}
    try:
        pin_process(echo.pid, sides["teacher"])
        port = int(echo.stdout.readline())
        endpoint = deploy_teacher(serve).grpc
        pid = int((work / "server" / f"{serve.name}.pid").read_text())
        pin_process(pid, sides["teacher"])
        for rows in args.rows:
            ids, x = _batch(data, rows)
            served[rows] = load_server(endpoint, pid, ids, x, args.seconds, args.in_flight)
            bare[rows] = load_echo(port, echo.pid, x.nbytes + ids.nbytes, args.seconds, args.in_flight)
    finally:
        teardown_teacher(serve)
        echo.terminate()
        echo.wait()
    os.sched_setaffinity(0, sides["teacher"])  # the adapter's framework threads start here, on the teacher's side
    inproc = {rows: in_process_ms(teacher, _batch(data, rows)[1], max(20, 20000 // rows)) for rows in args.rows}
    lines = [f"Server CPU ms per request of the {args.teacher_arch} teacher ({args.teacher_hidden}), teacher on CPUs "
             f"{sides['teacher']}, client on {sides['student']}, {args.in_flight} in flight, {args.seconds:g} s per size",
             "", "| | " + " | ".join(f"{r} rows" for r in args.rows) + " |", "|---|" + "---|" * len(args.rows)]
    for g in GROUPS:
        lines.append(f"| {g} | " + " | ".join(f"{served[r]['ms_per_request'][g]:.3f}" for r in args.rows) + " |")
    lines += ["| **served, all threads** | " + " | ".join(
                  f"**{sum(served[r]['ms_per_request'].values()):.3f}**" for r in args.rows) + " |",
              "| requests/s served | " + " | ".join(f"{served[r]['requests_per_s']:.0f}" for r in args.rows) + " |",
              "| in-process adapter, one call | " + " | ".join(f"{inproc[r]:.3f}" for r in args.rows) + " |",
              "| bare grpc.aio server, same request bytes | " + " | ".join(
                  f"{bare[r]['ms_per_request']:.3f}" for r in args.rows) + " |"]
    targets = ["(info) serving cost per request = served, all threads - in-process adapter: " + ", ".join(
        f"{sum(served[r]['ms_per_request'].values()) - inproc[r]:.3f} ms at {r} rows" for r in args.rows)]
    write_results(args.results, "serving_cost", lines, targets, served=served, bare=bare, in_process_ms=inproc,
                  cpus=sides, teacher={"arch": args.teacher_arch, "hidden": args.teacher_hidden})


if __name__ == "__main__":
    main()
