"""Remote vs co-located vs offline teacher: student-training throughput, serving overhead, TLS + token cost.

Same teacher (the demo's Keras MLP), student (MLP 64-32) and data (digits, student owner's split).
Student training, samples/s of the trainer:
  (a) the teacher inside the student's process, called sequentially before every step;
  (b) the teacher in its own server process over gRPC, several requests in flight;
  (c) offline, from soft labels the teacher computed once beforehand (that labelling is not timed).
The teacher alone, samples/s of teacher answers, with requests of (b)'s size (batch x rpc_batches rows):
  (s) the served teacher under a load client in its own process, enough requests in flight to saturate it;
  (i) the same adapter in-process (``load_teacher(...).predict``), called from a pool as big as the
      server's forward pool, same thread pinning.
With TLS + token: (b+) and (s+) repeat (b) and (s) against a second server started with a bearer token
and TLS (a test CA made here), the clients sending the token and trusting the CA.

Every setup runs in a fresh process with every framework pinned to one thread (torch.set_num_threads,
TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, OMP_NUM_THREADS); the teacher servers get one thread
per forward too. The setups run in turn ``--repeats`` times (a, b, b+, c, s, s+, i, a, ...) so drift in
the machine's load touches them alike; the table gives each setup's median and range of steady-state
rates, and every ratio is the median of the per-repeat ratios. Prints one table and writes
benchmarks/results/throughput.json. Asserts nothing.

    .venv/bin/python benchmarks/throughput.py [--epochs 40] [--batch-size 64] [--in-flight 4] [--rpc-batches 4]
                                              [--load-in-flight 8] [--load-seconds 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
          "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
SERVER_THREADS = 1  # intra-op threads of the served teacher (TeacherServeConfig.workers_threads)
SERVER_POOL = 4  # forwards the server runs at once: its pool is max(4, workers_threads) (teacher/server.py)
BASE_ORDER = ("a", "b", "b+", "c", "s", "s+", "i")  # one repeat; TLS runs next to their plain twins
TEACHER_SIDE = ("i",)  # setups that run on the teacher's CPUs (with --pin); every other child is the student's


def order(args: argparse.Namespace) -> tuple[str, ...]:
    """One repeat's setups: the base seven, then (s) and (i) again at each ``--sweep-rows`` request size."""
    return BASE_ORDER + tuple(f"{s}@{n}" for n in args.sweep_rows for s in ("s", "i"))


def cpu_sides(pin: bool) -> dict[str, list[int]]:
    """The CPUs of the student's side and the teacher's side: with ``pin``, the first and second half of this
    process's CPUs (two nodes in one machine); without, all of them for both."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return {"student": cpus, "teacher": cpus}
    half = len(cpus) // 2
    return {"student": cpus[:half], "teacher": cpus[half:]}


def pin_process(pid: int, cpus: list[int]) -> None:
    """Move every thread of process ``pid`` onto ``cpus`` (threads it starts later inherit the set)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def _names(args: argparse.Namespace) -> dict[str, str]:
    remote = f"{args.in_flight} in flight x {args.rpc_batches} batches"
    load = f"{args.load_in_flight} in flight x {args.batch_size * args.rpc_batches} rows"
    sweep = {f"s@{n}": f"(s) at {n} rows per request" for n in args.sweep_rows}
    sweep |= {f"i@{n}": f"(i) at {n} rows per call" for n in args.sweep_rows}
    return sweep | {"a": "(a) co-located teacher, sequential",
            "b": f"(b) remote over gRPC, {remote}",
            "b+": "(b+) = (b) with TLS + token",
            "c": "(c) offline, precomputed soft labels",
            "s": f"(s) served teacher alone, load client, {load}",
            "s+": "(s+) = (s) with TLS + token",
            "i": f"(i) same adapter in-process, {SERVER_POOL} threads"}


# (label, per-repeat value from the setups' rates (samples/s; "<setup> cpu": samples per CPU-second of the
# teacher's process), target text, target met?)
RATIOS: list[tuple[str, Callable[[dict[str, float]], float], str, Callable[[float], bool]]] = [
    ("b/a: remote vs co-located training", lambda r: r["b"] / r["a"], ">= 1.0", lambda v: v >= 1.0),
    ("b/c: remote vs offline training", lambda r: r["b"] / r["c"], "(info)", lambda v: True),
    ("s/i: serving overhead", lambda r: r["s"] / r["i"], ">= 0.9", lambda v: v >= 0.9),
    ("s/i per teacher CPU-second", lambda r: r["s cpu"] / r["i cpu"], "(info)", lambda v: True),
    ("b/min(c,s): pipeline efficiency", lambda r: r["b"] / min(r["c"], r["s"]), ">= 0.9", lambda v: v >= 0.9),
    ("1 - b+/b: TLS + token cost, training", lambda r: 1 - r["b+"] / r["b"], "<= 0.05", lambda v: v <= 0.05),
    ("1 - s+/s: TLS + token cost, served", lambda r: 1 - r["s+"] / r["s"], "<= 0.05", lambda v: v <= 0.05),
    ("1 - s+/s per teacher CPU-second", lambda r: 1 - r["s+ cpu"] / r["s cpu"], "(info)", lambda v: True),
]


def ratios_of(args: argparse.Namespace) -> list[tuple[str, Callable[[dict[str, float]], float], str,
                                                   Callable[[float], bool]]]:
    """RATIOS, plus the serving overhead at each ``--sweep-rows`` request size (same target as s/i)."""
    sweep = [(f"s/i at {n} rows per request", lambda r, n=n: r[f"s@{n}"] / r[f"i@{n}"], ">= 0.9",
              lambda v: v >= 0.9) for n in args.sweep_rows]
    return RATIOS[:4] + sweep + RATIOS[4:]


# ------------------------------------------------------------------------------- child processes

def _client_options(setup: str, args: argparse.Namespace, in_flight: int) -> dict[str, Any]:
    """The TeacherClientConfig fields of a remote setup: the plain server, or the TLS + token one."""
    if not setup.endswith("+"):
        return {"url": args.endpoint, "max_in_flight": in_flight}
    return {"url": args.secure_endpoint, "max_in_flight": in_flight, "token_file": args.token_file,
            "tls": {"ca_file": args.ca_file}}


def _train(setup: str, args: argparse.Namespace) -> dict:
    """One timed student-train run: setups a, b, b+, c."""
    import torch

    from crossdistill.train.trainer import StudentTrainConfig, train_student

    torch.set_num_threads(1)
    cfg = {"train_data": args.data, "out": str(Path(args.work) / f"student-{setup}"), "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": 3e-3, "threads": 1, "resume": False, "progress": False,
           "model": {"name": "mlp", "kwargs": {"hidden": [64, 32]}}}
    if setup == "c":
        cfg.update(mode="offline", soft_labels=args.soft_labels)
    elif setup == "a":
        cfg.update(mode="online", teacher={"url": f"inprocess:{args.teacher}", "max_in_flight": 1}, rpc_batches=1)
    else:
        cfg.update(mode="online", teacher=_client_options(setup, args, args.in_flight), rpc_batches=args.rpc_batches)
    start = time.perf_counter()
    result = train_student(StudentTrainConfig.parse(cfg))
    seconds = time.perf_counter() - start
    # Steady state: the trainer's own per-window rates after the first window (imports, connection,
    # first RPCs and allocator warm-up are one-time costs, reported separately as wall seconds).
    prev = result.history[0]["samples_seen"]
    busy = 0.0
    for w in result.history[1:]:
        busy += (w["samples_seen"] - prev) / w["samples_per_s"]
        prev = w["samples_seen"]
    steady = (prev - result.history[0]["samples_seen"]) / busy
    return {"setup": setup, "samples": result.samples_seen, "steps": result.steps, "seconds": seconds,
            "samples_per_s": steady, "wall_samples_per_s": result.samples_seen / seconds}


def _request_rows(setup: str, args: argparse.Namespace) -> int:
    """Rows per request of a teacher-alone setup: (b)'s size (batch x rpc_batches), or the sweep's ``@N``."""
    return int(setup.partition("@")[2] or args.batch_size * args.rpc_batches)


def _requests(setup: str, args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """(ids, x) requests of the setup's size cycling over the data for ``load_seconds``."""
    import numpy as np

    from crossdistill.data import read_dataset

    ds = read_dataset(args.data)
    rows = _request_rows(setup, args)
    index = np.arange(math.lcm(rows, len(ds.ids))) % len(ds.ids)
    x = ds["x"].astype(np.float32)
    ready = [(ds.ids[i], x[i]) for i in np.split(index, len(index) // rows)]  # sliced before the clock starts
    end = time.perf_counter() + args.load_seconds
    for request in itertools.cycle(ready):
        if time.perf_counter() >= end:
            return
        yield request


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds in a /proc ``stat`` file (a process's: all its threads; a task's: one thread)."""
    fields = Path(stat).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15 of stat(5)


def _process_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far, read from /proc."""
    return lambda: stat_cpu_seconds(f"/proc/{pid}/stat")


def _steady(setup: str, stamps: list[tuple[float, float, int]], start: float, warm_s: float) -> dict:
    """Answers per second, and per CPU-second of the teacher's process, after the first ``warm_s`` seconds
    (connection, first calls and warm-up left out). ``stamps``: (time, teacher CPU seconds, rows) per answer."""
    k = next((n for n, (t, _, _) in enumerate(stamps) if t >= start + warm_s), len(stamps) - 2)
    samples = sum(rows for _, _, rows in stamps[k + 1:])
    return {"setup": setup, "samples": sum(rows for _, _, rows in stamps), "requests": len(stamps),
            "seconds": stamps[-1][0] - start, "samples_per_s": samples / (stamps[-1][0] - stamps[k][0]),
            "samples_per_cpu_s": samples / max(stamps[-1][1] - stamps[k][1], 1e-9)}


def _serve_load(setup: str, args: argparse.Namespace) -> dict:
    """Setups s, s+: a load client keeping ``load_in_flight`` requests on the served teacher."""
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

    cpu = _process_cpu(args.secure_pid if setup.endswith("+") else args.pid)
    with TeacherClient(TeacherClientConfig(**_client_options(setup, args, args.load_in_flight))) as client:
        client.wait_ready(60.0)
        start = time.perf_counter()
        stamps = [(time.perf_counter(), cpu(), rows) for _, rows in
                  client.stream((i, x, len(i)) for i, x in _requests(setup, args))]
    return _steady(setup, stamps, start, args.load_seconds / 5)


def _in_process(setup: str, args: argparse.Namespace) -> dict:
    """Setup i: the server's adapter in this process, ``SERVER_POOL`` forwards at once like the server's pool,
    ``load_in_flight`` calls queued like the load client's requests."""
    from crossdistill.teacher.adapters import load_teacher

    adapter = load_teacher(args.teacher, threads=SERVER_THREADS)
    requests = _requests(setup, args)
    adapter.predict(next(requests)[1][:1])  # the server probes its model once before serving, too
    stamps, queued = [], deque()
    with ThreadPoolExecutor(max_workers=SERVER_POOL) as pool:
        start = time.perf_counter()
        for _, x in requests:
            queued.append(pool.submit(adapter.predict, x))
            while len(queued) >= args.load_in_flight:
                out = queued.popleft().result()
                stamps.append((time.perf_counter(), time.process_time(), len(out["logits"])))
        stamps += [(time.perf_counter(), time.process_time(), len(f.result()["logits"])) for f in queued]
    return _steady(setup, stamps, start, args.load_seconds / 5)


CHILDREN = {"a": _train, "b": _train, "b+": _train, "c": _train, "s": _serve_load, "s+": _serve_load,
            "i": _in_process}


def _child(setup: str, args: argparse.Namespace) -> dict:
    side = "teacher" if setup.partition("@")[0] in TEACHER_SIDE else "student"
    cmd = [sys.executable, __file__, "--child", setup, "--child-cpus", ",".join(map(str, args.cpus[side])),
           "--child-args", json.dumps(vars(args))]
    out = subprocess.run(cmd, env={**os.environ, **PINNED}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"setup {setup} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- servers

def _certificates(folder: Path) -> dict[str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)

    def issue(name: str, issuer: Any = None, issuer_key: Any = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
        if issuer is not None:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                       .add_extension(x509.SubjectAlternativeName(
                           [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False))
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("crossdistill benchmark CA")
    key, cert = issue("teacher", ca_cert.subject, ca_key)
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


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


def data_and_teacher(work: Path, arch: str, hidden_text: str, epochs: int) -> tuple[str, str]:
    """The digits student split and a Keras teacher trained on the teacher's split (cached in ``work``)."""
    from crossdistill import storage
    from crossdistill.data.splits import PrepareDataConfig, prepare_data
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    splits = prepare_data(PrepareDataConfig(out=str(work / "data")))
    hidden = [int(w) for w in hidden_text.split(",")]
    teacher = str(work / f"teacher-{arch}-{'-'.join(map(str, hidden))}.keras")
    if not storage.exists(teacher):
        train_keras_teacher(TeacherTrainConfig(train=splits["train"], val=splits["val"], out=teacher, arch=arch,
                                               hidden=hidden, epochs=epochs))
    return splits["student"], teacher


def _measure(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Start the plain and the TLS + token servers, label (c)'s soft labels, run the repeats."""
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label

    work = Path(args.work)
    args.data, args.teacher = data_and_teacher(work, args.teacher_arch, args.teacher_hidden, args.teacher_epochs)
    pki = _certificates(work / "pki")
    args.ca_file, args.token_file = pki["ca"], str(work / "pki" / "token")
    Path(args.token_file).write_text(os.urandom(24).hex() + "\n")
    common = {"model_uri": args.teacher, "workdir": str(work / "server"), "workers_threads": SERVER_THREADS}
    plain = TeacherServeConfig(name="bench-teacher", **common)
    secure = TeacherServeConfig(name="bench-teacher-tls", auth={"token_file": args.token_file},
                                tls={"cert_file": pki["cert"], "key_file": pki["key"]}, **common)
    try:
        args.endpoint = deploy_teacher(plain).grpc
        args.secure_endpoint = deploy_teacher(secure).grpc
        # the local backend's pid files (<workdir>/<name>.pid): (s) reads the server's CPU time from /proc
        args.pid, args.secure_pid = (int((Path(common["workdir"]) / f"{c.name}.pid").read_text())
                                     for c in (plain, secure))
        for pid in (args.pid, args.secure_pid):
            pin_process(pid, args.cpus["teacher"])
        args.soft_labels = run_pseudo_label(PseudoLabelConfig(
            data=args.data, teacher_url=args.endpoint, out=str(work / "soft"), progress=False))
        repeats = []
        for n in range(args.repeats):
            repeats.append({s: _child(s, args) for s in order(args)})
            print(f"repeat {n + 1}/{args.repeats}: " + ", ".join(f"{s} {r['samples_per_s']:.0f}"
                                                                for s, r in repeats[-1].items()), flush=True)
        wire = _wire_bytes(args.endpoint, args.data, args.batch_size)
    finally:
        teardown_teacher(plain)
        teardown_teacher(secure)
    return repeats, wire


# ------------------------------------------------------------------------------- report

def _report(args: argparse.Namespace, repeats: list[dict], wire: list[dict], load: dict[str, float]) -> dict:
    """Print the table and return the results (everything the JSON holds)."""
    names = _names(args)
    setups = order(args)
    rates = {s: [r[s]["samples_per_s"] for r in repeats] for s in setups}
    walls = {s: [r[s]["seconds"] for r in repeats] for s in setups}
    ratios = {}
    cpu = {s: [r[s]["samples_per_cpu_s"] for r in repeats] for s in setups if "samples_per_cpu_s" in repeats[0][s]}
    for label, fn, target, met in ratios_of(args):
        values = [fn({s: r[s]["samples_per_s"] for s in setups} | {f"{s} cpu": r[s]["samples_per_cpu_s"] for s in cpu})
                  for r in repeats]
        ratios[label] = {"median": statistics.median(values), "per_repeat": values, "target": target,
                         "met": met(statistics.median(values))}
    busy = max(load.values()) > (os.cpu_count() or 1)
    print(f"\nthroughput: digits student split, MLP 64-32 student, Keras MLP teacher, {args.epochs} epochs, "
          f"batch {args.batch_size}, {repeats[0]['a']['samples']} samples per training run")
    print(f"threads: 1 per framework per process (torch, TF intra/inter-op, OMP); teacher servers: {SERVER_THREADS} "
          f"thread per forward, {SERVER_POOL} forwards at once; TLS + token: server certificate from a test CA, "
          f"bearer token; machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    pinned = args.cpus["student"] != args.cpus["teacher"]
    print(f"CPUs: student side {args.cpus['student']}, teacher side {args.cpus['teacher']}" +
          (" (pinned: the teacher servers and (i) on the teacher side, training and load clients on the student "
           "side, as on two nodes)" if pinned else " (not pinned: everything shares every CPU)"))
    print(f"load average (1 min) at start {load['start']:.1f}, at end {load['end']:.1f}"
          + (": a busy machine, numbers are noisy" if busy else ""))
    print(f"samples/s: steady state (training: after the trainer's first logging window; teacher alone: after "
          f"the first answers), median [min-max] of {args.repeats} runs; wall s: median whole run "
          "(training incl. start-up)")
    print("per CPU-s: samples per CPU-second of the teacher's process (server or in-process), median")
    print(f"{'setup':<62} {'samples/s':>10} {'range':>15} {'wall s':>7} {'per CPU-s':>10}")
    for s in setups:
        lo, hi = min(rates[s]), max(rates[s])
        per_cpu = f"{statistics.median(cpu[s]):.0f}" if s in cpu else ""
        print(f"{names[s]:<62} {statistics.median(rates[s]):>10.0f} {f'{lo:.0f}-{hi:.0f}':>15} "
              f"{statistics.median(walls[s]):>7.2f} {per_cpu:>10}")
    print(f"\n{'ratio (median of per-repeat ratios)':<44} {'value':>6} {'range':>13} {'target':>8}  met")
    for label, r in ratios.items():
        lo, hi = min(r["per_repeat"]), max(r["per_repeat"])
        verdict = "-" if r["target"] == "(info)" else "yes" if r["met"] else "NO"
        print(f"{label:<44} {r['median']:>6.2f} {f'{lo:.2f}-{hi:.2f}':>13} {r['target']:>8}  {verdict}")
    print(f"\nbytes per sample on the wire (batch {args.batch_size}, 8x8 inputs, 10 classes, protobuf sizes)")
    print(f"{'teacher signal':<14} {'request':>9} {'response':>9}")
    for w in wire:
        print(f"{w['signal']:<14} {w['request_bytes_per_sample']:>9.1f} {w['response_bytes_per_sample']:>9.1f}")
    return {"command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
            "config": {"epochs": args.epochs, "batch_size": args.batch_size, "in_flight": args.in_flight,
                       "rpc_batches": args.rpc_batches, "load_in_flight": args.load_in_flight,
                       "load_seconds": args.load_seconds, "teacher": {"arch": args.teacher_arch, "hidden": args.teacher_hidden},
                       "sweep_rows": args.sweep_rows, "cpus": args.cpus,
                       "repeats": args.repeats, "server_threads": SERVER_THREADS, "server_pool": SERVER_POOL,
                       "threads": PINNED, "machine_cpus": os.cpu_count()},
            "load_average_1min": load, "busy_machine": busy, "setups": names,
            "medians": {s: statistics.median(rates[s]) for s in setups},
            "medians_per_cpu_s": {s: statistics.median(v) for s, v in cpu.items()}, "ratios": ratios,
            "repeats": repeats, "wire": wire}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4, help="requests in flight in (b)")
    parser.add_argument("--rpc-batches", type=int, default=4, help="student batches per teacher request in (b)")
    parser.add_argument("--load-in-flight", type=int, default=8, help="requests in flight of the load client (s)")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="length of each (s) and (i) run; "
                                                                        "the first fifth is warm-up")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each setup (median reported)")
    parser.add_argument("--teacher-epochs", type=int, default=40, help="training epochs of the Keras teacher "
                                                                       "(cached in --work once trained)")
    parser.add_argument("--teacher-arch", choices=["mlp", "cnn"], default="mlp",
                        help="the Keras teacher: the demo's MLP, or a CNN (more compute per request)")
    parser.add_argument("--teacher-hidden", default="256,128", help="its layer widths (Dense units or Conv2D "
                                                                     "filters), comma-separated")
    parser.add_argument("--sweep-rows", type=lambda t: [int(n) for n in t.split(",") if n], default=[1024, 4096],
                        help="serving overhead again at these rows per request (comma-separated; '' for none)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="split the CPUs in two sides, as two nodes: teacher servers and (i) on one half, "
                             "training and load clients on the other (default; --no-pin shares every CPU)")
    parser.add_argument("--work", default="runs/bench-throughput")
    parser.add_argument("--results", default="benchmarks/results/throughput.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-cpus", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.sched_setaffinity(0, [int(c) for c in args.child_cpus.split(",")])  # before any framework starts threads
        child = CHILDREN[args.child.partition("@")[0]]
        print(json.dumps(child(args.child, argparse.Namespace(**json.loads(args.child_args)))))
        return
    os.environ.update(PINNED)
    args.cpus = cpu_sides(args.pin)
    load = {"start": os.getloadavg()[0]}
    repeats, wire = _measure(args)
    load["end"] = os.getloadavg()[0]
    results = _report(args, repeats, wire, load)
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
