"""Distillation quality suite: Hinton et al. (2015) sections 3 and 6 at Fashion-MNIST scale, plus the modes.

Run ``python -m benchmarks.quality`` (``make bench-quality``) from the repository root. Sections:

1. teacher / hard-label student / distilled student, over seeds (Hinton's MNIST rows)
2. temperature sweep for a larger and a much smaller student
3. one class left out of the transfer set, before and after the bias correction of the paper
4. scarce labels: 3% hard, 3% soft, 3% + teacher pseudo-labels through offline mode, 100% hard
5. online (teacher answers every augmented view) vs offline (fixed logits of clean images)
6. Keras teacher over gRPC vs the same teacher as ONNX in-process
7. dense vs top-k soft targets and FP16 on the wire

Every student is trained by ``crossdistill.train.trainer.train_student``; soft labels come from the
project's teacher server (``deploy_teacher``, local backend) through ``run_pseudo_label``. The trained
CNN teacher and every soft-label set are cached under ``--work`` so a rerun skips them. The table and
its configuration go to ``<results>.json`` and ``<results>.md`` after every section, so an interrupted
run keeps what it finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import UNLABELED, Dataset, read_dataset, write_dataset
from crossdistill.data.sources import load_source
from crossdistill.data.splits import PrepareDataConfig, split_dataset

SECTIONS = (1, 2, 3, 4, 5, 6, 7)
VIEW_ID_STRIDE = 10_000_000  # ids of augmented views: original id + view * stride


class QualityConfig(StrictConfig):
    """Everything that fixes the suite's numbers (written next to them in the results file)."""

    dataset: Literal["fashion-mnist", "digits"] = "fashion-mnist"
    work: str = Field("runs/bench-quality", description="cache: data splits, teachers, soft labels, students")
    results: str = Field("benchmarks/results/quality", description="results prefix: <results>.json and .md")
    sections: list[int] = Field(default_factory=lambda: list(SECTIONS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="seeds of sections 1 and 6")
    sweep_seeds: list[int] = Field(default_factory=lambda: [0], description="seeds of sections 2-5 and 7")
    limit_train: int | None = Field(None, gt=0)
    limit_test: int | None = Field(None, gt=0)
    threads: int = Field(2, ge=1, description="torch / teacher-server / TF threads")
    teacher_epochs: int = Field(8, ge=1)
    teacher_seed: int = 0
    student_hidden: list[int] = Field(default_factory=lambda: [128, 128])
    large_hidden: list[int] = Field(default_factory=lambda: [300, 300])
    small_hidden: list[int] = Field(default_factory=lambda: [32])
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay of every student")
    temperature: float = Field(4.0, gt=0)
    hard_weight: float = Field(0.2, ge=0, description="hard-label term; the soft term has weight 1")
    temperatures: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 20.0])
    left_out_class: int = Field(3, ge=0)
    bias_val: int = Field(5000, ge=1, description="held-out training images that choose the bias correction")
    label_fraction: float = Field(0.03, gt=0, le=1)
    online_subset: int = Field(10000, ge=1, description="transfer-set size of section 5")
    online_shift: int = Field(2, ge=0, description="random shift (pixels) of section 5's augmented views")
    keras_epochs: int = Field(8, ge=1)
    keras_hidden: list[int] = Field(default_factory=lambda: [512, 256])
    topk: list[int] = Field(default_factory=lambda: [1, 3, 5])


QUICK = {"limit_train": 6000, "limit_test": 2000, "seeds": [0, 1], "sweep_seeds": [0], "teacher_epochs": 2,
         "epochs": 4, "temperatures": [1.0, 4.0, 20.0], "large_hidden": [256, 256], "bias_val": 1000,
         "online_subset": 2000, "keras_epochs": 2, "work": "runs/bench-quality-quick",
         "results": "benchmarks/results/quality-quick"}


# --------------------------------------------------------------------------- small helpers


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _pm(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean, std = _stats([v * scale for v in values])
    return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def best_bias(logits: np.ndarray, y: np.ndarray, cls: int, grid: np.ndarray) -> tuple[float, int]:
    """The logit offset of class ``cls`` (from ``grid``) with the fewest errors on ``(logits, y)``."""
    errors = [int(((logits + _offset(logits.shape[1], cls, b)).argmax(1) != y).sum()) for b in grid]
    i = int(np.argmin(errors))
    return float(grid[i]), errors[i]


def _offset(num_classes: int, cls: int, bias: float) -> np.ndarray:
    off = np.zeros(num_classes, dtype=np.float32)
    off[cls] = bias
    return off


def wire_bytes(num_classes: int, top_k: int, fp16: bool) -> int:
    """Teacher-output payload per example as the server sends it (ids excluded): floats + int64 indices."""
    f = 2 if fp16 else 4
    return num_classes * f if top_k == 0 else top_k * (f + 8)


# --------------------------------------------------------------------------- the suite


class Suite:
    """Data, teachers and soft labels for the sections, built lazily and cached under ``cfg.work``."""

    def __init__(self, cfg: QualityConfig, log: Callable[[str], None] = print):
        import torch

        self.cfg = cfg
        self.log = log
        torch.set_num_threads(cfg.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self._servers: dict[str, Any] = {}
        self.results: dict[str, Any] = {"sections": {}}
        self._prepare_data()

    # ---- data

    def _prepare_data(self) -> None:
        cfg = self.cfg
        key = _key("data", cfg.dataset, cfg.limit_train, cfg.limit_test, cfg.label_fraction)
        root = self.work / f"data-{key}"
        self.uris = {name: str(root / name) for name in ("train", "test", "student")}
        if not (root / "student" / "manifest.json").exists():
            data = load_source(cfg.dataset)
            pcfg = PrepareDataConfig(dataset=cfg.dataset, official_test=cfg.dataset == "fashion-mnist",
                                     val_fraction=0.0, student_labels=0, limit_train=cfg.limit_train, seed=0)
            n_train = len(split_dataset(data, pcfg)["train"])
            n_labels = max(int(data.meta["num_classes"]), int(round(cfg.label_fraction * n_train)))
            parts = split_dataset(data, pcfg.model_copy(update={"student_labels": n_labels}))
            test = parts["test"]
            if cfg.limit_test:
                test = test.take(np.arange(min(cfg.limit_test, len(test))))
            for name, ds in (("train", parts["train"]), ("test", test), ("student", parts["student"])):
                write_dataset(self.uris[name], ds)
        self.train = read_dataset(self.uris["train"])
        self.test = read_dataset(self.uris["test"])
        self.num_classes = int(self.train.meta["num_classes"])
        self.log(f"data: {cfg.dataset}, train {len(self.train)}, test {len(self.test)} ({root})")

    def subset_uri(self, name: str, ds: Dataset) -> str:
        """Write a derived training set once (keyed by its ids) and return its URI."""
        uri = str(self.work / "subsets" / f"{name}-{_key(ds.ids.tolist(), sorted(ds.columns))}")
        if not Path(uri, "manifest.json").exists():
            write_dataset(uri, ds)
        return uri

    # ---- CNN teacher (sections 1-5, 7)

    @property
    def teacher_key(self) -> str:
        c = self.cfg
        return _key("teacher-cnn", c.dataset, c.limit_train, c.teacher_epochs, c.teacher_seed)

    def cnn_teacher(self) -> dict[str, Any]:
        """Train (or load from the cache) the CNN teacher; returns its TorchScript URI and test numbers."""
        if hasattr(self, "_teacher"):
            return self._teacher
        import torch
        from benchmarks.quality_models import predict_logits, train_teacher_cnn

        from crossdistill.evaluate.export import export_torchscript

        folder = self.work / f"teacher-cnn-{self.teacher_key}"
        ts, info_file = folder / "teacher.pt", folder / "teacher.json"
        if not info_file.exists():
            self.log(f"teacher: training the CNN for {self.cfg.teacher_epochs} epochs (cached in {folder})")
            model, stats = train_teacher_cnn(self.train["x"], self.train["y"], epochs=self.cfg.teacher_epochs,
                                             seed=self.cfg.teacher_seed, num_classes=self.num_classes)
            export_torchscript(model, torch.from_numpy(self.train["x"][:4]), str(ts))
            logits = predict_logits(model, self.test["x"])
            stats["test_errors"] = int((logits.argmax(1) != self.test["y"]).sum())
            storage.write_text(str(info_file), json.dumps(stats, indent=1))
        info = json.loads(info_file.read_text())
        info["uri"] = str(ts)
        info["name"] = "PyTorch CNN (TorchScript, served by crossdistill teacher server)"
        self.log(f"teacher: {len(self.test) - info['test_errors']}/{len(self.test)} test images correct, "
                 f"trained in {info['train_seconds']} s")
        self._teacher = info
        return info

    @contextmanager
    def _served(self, name: str, model_uri: str, fmt: str) -> Iterator[str]:
        from crossdistill.deploy.config import TeacherServeConfig
        from crossdistill.deploy.serve import deploy_teacher, teardown_teacher

        scfg = TeacherServeConfig(model_uri=model_uri, model_format=fmt, name=name,
                                  workdir=str(self.work / "serve"), workers_threads=self.cfg.threads)
        start = time.perf_counter()
        endpoint = deploy_teacher(scfg)
        self.log(f"served {model_uri} at {endpoint.grpc} in {time.perf_counter() - start:.1f} s")
        try:
            yield endpoint.grpc
        finally:
            teardown_teacher(scfg)

    def teacher_url(self) -> str:
        """gRPC address of the CNN teacher server, started on first use and kept until :meth:`close`."""
        if "cnn" not in self._servers:
            ctx = self._served("bench-quality-cnn", self.cnn_teacher()["uri"], "torchscript")
            url = ctx.__enter__()
            self._servers["cnn"] = (ctx, url)
        return self._servers["cnn"][1]

    def close(self) -> None:
        for ctx, _ in self._servers.values():
            ctx.__exit__(None, None, None)
        self._servers.clear()

    def soft_labels(self, top_k: int = 0, fp16: bool = False, temperature: float = 1.0) -> str:
        """Pseudo-label the whole training set through the served CNN teacher (cached); returns the URI."""
        from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label

        uri = str(self.work / f"soft-{self.teacher_key}-k{top_k}-fp16{int(fp16)}-T{temperature:g}")
        if not Path(uri, "manifest.json").exists():
            start = time.perf_counter()
            run_pseudo_label(PseudoLabelConfig(data=self.uris["train"], teacher_url=self.teacher_url(), out=uri,
                                               top_k=top_k, temperature=temperature, fp16=fp16, batch_size=500,
                                               max_in_flight=2, progress=False))
            self.log(f"pseudo-labelled {len(self.train)} images (top_k={top_k}, fp16={fp16}) in "
                     f"{time.perf_counter() - start:.1f} s")
        return uri

    def aligned_soft(self, soft_uri: str, train_uri: str) -> str:
        """Soft labels in the row order of ``train_uri`` (the trainer reads them in step with its inputs):
        the teacher labelled the whole training set once; a subset gets its rows, written once."""
        ids = read_dataset(train_uri, ["id"]).ids
        soft = read_dataset(soft_uri)
        if np.array_equal(ids, soft.ids):
            return soft_uri
        uri = str(self.work / "subsets" / f"soft-{Path(soft_uri).name}-{_key(ids.tolist())}")
        if not Path(uri, "manifest.json").exists():
            row = {int(i): r for r, i in enumerate(soft.ids)}
            write_dataset(uri, soft.take(np.array([row[int(i)] for i in ids], dtype=np.int64)))
        return uri

    # ---- students

    def student(self, tag: str, train_uri: str, mode: str, *, soft: str | None = None, hidden: list[int] | None = None,
                temperature: float | None = None, hard_weight: float | None = None, soft_weight: float = 1.0,
                epochs: int | None = None, seed: int = 0, teacher_url: str | None = None,
                recipe: dict[str, Any] | None = None, eval_on: Dataset | None = None) -> dict[str, Any]:
        """Train one MLP student with ``train_student`` and evaluate it on the test split (or ``eval_on``).

        ``recipe`` overrides the config's ``lr``, ``schedule``, ``weight_decay`` and ``epochs`` (the tuning
        script, ``benchmarks.quality_tune``, uses it to try recipes on a validation split).
        """
        from benchmarks.quality_models import predict_logits

        from crossdistill.teacher.client import TeacherClientConfig
        from crossdistill.train.models import ModelSpec, load_student
        from crossdistill.train.trainer import StudentTrainConfig, train_student

        c = self.cfg
        r = {"lr": c.lr, "schedule": c.schedule, "weight_decay": c.weight_decay, "epochs": epochs or c.epochs,
             **(recipe or {})}
        evaluate = self.test if eval_on is None else eval_on
        out = self.work / "students" / tag
        shutil.rmtree(out, ignore_errors=True)
        tcfg = StudentTrainConfig(
            train_data=train_uri, out=str(out), mode=mode,
            soft_labels=self.aligned_soft(soft, train_uri) if soft else None,
            teacher=TeacherClientConfig(url=teacher_url, max_in_flight=2) if teacher_url else None,
            model=ModelSpec(name="mlp", kwargs={"hidden": list(hidden or c.student_hidden)}),
            temperature=temperature or c.temperature, soft_weight=soft_weight,
            hard_weight=c.hard_weight if hard_weight is None else hard_weight, optimizer="adam", lr=r["lr"],
            weight_decay=r["weight_decay"], schedule=r["schedule"], epochs=r["epochs"], batch_size=c.batch_size,
            seed=seed, resume=False,
            keep_checkpoints=1, threads=c.threads, progress=False, device="cpu")
        start = time.perf_counter()
        res = train_student(tcfg)
        seconds = time.perf_counter() - start
        model, _ = load_student(res.model_uri)
        logits = predict_logits(model, evaluate["x"])
        errors = int((logits.argmax(1) != evaluate["y"]).sum())
        self.log(f"  {tag}: {len(evaluate) - errors}/{len(evaluate)} correct ({seconds:.1f} s, {res.steps} steps)")
        return {"errors": errors, "accuracy": 1 - errors / len(evaluate), "seconds": round(seconds, 1),
                "steps": res.steps, "logits": logits}

    # ---- bookkeeping

    def record(self, section: int, title: str, headers: list[str], rows: list[list[Any]], notes: list[str],
               data: dict[str, Any], seconds: float) -> None:
        self.results["sections"][str(section)] = {"title": title, "headers": headers, "rows": rows,
                                                  "notes": notes, "data": data, "seconds": round(seconds, 1)}
        self.log(f"\n## {section}. {title}\n\n{md_table(headers, rows)}\n" + "".join(f"\n- {n}" for n in notes))


# --------------------------------------------------------------------------- sections


def _mean_acc(runs: list[dict]) -> float:
    return float(np.mean([r["accuracy"] for r in runs]))


def _errs(runs: list[dict]) -> str:
    return _pm([r["errors"] for r in runs], digits=1 if len(runs) > 1 else 0)


def _accs(runs: list[dict]) -> str:
    return _pm([r["accuracy"] for r in runs], scale=100)


def section_1(s: Suite) -> None:
    c = s.cfg
    teacher = s.cnn_teacher()
    soft = s.soft_labels()
    hard = [s.student(f"s1-hard-{seed}", s.uris["train"], "hard", seed=seed) for seed in c.seeds]
    kd = [s.student(f"s1-kd-{seed}", s.uris["train"], "offline", soft=soft, seed=seed) for seed in c.seeds]
    s.hard_full = hard
    n = len(s.test)
    t_acc = 1 - teacher["test_errors"] / n
    gains = [k["accuracy"] - h["accuracy"] for k, h in zip(kd, hard, strict=True)]
    gap = t_acc - _mean_acc(hard)
    share = float(np.mean(gains)) / gap if gap > 0 else float("nan")
    hid = "-".join(map(str, c.student_hidden))
    rows = [["teacher: " + teacher["name"], teacher["num_parameters"], 1, teacher["test_errors"], f"{100 * t_acc:.2f}"],
            [f"student MLP {hid}, hard labels", "", len(hard), _errs(hard), _accs(hard)],
            [f"student MLP {hid}, distilled (T={c.temperature:g}, hard weight {c.hard_weight:g})", "", len(kd),
             _errs(kd), _accs(kd)]]
    notes = [f"gain of the distilled student over the hard-label student: {_pm(gains, scale=100)} pt "
             f"(paired by seed, n={len(gains)})",
             f"share of the teacher-student gap recovered: {100 * share:.0f}% "
             f"(gap {100 * gap:.2f} pt)",
             f"test errors are out of {n}; ± is the standard deviation over seeds {c.seeds}"]
    s.record(1, "Hinton's MNIST rows at this scale", ["model", "params", "seeds", "test errors", "accuracy %"],
             rows, notes, {"teacher": teacher, "hard": _strip(hard), "distilled": _strip(kd), "gains": gains,
                           "gap_share": share}, 0)


def _strip(runs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "logits"} for r in runs]


def section_2(s: Suite) -> None:
    c = s.cfg
    soft_uri = s.soft_labels()
    rows, data = [], {}
    for label, hidden in (("larger", c.large_hidden), ("smaller", c.small_hidden)):
        hid = "-".join(map(str, hidden))
        hard = [s.student(f"s2-{hid}-hard-{seed}", s.uris["train"], "hard", hidden=hidden, seed=seed)
                for seed in c.sweep_seeds]
        rows.append([f"MLP {hid} ({label})", "hard labels", _errs(hard), _accs(hard), ""])
        data[hid] = {"hard": _strip(hard)}
        for t in c.temperatures:
            kd = [s.student(f"s2-{hid}-T{t:g}-{seed}", s.uris["train"], "offline", soft=soft_uri, hidden=hidden,
                            temperature=t, seed=seed) for seed in c.sweep_seeds]
            delta = 100 * (_mean_acc(kd) - _mean_acc(hard))
            rows.append([f"MLP {hid} ({label})", f"T={t:g}", _errs(kd), _accs(kd), f"{delta:+.2f}"])
            data[hid][f"T={t:g}"] = _strip(kd)
    notes = [f"soft weight 1 (times T^2), hard weight {c.hard_weight:g}; seeds {c.sweep_seeds}",
             "teacher: the section-1 PyTorch CNN, dense logits served over gRPC"]
    s.record(2, "Temperature sweep", ["student", "targets", "test errors", "accuracy %", "Δ vs hard (pt)"],
             rows, notes, data, 0)


def section_3(s: Suite) -> None:
    c = s.cfg
    cls = c.left_out_class
    rng = np.random.default_rng(1234)
    y = s.train["y"]
    val_idx = np.sort(rng.permutation(len(s.train))[:c.bias_val])
    keep = np.setdiff1d(np.flatnonzero(y != cls), val_idx)
    transfer_uri = s.subset_uri(f"no-class-{cls}", s.train.take(keep))
    val = s.train.take(val_idx)
    soft_uri = s.soft_labels()
    # students see no image of the class, so they are evaluated on val with their own forward pass
    from benchmarks.quality_models import predict_logits

    from crossdistill.train.models import load_student

    grid = np.arange(-5.0, 20.01, 0.25)
    test_y = s.test["y"]
    n_cls = int((test_y == cls).sum())
    name = (s.train.meta.get("class_names") or [str(i) for i in range(s.num_classes)])[cls]
    rows, data = [], {}
    for kind, mode, soft in (("hard labels", "hard", None), ("distilled", "offline", soft_uri)):
        runs = []
        for seed in c.sweep_seeds:
            tag = f"s3-{mode}-{seed}"
            r = s.student(tag, transfer_uri, mode, soft=soft, seed=seed)
            model, _ = load_student(str(s.work / "students" / tag / "model.pt"))
            val_logits = predict_logits(model, val["x"])
            b_val, _ = best_bias(val_logits, val["y"], cls, grid)
            b_test, _ = best_bias(r["logits"], test_y, cls, grid)
            out = {}
            for label, b in (("before", 0.0), ("after (bias from val)", b_val), ("after (bias from test, as the paper)",
                                                                                 b_test)):
                pred = (r["logits"] + _offset(s.num_classes, cls, b)).argmax(1)
                out[label] = {"bias": b, "errors": int((pred != test_y).sum()),
                              "class_errors": int((pred[test_y == cls] != cls).sum())}
            runs.append(out)
        for label in runs[0]:
            rows.append([kind, label, _pm([r[label]["bias"] for r in runs]),
                         _pm([r[label]["errors"] for r in runs], digits=0),
                         f"{_pm([r[label]['class_errors'] for r in runs], digits=0)} / {n_cls}"])
        data[kind] = runs
    notes = [f"left-out class {cls} ('{name}'): no image of it in the transfer set ({len(keep)} images); "
             f"the teacher (section-1 CNN) did see it",
             f"bias correction: a constant added to the class-{cls} logit, chosen on {c.bias_val} held-out "
             "training images (val) or on the test set itself (the paper's choice, optimistic)",
             f"seeds {c.sweep_seeds}; errors out of {len(test_y)} test images, {n_cls} of class {cls}"]
    s.record(3, "A class left out of the transfer set", ["student", "logit bias", "value", "test errors",
                                                         "errors on left-out class"], rows, notes, data, 0)


def section_4(s: Suite) -> None:
    c = s.cfg
    student = read_dataset(s.uris["student"])
    labeled = student.take(np.flatnonzero(student["y"] != UNLABELED))
    labeled_uri = s.subset_uri("labeled", labeled)
    soft_uri = s.soft_labels()
    n_lab, n_all = len(labeled), len(student)
    small_epochs = max(c.epochs, c.epochs * n_all // n_lab)  # as many samples seen as a full-data run
    rows, data = [], {}
    specs = [("hard labels on the labeled 3%", labeled_uri, "hard", None, small_epochs),
             ("soft targets on the labeled 3% (Hinton table 5)", labeled_uri, "offline", soft_uri, small_epochs),
             ("3% labels + teacher pseudo-labels on the other 97% (offline mode)", s.uris["student"], "offline",
              soft_uri, c.epochs)]
    for i, (label, uri, mode, soft, epochs) in enumerate(specs):
        runs = [s.student(f"s4-{i}-{seed}", uri, mode, soft=soft, epochs=epochs, seed=seed) for seed in c.sweep_seeds]
        rows.append([label, n_lab, n_all if soft and uri == s.uris["student"] else n_lab, epochs, _errs(runs),
                     _accs(runs)])
        data[label] = _strip(runs)
    full = getattr(s, "hard_full", None) or [s.student(f"s4-full-{seed}", s.uris["train"], "hard", seed=seed)
                                              for seed in c.sweep_seeds]
    rows.append(["hard labels on all 100%", len(s.train), len(s.train), c.epochs, _errs(full), _accs(full)])
    data["hard labels on all 100%"] = _strip(full)
    reach = _mean_acc(data[specs[2][0]]) - _mean_acc(full)
    notes = [f"{n_lab} labeled images ({100 * n_lab / n_all:.1f}%); epochs of the 3% rows scaled so every row "
             "sees about as many samples",
             f"pseudo-label row minus 100%-hard row: {100 * reach:+.2f} pt "
             f"({'reaches' if reach >= 0 else 'does not reach'} it)",
             "teacher: the section-1 CNN (trained on all labels, the teacher owner's side of patent 000)"]
    s.record(4, "Scarce labels", ["student training data", "labels", "images", "epochs", "test errors",
                                  "accuracy %"], rows, notes, data, 0)


def section_5(s: Suite) -> None:
    from benchmarks.quality_models import random_shift

    c = s.cfg
    rng = np.random.default_rng(55)
    idx = np.sort(rng.permutation(len(s.train))[:min(c.online_subset, len(s.train))])
    clean = s.train.take(idx)
    clean_uri = s.subset_uri("online-clean", clean)
    views_n = c.epochs
    view_x = np.concatenate([random_shift(clean["x"], c.online_shift, rng) for _ in range(views_n)])
    view_ids = np.concatenate([clean.ids + (v + 1) * VIEW_ID_STRIDE for v in range(views_n)])
    views = Dataset({"id": view_ids, "x": view_x, "y": np.tile(clean["y"], views_n)}, dict(clean.meta))
    views_uri = s.subset_uri("online-views", views)
    soft_uri = s.soft_labels()
    soft = read_dataset(soft_uri)
    pos = np.searchsorted(soft.ids, clean.ids)
    clean_logits = soft["logits"][pos]
    fixed_uri = str(s.work / "subsets" / f"online-views-clean-logits-{_key(view_ids[:50].tolist(), len(view_ids))}")
    if not Path(fixed_uri, "manifest.json").exists():
        write_dataset(fixed_uri, Dataset({"id": view_ids, "logits": np.tile(clean_logits, (views_n, 1))},
                                         {**soft.meta, "num_classes": s.num_classes}))
    url = s.teacher_url()
    specs = [("hard labels, clean images", clean_uri, "hard", None, None, c.epochs),
             ("offline: fixed logits of the clean images", clean_uri, "offline", soft_uri, None, c.epochs),
             ("offline: augmented views, logits of the clean image", views_uri, "offline", fixed_uri, None, 1),
             ("online: teacher answers every augmented view (gRPC)", views_uri, "online", None, url, 1)]
    rows, data = [], {}
    for i, (label, uri, mode, sl, turl, epochs) in enumerate(specs):
        runs = [s.student(f"s5-{i}-{seed}", uri, mode, soft=sl, teacher_url=turl, epochs=epochs, seed=seed)
                for seed in c.sweep_seeds]
        rows.append([label, len(clean) * views_n, _errs(runs), _accs(runs), _pm([r["seconds"] for r in runs], digits=0)])
        data[label] = _strip(runs)
    best = max(data, key=lambda k: _mean_acc(data[k]))
    notes = [f"transfer set: {len(clean)} training images; every row sees each image {views_n} times "
             f"({c.epochs} epochs, or one pass over {views_n} shifted views of up to {c.online_shift} px)",
             f"best row: {best}",
             "teacher: the section-1 CNN; online answers come from the served TorchScript teacher"]
    s.record(5, "Online vs offline", ["mode", "samples seen", "test errors", "accuracy %", "train seconds"], rows,
             notes, data, 0)


def section_6(s: Suite) -> None:
    from benchmarks.quality_models import keras_mlp_to_onnx

    from crossdistill.teacher.adapters import load_teacher
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    c = s.cfg
    folder = s.work / f"teacher-keras-{_key('keras', c.dataset, c.limit_train, c.keras_epochs, c.keras_hidden)}"
    keras_uri, onnx_uri, info_file = str(folder / "teacher.keras"), str(folder / "teacher.onnx"), folder / "info.json"
    if not info_file.exists():
        s.log(f"keras teacher: training an MLP {c.keras_hidden} for {c.keras_epochs} epochs")
        info = train_keras_teacher(TeacherTrainConfig(train=s.uris["train"], out=keras_uri, arch="mlp",
                                                      hidden=c.keras_hidden, dropout=0.2, epochs=c.keras_epochs,
                                                      batch_size=128, lr=1e-3, seed=0, threads=c.threads))
        info["onnx"] = keras_mlp_to_onnx(keras_uri, onnx_uri, tuple(s.train["x"].shape[1:]))
        storage.write_text(str(info_file), json.dumps(info, indent=1))
    info = json.loads(info_file.read_text())
    grpc_uri = str(folder / "soft-grpc")
    if not Path(grpc_uri, "manifest.json").exists():
        with s._served("bench-quality-keras", keras_uri, "keras") as url:
            run_pseudo_label(PseudoLabelConfig(data=s.uris["train"], teacher_url=url, out=grpc_uri, batch_size=500,
                                               max_in_flight=2, progress=False))
    onnx_soft_uri = str(folder / "soft-onnx")
    adapter = load_teacher(onnx_uri, "onnx", threads=c.threads)
    if not Path(onnx_soft_uri, "manifest.json").exists():
        logits = np.concatenate([adapter.predict(s.train["x"][i:i + 1000])["logits"]
                                 for i in range(0, len(s.train), 1000)])
        write_dataset(onnx_soft_uri, Dataset({"id": s.train.ids, "logits": logits.astype(np.float32)},
                                             {"num_classes": s.num_classes, "temperature": 1.0, "mode": "dense",
                                              "teacher": onnx_uri}))
    a, b = read_dataset(grpc_uri), read_dataset(onnx_soft_uri)
    pos = np.searchsorted(b.ids, a.ids)
    diff = float(np.abs(a["logits"] - b["logits"][pos]).max())
    agree = float((a["logits"].argmax(1) == b["logits"][pos].argmax(1)).mean())
    test_logits = adapter.predict(s.test["x"])["logits"]
    t_err = int((test_logits.argmax(1) != s.test["y"]).sum())
    runs = {}
    for label, uri in (("Keras teacher served over gRPC (pseudo-label)", grpc_uri),
                       ("same teacher exported to ONNX, in-process", onnx_soft_uri)):
        runs[label] = [s.student(f"s6-{'grpc' if 'gRPC' in label else 'onnx'}-{seed}", s.uris["train"], "offline",
                                 soft=uri, seed=seed) for seed in c.seeds]
    la, lb = list(runs)
    paired = [x["accuracy"] - y["accuracy"] for x, y in zip(runs[la], runs[lb], strict=True)]
    seed_std = max(_stats([r["accuracy"] for r in runs[la]])[1], _stats([r["accuracy"] for r in runs[lb]])[1])
    rows = [[label, _errs(r), _accs(r), " / ".join(f"{100 * x['accuracy']:.2f}" for x in r)] for label, r in runs.items()]
    within = abs(float(np.mean(paired))) <= max(seed_std, 1e-12) or float(np.max(np.abs(paired))) == 0.0
    notes = [f"teacher: Keras MLP {c.keras_hidden} ({c.keras_epochs} epochs, train_keras), "
             f"{len(s.test) - t_err}/{len(s.test)} test images correct",
             f"teacher logits, gRPC vs ONNX: max |difference| {diff:.2e}, same top-1 class on {100 * agree:.2f}% "
             "of the training images",
             f"student difference gRPC - ONNX, paired by seed: {_pm(paired, scale=100, digits=3)} pt; seed spread "
             f"(std) {100 * seed_std:.3f} pt: {'within' if within else 'NOT within'} seed noise"]
    s.record(6, "Cross-framework: Keras over gRPC vs ONNX in-process", ["teacher path", "test errors",
                                                                         "accuracy %", "per seed %"], rows, notes,
             {"info": info, "max_abs_logit_diff": diff, "top1_agreement": agree, "teacher_test_errors": t_err,
              "runs": {k: _strip(v) for k, v in runs.items()}, "paired_diff": paired}, 0)


def section_7(s: Suite) -> None:
    c = s.cfg
    variants = [(0, False), (0, True), *[(k, False) for k in c.topk], (max(c.topk), True)] if c.topk else [(0, False),
                                                                                                       (0, True)]
    rows, data = [], {}
    for k, fp16 in variants:
        uri = s.soft_labels(top_k=k, fp16=fp16, temperature=1.0 if k == 0 else c.temperature)
        runs = [s.student(f"s7-k{k}-fp16{int(fp16)}-{seed}", s.uris["train"], "offline", soft=uri, seed=seed)
                for seed in c.sweep_seeds]
        label = ("dense" if k == 0 else f"top-{k}") + (", FP16" if fp16 else ", FP32")
        rows.append([label, wire_bytes(s.num_classes, k, fp16), _errs(runs), _accs(runs)])
        data[label] = _strip(runs)
    notes = [f"bytes per sample: teacher output tensors as the server sends them ({s.num_classes} classes; top-k "
             "indices are INT64; the 8-byte id echo is not counted)",
             f"top-k log-probabilities are requested at the training temperature T={c.temperature:g}; the rest of "
             "the mass is spread evenly over the other classes (losses.topk)",
             f"teacher: the section-1 CNN over gRPC; student MLP {'-'.join(map(str, c.student_hidden))}, seeds "
             f"{c.sweep_seeds}"]
    s.record(7, "Dense vs top-k soft targets, FP16 on the wire", ["soft targets", "bytes / sample", "test errors",
                                                                   "accuracy %"], rows, notes, data, 0)


RUNNERS = {1: section_1, 2: section_2, 3: section_3, 4: section_4, 5: section_5, 6: section_6, 7: section_7}


# --------------------------------------------------------------------------- output


def render_markdown(results: dict[str, Any]) -> str:
    """The results file's markdown: command, config, then one table per finished section."""
    out = ["# Distillation quality results", "", f"Command: `{results['command']}`", "",
           f"Started {results['started']}, {results.get('status', '')}; machine: {results['machine']}", ""]
    for key in sorted(results["sections"], key=int):
        sec = results["sections"][key]
        out += [f"## {key}. {sec['title']}", "", md_table(sec["headers"], sec["rows"]), ""]
        out += [f"- {n}" for n in sec["notes"]] + [f"- section time: {sec['seconds']} s", ""]
    out += ["## Config", "", "```json", json.dumps(results["config"], indent=1), "```", ""]
    return "\n".join(out)


def write_results(results: dict[str, Any], prefix: str) -> None:
    storage.write_text(prefix + ".json", json.dumps(results, indent=1, default=_json_default))
    storage.write_text(prefix + ".md", render_markdown(results))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def run_suite(cfg: QualityConfig, command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the configured sections in order; results are rewritten after each one."""
    start = time.perf_counter()
    suite = Suite(cfg, log)
    results = suite.results
    results.update({"command": command, "config": cfg.model_dump(mode="json"),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, {cfg.threads} threads used"})
    try:
        for sec in cfg.sections:
            t0 = time.perf_counter()
            log(f"--- section {sec}")
            try:
                RUNNERS[sec](suite)
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
                log(traceback.format_exc())
                results["sections"][str(sec)] = {"title": f"FAILED: {type(exc).__name__}", "headers": ["error"],
                                                 "rows": [[str(exc).splitlines()[0][:300] if str(exc) else ""]],
                                                 "notes": ["see the log for the traceback"], "data": {},
                                                 "seconds": 0}
                results.setdefault("failed", []).append(sec)
            results["sections"][str(sec)]["seconds"] = round(time.perf_counter() - t0, 1)
            results["status"] = f"sections {', '.join(results['sections'])} done in {time.perf_counter() - start:.0f} s"
            write_results(results, cfg.results)
    finally:
        suite.close()
    failed = results.get("failed")
    results["status"] = f"finished in {time.perf_counter() - start:.0f} s" + (f", sections {failed} FAILED" if failed else "")
    write_results(results, cfg.results)
    return results


def parse_args(argv: list[str] | None = None) -> QualityConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="minutes-scale run on a subset (its own cache and results)")
    p.add_argument("--sections", help="comma-separated, e.g. 1,4 (default: all)")
    p.add_argument("--seeds", help="seeds of sections 1 and 6, e.g. 0,1,2")
    p.add_argument("--sweep-seeds", help="seeds of the other sections")
    p.add_argument("--threads", type=int)
    p.add_argument("--work")
    p.add_argument("--results")
    p.add_argument("overrides", nargs="*", help="any QualityConfig field as key=value, e.g. epochs=5")
    args = p.parse_args(argv)
    from crossdistill.config import parse_overrides

    data: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.sections:
        data["sections"] = [int(v) for v in args.sections.split(",")]
    if args.seeds:
        data["seeds"] = [int(v) for v in args.seeds.split(",")]
    if args.sweep_seeds:
        data["sweep_seeds"] = [int(v) for v in args.sweep_seeds.split(",")]
    for name in ("threads", "work", "results"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    data.update(parse_overrides(args.overrides))
    cfg = QualityConfig.parse(data, source="command line")
    bad = [s for s in cfg.sections if s not in SECTIONS]
    if bad:
        from crossdistill.errors import ConfigError

        raise ConfigError(f"--sections: unknown section(s) {bad}; known: {list(SECTIONS)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    run_suite(cfg, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
