"""The demo teacher: a Keras (TensorFlow backend) MLP or CNN trained by the teacher's owner on its data,
or, on text data (import-data ``text=``), a decoder-only transformer language model.

Inputs keep the library's layout ``(N, 1, H, W)`` float32 and the model ends in logits (no softmax),
so the served teacher needs no conversion on either side of the wire. The language model reads int32
token ids ``(N, seq_len)`` and answers next-token logits ``(N, seq_len, V)``; its tokenizer is saved
beside it (``<out>.tokenizer.json``), where teacher-serve finds it and serves its vocabulary fingerprint.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from crossdistill import storage
from crossdistill.config import StrictConfig
from crossdistill.data.shards import Dataset, DatasetReader, read_dataset
from crossdistill.errors import ConfigError, DataError


class TeacherTrainConfig(StrictConfig):
    """Configuration of `crossdistill train-teacher`."""

    train: str = Field(..., description="training dataset URI (columns id, x, y)")
    val: str | None = Field(None, description="validation dataset URI; None = hold out val_fraction of train")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    out: str = Field(..., description="where the .keras model is written (any URI, name ends in .keras)")
    arch: Literal["mlp", "cnn", "transformer"] = Field(
        "mlp", description="mlp / cnn on x, y data; transformer (a causal language model) on text data")
    hidden: list[int] = Field(default_factory=lambda: [256, 128], description="widths per layer; transformer: "
                                                                              "the width of each block (all equal)")
    heads: int = Field(4, ge=1, description="transformer: attention heads per block")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    threads: int = Field(1, ge=1, description="TensorFlow intra-/inter-op threads")
    classes: list[int] | None = Field(
        None, description="a specialist: train only on examples of these global classes; the model outputs "
                          "len(classes) logits, output i meaning global class classes[i] (None = every class)")
    max_examples: int | None = Field(
        None, ge=1, description="a weak teacher: train on at most this many examples (seeded random, per-class "
                                "stratified); None = all")

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if len(value) < 2 or len(set(value)) != len(value) or min(value) < 0:
                raise ValueError(f"classes must be at least 2 distinct non-negative class ids, got {value}")
        return value


def build_teacher(arch: str, input_shape: tuple[int, ...], num_classes: int, hidden: list[int],
                  dropout: float = 0.0) -> Any:
    """A functional Keras model from ``(N, *input_shape)`` to logits; layers have stable names."""
    import keras
    from keras import layers

    inp = keras.Input(shape=input_shape, name="input")
    if arch == "mlp":
        h = layers.Flatten(name="flatten")(inp)
        for i, width in enumerate(hidden):
            h = layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
            if dropout:
                h = layers.Dropout(dropout, name=f"dropout_{i}")(h)
    else:
        h = layers.Permute((2, 3, 1), name="to_channels_last")(inp)
        for i, width in enumerate(hidden):
            h = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
            if i < len(hidden) - 1 and min(h.shape[1], h.shape[2]) >= 4:
                h = layers.MaxPooling2D(2, name=f"pool_{i}")(h)
        h = layers.GlobalAveragePooling2D(name="features")(h)
    out = layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inp, out, name=f"teacher_{arch}")


def train_keras_teacher(cfg: TeacherTrainConfig) -> dict[str, Any]:
    """Train, evaluate on the validation part, write the ``.keras`` file atomically; return metrics.

    The result's ``label_map`` (output index -> global class id; identity for a generalist) is what
    downstream steps need to read a specialist's outputs; ``val_accuracy`` is measured on the
    validation examples of the teacher's own classes.
    """
    if not cfg.out.endswith(".keras"):
        raise ConfigError(f"out={cfg.out!r}: a Keras model file must end in .keras")
    text = DatasetReader(cfg.train).meta.get("kind") == "text"
    if text != (cfg.arch == "transformer"):
        raise ConfigError(f"arch={cfg.arch} on {cfg.train}: the transformer is for text data (import-data text=...), "
                          "mlp and cnn for x, y data")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from crossdistill.teacher.adapters import _pin_tf_threads

    _pin_tf_threads(cfg.threads)
    import keras

    if text:
        return _train_language_model(cfg)
    data = read_dataset(cfg.train, columns=["x", "y"])
    train, val = _split(data, cfg)
    num_classes = int(data.meta.get("num_classes") or int(data["y"].max()) + 1)
    label_map = list(cfg.classes) if cfg.classes is not None else list(range(num_classes))
    if max(label_map) >= num_classes:
        raise ConfigError(f"classes={cfg.classes}: class ids must be < {num_classes}, the class count of {cfg.train}")
    train = _restrict(train, label_map, num_classes, f"{cfg.train} (training part)")
    val = _restrict(val, label_map, num_classes, f"{cfg.val or cfg.train} (validation part)")
    if cfg.max_examples is not None and len(train) > cfg.max_examples:
        train = train.take(_stratified(train["y"], cfg.max_examples, cfg.seed))
    keras.utils.set_random_seed(cfg.seed)
    model = build_teacher(cfg.arch, tuple(train["x"].shape[1:]), len(label_map), cfg.hidden, cfg.dropout)
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train["x"], train["y"], batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=0,
                        shuffle=True)
    seconds = time.perf_counter() - start
    val_loss, val_acc = model.evaluate(val["x"], val["y"], batch_size=256, verbose=0)
    with tempfile.TemporaryDirectory(prefix="crossdistill-teacher-") as tmp:
        local = Path(tmp) / "model.keras"
        model.save(local)
        storage.put_file(local, cfg.out)
    return {"out": cfg.out, "val_accuracy": float(val_acc), "val_loss": float(val_loss),
            "train_accuracy": float(history.history["accuracy"][-1]), "train_examples": len(train),
            "val_examples": len(val), "num_parameters": int(model.count_params()), "train_seconds": seconds,
            "num_classes": num_classes, "num_outputs": len(label_map), "label_map": label_map,
            "input_shape": list(train["x"].shape[1:])}


def build_language_model(seq_len: int, vocab_size: int, widths: list[int], heads: int, dropout: float = 0.0) -> Any:
    """A causal transformer from int32 token ids ``(N, seq_len)`` to next-token logits ``(N, seq_len, V)``:
    token + position embeddings, one pre-norm block (masked self-attention, GELU MLP) per width."""
    import keras
    from keras import layers, ops

    dim = widths[0]
    if any(w != dim for w in widths) or dim % heads:
        raise ConfigError(f"transformer: hidden {widths} must be equal widths divisible by heads={heads}")
    inp = keras.Input(shape=(seq_len,), dtype="int32", name="input")
    positions = ops.cumsum(ops.ones_like(inp), axis=1) - 1
    h = layers.Embedding(vocab_size, dim, name="tokens")(inp) + layers.Embedding(seq_len, dim, name="positions")(
        positions)
    for i in range(len(widths)):
        a = layers.LayerNormalization(name=f"norm_attn_{i}")(h)
        a = layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name=f"attn_{i}")(a, a,
                                                                                             use_causal_mask=True)
        h = layers.Add(name=f"residual_attn_{i}")([h, a])
        f = layers.LayerNormalization(name=f"norm_mlp_{i}")(h)
        f = layers.Dense(4 * dim, activation="gelu", name=f"mlp_in_{i}")(f)
        f = layers.Dense(dim, name=f"mlp_out_{i}")(f)
        if dropout:
            f = layers.Dropout(dropout, name=f"dropout_{i}")(f)
        h = layers.Add(name=f"residual_mlp_{i}")([h, f])
    out = layers.Dense(vocab_size, name="logits")(layers.LayerNormalization(name="norm_out")(h))
    return keras.Model(inp, out, name="teacher_transformer")


def _train_language_model(cfg: TeacherTrainConfig) -> dict[str, Any]:
    """The transformer on text rows: next-token cross-entropy over real tokens, held-out rows scored by
    perplexity; the model and, beside it, the data's tokenizer."""
    import keras

    from crossdistill.data.text import next_token_pairs, next_token_scores, tokenizer_uri

    reader = DatasetReader(cfg.train)
    rows = reader.to_dataset(["tokens", "length"])
    inputs, targets, mask = next_token_pairs(rows["tokens"], rows["length"])
    if cfg.val:
        held = DatasetReader(cfg.val).to_dataset(["tokens", "length"])
        val = next_token_pairs(held["tokens"], held["length"])
        train = (inputs, targets, mask)
    else:
        perm = np.random.default_rng(cfg.seed).permutation(len(inputs))
        cut = max(1, int(round(cfg.val_fraction * len(inputs))))
        val = tuple(a[np.sort(perm[:cut])] for a in (inputs, targets, mask))
        train = tuple(a[np.sort(perm[cut:])] for a in (inputs, targets, mask))
    seq, vocab = int(reader.meta["seq_len"]), int(reader.meta["vocab_size"])
    keras.utils.set_random_seed(cfg.seed)
    model = build_language_model(seq, vocab, cfg.hidden, cfg.heads, cfg.dropout)
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(train[0].astype(np.int32), train[1], sample_weight=train[2].astype(np.float32),
              batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    nll_sum, correct = 0.0, 0
    for s in range(0, len(val[0]), 256):  # scored a slice at a time: the logits of all of val would not fit
        inputs, targets, mask = (a[s:s + 256] for a in val)
        nll, pred = next_token_scores(model.predict(inputs.astype(np.int32), verbose=0), targets)
        nll_sum, correct = nll_sum + float(nll[mask].sum()), correct + int((pred == targets)[mask].sum())
    tokens = int(val[2].sum())
    with tempfile.TemporaryDirectory(prefix="crossdistill-teacher-") as tmp:
        local = Path(tmp) / "model.keras"
        model.save(local)
        storage.write_bytes(f"{cfg.out}.tokenizer.json",
                            storage.read_bytes(tokenizer_uri(reader.uris[0], reader.meta)))
        storage.put_file(local, cfg.out)
    return {"out": cfg.out, "val_perplexity": float(np.exp(nll_sum / tokens)),
            "val_next_token_accuracy": correct / tokens, "val_tokens": tokens, "train_rows": len(train[0]), "val_rows": len(val[0]),
            "num_parameters": int(model.count_params()), "train_seconds": seconds, "num_classes": vocab,
            "vocab_size": vocab, "seq_len": seq, "vocab_fingerprint": reader.meta.get("vocab_fingerprint"),
            "input_shape": [seq]}


def _split(data: Dataset, cfg: TeacherTrainConfig) -> tuple[Dataset, Dataset]:
    labeled = data.take(np.flatnonzero(data.labeled_mask()))
    if len(labeled) == 0:
        raise DataError(f"{cfg.train}: no labeled examples (column 'y' is all -1)")
    if cfg.val:
        return labeled, read_dataset(cfg.val, columns=["x", "y"])
    perm = np.random.default_rng(cfg.seed).permutation(len(labeled))
    n_val = max(1, int(round(cfg.val_fraction * len(labeled))))
    return labeled.take(np.sort(perm[n_val:])), labeled.take(np.sort(perm[:n_val]))


def _restrict(data: Dataset, label_map: list[int], num_classes: int, where: str) -> Dataset:
    """The examples of ``label_map``'s classes, with ``y`` rewritten to the teacher's output index."""
    index = np.full(num_classes, -1, dtype=np.int64)
    index[label_map] = np.arange(len(label_map))
    y = data["y"]
    if y.max(initial=-1) >= num_classes:
        raise DataError(f"{where}: label {int(y.max())} >= num_classes {num_classes}")
    keep = np.flatnonzero((y >= 0) & (index[np.clip(y, 0, None)] >= 0))
    if len(keep) == 0:
        raise DataError(f"{where}: no labeled examples of classes {label_map}")
    part = data.take(keep)
    return Dataset({**part.columns, "y": index[part["y"]]}, dict(part.meta))


def _stratified(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` examples, about n / classes per class (seeded), every class once if n allows."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for members in by_class:
            if depth < len(members) and len(picked) < n:
                picked.append(int(members[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))
