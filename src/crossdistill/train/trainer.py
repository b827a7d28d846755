"""Student training loop: online (teacher endpoint), offline (stored soft labels) or hard labels only.

Data order is a pure function of ``(seed, epoch)``, so a checkpoint's ``(epoch, batch)`` position is
enough to continue exactly where a run stopped (preemption, ``max_steps``, SIGKILL). In online mode
every batch's ids and inputs go to the teacher through ``TeacherClient.stream`` with several requests
in flight; replies arrive in completion order and are put back in batch order before training, so an
online run consumes batches in the same order as an offline one and resumes the same way.

Loss per batch: ``soft_weight * T^2 KL`` (or logit matching) ``+ hard_weight * CE`` on the labeled rows
(``y = -1`` rows get only the soft term) ``+ feature_weight * sum_ij lambda_ij MSE`` over ``features``
pairs. Files under ``out``: ``checkpoints/ckpt-<step>.pt`` (every ``checkpoint_every`` steps, at the end,
and when the teacher fails), ``model.pt`` (:func:`save_student`) and ``train_log.jsonl``.
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
from crossdistill.data.shards import UNLABELED, Dataset, read_dataset
from crossdistill.errors import ConfigError, CrossdistillError, DataError, TeacherError, TeacherResponseError
from crossdistill.losses.feature import CrossLayerDistiller, FeatureHooks, feature_shapes
from crossdistill.losses.kd import hard_label_loss, kd_loss, logit_matching_loss
from crossdistill.losses.topk import teacher_probs_at
from crossdistill.teacher.client import TeacherClientConfig
from crossdistill.teacher.colocated import open_teacher
from crossdistill.teacher.protocol import LAYER_PREFIX, TeacherOutput
from crossdistill.train.checkpoint import latest_checkpoint, save_checkpoint
from crossdistill.train.models import ModelSpec, build_model, save_student

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LOG_FILE = "train_log.jsonl"
# Fields that fix the data order, the model and the schedule: a resume must not change them.
_RESUME_FINGERPRINT = ("train_data", "mode", "model", "features", "optimizer", "schedule", "epochs",
                       "batch_size", "seed")


class TrainingDivergedError(CrossdistillError):
    """The loss became NaN or infinite."""


class FeaturePair(StrictConfig):
    """One cross-layer pair: a student module path matched to a teacher layer (seed 003)."""

    student: str = Field(..., description="student module path, e.g. '2' or 'features.3'")
    teacher: str = Field(..., description="teacher layer name (online: requested over RPC; offline: "
                                          "column 'layer/<name>' of the soft labels)")
    weight: float = Field(1.0, ge=0, description="lambda of this pair (normalised over the pairs)")


class StudentTrainConfig(StrictConfig):
    """Configuration of `crossdistill student-train`."""

    train_data: str | list[str] = Field(..., description="dataset URI(s) with id, x and optionally y (-1 = unlabeled)")
    out: str = Field("runs/student", description="run folder: model.pt, train_log.jsonl, checkpoints/")
    mode: Literal["online", "offline", "hard"] = Field(
        "offline", description="online: teacher endpoint; offline: soft_labels datasets; hard: labels only")
    teacher: TeacherClientConfig | None = Field(None, description="teacher endpoint (online mode)")
    rpc_batches: int = Field(1, ge=1, description="online: student batches per teacher request (amortises "
                                                   "per-request overhead when the teacher is small)")
    soft_labels: str | list[str] | None = Field(None, description="soft-label dataset URI(s) (offline mode)")
    model: ModelSpec = Field(default_factory=ModelSpec)
    temperature: float = Field(4.0, gt=0, description="distillation temperature T")
    soft_weight: float = Field(1.0, ge=0, description="weight of the soft (teacher) term")
    hard_weight: float = Field(0.1, ge=0, description="weight of the hard-label term (labeled examples only)")
    loss: Literal["kd", "logit_matching"] = "kd"
    features: list[FeaturePair] = Field(default_factory=list, description="cross-layer feature distillation pairs")
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature term")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
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


@dataclass
class _Target:
    """Teacher signal for one batch: distribution at T and, in dense mode, the raw logits."""

    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # per-example weights of the soft term (assembled sets)


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


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _positions(seed: int, n: int, batch_size: int, epochs: int, start_epoch: int,
               start_batch: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(epoch, batch, row indices)`` from a position to the end, in the fixed order."""
    per_epoch = math.ceil(n / batch_size)
    for epoch in range(start_epoch, epochs):
        order = _epoch_order(seed, epoch, n)
        for b in range(start_batch if epoch == start_epoch else 0, per_epoch):
            yield epoch, b, order[b * batch_size:(b + 1) * batch_size]


def _describe(uri: str | list[str]) -> str:
    return uri if isinstance(uri, str) else ", ".join(uri)


def _num_classes(data: Dataset, uri: str) -> int:
    if data.meta.get("num_classes"):
        return int(data.meta["num_classes"])
    labels = data["y"][data["y"] != UNLABELED] if "y" in data else np.array([])
    if len(labels) == 0:
        raise DataError(f"{uri}: meta has no num_classes and no example is labeled to infer it from")
    return int(labels.max()) + 1


class _OfflineTargets:
    """Soft labels joined to the training rows by id, as teacher distributions at T."""

    def __init__(self, cfg: StudentTrainConfig, train: Dataset, num_classes: int):
        uri = _describe(cfg.soft_labels or [])
        soft = read_dataset(cfg.soft_labels)
        order = np.argsort(soft.ids, kind="stable")
        sorted_ids = soft.ids[order]
        pos = np.searchsorted(sorted_ids, train.ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[pos] == train.ids) if len(sorted_ids) else np.zeros(len(train), dtype=bool)
        if not found.all():
            missing = train.ids[~found]
            raise DataError(f"{int((~found).sum())} of {len(train)} examples of {_describe(cfg.train_data)} "
                            f"have no soft label in {uri} (first missing ids: {missing[:10].tolist()})")
        rows = order[pos]
        self.logits: torch.Tensor | None = None
        if "logits" in soft:
            logits = soft["logits"][rows]
            self._check(logits, uri, "logits", num_classes)
            self.logits = torch.as_tensor(logits, dtype=torch.float32)
            self.probs = teacher_probs_at(cfg.temperature, logits=self.logits)
        elif "topk_logprobs" in soft and "topk_indices" in soft:
            if cfg.loss == "logit_matching":
                raise ConfigError(f"loss=logit_matching needs dense logits, {uri} holds top-k log-probabilities")
            lp, idx = soft["topk_logprobs"][rows], soft["topk_indices"][rows]
            self._check(lp, uri, "topk_logprobs", None)
            t_k = soft.meta.get("temperature")
            if t_k is not None and float(t_k) != cfg.temperature:
                log.warning("soft labels %s are top-k at T=%s, training at T=%s: re-tempering (exact within "
                            "the top k, approximate for the tail)", uri, t_k, cfg.temperature)
            self.probs = teacher_probs_at(cfg.temperature, topk_logprobs=lp, topk_indices=idx,
                                          topk_temperature=t_k, num_classes=num_classes)
        else:
            raise DataError(f"{uri} has neither a 'logits' column nor 'topk_logprobs' + 'topk_indices' "
                            f"(columns: {sorted(soft.columns)})")
        self.layers: dict[str, torch.Tensor] = {}
        for name in sorted({f.teacher for f in cfg.features}):
            column = LAYER_PREFIX + name
            if column not in soft:
                raise DataError(f"{uri} has no column '{column}' for feature pair teacher='{name}' "
                                f"(columns: {sorted(soft.columns)})")
            values = soft[column][rows]
            self._check(values, uri, column, None)
            self.layers[name] = torch.as_tensor(values, dtype=torch.float32)
        self.weights: torch.Tensor | None = None
        if "weight" in soft:
            weights = soft["weight"][rows].astype(np.float32)
            self._check(weights[:, None], uri, "weight", None)
            if (weights < 0).any():
                raise DataError(f"{uri}: column 'weight' has negative values (expected per-example weights >= 0)")
            self.weights = torch.as_tensor(weights)

    @staticmethod
    def _check(values: np.ndarray, uri: str, column: str, num_classes: int | None) -> None:
        if num_classes is not None and (values.ndim != 2 or values.shape[1] != num_classes):
            raise DataError(f"{uri}: column '{column}' has width {values.shape[1:]}, the student has "
                            f"{num_classes} classes (teacher and student must share the label set)")
        if not np.isfinite(values).all():
            raise DataError(f"{uri}: column '{column}' holds NaN or Inf in {int((~np.isfinite(values)).any(axis=-1).sum())} rows")

    def target(self, idx: np.ndarray) -> _Target:
        t = torch.as_tensor(idx)
        return _Target(self.probs[t], None if self.logits is None else self.logits[t],
                       {k: v[t] for k, v in self.layers.items()},
                       None if self.weights is None else self.weights[t])

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.layers.items()}


def _online_target(out: TeacherOutput, cfg: StudentTrainConfig, num_classes: int) -> _Target:
    layers = {f.teacher: torch.as_tensor(np.asarray(out.layers[f.teacher], dtype=np.float32))
              for f in cfg.features if f.teacher in out.layers}
    target = _dense_or_topk_target(out, cfg, num_classes)
    target.layers = layers
    return target


def _dense_or_topk_target(out: TeacherOutput, cfg: StudentTrainConfig, num_classes: int) -> _Target:
    if out.logits is not None:
        logits = torch.as_tensor(np.asarray(out.logits, dtype=np.float32))
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise TeacherResponseError(f"teacher returned logits of shape {tuple(logits.shape)}, the student has "
                                       f"{num_classes} classes (teacher and student must share the label set)")
        return _Target(teacher_probs_at(cfg.temperature, logits=logits), logits)
    if out.topk_logprobs is None or out.topk_indices is None:
        raise TeacherResponseError("teacher reply has neither logits nor topk_logprobs + topk_indices")
    try:
        probs = teacher_probs_at(cfg.temperature, topk_logprobs=out.topk_logprobs, topk_indices=out.topk_indices,
                                 topk_temperature=out.temperature, num_classes=num_classes)
    except DataError as exc:
        raise TeacherResponseError(f"teacher top-k reply does not fit the student: {exc}") from None
    return _Target(probs, None)


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


def _fingerprint(cfg: StudentTrainConfig) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {k: dumped[k] for k in _RESUME_FINGERPRINT}


def _write_log(out: str, history: list[dict[str, Any]]) -> None:
    storage.write_text(storage.join(out, LOG_FILE), "".join(json.dumps(h) + "\n" for h in history))


def _teacher_config(cfg: StudentTrainConfig) -> TeacherClientConfig:
    """The client config, asking also for every teacher layer the feature pairs need."""
    assert cfg.teacher is not None
    wanted = [f.teacher for f in cfg.features if f.teacher not in cfg.teacher.layers]
    if not wanted:
        return cfg.teacher
    return cfg.teacher.model_copy(update={"layers": [*cfg.teacher.layers, *dict.fromkeys(wanted)]})


def _online_layer_shapes(cfg: StudentTrainConfig, ids: np.ndarray, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Teacher layer shapes (no batch axis) from its metadata, else from one small request."""
    names = sorted({f.teacher for f in cfg.features})
    with open_teacher(_teacher_config(cfg)) as client:
        known = client.metadata().get("layers", {})
        shapes = {n: tuple(known[n][1:]) for n in names if n in known and all(d > 0 for d in known[n][1:])}
        if len(shapes) < len(names):
            out = client.infer(ids[:2], x[:2])
            shapes = {n: tuple(out.layers[n].shape[1:]) for n in names}
    return shapes


def _grouped(items: Iterator[Any] | Any, size: int) -> Iterator[list[Any]]:
    """Consecutive items in lists of ``size`` (the last may be shorter)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _slice_output(out: TeacherOutput, lo: int, hi: int) -> TeacherOutput:
    """Rows ``lo:hi`` of a teacher answer that covered several student batches."""
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[lo:hi]

    return TeacherOutput(ids=out.ids[lo:hi], logits=cut(out.logits), topk_logprobs=cut(out.topk_logprobs),
                         topk_indices=cut(out.topk_indices), temperature=out.temperature,
                         layers={k: v[lo:hi] for k, v in out.layers.items()})


def _batches(cfg: StudentTrainConfig, n: int, start: tuple[int, int], num_classes: int,
             data: Dataset, x_all: np.ndarray,
             offline: _OfflineTargets | None) -> Iterator[tuple[int, int, np.ndarray, _Target | None]]:
    """Training batches in the fixed order with their teacher targets (None in hard mode)."""
    positions = _positions(cfg.seed, n, cfg.batch_size, cfg.epochs, *start)
    if cfg.mode == "hard":
        for epoch, b, idx in positions:
            yield epoch, b, idx, None
        return
    if cfg.mode == "offline":
        assert offline is not None
        for epoch, b, idx in positions:
            yield epoch, b, idx, offline.target(idx)
        return
    client = open_teacher(_teacher_config(cfg))
    groups = ([(seq, epoch, b, idx) for seq, (epoch, b, idx) in g]
              for g in _grouped(enumerate(positions), cfg.rpc_batches))
    requests = ((data.ids[rows], x_all[rows], g)
                for g in groups for rows in [np.concatenate([m[3] for m in g])])
    pending: dict[int, tuple[int, int, np.ndarray, _Target]] = {}
    expected = 0
    stream = client.stream(requests)
    try:
        for out, members in stream:  # the client checked the echoed ids
            start_row = 0
            for seq, epoch, b, idx in members:
                part = _slice_output(out, start_row, start_row + len(idx))
                start_row += len(idx)
                pending[seq] = (epoch, b, idx, _online_target(part, cfg, num_classes))
            while expected in pending:  # put replies back in batch order
                yield pending.pop(expected)
                expected += 1
    finally:
        stream.close()
        client.close()


def train_student(cfg: StudentTrainConfig) -> TrainResult:
    """Train the student described by ``cfg``; returns where the model went and what happened."""
    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    data = read_dataset(cfg.train_data)
    if len(data) == 0:
        raise DataError(f"{_describe(cfg.train_data)} holds no examples")
    x_np = np.ascontiguousarray(data["x"], dtype=np.float32)
    y_np = data["y"].astype(np.int64) if "y" in data else np.full(len(data), UNLABELED, dtype=np.int64)
    if cfg.mode == "hard":
        keep = np.flatnonzero(y_np != UNLABELED)
        if len(keep) == 0:
            raise DataError(f"mode=hard but {_describe(cfg.train_data)} has no labeled example (all y = -1)")
        data, x_np, y_np = data.take(keep), x_np[keep], y_np[keep]
    num_classes = _num_classes(data, _describe(cfg.train_data))
    input_shape = tuple(x_np.shape[1:])
    if y_np.max() >= num_classes:
        raise DataError(f"{_describe(cfg.train_data)}: label {int(y_np.max())} >= num_classes={num_classes}")
    offline = _OfflineTargets(cfg, data, num_classes) if cfg.mode == "offline" else None

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape, num_classes).to(device)
    distiller: CrossLayerDistiller | None = None
    if cfg.features:
        teacher_shapes = (offline.layer_shapes() if offline is not None
                          else _online_layer_shapes(cfg, data.ids, x_np))
        distiller = CrossLayerDistiller(
            [(f.student, f.teacher) for f in cfg.features],
            feature_shapes(model, [f.student for f in cfg.features], input_shape), teacher_shapes,
            weights=[f.weight for f in cfg.features]).to(device)
    params = [*model.parameters(), *(distiller.parameters() if distiller is not None else [])]
    opt = _make_optimizer(cfg, params)
    n = len(data)
    per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = per_epoch * cfg.epochs
    sched = _make_schedule(cfg, opt, total_steps)

    step, samples, start, history = 0, 0, (0, 0), []
    window: list[float] = []  # losses since the last log entry
    found = latest_checkpoint(cfg.out) if cfg.resume else None
    if found is not None:
        uri, state = found
        if state.get("fingerprint") != _fingerprint(cfg):
            diff = [k for k in _RESUME_FINGERPRINT if state.get("fingerprint", {}).get(k) != _fingerprint(cfg)[k]]
            raise ConfigError(f"cannot resume from {uri}: {', '.join(diff)} changed since it was written "
                              "(use a new out, or resume=false to start over)")
        model.load_state_dict(state["model"])
        if distiller is not None:
            distiller.load_state_dict(state["features"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, samples = int(state["step"]), int(state["samples_seen"])
        start, history = (int(state["epoch"]), int(state["batch"])), list(state["history"])
        window = [float(v) for v in state["log_window"]]
        log.info("resuming from %s at step %d (epoch %d, batch %d)", uri, step, *start)

    x_all = torch.from_numpy(x_np)
    y_all = torch.from_numpy(y_np)
    position = start
    last_saved = step if found is not None else -1
    last_loss = window[-1] if window else float("nan")
    t_window, timed_samples = time.perf_counter(), 0  # throughput of this process only

    def state_dict() -> dict[str, Any]:
        return {"step": step, "samples_seen": samples, "epoch": position[0], "batch": position[1],
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": history, "fingerprint": _fingerprint(cfg),
                # losses since the last log entry: a resumed run writes the same log as an uninterrupted one
                "log_window": list(window),
                "features": distiller.state_dict() if distiller is not None else {}}

    def checkpoint() -> None:
        nonlocal last_saved
        save_checkpoint(cfg.out, state_dict(), keep=cfg.keep_checkpoints)
        _write_log(cfg.out, history)
        last_saved = step

    def record(epoch: int) -> None:
        nonlocal window, t_window, timed_samples
        if not window:
            return
        elapsed = max(time.perf_counter() - t_window, 1e-9)
        history.append({"step": step, "epoch": epoch, "samples_seen": samples,
                        "loss": float(np.mean(window)), "lr": float(opt.param_groups[0]["lr"]),
                        "samples_per_s": round(timed_samples / elapsed, 1)})
        window, t_window, timed_samples = [], time.perf_counter(), 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not cfg.progress, unit="step", desc="student-train")
    model.train()
    batches = _batches(cfg, n, start, num_classes, data, x_np, offline)
    hooks = FeatureHooks(model, distiller.student_paths) if distiller is not None else None
    try:
        already_done = cfg.max_steps is not None and step >= cfg.max_steps
        for epoch, b, idx, target in ([] if already_done else batches):
            t = torch.as_tensor(idx)
            x, y = x_all[t].to(device), y_all[t].to(device)
            logits = model(x)
            if target is None:
                loss = hard_label_loss(logits, y)
            elif cfg.loss == "logit_matching":
                assert target.logits is not None
                loss = cfg.soft_weight * logit_matching_loss(logits, target.logits.to(device))
                if cfg.hard_weight:
                    loss = loss + cfg.hard_weight * hard_label_loss(logits, y)
            else:
                weights = None if target.weights is None else target.weights.to(device)
                loss = kd_loss(logits, target.probs.to(device), y, None, cfg.temperature,
                               cfg.soft_weight, cfg.hard_weight, example_weights=weights)
            if distiller is not None and hooks is not None and target is not None:
                teacher_layers = {k: v.to(device) for k, v in target.layers.items()}
                loss = loss + cfg.feature_weight * distiller(hooks.outputs, teacher_layers)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at step {step + 1} (epoch {epoch}, batch {b}): lower lr "
                    f"(now {cfg.lr}) or check inputs and teacher outputs for NaN/Inf")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            samples += len(idx)
            timed_samples += len(idx)
            last_loss = loss.item()
            window.append(last_loss)
            position = (epoch, b + 1) if b + 1 < per_epoch else (epoch + 1, 0)
            if step % cfg.log_every == 0 or position[1] == 0:
                record(epoch)
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", samples_s=history[-1]["samples_per_s"])
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
    except TeacherError:
        if 0 < step != last_saved:  # keep the progress made so far: a resume re-sends only what is left
            checkpoint()
        raise
    finally:
        batches.close()  # cancels teacher requests still in flight
        if hooks is not None:
            hooks.remove()
        bar.close()
    finished = position[0] >= cfg.epochs
    if finished:
        record(cfg.epochs - 1)
    if last_saved != step:
        checkpoint()
    model_uri = storage.join(cfg.out, MODEL_FILE)
    save_student(model_uri, model, cfg.model, input_shape, num_classes,
                 extra={"steps": step, "samples_seen": samples, "finished": finished, "mode": cfg.mode,
                        "temperature": cfg.temperature, "train_data": cfg.train_data})
    _write_log(cfg.out, history)
    if not math.isfinite(last_loss) and history:
        last_loss = history[-1]["loss"]
    return TrainResult(model_uri=model_uri, steps=step, samples_seen=samples, final_loss=last_loss,
                       epochs_completed=position[0], finished=finished, history=history)
