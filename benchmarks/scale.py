"""Scale: peak RSS, samples/s and bytes read of the streaming data path, from 100k to 4M rows.

Tabular: for each N in ``--rows``, a Parquet file of N rows x 64 float32 features and an integer label
made by a fixed random linear teacher (generated in chunks, not timed, cached under ``--work``); then
  (1) ``import-data`` of it,
  (2) ``pseudo-label`` shard 0 of 4 with a TorchScript Linear(64->10) made here, outside the project,
      run in-process (``teacher_url=inprocess:<path>``); shards 1-3 are labelled untimed,
  (3) ``student-train mode=offline``, 1 epoch, MLP, batch 256, from the four soft-label shards.
Fashion-MNIST (Debian's ``dataset-fashion-mnist``): the 70,000 images replicated to ``--fashion`` as
uint8 ``.npy`` (written in chunks through a memmap), imported, and ``student-train mode=hard`` 1 epoch;
then the same student trained on the 60,000 training images by this tree's streaming trainer (imported
dataset) and by the in-memory trainer of git commit ``74dd9f1`` (a throwaway ``git worktree`` under
``--work``, run with ``PYTHONPATH=<worktree>/src`` on a dataset written by its own ``prepare-data``).

Every measured step runs in a fresh child process (``crossdistill.cli.main`` in-process, torch, OMP and
MKL pinned to one thread) that reports at exit its peak RSS (``VmHWM`` of /proc/self/status; its
``ru_maxrss`` is recorded too, but Linux carries the parent's RSS at fork into it), the bytes it read
(``rchar`` and ``read_bytes`` of /proc/self/io, counted after the step's modules are imported), its
wall time and rows -> samples/s. Prints tables with the issue's targets beside them, asserts nothing,
and writes ``<results>.json`` and ``<results>.md``.

    .venv/bin/python -m benchmarks.scale [--rows 100000,1000000,4000000] [--fashion 1400000]
                                         [--work runs/bench-scale] [--results benchmarks/results/scale]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
          "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
FEATURES, CLASSES, SHARDS, BATCH = 64, 10, 4, 256
GEN_CHUNK = 65_536  # rows per generated chunk (Parquet row group / memmap slice)
OLD_COMMIT = "74dd9f1"  # the last in-memory trainer
RESULT_MARK = "BENCH-SCALE-RESULT "
# What each step imports while it runs, imported before the I/O counters are read so that module files do
# not count as data read (and only that: torch is not loaded into a step that does not use it).
_DATA = ("pyarrow.dataset", "pyarrow.parquet", "pyarrow.compute", "pandas", "fsspec", "crossdistill.pipeline_cli")
PRELOAD = {"import-data": _DATA, "prepare-data": _DATA,
           "pseudo-label": (*_DATA, "torch", "crossdistill.teacher.adapters", "crossdistill.teacher.colocated"),
           "student-train": (*_DATA, "torch", "torch._dynamo", "torch.utils.data", "tqdm", "crossdistill.train.models")}


# ------------------------------------------------------------------------------------------ child side
def _io() -> dict[str, int]:
    fields = {}
    with open("/proc/self/io") as fh:
        for line in fh:
            key, value = line.split(":")
            fields[key] = int(value)
    return {"rchar": fields.get("rchar", 0), "read_bytes": fields.get("read_bytes", 0)}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run CLI steps (``argvs``, one after the other) in this fresh process and measure them (``--child``)."""
    import importlib

    from crossdistill import cli

    step = spec["argvs"][0][0]
    cli.resolve(step)  # imports the step's module
    for name in PRELOAD[step]:
        try:
            importlib.import_module(name)
        except ImportError:  # a module the checked-out tree does not have (the old commit)
            pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    before = _io()
    start = time.perf_counter()
    rc = max(cli.main(argv) for argv in spec["argvs"])
    seconds = time.perf_counter() - start
    after = _io()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rc": rc, "seconds": seconds, "peak_rss_mb": _status_kb("VmHWM") / 1024,
            "ru_maxrss_mb": usage.ru_maxrss / 1024,
            "rchar": after["rchar"] - before["rchar"], "read_bytes": after["read_bytes"] - before["read_bytes"],
            "crossdistill": str(Path(cli.__file__).parents[1])}


# ----------------------------------------------------------------------------------------- parent side
def _measure(rows: int, *argvs: list[str], pythonpath: str | None = None) -> dict[str, Any]:
    """CLI steps (usually one) in a fresh child process: wall s, samples/s over ``rows``, peak RSS, bytes read."""
    env = {**os.environ, **PINNED}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", json.dumps({"argvs": argvs})],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    marked = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if out.returncode != 0 or not marked or json.loads(marked[-1][len(RESULT_MARK):])["rc"] != 0:
        raise SystemExit(f"crossdistill {' '.join(argvs[-1])} failed:\n{out.stderr[-3000:]}")
    result = json.loads(marked[-1][len(RESULT_MARK):])
    result.update(rows=rows, samples_per_s=rows / result["seconds"], load_before=load)
    return result


def _fresh(path: Path) -> str:
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _linear_teacher(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), rng.standard_normal(CLASSES).astype(np.float32)


def _make_parquet(path: Path, rows: int) -> None:
    """N rows x 64 float32 columns f00..f63 + ``label`` = argmax of the linear teacher (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return
    weight, bias = _linear_teacher()
    names = [f"f{i:02d}" for i in range(FEATURES)]
    schema = pa.schema([(n, pa.float32()) for n in names] + [("label", pa.int64())])
    rng = np.random.default_rng(rows)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, GEN_CHUNK):
            x = rng.standard_normal((min(GEN_CHUNK, rows - start), FEATURES), dtype=np.float32)
            label = np.argmax(x @ weight + bias, axis=1).astype(np.int64)
            writer.write_table(pa.table([*(x[:, i] for i in range(FEATURES)), label], schema=schema))
    tmp.rename(path)


def _make_teacher(path: Path) -> None:
    """The same linear teacher as a TorchScript Linear(64->10), with the metadata crossdistill reads."""
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    if path.exists():
        return
    weight, bias = _linear_teacher()
    layer = torch.nn.Linear(FEATURES, CLASSES)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.T.copy()))
        layer.bias.copy_(torch.from_numpy(bias))
    meta = json.dumps({"input_shape": [FEATURES], "num_classes": CLASSES})
    tmp = path.with_suffix(".tmp")
    torch.jit.save(torch.jit.script(layer.eval()), str(tmp), _extra_files={TORCHSCRIPT_META: meta})
    tmp.rename(path)


def _tabular(rows: int, work: Path, teacher: Path) -> list[dict[str, Any]]:
    base = work / f"tabular-{rows}"
    base.mkdir(parents=True, exist_ok=True)
    source = work / f"tabular-{rows}.parquet"
    _make_parquet(source, rows)
    data = base / "data"
    steps = [{"step": "import-data", **_measure(
        rows, ["import-data", f"source={source}", "label=label", f"out={_fresh(data)}",
               f"class_names={json.dumps([str(c) for c in range(CLASSES)])}"])}]  # all 10, even if one is absent
    data_bytes = _size(data)
    soft = [base / f"soft-{i}" for i in range(SHARDS)]
    label = [["pseudo-label", f"data={data}", f"teacher_url=inprocess:{teacher}", f"shard_index={i}",
              f"num_shards={SHARDS}", f"out={_fresh(soft[i])}", "progress=false"] for i in range(SHARDS)]
    run = _measure(rows // SHARDS, label[0])
    steps.append({"step": f"pseudo-label (shard 1 of {SHARDS})", **run, "read_fraction": run["rchar"] / data_bytes})
    _measure(0, *label[1:])  # the other shards, untimed, for the offline student
    steps.append({"step": "student-train offline", **_measure(
        rows, ["student-train", f"train_data={data}", "mode=offline", f"soft_labels={json.dumps([str(p) for p in soft])}",
               f"out={_fresh(base / 'student')}", "epochs=1", f"batch_size={BATCH}", "model.name=mlp", "threads=1",
               "resume=false", "progress=false"])})
    for s in steps:
        s.update(dataset=f"tabular {rows:,} x {FEATURES}", dataset_bytes=data_bytes)
    return steps


def _fashion_arrays() -> tuple[np.ndarray, np.ndarray, int]:
    """Fashion-MNIST's uint8 images [70000, 1, 28, 28], labels, and how many are training images."""
    from crossdistill.data.sources import load_fashion_mnist

    ds = load_fashion_mnist()
    x = np.rint(ds["x"] * 255).astype(np.uint8)  # the loader's float32 = uint8 / 255: exact way back
    return x, ds["y"], int(ds.meta["official_test_from_id"])


def _write_npy(folder: Path, x: np.ndarray, y: np.ndarray, rows: int) -> Path:
    """``x.npy`` (uint8 [rows, 1, 28, 28]) and ``y.npy``: the images repeated to ``rows``, written by slices."""
    if (folder / "x.npy").exists():
        return folder / "x.npy"
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in (("y", y), ("x", x)):  # x last: its presence marks a finished pair
        tmp = folder / f"{name}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(rows, *src.shape[1:]))
        for start in range(0, rows, GEN_CHUNK):
            idx = np.arange(start, min(start + GEN_CHUNK, rows)) % len(src)
            out[start:start + len(idx)] = src[idx]
        out.flush()
        del out
        tmp.rename(folder / f"{name}.npy")
    return folder / "x.npy"


def _steady(log: Path) -> float:
    """Steady-state samples/s from train_log.jsonl: the windows after the first one."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if "samples_per_s" in e]
    if len(entries) < 2:
        return float("nan")
    busy = 0.0
    prev = entries[0]["samples_seen"]
    for e in entries[1:]:
        busy += (e["samples_seen"] - prev) / e["samples_per_s"]
        prev = e["samples_seen"]
    return (prev - entries[0]["samples_seen"]) / busy


def _hard_train(data: str, out: Path, rows: int, epochs: int, pythonpath: str | None = None) -> dict[str, Any]:
    run = _measure(rows * epochs, ["student-train", f"train_data={data}", "mode=hard", f"out={_fresh(out)}",
                                   f"epochs={epochs}", f"batch_size={BATCH}", "model.name=mlp", "threads=1",
                                   "resume=false", "progress=false"], pythonpath=pythonpath)
    run["steady_samples_per_s"] = _steady(out / "train_log.jsonl")
    return run


def _fashion(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    x, y, n_train = _fashion_arrays()
    base = work / f"fashion-{args.fashion}"
    source = _write_npy(work / f"fashion-{args.fashion}-npy", x, y, args.fashion)
    data = base / "data"
    steps = [{"step": "import-data", **_measure(
        args.fashion, ["import-data", f"source={source}", "label=y.npy", f"out={_fresh(data)}"])}]
    steps.append({"step": "student-train hard", **_hard_train(str(data), base / "student", args.fashion, 1)})
    for s in steps:
        s.update(dataset=f"Fashion-MNIST x{args.fashion / len(x):.0f} ({args.fashion:,} images)",
                 dataset_bytes=_size(data))
    return steps, _compare(args, work, x[:n_train], y[:n_train])


def _compare(args: argparse.Namespace, work: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The 60,000 training images: streaming trainer (this tree) vs in-memory trainer (``OLD_COMMIT``)."""
    base = work / "compare"
    new_data = base / "new-data"
    if not (new_data / "manifest.json").exists():
        source = _write_npy(base / "npy", x, y, len(x))
        _measure(len(x), ["import-data", f"source={source}", "label=y.npy", f"out={_fresh(new_data)}"])
    old_tree = base / "old"
    if not (old_tree / "src").exists():
        shutil.rmtree(old_tree, ignore_errors=True)
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(old_tree), OLD_COMMIT], cwd=ROOT,
                       check=True, capture_output=True)
    old_src = str(old_tree / "src")
    old_data = base / "old-data"
    if not all((old_data / part / "manifest.json").exists() for part in ("train", "val")):
        # Its prepare-data cannot write an empty val split: one image goes to val, and train + val are the
        # 60,000 training images.
        _measure(len(x), ["prepare-data", "dataset=fashion-mnist", "official_test=true",
                          f"val_fraction={1 / len(x)}", f"out={_fresh(old_data)}"], pythonpath=old_src)
    old_train = json.dumps([str(old_data / "train"), str(old_data / "val")])
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
    for _ in range(args.repeats):  # alternate, so drift in the machine's load touches both alike
        runs["old"].append(_hard_train(old_train, base / "student-old", len(x), args.compare_epochs,
                                       old_src))
        runs["new"].append(_hard_train(str(new_data), base / "student-new", len(x), args.compare_epochs))
    if not runs["old"][0]["crossdistill"].startswith(old_src):
        raise SystemExit(f"the old run imported crossdistill from {runs['old'][0]['crossdistill']}, not {old_src}")
    ratios = [n["steady_samples_per_s"] / o["steady_samples_per_s"] for n, o in zip(runs["new"], runs["old"], strict=True)]
    return {"images": len(x), "epochs": args.compare_epochs, "repeats": args.repeats, "old_commit": OLD_COMMIT,
            "runs": runs, "ratio": statistics.median(ratios), "ratios": ratios,
            **{f"{k}_samples_per_s": statistics.median(r["steady_samples_per_s"] for r in v) for k, v in runs.items()},
            **{f"{k}_wall_samples_per_s": statistics.median(r["samples_per_s"] for r in v) for k, v in runs.items()},
            **{f"{k}_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}}


# ---------------------------------------------------------------------------------------------- report
def _table(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["| dataset | step | rows | wall s | samples/s | peak RSS MB | read MB (rchar) | read / data | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in steps:
        frac = f"{s['read_fraction']:.2f}" if "read_fraction" in s else ""
        lines.append(f"| {s['dataset']} | {s['step']} | {s['rows']:,} | {s['seconds']:.1f} | "
                     f"{s['samples_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} | {s['rchar'] / 2**20:,.1f} | {frac} | "
                     f"{s['load_before']:.1f} |")
    return lines


def _targets(tabular: dict[int, list[dict[str, Any]]], compare: dict[str, Any] | None) -> list[str]:
    lines = []
    if len(tabular) >= 2:
        lo, hi = min(tabular), max(tabular)
        for a, b in zip(tabular[lo], tabular[hi], strict=True):
            ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
            lines.append(f"- peak RSS of {a['step']} at {hi:,} rows / at {lo:,} rows: {b['peak_rss_mb']:,.0f} / "
                         f"{a['peak_rss_mb']:,.0f} MB = {ratio:.2f}x (target <= 1.3x, flat)")
    for rows, steps in tabular.items():
        for s in steps:
            if "read_fraction" in s:
                lines.append(f"- {s['step']} at {rows:,} rows read {s['read_fraction']:.2f} of the dataset's "
                             f"{s['dataset_bytes'] / 2**20:,.1f} MB (target ~1/{SHARDS} = {1 / SHARDS:.2f})")
    if compare:
        lines.append(f"- Fashion-MNIST {compare['images']:,} training images, {compare['epochs']} epochs, MLP, "
                     f"batch {BATCH}, 1 thread, median of {compare['repeats']}: streaming "
                     f"{compare['new_samples_per_s']:,.0f} samples/s, in-memory ({compare['old_commit']}) "
                     f"{compare['old_samples_per_s']:,.0f} samples/s, ratio {compare['ratio']:.2f} "
                     f"[{min(compare['ratios']):.2f}-{max(compare['ratios']):.2f}] (target >= 0.9); whole runs "
                     f"(start-up and loading included) {compare['new_wall_samples_per_s']:,.0f} vs "
                     f"{compare['old_wall_samples_per_s']:,.0f} samples/s; peak RSS "
                     f"{compare['new_peak_rss_mb']:,.0f} vs {compare['old_peak_rss_mb']:,.0f} MB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000,4000000", help="tabular sizes, comma-separated")
    parser.add_argument("--fashion", type=int, default=1_400_000, help="Fashion-MNIST images (0 = skip that part)")
    parser.add_argument("--compare-epochs", type=int, default=3, help="epochs of the streaming vs in-memory runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side of the comparison (median)")
    parser.add_argument("--work", default="runs/bench-scale", help="generated data (cached) and step outputs")
    parser.add_argument("--results", default="benchmarks/results/scale", help="writes <results>.json and .md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_MARK + json.dumps(_child(json.loads(args.child))), flush=True)
        return
    os.environ.update(PINNED)
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "teacher-linear.pt"
    _make_teacher(teacher)
    sizes = [int(r) for r in args.rows.split(",") if r.strip()]
    tabular = {rows: _tabular(rows, work, teacher) for rows in sizes}
    steps = [s for rows in sizes for s in tabular[rows]]
    compare = None
    notes = []
    if args.fashion:
        from crossdistill.data.sources import FASHION_MNIST_DEBIAN

        if Path(FASHION_MNIST_DEBIAN).is_dir():
            fashion_steps, compare = _fashion(args, work)
            steps += fashion_steps
        else:
            notes.append(f"Fashion-MNIST part skipped: {FASHION_MNIST_DEBIAN} is missing "
                         "(apt-get install -y dataset-fashion-mnist)")
    else:
        notes.append("Fashion-MNIST part skipped (--fashion 0)")
    load_end = os.getloadavg()
    command = "python -m benchmarks.scale " + " ".join(sys.argv[1:])
    machine = (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM")
    header = [f"# Scale benchmark ({started:%Y-%m-%d %H:%M} UTC)", "",
              f"`{command}`", "",
              f"machine: {machine}; load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in load_start)}, "
              f"at end {'/'.join(f'{v:.1f}' for v in load_end)} (the `load` column is the 1-min load before each "
              f"step: above {os.cpu_count()} the machine was shared while it ran)",
              f"each step: a fresh process, 1 thread (torch, OMP, MKL); batch {BATCH}; MLP student; samples/s = "
              "rows / wall s of the step (start-up included); peak RSS = VmHWM; read MB = rchar after imports (page cache hits count)",
              ""]
    body = _table(steps) + ["", "Targets (printed, not asserted):", *_targets(tabular, compare),
                            *(f"- {n}" for n in notes)]
    text = "\n".join(header + body) + "\n"
    print("\n" + text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({
        "command": command, "date": started.isoformat(), "machine": machine, "cpus": os.cpu_count(),
        "load_start": load_start, "load_end": load_end, "threads": PINNED, "batch_size": BATCH,
        "steps": steps, "compare": compare, "notes": notes}, indent=2))
    results.with_suffix(".md").write_text(text)
    print(f"written: {results.with_suffix('.json')}, {results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
