"""The shipped multi-teacher scenario on digits: specialists + a weak generalist -> one student.

Teachers are trained by separate owners on their own data: each specialist only on a subset of the
classes (it outputs only those, with a ``label_map``), the generalist on a handful of examples of
every class. The student's owner has a small labeled validation part and an unlabeled part. The run
writes every teacher's prediction table, picks per-label experts (and, for the report, consensus
experts), trains trust models, assembles the distillation set, trains the student offline with
``train_student`` and compares it on the test split with every teacher, the plain average, majority
vote and Snorkel's label model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, write_dataset
from crossdistill.data.sources import load_digits
from crossdistill.data.splits import PrepareDataConfig, split_dataset
from crossdistill.errors import ConfigError
from crossdistill.experts import baselines
from crossdistill.experts.assembly import assemble, to_dataset
from crossdistill.experts.selection import evaluate_experts, render_markdown, write_report
from crossdistill.experts.tables import PredictionTable, save_table, stack_tables
from crossdistill.experts.trust import save_trust_models, train_trust_models

log = logging.getLogger(__name__)


class ScenarioConfig(StrictConfig):
    """Configuration of the multi-teacher scenario (`crossdistill multi-teacher`)."""

    out: str = Field("runs/multi-teacher", description="run folder (data, tables, experts, trust, student)")
    seed: int = 0
    test_fraction: float = Field(0.3, gt=0, lt=1)
    val_fraction: float = Field(0.12, gt=0, lt=1, description="labeled validation share of the non-test part")
    teacher_fraction: float = Field(0.5, gt=0, lt=1,
                                    description="share of the training part owned by the teachers; the rest is unlabeled")
    specialists: list[list[int]] = Field(default_factory=lambda: [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9, 0]],
                                         description="classes each specialist is trained on (and outputs)")
    generalist_examples: int = Field(30, ge=0, description="training examples of the weak generalist (0 = none)")
    generalist_C: float = Field(1.0, gt=0, description="inverse regularisation of the generalist (small = weaker)")
    method: Literal["experts", "trust", "experts+trust"] = "trust"
    trust_source: Literal["per_teacher", "joint"] = "per_teacher"
    trust_model: Literal["logreg", "gbdt", "mlp"] = "logreg"
    min_trust: float = Field(0.5, ge=0, le=1)
    student_model: str = "mlp"
    student_hidden: list[int] = Field(default_factory=lambda: [128])
    student_epochs: int = Field(60, ge=1)
    temperature: float = Field(1.0, gt=0)
    lr: float = Field(3e-3, gt=0)
    threads: int = Field(1, ge=1)


@dataclass
class _Teacher:
    """A scenario teacher: a multinomial logistic regression over its own classes."""

    name: str
    model: Any
    label_map: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.decision_function(x.reshape(len(x), -1)), dtype=np.float32)


def _train_teacher(name: str, x: np.ndarray, y: np.ndarray, classes: list[int], C: float, seed: int) -> _Teacher:
    from sklearn.linear_model import LogisticRegression

    keep = np.isin(y, classes)
    if len(np.unique(y[keep])) < 2:
        raise ConfigError(f"teacher '{name}' needs examples of at least 2 classes, got {np.unique(y[keep]).tolist()}")
    model = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(x[keep].reshape(keep.sum(), -1), y[keep])
    return _Teacher(name, model, np.asarray(model.classes_, dtype=np.int64))


def _table(t: _Teacher, data: Dataset, num_classes: int) -> PredictionTable:
    from crossdistill.experts.tables import softmax

    # float32 logits, as they would come over the wire or from storage
    return PredictionTable(t.name, data.ids, softmax(t.logits(data["x"])), t.label_map, num_classes,
                           {"teacher": t.name})


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(probs, axis=1) == y).mean())


def run_scenario(cfg: ScenarioConfig) -> dict[str, Any]:
    """Run the whole multi-teacher flow; returns (and writes ``results.json``) the comparison table."""
    import torch

    from crossdistill.train.models import ModelSpec, load_student
    from crossdistill.train.trainer import StudentTrainConfig, train_student

    torch.set_num_threads(cfg.threads)
    source = load_digits()
    num_classes = int(source.meta["num_classes"])
    parts = split_dataset(source, PrepareDataConfig(dataset="digits", seed=cfg.seed, test_fraction=cfg.test_fraction,
                                                    val_fraction=cfg.val_fraction, student_labels=0, out=cfg.out))
    train, val, test = parts["train"], parts["val"], parts["test"]
    perm = np.random.default_rng(cfg.seed + 1).permutation(len(train))
    n_teacher = int(round(cfg.teacher_fraction * len(train)))
    owners = train.take(np.sort(perm[:n_teacher]))
    unlabeled = train.take(np.sort(perm[n_teacher:]))
    unlabeled = Dataset({"id": unlabeled.ids, "x": unlabeled["x"]}, dict(unlabeled.meta))
    data_uri = storage.join(cfg.out, "data")
    for name, ds in (("val", val), ("test", test), ("unlabeled", unlabeled)):
        write_dataset(storage.join(data_uri, name), ds)

    # the teachers' owners
    teachers = [_train_teacher(f"specialist{i}", owners["x"], owners["y"], sorted(set(classes)), 1.0, cfg.seed)
                for i, classes in enumerate(cfg.specialists)]
    if cfg.generalist_examples:
        rng = np.random.default_rng(cfg.seed + 2)
        few = rng.choice(len(owners), size=min(cfg.generalist_examples, len(owners)), replace=False)
        teachers.append(_train_teacher("generalist", owners["x"][few], owners["y"][few], list(range(num_classes)),
                                       cfg.generalist_C, cfg.seed))
    names = [t.name for t in teachers]

    # prediction tables on the student owner's data (validation + unlabeled), stored like any table
    both = Dataset({"id": np.concatenate([val.ids, unlabeled.ids]),
                    "x": np.concatenate([val["x"], unlabeled["x"]])})
    tables = []
    for t in teachers:
        uri = storage.join(cfg.out, "tables", t.name)
        save_table(uri, _table(t, both, num_classes))
        from crossdistill.experts.tables import load_table

        tables.append(load_table(uri, num_classes=num_classes))

    class_names = list(source.meta["class_names"])
    report = evaluate_experts(tables, val, mode="labeled", class_names=class_names)
    write_report(storage.join(cfg.out, "experts"), report)
    consensus = evaluate_experts(tables, None, unlabeled=unlabeled, mode="consensus", class_names=class_names)
    write_report(storage.join(cfg.out, "experts-consensus"), consensus)

    trust_models, trust_metrics = train_trust_models(tables, val["x"], val["y"], val.ids, model=cfg.trust_model,
                                                     seed=cfg.seed)
    save_trust_models(storage.join(cfg.out, "trust"), trust_models, trust_metrics)

    probs_u, _ = stack_tables(tables, unlabeled.ids)
    trust = trust_models.per_teacher_proba(unlabeled["x"], probs_u) if cfg.trust_source == "per_teacher" else \
        trust_models.joint_proba(unlabeled["x"], probs_u)
    assembled = assemble(tables, unlabeled.ids, method=cfg.method, experts_report=report, trust=trust,
                         min_trust=cfg.min_trust, class_names=class_names)
    distill_uri = storage.join(cfg.out, "distill-set")
    write_dataset(distill_uri, to_dataset(assembled, num_classes=num_classes, teachers=names,
                                          extra_meta={"method": cfg.method}))
    keep = np.isin(unlabeled.ids, assembled.ids)
    student_inputs = storage.join(data_uri, "student-inputs")
    write_dataset(student_inputs, unlabeled.take(np.flatnonzero(keep)))

    student_out = storage.join(cfg.out, "student")
    result = train_student(StudentTrainConfig(
        train_data=student_inputs, soft_labels=distill_uri, out=student_out, mode="offline",
        model=ModelSpec(name=cfg.student_model, kwargs={"hidden": cfg.student_hidden}),
        temperature=cfg.temperature, hard_weight=0.0, epochs=cfg.student_epochs, lr=cfg.lr, batch_size=32,
        seed=cfg.seed, resume=False, progress=False, threads=cfg.threads, device="cpu"))

    # evaluation on the test split
    model, _ = load_student(result.model_uri)
    model.eval()
    with torch.no_grad():
        student_probs = torch.softmax(model(torch.as_tensor(test["x"], dtype=torch.float32)), dim=1).numpy()
    y_test = test["y"]
    test_tables = [_table(t, test, num_classes) for t in teachers]
    probs_t, _ = stack_tables(test_tables, test.ids)
    probs_fit, _ = stack_tables(tables, both.ids)
    rows: dict[str, float] = {n: _accuracy(p, y_test) for n, p in zip(names, probs_t, strict=True)}
    rows["average"] = _accuracy(baselines.average(probs_t), y_test)
    rows["majority_vote"] = _accuracy(baselines.majority_vote(probs_t), y_test)
    rows["label_model"] = _accuracy(baselines.label_model(probs_t, fit_probs=probs_fit, seed=cfg.seed), y_test)
    rows["student"] = _accuracy(student_probs, y_test)
    results = {
        "test_accuracy": rows,
        "test_examples": int(len(y_test)),
        "split_sizes": {"teacher_owners": len(owners), "val": len(val), "unlabeled": len(unlabeled),
                        "test": len(test)},
        "experts": report["experts"],
        "consensus_experts": consensus["experts"],
        "gaps": report["gaps"],
        "trust": trust_metrics,
        "coverage": assembled.coverage,
        "assembled_examples": int(len(assembled.ids)),
        "student_beats_all": bool(all(rows["student"] > v for k, v in rows.items() if k != "student")),
    }
    results["paths"] = {"data": data_uri, "tables": storage.join(cfg.out, "tables"), "distill_set": distill_uri,
                        "student": result.model_uri, "experts": storage.join(cfg.out, "experts")}
    storage.write_text(storage.join(cfg.out, "results.json"), json.dumps(results, indent=1))
    results["summary"] = render_summary(results, report)
    storage.write_text(storage.join(cfg.out, "summary.md"), results["summary"])
    print(results["summary"])
    if not results["student_beats_all"]:
        print("note: the student did not beat every baseline in this run")
    print(f"results: {storage.join(cfg.out, 'results.json')}\nsummary: {storage.join(cfg.out, 'summary.md')}")
    return results


def render_summary(results: dict[str, Any], report: dict[str, Any]) -> str:
    """The comparison table, the per-label expert choices and the trust-model AUCs, as markdown."""
    lines = ["Test accuracy (digits)", "", "| model | accuracy |", "|---|---|"]
    for name, acc in sorted(results["test_accuracy"].items(), key=lambda kv: kv[1]):
        lines.append(f"| {name} | {acc:.4f} |")
    lines += ["", render_markdown(report), "Trust models (held-out part of the validation set)", "",
              "| teacher | per-teacher AUC | accuracy | constant accuracy | joint AUC |", "|---|---|---|---|---|"]
    trust = results["trust"]
    for name, m in trust["per_teacher"].items():
        j = trust.get("joint", {}).get(name, {})
        auc = "-" if m["auc"] is None else f"{m['auc']:.3f}"
        jauc = "-" if j.get("auc") is None else f"{j['auc']:.3f}"
        lines.append(f"| {name} | {auc} | {m['accuracy']:.3f} | {m['constant_accuracy']:.3f} | {jauc} |")
    cov = results["coverage"]
    lines += ["", f"Coverage: {cov['covered']}/{cov['examples']} unlabeled examples got an inferred label "
                  f"({cov['share']:.1%}); method {cov.get('method')}."]
    return "\n".join(lines) + "\n"
