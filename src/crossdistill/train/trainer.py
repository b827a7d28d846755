"""Student training: a data stream, a source of targets, a loss of named terms and one training state.

``train_student(cfg)`` wires four parts together:

- :class:`~crossdistill.data.stream.BatchStream` streams the training data row group by row group
  in an order that is a pure function of ``(seed, epoch)`` (shuffle buffer of ``shuffle_buffer``
  rows, decoding in ``num_workers`` DataLoader workers); offline soft labels are read in step.
- a target source (:mod:`crossdistill.train.targets`): ``hard`` labels only, ``offline`` stored soft
  labels, ``online`` a live teacher (``rpc_batches`` batches per request, replies back in batch
  order), all mapped to the dataset's class order by name before the first step;
- a :class:`~crossdistill.losses.terms.WeightedLoss` of named terms: ``soft`` (``soft_weight``: KD at
  ``T`` scaled by ``T^2``, or logit matching), ``hard`` (``hard_weight``: cross-entropy on the labeled
  rows), ``feature`` (``feature_weight``: cross-layer pairs); each is logged as ``loss/<name>``;
- a :class:`~crossdistill.train.state.TrainingState` checkpointed to ``<out>/checkpoints/`` every
  ``checkpoint_every`` steps, at the end and when the teacher fails; a rerun resumes at the same
  position inside the epoch (SIGKILL included) and ends with the same weights.

Files under ``out``: ``checkpoints/``, ``model.pt`` (:func:`save_student`), ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.classes import class_names
from crossdistill.data.shards import DatasetReader
from crossdistill.data.stream import Batch, BatchStream
from crossdistill.errors import ConfigError, CrossdistillError, DataError, TeacherError
from crossdistill.losses.feature import CrossLayerDistiller, FeatureHooks, feature_shapes
from crossdistill.losses.terms import (
    FeatureTerm,
    HardLabelTerm,
    LogitMatchingTerm,
    LossInputs,
    SoftTargetTerm,
    WeightedLoss,
)
from crossdistill.teacher.client import TeacherClientConfig
from crossdistill.train.models import ModelSpec, build_model, save_student
from crossdistill.train.state import TrainingState
from crossdistill.train.targets import HardLabels, LiveTeacher, StoredSoftLabels, Targets, TargetSource

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LOG_FILE = "train_log.jsonl"
# Fields that fix the data order, the model and the schedule: a resume must not change them.
_RESUME_FINGERPRINT = ("train_data", "mode", "model", "features", "optimizer", "schedule", "epochs",
                       "batch_size", "seed", "shuffle_buffer")


class TrainingDivergedError(CrossdistillError):
    """The loss became NaN or infinite."""


class FeaturePair(StrictConfig):
    """One cross-layer pair: a student module path matched to a teacher layer (seed 003)."""

    student: str = Field(..., description="student module path, e.g. '2' or 'features.3'")
    teacher: str = Field(..., description="teacher layer name (online: requested over RPC; offline: "
                                          "column 'layer/<name>' of the soft labels)")
    weight: float = Field(1.0, ge=0, description="lambda of this pair (normalised over the pairs)")


class StudentTrainConfig(StrictConfig):
    """Configuration of `crossdistill student-train` (the one place its defaults live)."""

    train_data: str | list[str] = Field(..., description="dataset URI(s) with id, x or image, and optionally y "
                                                         "(-1 = unlabeled); class_names in the meta")
    out: str = Field("runs/student", description="run folder: model.pt, train_log.jsonl, checkpoints/")
    mode: Literal["online", "offline", "hard"] = Field(
        "offline", description="online: teacher endpoint; offline: soft_labels datasets; hard: labels only")
    teacher: TeacherClientConfig | None = Field(None, description="teacher endpoint (online mode)")
    rpc_batches: int = Field(1, ge=1, description="online: student batches per teacher request (amortises "
                                                   "per-request overhead when the teacher is small)")
    soft_labels: str | list[str] | None = Field(
        None, description="soft-label dataset URI(s) (offline mode), rows in the same order as train_data")
    model: ModelSpec = Field(default_factory=ModelSpec)
    temperature: float = Field(4.0, gt=0, description="distillation temperature T")
    soft_weight: float = Field(1.0, ge=0, description="weight of the soft (teacher) term")
    hard_weight: float = Field(0.1, ge=0, description="weight of the hard-label term (labeled examples only)")
    loss: Literal["kd", "logit_matching"] = Field("kd", description="soft term: KD at T, or logit matching")
    features: list[FeaturePair] = Field(default_factory=list, description="cross-layer feature distillation pairs")
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature term")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    shuffle_buffer: int = Field(10_000, ge=0, description="decoded rows held for shuffling across row groups "
                                                          "(memory: this plus one row group, e.g. 10,000 rows of "
                                                          "3x224x224 float32 = 6 GB: lower it for big images)")
    num_workers: int = Field(0, ge=0, description="DataLoader workers reading and decoding row groups "
                                                  "(0 = in this process); does not change the order")
    preprocess: dict[str, Any] = Field(default_factory=dict, description="overrides of the dataset's "
                                                                         "preprocessing spec (meta 'preprocess')")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(3, ge=0, description="newest checkpoints kept (0 = all)")
    resume: bool = Field(True, description="continue from the newest checkpoint under out, if any")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in total")
    log_every: int = Field(20, ge=1, description="optimizer steps per train_log.jsonl entry")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


@dataclass
class TrainResult:
    model_uri: str
    steps: int
    samples_seen: int
    final_loss: float
    epochs_completed: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal (the full history is in train_log.jsonl beside the model)."""
        state = "finished" if self.finished else "stopped early (resume with the same out)"
        last = self.history[-1] if self.history else {}
        terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in last.items() if k.startswith("loss/"))
        rate = f", {last['samples_per_s']:,.0f} samples/s" if last.get("samples_per_s") else ""
        return (f"student-train {state}: {self.steps} steps, {self.samples_seen:,} samples, "
                f"{self.epochs_completed} epoch(s){rate}\n"
                f"  final loss {self.final_loss:.4f}" + (f" ({terms})" if terms else "") + "\n"
                f"  model: {self.model_uri}")


def _check_config(cfg: StudentTrainConfig) -> None:
    if cfg.mode == "online" and cfg.teacher is None:
        raise ConfigError("mode=online needs teacher (at least teacher.url)")
    if cfg.mode == "offline" and not cfg.soft_labels:
        raise ConfigError("mode=offline needs soft_labels (the pseudo-label dataset URI(s))")
    if cfg.loss == "logit_matching" and cfg.mode == "online" and cfg.teacher is not None and cfg.teacher.top_k:
        raise ConfigError("loss=logit_matching needs dense teacher logits: set teacher.top_k=0")
    if cfg.features and cfg.mode == "hard":
        raise ConfigError("features (feature distillation) need a teacher: mode=online or offline")
    if cfg.mode != "hard" and cfg.soft_weight == 0 and cfg.hard_weight == 0 and not cfg.features:
        raise ConfigError("soft_weight and hard_weight are both 0: nothing to train on")


def _describe(uri: str | list[str]) -> str:
    return uri if isinstance(uri, str) else ", ".join(uri)


def _target_source(cfg: StudentTrainConfig, names: list[str]) -> TargetSource:
    layers = [f.teacher for f in cfg.features]
    if cfg.mode == "offline":
        assert cfg.soft_labels is not None
        return StoredSoftLabels(cfg.soft_labels, names, cfg.temperature, layers, cfg.loss == "logit_matching")
    if cfg.mode == "online":
        assert cfg.teacher is not None
        return LiveTeacher(cfg.teacher, names, cfg.temperature, layers, cfg.rpc_batches)
    return HardLabels()


def _loss(cfg: StudentTrainConfig, distiller: CrossLayerDistiller | None) -> WeightedLoss:
    if cfg.mode == "hard":
        return WeightedLoss({"hard": (1.0, HardLabelTerm())})
    soft = LogitMatchingTerm() if cfg.loss == "logit_matching" else SoftTargetTerm(cfg.temperature)
    terms: dict[str, Any] = {"soft": (cfg.soft_weight, soft), "hard": (cfg.hard_weight, HardLabelTerm())}
    if distiller is not None:
        terms["feature"] = (cfg.feature_weight, FeatureTerm(distiller))
    return WeightedLoss(terms)


def _make_optimizer(cfg: StudentTrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _make_schedule(cfg: StudentTrainConfig, opt: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device (use device=auto or cpu)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _fingerprint(cfg: StudentTrainConfig, stream: BatchStream) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {**{k: dumped[k] for k in _RESUME_FINGERPRINT}, "data": stream.fingerprint()}


def _write_log(out: str, history: list[dict[str, Any]]) -> None:
    storage.write_text(storage.join(out, LOG_FILE), "".join(json.dumps(h) + "\n" for h in history))


def _loss_inputs(logits: torch.Tensor, y: torch.Tensor, target: Targets | None, hooks: FeatureHooks | None,
                 device: torch.device) -> LossInputs:
    if target is None:
        return LossInputs(logits, y)
    return LossInputs(
        logits, y, teacher_probs=target.probs.to(device),
        teacher_logits=None if target.logits is None else target.logits.to(device),
        example_weights=None if target.weights is None else target.weights.to(device),
        student_features=hooks.outputs if hooks is not None else {},
        teacher_features={k: v.to(device) for k, v in target.layers.items()})


def train_student(cfg: StudentTrainConfig) -> TrainResult:
    """Train the student described by ``cfg``; returns where the model went and what happened."""
    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    where = _describe(cfg.train_data)
    names = class_names(DatasetReader(cfg.train_data).meta, where)
    source = _target_source(cfg, names)  # label spaces are checked here, before any step
    stream = BatchStream(cfg.train_data, batch_size=cfg.batch_size, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                         num_classes=len(names), soft=source.soft_uris, soft_columns=source.soft_columns,
                         labeled_only=cfg.mode == "hard", num_workers=cfg.num_workers, preprocess=cfg.preprocess)
    if stream.num_rows == 0:
        raise DataError(f"mode=hard but {where} has no labeled example (all y = -1)" if cfg.mode == "hard"
                        else f"{where} holds no examples")
    input_shape = stream.input_shape()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape, len(names)).to(device)
    distiller: CrossLayerDistiller | None = None
    if cfg.features:
        first: Batch | None = None if cfg.mode == "offline" else next(stream.batches(0, 0, 1))
        distiller = CrossLayerDistiller(
            [(f.student, f.teacher) for f in cfg.features],
            feature_shapes(model, [f.student for f in cfg.features], input_shape), source.layer_shapes(first),
            weights=[f.weight for f in cfg.features]).to(device)
    loss_fn = _loss(cfg, distiller)
    opt = _make_optimizer(cfg, [*model.parameters(), *(distiller.parameters() if distiller is not None else [])])
    total_steps = stream.batches_per_epoch * cfg.epochs
    state = TrainingState(model, opt, _make_schedule(cfg, opt, total_steps), _fingerprint(cfg, stream), distiller)
    resumed = state.resume(cfg.out) if cfg.resume else None
    if resumed is not None:
        log.info("resuming from %s at step %d (epoch %d, batch %d)", resumed, state.step, state.epoch, state.batch)
    last_saved = state.step if resumed is not None else -1
    last_loss = state.last_loss
    t_window, timed = time.perf_counter(), 0  # throughput of this process only

    def checkpoint() -> None:
        nonlocal last_saved
        state.save(cfg.out, cfg.keep_checkpoints)
        _write_log(cfg.out, state.history)
        last_saved = state.step

    def record(epoch: int) -> None:
        nonlocal t_window, timed
        entry = state.record(epoch, timed / max(time.perf_counter() - t_window, 1e-9))
        if entry is not None:
            bar.set_postfix(loss=f"{entry['loss']:.4f}", samples_s=entry["samples_per_s"])
        t_window, timed = time.perf_counter(), 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state.step, disable=not cfg.progress, unit="step", desc="student-train")
    model.train()
    already_done = cfg.max_steps is not None and state.step >= cfg.max_steps
    batches = source.targets(stream.batches(state.epoch, state.batch, 0 if already_done else cfg.epochs))
    hooks = FeatureHooks(model, distiller.student_paths) if distiller is not None else None
    try:
        for batch, target in batches:
            y = torch.from_numpy(batch.y).to(device)
            logits = model(torch.from_numpy(batch.x).to(device))
            loss, values = loss_fn(_loss_inputs(logits, y, target, hooks, device))
            last_loss = loss.item()
            if not math.isfinite(last_loss):
                raise TrainingDivergedError(
                    f"loss is {last_loss} at step {state.step + 1} (epoch {batch.epoch}, batch {batch.index}): "
                    f"lower lr (now {cfg.lr}) or check inputs and teacher outputs for NaN/Inf")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.scheduler.step()
            state.advance(batch.epoch, batch.index, len(batch), stream.batches_per_epoch,
                          {"loss": last_loss, **{f"loss/{k}": v for k, v in values.items()}})
            timed += len(batch)
            if state.step % cfg.log_every == 0 or state.batch == 0:
                record(batch.epoch)
            bar.update(1)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                break
    except TeacherError:
        if 0 < state.step != last_saved:  # keep the progress made so far: a resume re-sends only what is left
            checkpoint()
        raise
    finally:
        batches.close()  # cancels teacher requests still in flight
        if hooks is not None:
            hooks.remove()
        bar.close()
    finished = state.epoch >= cfg.epochs
    if finished:
        record(cfg.epochs - 1)
    if last_saved != state.step:
        checkpoint()
    model_uri = storage.join(cfg.out, MODEL_FILE)
    save_student(model_uri, model, cfg.model, input_shape, len(names),
                 extra={"steps": state.step, "samples_seen": state.samples, "finished": finished, "mode": cfg.mode,
                        "temperature": cfg.temperature, "train_data": cfg.train_data, "class_names": names})
    _write_log(cfg.out, state.history)
    if not math.isfinite(last_loss) and state.history:
        last_loss = state.history[-1]["loss"]
    return TrainResult(model_uri=model_uri, steps=state.step, samples_seen=state.samples, final_loss=last_loss,
                       epochs_completed=state.epoch, finished=finished, history=state.history)
