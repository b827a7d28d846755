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

Under torchrun every process is one data-parallel rank (:mod:`crossdistill.train.parallel`): its own
part of the data, its own teacher requests, DDP gradients, steps in lockstep, ``batch_size`` rows per
rank and step; rank 0 writes checkpoints, the model and the log. ``workers`` > 1 outside torchrun is
for :func:`crossdistill.deploy.student.run_student_train`, which starts the ranks.

Files under ``out``: ``checkpoints/``, ``model.pt`` (:func:`save_student`), ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.classes import class_names
from crossdistill.data.shards import DatasetReader
from crossdistill.data.stream import Batch, BatchStream
from crossdistill.data.text import next_token_pairs
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
from crossdistill.losses.tokens import ForwardKLTerm, JSDTerm, NextTokenTerm, ReverseKLTerm, TokenLossInputs
from crossdistill.teacher.client import TeacherClientConfig
from crossdistill.teacher.serve_config import Resources, Toleration
from crossdistill.train.models import ModelSpec, build_model, save_student
from crossdistill.train.parallel import Parallel
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


class StudentLaunchConfig(StrictConfig):
    """Where the processes of a data-parallel run (``workers`` > 1) start, and with what."""

    backend: Literal["local", "trainjob", "pytorchjob"] = Field(
        "local", description="local: this process (torchrun ranks on this machine when workers > 1); trainjob: "
                             "a Kubeflow Trainer (v2) TrainJob; pytorchjob: a PyTorchJob of the training operator (v1)")
    proc_per_node: int = Field(1, ge=1, description="processes per node (GPUs per node); trainjob/pytorchjob run "
                                                    "workers / proc_per_node nodes")
    name: str | None = Field(None, description="job name (trainjob/pytorchjob); default: derived from out")
    namespace: str = "crossdistill"
    runtime: str = Field("torch-distributed", description="the ClusterTrainingRuntime a TrainJob refers to")
    image: str | None = Field(None, description="worker image (trainjob/pytorchjob); images.yaml student image")
    resources: Resources = Field(default_factory=lambda: Resources(cpu="4", memory="16Gi"),
                                 description="per node")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    secret_mounts: dict[str, str] = Field(default_factory=dict, description="Secret name -> mount path in every "
                                                                            "worker (the teacher client's token, CA)")
    service_account: str | None = Field(None, description="the workers' ServiceAccount (e.g. one that Workload "
                                                          "Identity lets read the data and write out)")
    timeout_s: float = Field(7 * 86400.0, gt=0, description="how long the launching step waits for the job")


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
    loss: Literal["kd", "logit_matching", "reverse_kl", "jsd"] = Field(
        "kd", description="soft term: KD at T (forward KL), or logit matching; text data also: reverse_kl, or jsd "
                          "(GKD's generalized Jensen-Shannon divergence with jsd_beta)")
    jsd_beta: float = Field(0.5, ge=0, le=1, description="loss=jsd: the mixture weight (0 = forward KL, 1 = reverse "
                                                         "KL)")
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
    workers: int = Field(1, ge=1, description="data-parallel processes (DDP; batch_size is per process), started "
                                              "by launch.backend; under torchrun they come from its environment")
    launch: StudentLaunchConfig = Field(default_factory=StudentLaunchConfig)


@dataclass
class TrainResult:
    model_uri: str
    steps: int
    samples_seen: int
    final_loss: float
    epochs_completed: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # the data-parallel rank that returned this (every rank returns the same figures)

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


def read_result(out: str) -> TrainResult:
    """The result of a finished run read back from its folder (a run whose ranks ran in other processes)."""
    from crossdistill.train.models import load_student

    model_uri = storage.join(out, MODEL_FILE)
    if not storage.exists(model_uri):
        raise DataError(f"{out} holds no {MODEL_FILE}: the training run did not get to the end")
    extra = load_student(model_uri)[1]["extra"]
    history = [json.loads(line) for line in storage.read_text(storage.join(out, LOG_FILE)).splitlines() if line]
    return TrainResult(model_uri=model_uri, steps=int(extra["steps"]), samples_seen=int(extra["samples_seen"]),
                       final_loss=history[-1]["loss"] if history else math.nan,
                       epochs_completed=int(extra.get("epochs_completed", 0)), finished=bool(extra["finished"]),
                       history=history)


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


def _target_source(cfg: StudentTrainConfig, names: list[str] | None,
                   vocabulary: tuple[str, str] | None) -> TargetSource:
    """``names`` None: text data, whose ``vocabulary`` (fingerprint, where) the teacher must share."""
    layers = [f.teacher for f in cfg.features]
    if cfg.mode == "offline":
        assert cfg.soft_labels is not None
        return StoredSoftLabels(cfg.soft_labels, names, cfg.temperature, layers, cfg.loss == "logit_matching",
                                vocabulary)
    if cfg.mode == "online":
        assert cfg.teacher is not None
        return LiveTeacher(cfg.teacher, names, cfg.temperature, layers, cfg.rpc_batches, vocabulary)
    return HardLabels()


def _token_loss(cfg: StudentTrainConfig) -> WeightedLoss:
    """Text data: next-token cross-entropy (``hard``) and a divergence from the teacher per token (``soft``)."""
    if cfg.mode == "hard":
        return WeightedLoss({"hard": (1.0, NextTokenTerm())})
    soft = {"kd": ForwardKLTerm(cfg.temperature), "reverse_kl": ReverseKLTerm(cfg.temperature),
            "jsd": JSDTerm(cfg.jsd_beta, cfg.temperature)}[cfg.loss]
    return WeightedLoss({"soft": (cfg.soft_weight, soft), "hard": (cfg.hard_weight, NextTokenTerm())})


def _loss(cfg: StudentTrainConfig, distiller: CrossLayerDistiller | None) -> WeightedLoss:
    if cfg.mode == "hard":
        return WeightedLoss({"hard": (1.0, HardLabelTerm())})
    if cfg.loss in ("reverse_kl", "jsd"):
        raise ConfigError(f"loss={cfg.loss} is for text data (token distributions); for classes use kd or "
                          "logit_matching")
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


def _fingerprint(cfg: StudentTrainConfig, stream: BatchStream) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {**{k: dumped[k] for k in _RESUME_FINGERPRINT}, "data": stream.fingerprint()}


def _write_log(out: str, history: list[dict[str, Any]]) -> None:
    storage.write_text(storage.join(out, LOG_FILE), "".join(json.dumps(h) + "\n" for h in history))


def _token_inputs(logits: torch.Tensor, labels: np.ndarray, mask: np.ndarray, target: Targets | None,
                  device: torch.device) -> TokenLossInputs:
    def on(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return TokenLossInputs(logits, torch.from_numpy(labels).to(device), torch.from_numpy(mask).to(device),
                           teacher_logits=on(target.logits) if target else None,
                           topk_logprobs=on(target.topk_logprobs) if target else None,
                           topk_indices=on(target.topk_indices) if target else None,
                           topk_temperature=target.topk_temperature if target else None)


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


def _lockstep(pairs: Iterator[tuple[Batch, Targets | None]], epoch: int, index: int, epochs: int,
              per_epoch: int) -> Iterator[tuple[int, int, Batch | None, Targets | None]]:
    """Every step from ``(epoch, index)`` with this rank's batch, or ``None`` where its part has run out
    before the epoch's ``per_epoch`` steps (data-parallel ranks of uneven parts)."""
    pending = next(pairs, None)
    while epoch < epochs:
        if pending is not None and (pending[0].epoch, pending[0].index) == (epoch, index):
            yield epoch, index, pending[0], pending[1]
            pending = next(pairs, None)
        else:
            yield epoch, index, None, None
        epoch, index = (epoch, index + 1) if index + 1 < per_epoch else (epoch + 1, 0)


def train_student(cfg: StudentTrainConfig) -> TrainResult:
    """Train the student described by ``cfg``; returns where the model went and what happened."""
    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    parallel = Parallel.start(cfg.device, cfg.workers)
    try:
        return _train(cfg, parallel)
    finally:
        parallel.close()


def _train(cfg: StudentTrainConfig, par: Parallel) -> TrainResult:
    device = par.device
    where = _describe(cfg.train_data)
    meta = DatasetReader(cfg.train_data).meta
    text = meta.get("kind") == "text"  # a language model's data: token rows, next-token targets
    if text and (cfg.features or cfg.loss == "logit_matching"):
        raise ConfigError("text data: feature pairs and loss=logit_matching are for classes; use loss=kd, "
                          "reverse_kl or jsd")
    names = None if text else class_names(meta, where)
    vocabulary = (str(meta.get("vocab_fingerprint")), where) if text else None
    width = int(meta["vocab_size"]) if text else len(names or [])
    source = _target_source(cfg, names, vocabulary)  # label spaces / vocabularies are checked here, before any step
    stream = BatchStream(cfg.train_data, batch_size=cfg.batch_size, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                         num_classes=width, soft=source.soft_uris, soft_columns=source.soft_columns,
                         labeled_only=cfg.mode == "hard" and not text, num_workers=cfg.num_workers,
                         preprocess=cfg.preprocess, rank=par.rank, world=par.world)
    if stream.num_rows == 0 and par.world > 1:
        what = "labeled rows" if cfg.mode == "hard" and not text else "rows"
        raise DataError(f"{where}: rank {par.rank} of {par.world} gets no {what} to train on (its "
                        f"{stream.reader.num_examples} rows in {len(stream.reader.fragments)} row group(s) are too few "
                        f"for {par.world} ranks): use fewer workers")
    if stream.num_rows == 0:
        raise DataError(f"mode=hard but {where} has no labeled example (all y = -1)" if cfg.mode == "hard"
                        else f"{where} holds no examples")
    input_shape = (int(meta["seq_len"]),) if text else stream.input_shape()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape, width).to(device)
    if par.rank:  # the same initial weights (DDP broadcasts rank 0's), but dropout masks of its own
        torch.manual_seed(cfg.seed + 7919 * par.rank)
    distiller: CrossLayerDistiller | None = None
    if cfg.features:
        first: Batch | None = None if cfg.mode == "offline" else next(stream.batches(0, 0, 1))
        distiller = CrossLayerDistiller(
            [(f.student, f.teacher) for f in cfg.features],
            feature_shapes(model, [f.student for f in cfg.features], input_shape), source.layer_shapes(first),
            weights=[f.weight for f in cfg.features]).to(device)
    net = par.wrap(model)
    loss_fn = _token_loss(cfg) if text else _loss(cfg, distiller)
    opt = _make_optimizer(cfg, [*model.parameters(), *(distiller.parameters() if distiller is not None else [])])
    per_epoch = par.max_int(stream.batches_per_epoch)
    if stream.batches_per_epoch < per_epoch:
        log.info("rank %d has %d of the %d batches per epoch (its part of %s is smaller): it steps with empty "
                 "batches for the rest", par.rank, stream.batches_per_epoch, per_epoch, where)
    total_steps = per_epoch * cfg.epochs
    state = TrainingState(model, opt, _make_schedule(cfg, opt, total_steps), _fingerprint(cfg, stream), distiller)
    resumed = state.resume(cfg.out, par) if cfg.resume else None
    if resumed is not None and par.primary:
        log.info("resuming from %s at step %d (epoch %d, batch %d)", resumed, state.step, state.epoch, state.batch)
    last_saved = state.step if resumed is not None else -1
    last_loss = state.last_loss
    t_window, timed = time.perf_counter(), 0  # throughput of all ranks together

    def checkpoint() -> None:
        nonlocal last_saved
        state.save(cfg.out, cfg.keep_checkpoints, par)
        if par.primary:
            _write_log(cfg.out, state.history)
        last_saved = state.step

    def record(epoch: int) -> None:
        nonlocal t_window, timed
        entry = state.record(epoch, timed / max(time.perf_counter() - t_window, 1e-9))
        if entry is not None:
            bar.set_postfix(loss=f"{entry['loss']:.4f}", samples_s=entry["samples_per_s"])
        t_window, timed = time.perf_counter(), 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state.step, disable=not cfg.progress or not par.primary, unit="step",
               desc="student-train")
    model.train()
    already_done = cfg.max_steps is not None and state.step >= cfg.max_steps
    epochs = state.epoch if already_done else cfg.epochs
    batches = source.targets(stream.batches(state.epoch, min(state.batch, stream.batches_per_epoch), epochs))
    steps = _lockstep(batches, state.epoch, state.batch, epochs, per_epoch)
    hooks = FeatureHooks(model, distiller.student_paths) if distiller is not None else None
    empty = torch.empty((0, *input_shape), device=device, dtype=torch.long if text else torch.float32)
    try:
        while True:
            failure: TeacherError | None = None
            try:
                epoch, index, batch, target = next(steps)
            except StopIteration:
                break
            except TeacherError as exc:  # every rank stops at this step, below
                failure, batch = exc, None
            rows, values = 0, dict.fromkeys(loss_fn.names, 0.0)
            if failure is None:
                if batch is None:
                    loss = net(empty).sum() * 0.0  # no rows: a zero gradient, so DDP's all-reduce still happens
                elif text:
                    rows = len(batch)
                    inputs, labels, mask = next_token_pairs(batch.x, batch.soft["length"])
                    logits = net(torch.from_numpy(inputs).to(device))
                    loss, values = loss_fn(_token_inputs(logits, labels, mask, target, device))
                else:
                    rows = len(batch)
                    logits = net(torch.from_numpy(batch.x).to(device))
                    y = torch.from_numpy(batch.y).to(device)
                    loss, values = loss_fn(_loss_inputs(logits, y, target, hooks, device))
                last_loss = loss.item()
            totals = par.step_totals([rows, rows * last_loss, *(rows * v for v in values.values()),
                                      float(failure is not None)])
            if totals[-1]:
                if 0 < state.step != last_saved:  # keep the progress made so far: a resume re-sends only what is left
                    checkpoint()
                raise failure or TeacherError(f"the teacher failed on another rank at step {state.step + 1}; "
                                              "a rerun with the same out resumes from the checkpoint")
            if par.world > 1:
                last_loss = totals[1] / totals[0]
                values = {k: v / totals[0] for k, v in zip(values, totals[2:-1], strict=True)}
            if not math.isfinite(last_loss):
                raise TrainingDivergedError(
                    f"loss is {last_loss} at step {state.step + 1} (epoch {epoch}, batch {index}): "
                    f"lower lr (now {cfg.lr}) or check inputs and teacher outputs for NaN/Inf")
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: weighting by rows makes that the global batch's mean
            (loss * (par.world * rows / totals[0]) if par.world > 1 else loss).backward()
            par.average_gradients(distiller)
            opt.step()
            state.scheduler.step()
            state.advance(epoch, index, int(totals[0]), per_epoch,
                          {"loss": last_loss, **{f"loss/{k}": v for k, v in values.items()}})
            timed += int(totals[0])
            if state.step % cfg.log_every == 0 or state.batch == 0:
                record(epoch)
            bar.update(1)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                break
    finally:
        steps.close()
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
    if par.primary:
        save_student(model_uri, model, cfg.model, input_shape, width,
                     extra={"steps": state.step, "samples_seen": state.samples, "finished": finished,
                            "epochs_completed": state.epoch, "mode": cfg.mode, "temperature": cfg.temperature,
                            "train_data": cfg.train_data, "class_names": names, "workers": par.world,
                            **({"vocab_fingerprint": vocabulary[0]} if vocabulary else {})})
        _write_log(cfg.out, state.history)
    if not math.isfinite(last_loss) and state.history:
        last_loss = state.history[-1]["loss"]
    return TrainResult(model_uri=model_uri, steps=state.step, samples_seen=state.samples, final_loss=last_loss,
                       epochs_completed=state.epoch, finished=finished, history=state.history, rank=par.rank)
