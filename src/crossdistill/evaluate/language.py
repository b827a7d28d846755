"""The evaluate step for language-model students: held-out text, scored token by token.

Test rows (``kind: text`` datasets from import-data) are read one fragment at a time and split into
inputs and next-token targets (:func:`crossdistill.data.text.next_token_pairs`, padding masked out);
every model sees the same batches in one pass, and only running sums are kept (memory does not grow
with the test set). Per model: tokens scored, mean negative log-likelihood of the next token and its
perplexity ``exp(NLL)``, next-token accuracy (argmax), agreement with the teacher's argmax, parameters,
size on disk and CPU latency on ``[B, seq_len]`` token inputs. The teacher (optional) is asked for
dense logits over the same batches, after its vocabulary is checked against the data's. The result
has the shape of the classification result (student, baselines, teacher, comparison, exports), so
``run_evaluate`` writes the same report, ``metrics.json`` and summaries for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossdistill.data.shards import DatasetReader
from crossdistill.data.text import next_token_pairs, next_token_scores
from crossdistill.errors import ConfigError, ModelFormatError
from crossdistill.evaluate import latency as L
from crossdistill.teacher.labeling import check_vocabulary


@dataclass
class _Tally:
    """Running sums over the real target tokens of the test rows."""

    tokens: int = 0
    nll: float = 0.0
    correct: int = 0
    agree: int = 0

    def add(self, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray, teacher: np.ndarray | None) -> np.ndarray:
        """Count one batch (``logits`` ``[B, T, V]``); returns the argmax per position."""
        nll, pred = next_token_scores(logits, targets)
        self.tokens += int(mask.sum())
        self.nll += float(nll[mask].sum())
        self.correct += int((pred == targets)[mask].sum())
        if teacher is not None:
            self.agree += int((pred == teacher)[mask].sum())
        return pred

    def metrics(self, with_teacher: bool) -> dict[str, Any]:
        nll = self.nll / max(self.tokens, 1)
        out = {"tokens": self.tokens, "nll": nll, "perplexity": math.exp(min(nll, 700.0)),
               "next_token_accuracy": self.correct / max(self.tokens, 1)}
        if with_teacher:
            out["teacher_agreement"] = self.agree / max(self.tokens, 1)
        return out


def _load(name: str, uri: str, vocab: int, seq: int, fingerprint: str | None) -> Any:
    from crossdistill.train.models import load_student

    model, info = load_student(uri)
    if info["num_classes"] != vocab or list(info.get("input_shape") or []) != [seq]:
        raise ModelFormatError(f"{uri}: model '{name}' reads {info.get('input_shape')} tokens over {info['num_classes']} "
                               f"entries, the test text has seq_len {seq} over a vocabulary of {vocab}")
    theirs = (info.get("extra") or {}).get("vocab_fingerprint")
    if fingerprint and theirs and theirs != fingerprint:
        raise ModelFormatError(f"{uri}: model '{name}' was trained on vocabulary {theirs}, the test text was "
                               f"tokenized with {fingerprint}")
    return model.eval()


def evaluate_language(cfg: Any, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """Score the student, the baselines and the teacher of ``cfg`` (an EvaluateConfig) on its test text.

    Returns the result's ``dataset``, ``student``, ``baselines``, ``teacher`` and the models (for export).
    """
    import torch

    from crossdistill.teacher.colocated import open_teacher

    reader = DatasetReader(cfg.test_data)
    meta = reader.meta
    if cfg.teachers:
        raise ConfigError("evaluate: text data takes one teacher (teacher=...); several teachers are for classes")
    vocab, seq, fingerprint = int(meta["vocab_size"]), int(meta["seq_len"]), meta.get("vocab_fingerprint")
    named = {cfg.student_name: cfg.student, **cfg.baselines}
    models = {name: _load(name, uri, vocab, seq, fingerprint) for name, uri in named.items()}
    tallies = {name: _Tally() for name in models}
    teacher = None
    if cfg.teacher is not None:
        teacher = open_teacher(cfg.teacher.model_copy(update={"top_k": 0, "layers": []}))
        teacher.wait_ready(cfg.teacher_ready_timeout_s)
        check_vocabulary(teacher.metadata(), cfg.teacher.url, str(fingerprint), cfg.test_data)
    teacher_tally = _Tally()
    rows = 0
    try:
        for frag in reader.fragments:
            cols = reader.read(frag, ["tokens", "length"])
            for s in range(0, frag.num_rows, cfg.batch_size):
                inputs, targets, mask = next_token_pairs(cols["tokens"][s:s + cfg.batch_size],
                                                         cols["length"][s:s + cfg.batch_size])
                rows += len(inputs)
                best = None
                if teacher is not None:
                    out = teacher.infer(cols["id"][s:s + cfg.batch_size], inputs)
                    best = teacher_tally.add(np.asarray(out.logits), targets, mask, None)
                with torch.inference_mode():
                    for name, model in models.items():
                        logits = model(torch.from_numpy(inputs)).float().numpy()
                        tallies[name].add(logits, targets, mask, best)
        results: dict[str, dict[str, Any]] = {}
        for name, model in models.items():
            results[name] = {"name": name, "uri": named[name], **tallies[name].metrics(teacher is not None),
                             "num_parameters": L.count_parameters(model), "size_bytes": L.size_on_disk(named[name]),
                             "latency": L.torch_cpu_latency(model, (seq,), batch_sizes=batch_sizes,
                                                            repeats=cfg.latency_repeats, warmup=cfg.latency_warmup,
                                                            threads=cfg.threads, vocab_size=vocab)}
        teacher_result = None
        if teacher is not None:
            teacher_result = {"name": "teacher", "uri": cfg.teacher.url, **teacher_tally.metrics(False),
                              **L.teacher_footprint(teacher.metadata()),
                              "latency": L.teacher_latency(teacher, (seq,), batch_sizes=batch_sizes,
                                                           repeats=cfg.latency_repeats, warmup=cfg.latency_warmup,
                                                           vocab_size=vocab)}
    finally:
        if teacher is not None:
            teacher.close()
    student = results.pop(cfg.student_name)
    return {"dataset": {"uri": cfg.test_data, "kind": "text", "num_examples": rows, "num_tokens": student["tokens"],
                        "vocab_size": vocab, "seq_len": seq, "vocab_fingerprint": fingerprint,
                        "name": meta.get("name")},
            "student": student, "baselines": results, "teacher": teacher_result,
            "student_model": models[cfg.student_name], "input_shape": (seq,), "vocab_size": vocab}
