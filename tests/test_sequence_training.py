"""Token-level distillation end to end on a small generated corpus: a causal transformer teacher trained
here and served over gRPC (TorchScript, its tokenizer beside it) teaches a smaller transformer student
online and offline (stored top-k per token); another vocabulary is refused at connect; a SIGKILLed
sequence run resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from crossdistill.data.importing import ImportDataConfig, import_data
from crossdistill.data.shards import DatasetReader
from crossdistill.errors import ConfigError
from crossdistill.teacher.adapters import TORCHSCRIPT_META
from crossdistill.teacher.pseudo_label import PseudoLabelConfig, run_pseudo_label
from crossdistill.train import StudentTrainConfig, load_student, train_student

pytest.importorskip("tokenizers")
SEQ = 24
WORDS = (["the cat", "a dog", "the bird", "my friend", "the teacher", "a student"],
         ["sees", "likes", "follows", "reads", "finds"],
         ["the ball", "a book", "the tree", "some water", "the map"])


def _corpus(path, docs: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = [" ".join(str(rng.choice(part)) for part in WORDS) + "." for _ in range(rng.integers(2, 6))]
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return str(path)


def _student(data: str, out, **kw) -> StudentTrainConfig:
    base = dict(train_data=data, out=str(out), model={"name": "transformer", "kwargs": {"dim": 16, "layers": 1,
                                                                                       "heads": 2}},
                epochs=2, batch_size=16, lr=3e-3, threads=1, progress=False, seed=3, shuffle_buffer=64,
                log_every=5, resume=False)
    base.update(kw)
    return StudentTrainConfig.parse(base)


@pytest.fixture(scope="module")
def lm(tmp_path_factory, serve_teacher):
    """The corpus as token rows, a served transformer teacher trained on it, and its tokenizer."""
    root = tmp_path_factory.mktemp("lm")
    import_data(ImportDataConfig(source=_corpus(root / "corpus.jsonl", 300, 0), text="text", out=str(root / "data"),
                                 vocab_size=300, seq_len=SEQ, holdout={"test": 0.15}))
    data = str(root / "data" / "train")
    run = train_student(_student(data, root / "teacher", mode="hard", epochs=4, model={
        "name": "transformer", "kwargs": {"dim": 48, "layers": 2, "heads": 4}}))
    net, _ = load_student(run.model_uri)
    path = root / "teacher.pt"
    with warnings.catch_warnings():  # the tracer's notes on shape checks inside attention: shapes are fixed here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net.eval(), torch.zeros((1, SEQ), dtype=torch.long), check_trace=False)
    vocab = DatasetReader(data).meta["vocab_size"]
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(
        {"input_shape": [SEQ], "num_classes": vocab, "input_dtype": "int64"})})
    shutil.copy(root / "data" / "tokenizer.json", f"{path}.tokenizer.json")  # the teacher's vocabulary, served
    return {"root": root, "data": data, "test": str(root / "data" / "test"), "teacher": str(path), "teacher_run": run,
            "endpoint": serve_teacher(path, name="lm-teacher")}


def test_the_teacher_learned_the_corpus(lm):
    history = lm["teacher_run"].history
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]  # next-token CE falls well below its start


def test_online_distillation_per_token_over_grpc(lm):
    result = train_student(_student(lm["data"], lm["root"] / "online", mode="online", temperature=2.0,
                                    teacher={"url": lm["endpoint"].grpc, "top_k": 8, "fp16": True}))
    assert result.finished and {"loss/soft", "loss/hard"} <= set(result.history[-1])
    assert result.history[-1]["loss/soft"] < result.history[0]["loss/soft"]
    info = load_student(result.model_uri)[1]
    assert info["extra"]["vocab_fingerprint"] == DatasetReader(lm["data"]).meta["vocab_fingerprint"]


def test_offline_distillation_from_stored_topk_per_token(lm):
    soft = run_pseudo_label(PseudoLabelConfig(data=lm["data"], teacher_url=lm["endpoint"].grpc, top_k=8,
                                              out=str(lm["root"] / "soft"), progress=False))
    reader = DatasetReader(soft)
    assert reader.spec["topk_indices"]["shape"] == [SEQ, 8] and reader.spec["topk_indices"]["dtype"] == "uint16"
    result = train_student(_student(lm["data"], lm["root"] / "offline", mode="offline", soft_labels=soft,
                                    loss="jsd", jsd_beta=0.5))
    assert result.finished and result.history[-1]["loss/soft"] < result.history[0]["loss/soft"]


def test_a_student_of_another_vocabulary_is_refused_before_any_step(lm):
    other = lm["root"] / "other"
    import_data(ImportDataConfig(source=_corpus(lm["root"] / "other.jsonl", 80, 1), text="text", out=str(other),
                                 vocab_size=280, seq_len=SEQ))
    with pytest.raises(ConfigError) as err:
        train_student(_student(str(other), lm["root"] / "refused", mode="online",
                               teacher={"url": lm["endpoint"].grpc}))
    mine, theirs = DatasetReader(str(other)).meta["vocab_fingerprint"], DatasetReader(lm["data"]).meta["vocab_fingerprint"]
    assert mine in str(err.value) and theirs in str(err.value)
    assert not (lm["root"] / "refused" / "checkpoints").exists()
    soft = str(lm["root"] / "soft")  # the teacher's stored top-k: the same check, from their meta
    if not os.path.exists(soft):
        run_pseudo_label(PseudoLabelConfig(data=lm["data"], teacher_url=lm["endpoint"].grpc, top_k=8, out=soft,
                                           progress=False))
    with pytest.raises(ConfigError) as err:
        train_student(_student(str(other), lm["root"] / "refused", mode="offline", soft_labels=soft))
    assert mine in str(err.value) and theirs in str(err.value) and "soft labels" in str(err.value)


def test_a_killed_sequence_run_resumes_to_the_same_weights(lm, tmp_path):
    soft = str(lm["root"] / "soft")
    if not os.path.exists(soft):
        run_pseudo_label(PseudoLabelConfig(data=lm["data"], teacher_url=lm["endpoint"].grpc, top_k=8, out=soft,
                                           progress=False))
    settings = dict(mode="offline", soft_labels=soft, epochs=3, checkpoint_every=4, keep_checkpoints=0, resume=True,
                    model={"name": "transformer", "kwargs": {"dim": 16, "layers": 1, "heads": 2, "dropout": 0.1}})
    whole = train_student(_student(lm["data"], tmp_path / "whole", **settings))
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(_student(lm["data"], tmp_path / "killed", **settings).model_dump_json())
    command = [sys.executable, "-m", "crossdistill.cli", "student-train", "--config", str(cfg_file)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 120
    while not list((tmp_path / "killed" / "checkpoints").glob("ckpt-*.pt")) and time.monotonic() < end \
            and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.pt").exists(), "the run ended before it could be killed"
    resumed = train_student(_student(lm["data"], tmp_path / "killed", **settings))
    assert (resumed.steps, resumed.samples_seen) == (whole.steps, whole.samples_seen)
    a, b = load_student(whole.model_uri)[0].state_dict(), load_student(resumed.model_uri)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_scores_language_models_token_by_token(lm, tmp_path):
    from crossdistill.data.text import next_token_pairs
    from crossdistill.evaluate.run import EvaluateConfig, run_evaluate

    online = train_student(_student(lm["data"], tmp_path / "online", mode="online",
                                    teacher={"url": lm["endpoint"].grpc, "top_k": 8}))
    hard = train_student(_student(lm["data"], tmp_path / "hard", mode="hard"))
    result = run_evaluate(EvaluateConfig(test_data=lm["test"], student=online.model_uri,
                                         baselines={"labels only": hard.model_uri}, teacher=lm["endpoint"].grpc,
                                         out=str(tmp_path / "eval"), latency_repeats=2, latency_warmup=0,
                                         export=["torchscript"]))
    student, teacher = result["student"], result["teacher"]
    # the perplexity of the student, computed here from the definition over the test rows
    rows = DatasetReader(lm["test"]).to_dataset(["tokens", "length"])
    inputs, targets, mask = next_token_pairs(rows["tokens"], rows["length"])
    with torch.no_grad():
        logits = load_student(online.model_uri)[0](torch.from_numpy(inputs))
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.from_numpy(targets), reduction="none")
    want = float(torch.exp(nll[torch.from_numpy(mask)].mean()))
    assert student["tokens"] == int(mask.sum()) == teacher["tokens"]
    assert abs(student["perplexity"] - want) < 1e-3 * want
    vocab = DatasetReader(lm["test"]).meta["vocab_size"]
    assert 1 < teacher["perplexity"] < student["perplexity"] < vocab  # all far below a uniform guess
    assert 0 <= student["teacher_agreement"] <= 1 and 0 < student["next_token_accuracy"] < 1
    assert {r["name"] for r in result["comparison"]} == {"student", "labels only", "teacher"}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["student"]["perplexity"] == student["perplexity"]
    assert "perplexity" in (tmp_path / "eval" / "report.html").read_text()
    exported = torch.jit.load(result["exports"]["torchscript"]["uri"])
    assert exported(torch.from_numpy(inputs[:2])).shape == (2, SEQ, vocab)


def test_a_keras_language_model_teacher_is_served_and_teaches(lm, tmp_path, serve_teacher):
    """The cross-framework case: a Keras (TensorFlow) transformer teacher, a PyTorch transformer student."""
    from crossdistill.teacher.train_keras import TeacherTrainConfig, train_keras_teacher

    out = str(tmp_path / "lm.keras")
    trained = train_keras_teacher(TeacherTrainConfig(train=lm["data"], out=out, arch="transformer", hidden=[32],
                                                     heads=2, epochs=4, lr=3e-3, batch_size=32, dropout=0.0))
    assert trained["val_perplexity"] < trained["vocab_size"] / 4  # far better than a uniform guess
    fingerprint = DatasetReader(lm["data"]).meta["vocab_fingerprint"]
    assert trained["vocab_fingerprint"] == fingerprint
    endpoint = serve_teacher(out, name="keras-lm")  # finds lm.keras.tokenizer.json beside the model
    result = train_student(_student(lm["data"], tmp_path / "student", mode="online", epochs=1,
                                    teacher={"url": endpoint.grpc, "top_k": 16, "fp16": True}))
    assert result.finished and result.history[-1]["loss/soft"] < result.history[0]["loss/soft"]
    with pytest.raises(ConfigError, match="the transformer is for text data"):
        train_keras_teacher(TeacherTrainConfig(train=lm["data"], out=str(tmp_path / "x.keras"), arch="mlp"))
