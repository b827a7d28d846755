"""A token-input teacher (a language model) over real gRPC on loopback: per-position outputs [B, T, V] dense
(FP32, FP16) or top-k with UINT16 / INT32 indices, token ids checked, and its vocabulary compared at connect."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crossdistill.errors import ConfigError, TeacherError
from crossdistill.teacher.adapters import TORCHSCRIPT_META
from crossdistill.teacher.client import TeacherClient, TeacherClientConfig
from crossdistill.teacher.colocated import open_teacher
from crossdistill.teacher.labeling import check_vocabulary
from crossdistill.teacher.protocol import topk_logprobs

tokenizers = pytest.importorskip("tokenizers")
SEQ = 6


class TinyLM(torch.nn.Module):
    """Causal by construction: position t sees the running sum of the embeddings of tokens 0..t."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cumsum(self.emb(x), dim=1))


def _teacher(root, vocab: int, with_tokenizer: bool = True) -> tuple[str, torch.nn.Module, str | None]:
    """A TorchScript token model of ``vocab`` outputs per position, and its tokenizer's fingerprint."""
    from crossdistill.data.text import vocab_fingerprint

    torch.manual_seed(vocab)
    net = TinyLM(vocab).eval()
    path = root / f"lm-{vocab}{'' if with_tokenizer else '-bare'}.pt"
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={TORCHSCRIPT_META: json.dumps(
        {"input_shape": [SEQ], "num_classes": vocab, "input_dtype": "int64"})})
    if not with_tokenizer:
        return str(path), net, None
    words = {f"w{i}": i for i in range(vocab)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=words, unk_token="w0"))
    tok.save(f"{path}.tokenizer.json")  # served beside the model: its fingerprint goes into the metadata
    return str(path), net, vocab_fingerprint(tok)


@pytest.fixture(scope="module")
def small(tmp_path_factory, serve_teacher):
    path, net, fingerprint = _teacher(tmp_path_factory.mktemp("lm"), 300)
    return {"endpoint": serve_teacher(path, name="lm-300"), "net": net, "fingerprint": fingerprint, "path": path}


def _client(endpoint, **kw) -> TeacherClient:
    return TeacherClient(TeacherClientConfig(url=endpoint.grpc, model_name=endpoint.model_name, **kw))


def _tokens(vocab: int, rows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(vocab)
    return np.arange(rows, dtype=np.int64) + 100, rng.integers(0, vocab, size=(rows, SEQ))


def _local(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_dense_fp32_and_fp16_per_position(small):
    ids, x = _tokens(300)
    with _client(small["endpoint"]) as client:
        meta = client.metadata()
        out = client.infer(ids, x)
    assert meta["input_datatype"] == "INT64" and meta["num_classes"] == 300
    assert out.logits.shape == (4, SEQ, 300)
    np.testing.assert_allclose(out.logits, _local(small["net"], x), rtol=1e-5, atol=1e-5)
    with _client(small["endpoint"], fp16=True) as client:
        half = client.infer(ids, x)
    np.testing.assert_array_equal(half.logits, _local(small["net"], x).astype(np.float16).astype(np.float32))


def test_topk_per_position_with_uint16_indices_and_fp16_logprobs(small):
    ids, x = _tokens(300)
    with _client(small["endpoint"], top_k=8, temperature=2.0, fp16=True) as client:
        out = client.infer(ids, x)
        request, response = client.wire_bytes(ids, x)
    assert out.topk_indices.shape == out.topk_logprobs.shape == (4, SEQ, 8) and out.topk_indices.dtype == np.uint16
    want_lp, want_idx = topk_logprobs(_local(small["net"], x), 8, 2.0)
    np.testing.assert_array_equal(out.topk_indices, want_idx)
    np.testing.assert_allclose(out.topk_logprobs, want_lp.astype(np.float16).astype(np.float32), atol=1e-6)
    # 8 x (2 bytes of FP16 log-probability + 2 of UINT16 index) per token, plus framing
    assert response < 4 * SEQ * 8 * 4 + 600, response


def test_topk_indices_are_int32_above_65536_entries(tmp_path, serve_teacher):
    path, net, _ = _teacher(tmp_path, 70_000, with_tokenizer=False)
    ids, x = _tokens(70_000, rows=2)
    with _client(serve_teacher(path, name="lm-70k"), top_k=4) as client:
        out = client.infer(ids, x)
    assert out.topk_indices.dtype == np.int32 and out.topk_indices.shape == (2, SEQ, 4)
    np.testing.assert_array_equal(out.topk_indices, topk_logprobs(_local(net, x), 4, 1.0)[1])


def test_token_ids_outside_the_vocabulary_are_refused_with_the_position(small):
    ids, x = _tokens(300)
    x[2, 3] = 300
    with _client(small["endpoint"]) as client, pytest.raises(TeacherError) as err:
        client.infer(ids, x)
    assert "INVALID_ARGUMENT" in str(err.value) and "token id 300 at [2, 3]" in str(err.value)
    assert "0..299" in str(err.value)
    with _client(small["endpoint"]) as client:  # and the server still answers
        assert client.infer(*_tokens(300)).logits.shape == (4, SEQ, 300)


def test_a_different_vocabulary_is_refused_at_connect(small, tmp_path):
    with _client(small["endpoint"]) as client:
        check_vocabulary(client.metadata(), small["endpoint"].grpc, small["fingerprint"], "my-text")  # the same: fine
        with pytest.raises(ConfigError) as err:
            check_vocabulary(client.metadata(), small["endpoint"].grpc, "0" * 64, "my-text")
    said = str(err.value)
    assert small["fingerprint"] in said and "0" * 64 in said and "my-text" in said
    bare, _, _ = _teacher(tmp_path, 50, with_tokenizer=False)
    with open_teacher(TeacherClientConfig(url=f"inprocess:{bare}")) as teacher, \
            pytest.raises(ConfigError, match="no vocabulary fingerprint"):
        check_vocabulary(teacher.metadata(), bare, "0" * 64, "my-text")


def test_the_inprocess_teacher_answers_per_position_too(small):
    ids, x = _tokens(300)
    cfg = TeacherClientConfig(url=f"inprocess:{small['path']}", top_k=5)
    with open_teacher(cfg) as teacher:
        out = teacher.infer(ids, x)
        assert teacher.metadata()["vocab_fingerprint"] == small["fingerprint"]
    assert out.topk_indices.shape == (4, SEQ, 5) and out.topk_indices.dtype == np.uint16
    np.testing.assert_array_equal(out.topk_indices, topk_logprobs(_local(small["net"], x), 5, 1.0)[1])
