"""`make run-lm`: token-level distillation of a language model across frameworks, end to end.

The corpus is real text that installs with Python itself: the source of this interpreter's standard
library (``*.py``, one document per module, up to ``max_chars``). The teacher's owner imports it
(byte-level BPE, packed rows), trains a Keras (TensorFlow) decoder-only transformer and serves it;
the student's owner trains a smaller PyTorch transformer three ways with the same steps and seed:
on the next-token labels alone, distilled online from the served teacher over gRPC (through the
``online-distillation`` pipeline in ``kfp.local``, or direct calls with ``runner=library``), and
distilled offline from the teacher's stored top-k per token. Documents are split into train, val and
test before anything is trained; settings are chosen on val, and the table reports test perplexity
(mean over ``seeds``) and parameters.
"""

from __future__ import annotations

import json
import statistics
import sysconfig
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig


class LMDemoConfig(StrictConfig):
    """Configuration of `crossdistill lm-demo` (what `make run-lm` runs)."""

    out: str = Field("runs/lm-demo", description="where everything is written (a local folder)")
    runner: Literal["kfp-local", "library"] = Field(
        "kfp-local", description="kfp-local: online distillation through the online pipeline in kfp.local; "
                                 "library: direct calls")
    corpus: str | None = Field(None, description="folder of .py/.txt files; default: this Python's standard "
                                                 "library source")
    max_chars: int = Field(5_000_000, ge=10_000, description="characters of the corpus used (whole files, in "
                                                             "name order)")
    vocab_size: int = Field(2048, ge=258)
    seq_len: int = Field(64, ge=2)
    val: float = Field(0.1, gt=0, lt=0.5, description="documents held out for choosing settings")
    test: float = Field(0.1, gt=0, lt=0.5, description="documents held out for the reported figures")
    teacher_hidden: list[int] = Field(default_factory=lambda: [128, 128], description="Keras transformer blocks")
    teacher_heads: int = 4
    teacher_epochs: int = 3
    teacher_dropout: float = 0.1
    student: dict[str, Any] = Field(default_factory=lambda: {"dim": 64, "layers": 1, "heads": 4},
                                    description="the PyTorch transformer student's kwargs")
    student_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    temperature: float = Field(1.0, gt=0, description="distillation temperature (chosen on val: 1 beat 2)")
    top_k: int = Field(32, ge=1, description="teacher log-probabilities per token on the wire and on disk")
    hard_weight: float = Field(0.5, ge=0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    threads: int = Field(2, ge=1)


def _corpus(cfg: LMDemoConfig) -> str:
    """The corpus as JSON Lines (one document per file) under ``out``."""
    root = Path(cfg.corpus) if cfg.corpus else Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.iterdir() if p.suffix in (".py", ".txt") and p.is_file())
    path = Path(cfg.out) / "corpus.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with path.open("w") as f:
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace")
            if total + len(text) > cfg.max_chars:
                continue
            total += len(text)
            f.write(json.dumps({"text": text, "file": file.name}) + "\n")
    print(f"[1/6] corpus: {total:,} characters of {root} -> {path}")
    return str(path)


def _student(cfg: LMDemoConfig, data: str, out: str, seed: int, mode: str, **extra: Any) -> str:
    from crossdistill.train.trainer import StudentTrainConfig, train_student

    result = train_student(StudentTrainConfig.parse({
        "train_data": data, "out": out, "mode": mode, "seed": seed, **_student_settings(cfg),
        "epochs": cfg.student_epochs, "temperature": cfg.temperature, "threads": cfg.threads, "resume": False,
        "progress": False, **extra}, source=f"lm-demo student {out}"))
    return result.model_uri


def _student_settings(cfg: LMDemoConfig) -> dict[str, Any]:
    return {"model": {"name": "transformer", "kwargs": dict(cfg.student)}, "batch_size": cfg.batch_size,
            "lr": cfg.lr, "hard_weight": cfg.hard_weight, "soft_weight": 1.0}


def _online_pipeline(cfg: LMDemoConfig, teacher: str, splits: dict[str, str], seed: int) -> str:
    """The online-distillation pipeline through kfp.local for ``seed``; the student it trained."""
    from crossdistill.pipelines.run_local import run_local

    root = Path(cfg.out) / "kfp" / f"seed{seed}"
    run_local("online", {
        "teacher_model_uri": teacher, "student_data_uri": splits["train"], "test_data_uri": splits["val"],
        "teacher_name_prefix": "lm-demo", "student_model": "transformer", "student_epochs": cfg.student_epochs,
        "temperature": cfg.temperature, "student_seed": seed, "threads": cfg.threads,
        "student_config_json": json.dumps({**_student_settings(cfg),
                                           "teacher": {"top_k": cfg.top_k, "fp16": True}}),
        "eval_config_json": json.dumps({"latency_repeats": 5, "export": ["torchscript"]})}, pipeline_root=root)
    found = sorted(root.rglob("model.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"the pipeline under {root} left no trained student (model.pt)")
    return str(found[-1])


def run_lm_demo(cfg: LMDemoConfig) -> dict[str, Any]:
    """Run the whole flow and print the comparison table; returns the summary written to summary.json."""
    from crossdistill.data.importing import ImportDataConfig, import_data
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
    from crossdistill.evaluate.run import EvaluateConfig, run_evaluate
    from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    out = Path(cfg.out)
    data = out / "data"
    if not (data / "test" / "manifest.json").exists():
        import_data(ImportDataConfig(source=_corpus(cfg), text="text", out=str(data), vocab_size=cfg.vocab_size,
                                     seq_len=cfg.seq_len, holdout={"val": cfg.val, "test": cfg.test}))
    splits = {part: str(data / part) for part in ("train", "val", "test")}
    teacher = str(out / "teacher" / "teacher.keras")
    print(f"[2/6] teacher owner: a Keras transformer on {splits['train']} -> {teacher}")
    if not storage.exists(teacher):
        trained = train_keras_teacher(TeacherTrainConfig(
            train=splits["train"], val=splits["val"], out=teacher, arch="transformer", hidden=cfg.teacher_hidden,
            heads=cfg.teacher_heads, epochs=cfg.teacher_epochs, dropout=cfg.teacher_dropout, lr=2e-3,
            batch_size=cfg.batch_size, threads=cfg.threads))
        print(f"      val perplexity {trained['val_perplexity']:.2f}, {trained['num_parameters']:,} parameters, "
              f"{trained['train_seconds']:.0f} s")
    serve = TeacherServeConfig(model_uri=teacher, name="lm-demo-teacher", workdir=str(out / "teacher" / "server"),
                               workers_threads=cfg.threads)
    endpoint = deploy_teacher(serve)
    print(f"[3/6] teacher owner: served over gRPC at {endpoint.grpc}")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        soft = str(out / "soft-labels")
        if not (Path(soft) / "manifest.json").exists():
            print(f"[4/6] offline: the teacher's top-{cfg.top_k} per token on the training rows -> {soft}")
            run_pseudo_label(PseudoLabelConfig(data=splits["train"], teacher_url=endpoint.grpc, top_k=cfg.top_k,
                                               temperature=cfg.temperature, fp16=True, out=soft, progress=False))
        for seed in cfg.seeds:
            where = out / "students"
            print(f"[5/6] student owner, seed {seed}: labels only / online ({cfg.runner}) / offline")
            labels = _student(cfg, splits["train"], str(where / f"labels-seed{seed}"), seed, "hard")
            online = _online_pipeline(cfg, teacher, splits, seed) if cfg.runner == "kfp-local" else _student(
                cfg, splits["train"], str(where / f"online-seed{seed}"), seed, "online",
                teacher={"url": endpoint.grpc, "top_k": cfg.top_k, "fp16": True})
            offline = _student(cfg, splits["train"], str(where / f"offline-seed{seed}"), seed, "offline",
                               soft_labels=soft)
            for part in ("val", "test"):
                metrics = run_evaluate(EvaluateConfig(
                    test_data=splits[part], student=online, student_name="distilled online",
                    baselines={"labels only": labels, "distilled offline": offline}, teacher=endpoint.grpc,
                    out=str(out / "eval" / f"{part}-seed{seed}"), latency_repeats=5, export=["torchscript"],
                    threads=cfg.threads, title=f"lm-demo, {part} split, seed {seed}"))
                for row in metrics["comparison"]:
                    results.setdefault(f"{part}/{row['name']}", []).append(row)
    finally:
        teardown_teacher(serve)
    summary = _summarise(cfg, results)
    storage.write_text(str(out / "summary.json"), json.dumps(summary, indent=2))
    print(_table(summary))
    print(f"\nreport:  {out / 'eval' / f'test-seed{cfg.seeds[0]}' / 'report.html'}")
    print(f"summary: {out / 'summary.json'}")
    return summary


ORDER = ("teacher", "labels only", "distilled online", "distilled offline")
LABELS = {"teacher": "teacher (Keras transformer, served over gRPC)",
          "labels only": "student, next-token labels alone",
          "distilled online": "student distilled online (gRPC)",
          "distilled offline": "student distilled offline (stored top-k)"}


def _summarise(cfg: LMDemoConfig, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = []
    for name in ORDER:
        test, val = results.get(f"test/{name}", []), results.get(f"val/{name}", [])
        if not test:
            continue
        ppl = [r["perplexity"] for r in test]
        rows.append({"name": LABELS[name], "test_perplexity": ppl, "test_perplexity_mean": statistics.fmean(ppl),
                     "val_perplexity_mean": statistics.fmean(r["perplexity"] for r in val),
                     "next_token_accuracy_mean": statistics.fmean(r["next_token_accuracy"] for r in test),
                     "params": test[0].get("num_parameters")})
    return {"seeds": cfg.seeds, "rows": rows, "config": cfg.model_dump(mode="json")}


def _table(summary: dict[str, Any]) -> str:
    head = (f"{'model':<46} {'test perplexity (per seed)':>28} {'mean':>8} {'val':>8} {'next-token acc':>15} "
            f"{'params':>10}")
    lines = [f"\nheld-out text (documents not trained on), seeds {summary['seeds']}", head, "-" * len(head)]
    for r in summary["rows"]:
        seeds = ", ".join(f"{p:.2f}" for p in r["test_perplexity"])
        params = f"{r['params']:,}" if r.get("params") is not None else "-"
        lines.append(f"{r['name']:<46} {seeds:>28} {r['test_perplexity_mean']:>8.2f} {r['val_perplexity_mean']:>8.2f} "
                     f"{100 * r['next_token_accuracy_mean']:>14.1f}% {params:>10}")
    return "\n".join(lines)
