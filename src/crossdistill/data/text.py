"""Text for language-model distillation: tokenizers, the vocabulary fingerprint and packing documents into rows.

``import-data`` with ``text=<column>`` (or ``format: text``) streams documents (Python strings, from the
readers of :mod:`crossdistill.data.formats`) through :func:`write_text`: each document is tokenized with a
Hugging Face ``tokenizers`` tokenizer (a given ``tokenizer.json``, or a byte-level BPE one trained here on the
training documents by :func:`train_tokenizer`), followed by the end-of-text token, and the token stream of
each output is cut back to back into rows of ``seq_len + 1`` tokens (:class:`Packer`): row ``r`` holds
stream tokens ``r * (seq_len + 1) .. (r + 1) * (seq_len + 1) - 1``, so each of its ``seq_len`` positions has
its next-token target in the row (the step from one row's last token to the next row's first is not a
training pair). The last, partial row is filled with the pad id; its ``length`` column says how many of its
tokens are real (every other row: ``seq_len + 1``). An empty document adds nothing (no end-of-text token).

Columns: ``id`` (int64, the row number 0..N-1), ``tokens`` (``[seq_len + 1]`` per row, one fixed-size cell
like every multi-dimensional column; uint16 when every token id fits, i.e. ``vocab_size <= 65536``, else
int32), ``length`` (int32). Meta: ``kind: "text"``, ``vocab_size`` (the largest token id + 1: the rows of a
model's embedding), ``seq_len``, ``eos_id``, ``pad_id``, ``eos_token``, ``pad_token``, ``tokenizer`` (the
saved ``tokenizer.json``, relative to the dataset folder), ``vocab_fingerprint`` (:func:`vocab_fingerprint`),
``documents``, ``tokens`` and ``preprocess: {"kind": "text"}`` (readers keep the tokens integers).

Memory: one chunk of documents (at most ~16 MiB of text, or one whole file with format text) and a part of
a row per output; the tokenizer's trainer keeps its word counts, never the corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdistill import storage
from crossdistill.data.formats import Reader
from crossdistill.data.shards import DatasetWriter, index_dtype
from crossdistill.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"  # the special tokens of a trained tokenizer (ids 0 and 1)
PAD_TOKEN = "<|pad|>"
# What a given tokenizer's end-of-text / padding token is called, tried in this order when not named.
EOS_NAMES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
PAD_NAMES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")
ROW_GROUP_BYTES = 4 << 20  # a row group of token rows holds about this much


# ------------------------------------------------------------------------------------------- tokenizers
def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("text import needs the 'tokenizers' package: pip install 'crossdistill[data]'") from None
    return tokenizers


def train_tokenizer(texts: Iterable[str | Sequence[str]], vocab_size: int, *, eos_token: str = EOS_TOKEN,
                    pad_token: str = PAD_TOKEN, length: int | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (strings, or lists of strings: one batch each),
    streamed: the trainer counts words as they come and never holds the corpus.

    Every byte is in the alphabet (any text encodes, nothing is unknown) and decoding gives the text back
    exactly (no prefix space is added). ``eos_token`` and ``pad_token`` are special tokens with ids 0 and 1.
    """
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos_token, pad_token],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer


def _parse(text: str, where: str) -> Tokenizer:
    tk = _tokenizers()
    try:
        tokenizer = tk.Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a plain Exception for any malformed file
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"{where} is not a Hugging Face tokenizer.json that loads: {reason}") from None
    tokenizer.no_padding()  # rows are packed here: a file's own padding or truncation would cut documents
    tokenizer.no_truncation()
    return tokenizer


def read_tokenizer(uri: str) -> tuple[Tokenizer, str]:
    """The tokenizer saved at ``uri`` (any fsspec URI) and the file's text (to save it again unchanged)."""
    try:
        text = storage.read_text(uri)
    except UnicodeDecodeError:
        raise DataError(f"{uri} is not a Hugging Face tokenizer.json that loads: not UTF-8 text") from None
    except DataError:
        raise DataError(f"tokenizer {uri}: no such file or object") from None
    return _parse(text, uri), text


def load_tokenizer(uri: str) -> Tokenizer:
    """The tokenizer saved at ``uri`` (any fsspec URI), padding and truncation off."""
    return read_tokenizer(uri)[0]


def tokenizer_uri(dataset_uri: str, meta: Mapping[str, Any]) -> str:
    """Where a text dataset's tokenizer is: its meta's relative ``tokenizer`` path resolved against the
    dataset's URI (``../tokenizer.json`` for the splits of a holdout import)."""
    if meta.get("kind") != "text" or not meta.get("tokenizer"):
        raise DataError(f"{dataset_uri} is not a text dataset (its meta has no tokenizer)")
    proto, sep, path = dataset_uri.rpartition("://")
    joined = posixpath.normpath(posixpath.join(path.rstrip("/"), meta["tokenizer"]))
    return f"{proto}{sep}{joined}" if sep else joined


def vocab_fingerprint(vocab: Tokenizer | Mapping[str, int]) -> str:
    """SHA-256 (hex) of a vocabulary in canonical form, to tell whether two models share their token ids.

    The form: the token -> id mapping (added tokens included) as UTF-8 JSON with keys sorted and no
    spaces: ``json.dumps(vocab, sort_keys=True, ensure_ascii=False, separators=(",", ":"))``. Only the
    mapping counts (not merges, normalizer or pre-tokenizer): the same string means id ``i`` is the same
    token on both sides.
    """
    mapping = vocab if isinstance(vocab, Mapping) else vocab.get_vocab(with_added_tokens=True)
    canonical = json.dumps(dict(mapping), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _specials(tokenizer: Tokenizer) -> list[str]:
    decoder = getattr(tokenizer, "get_added_tokens_decoder", dict)()
    return [t.content for _, t in sorted(decoder.items()) if getattr(t, "special", True)]


def special_ids(tokenizer: Tokenizer, eos_token: str | None, pad_token: str | None,
                where: str) -> tuple[str, int, str, int]:
    """``(eos_token, eos_id, pad_token, pad_id)``: the named tokens, else the first of ``EOS_NAMES`` /
    ``PAD_NAMES`` the tokenizer knows; no padding token means the end-of-text one pads (``length`` tells
    padding from text)."""
    def find(name: str | None, candidates: tuple[str, ...], role: str) -> tuple[str, int] | None:
        for token in [name] if name else candidates:
            index = tokenizer.token_to_id(token)
            if index is not None:
                return token, int(index)
        if name:
            raise DataError(f"{where}: no {role} token {name!r} in its vocabulary (its special tokens: "
                            f"{_specials(tokenizer)})")
        return None

    eos = find(eos_token, EOS_NAMES, "end-of-text")
    if eos is None:
        raise DataError(f"{where}: none of the end-of-text tokens {list(EOS_NAMES)} is in its vocabulary; set "
                        f"eos_token= to one of its special tokens {_specials(tokenizer)}")
    pad = find(pad_token, PAD_NAMES, "padding") or eos
    return eos[0], eos[1], pad[0], pad[1]


def _encoder(tokenizer: Tokenizer) -> Any:
    """``texts -> [ids per text]`` without the tokenizer's post-processing (its BOS/EOS template)."""
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch  # _fast: no offsets

    def run(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in encode(texts, add_special_tokens=False)] if texts else []

    return run


# ---------------------------------------------------------------------------------------------- packing
class Packer:
    """Documents' token ids in, rows of ``seq_len + 1`` tokens out: every document followed by ``eos_id``,
    the stream cut back to back; :meth:`finish` pads the partial row left at the end with ``pad_id``."""

    def __init__(self, seq_len: int, eos_id: int, pad_id: int, dtype: np.dtype | type = np.int32) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len {seq_len}: expected >= 1")
        self.width, self.eos_id, self.pad_id = seq_len + 1, eos_id, pad_id
        self.dtype = np.dtype(dtype)
        self._carry = np.zeros(0, self.dtype)

    def add(self, documents: Sequence[Sequence[int]]) -> np.ndarray:
        """The rows completed by these documents, ``[n, seq_len + 1]`` (n may be 0)."""
        total = sum(len(d) for d in documents) + len(documents)
        stream = np.empty(len(self._carry) + total, self.dtype)
        stream[:len(self._carry)] = self._carry
        stream[len(self._carry):] = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(d, (self.eos_id,)) for d in documents),
            dtype=self.dtype, count=total)
        full = len(stream) // self.width * self.width
        self._carry = stream[full:].copy()
        return stream[:full].reshape(-1, self.width)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The last, partial row padded with ``pad_id`` (none when the stream ended on a row boundary) and
        its length: ``(rows [0 or 1, seq_len + 1], lengths [0 or 1])``."""
        n = len(self._carry)
        if not n:
            return np.zeros((0, self.width), self.dtype), np.zeros(0, np.int32)
        row = np.full((1, self.width), self.pad_id, self.dtype)
        row[0, :n] = self._carry
        self._carry = self._carry[:0]
        return row, np.array([n], np.int32)


# ------------------------------------------------------------------------------------------------ import
@dataclass
class Output:
    """One dataset a text import writes: the documents whose split code is ``code`` go to ``uri``."""

    name: str
    uri: str
    code: int
    meta: dict[str, Any]
    documents: int = 0  # non-empty documents packed here
    tokens: int = 0  # real tokens (end-of-text tokens included)
    rows: int = 0
    text_bytes: int = 0  # UTF-8 bytes of the documents
    stored_bytes: int = 0  # bytes of the shard files


@dataclass
class TextResult:
    """What :func:`write_text` did: the tokenizer's facts and per-output counts."""

    outputs: list[Output]
    tokenizer_uri: str
    trained: bool
    vocab_size: int
    eos_id: int
    pad_id: int
    dtype: str
    fingerprint: str
    empty_documents: int = 0


def _texts(reader: Reader, codes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(documents, split codes)`` per chunk of the source, in source order."""
    g = 0
    for chunk in reader.chunks(with_inputs=True):
        assert chunk.inputs is not None
        if g + chunk.num_rows > len(codes):
            raise DataError(f"{chunk.where}: more documents than when they were counted ({len(codes)}); did the "
                            "source change during the import?")
        yield chunk.inputs, codes[g:g + chunk.num_rows]
        g += chunk.num_rows
    if g != len(codes):
        raise DataError(f"{g} documents read, {len(codes)} when they were counted; did the source change during "
                        "the import?")


def _train(reader: Reader, codes: np.ndarray, train_code: int, vocab_size: int, eos_token: str,
           pad_token: str, source: str) -> Tokenizer:
    seen = {"chars": 0}

    def training_texts() -> Iterator[list[str]]:
        for texts, part in _texts(reader, codes):
            batch = [t for t, c in zip(texts, part, strict=True) if c == train_code and t]
            seen["chars"] += sum(map(len, batch))
            if batch:
                yield batch

    tokenizer = train_tokenizer(training_texts(), vocab_size, eos_token=eos_token, pad_token=pad_token,
                                length=int((codes == train_code).sum()))
    if not seen["chars"]:
        held = f" ({int((codes != train_code).sum())} of {len(codes)} held out)" if (codes != train_code).any() else ""
        raise DataError(f"{source}: an empty corpus: the {int((codes == train_code).sum())} training documents{held} "
                        "hold no text to train the tokenizer on")
    return tokenizer


def write_text(reader: Reader, codes: np.ndarray, outputs: list[Output], *, home: str, source: str,
               seq_len: int, rows_per_shard: int, tokenizer: str | None = None, vocab_size: int = 4096,
               eos_token: str | None = None, pad_token: str | None = None, train_code: int = 0) -> TextResult:
    """Tokenize and pack every document of ``reader`` into the output its split code (``codes``, one per
    document in source order) names; save the tokenizer as ``<home>/tokenizer.json``.

    The tokenizer is ``tokenizer`` (a tokenizer.json URI) or, unset, trained first on the documents coded
    ``train_code``, streamed from the reader (a pass of its own). Every output's shards and the tokenizer
    file are written before any output's manifest; on an error no output gets one.
    """
    if tokenizer is not None:
        tok, saved = read_tokenizer(tokenizer)
        where = tokenizer
    else:
        if (eos_token or EOS_TOKEN) == (pad_token or PAD_TOKEN):
            raise ConfigError(f"eos_token and pad_token are both {eos_token or EOS_TOKEN!r}: a trained tokenizer "
                              "needs two different special tokens")
        tok = _train(reader, codes, train_code, vocab_size, eos_token or EOS_TOKEN, pad_token or PAD_TOKEN, source)
        saved, where = tok.to_str(), "the trained tokenizer"
    eos, eos_id, pad, pad_id = special_ids(tok, eos_token, pad_token, where)
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    dtype = index_dtype(size)
    result = TextResult(outputs, storage.join(home, TOKENIZER_FILE), tokenizer is None, size, eos_id, pad_id,
                        dtype.name, vocab_fingerprint(vocab))
    width = seq_len + 1
    group_rows = int(min(4096, max(64, ROW_GROUP_BYTES // (width * dtype.itemsize))))
    encode = _encoder(tok)
    with contextlib.ExitStack() as stack:
        writers: dict[str, DatasetWriter] = {}
        packers: dict[str, Packer] = {}
        for out in outputs:
            rel = posixpath.relpath(result.tokenizer_uri.split("://")[-1], out.uri.split("://")[-1].rstrip("/"))
            out.meta.update(kind="text", vocab_size=size, seq_len=seq_len, eos_id=eos_id, pad_id=pad_id,
                            eos_token=eos, pad_token=pad, tokenizer=rel, vocab_fingerprint=result.fingerprint,
                            preprocess={"kind": "text"})
            writers[out.name] = stack.enter_context(DatasetWriter(out.uri, out.meta, rows_per_shard=rows_per_shard,
                                                                  row_group_rows=group_rows))
            packers[out.name] = Packer(seq_len, eos_id, pad_id, dtype)

        def emit(out: Output, rows: np.ndarray, lengths: np.ndarray) -> None:
            if len(rows) or not out.rows:  # an output without a row still gets its columns
                writers[out.name].write({"id": np.arange(out.rows, out.rows + len(rows), dtype=np.int64),
                                         "tokens": rows, "length": lengths})
            out.rows += len(rows)
            out.tokens += int(lengths.sum())

        for texts, part in _texts(reader, codes):
            keep = np.flatnonzero([bool(t) for t in texts])
            result.empty_documents += len(texts) - len(keep)
            ids = encode([texts[i] for i in keep])
            for out in outputs:
                mine = [j for j, i in enumerate(keep) if part[i] == out.code]
                if not mine:
                    continue
                rows = packers[out.name].add([ids[j] for j in mine])
                emit(out, rows, np.full(len(rows), width, np.int32))
                out.documents += len(mine)
                out.text_bytes += sum(len(texts[keep[j]].encode("utf-8")) for j in mine)
        for out in outputs:
            emit(out, *packers[out.name].finish())
        if not any(out.documents for out in outputs):
            raise DataError(f"{source}: an empty corpus: its {len(codes)} documents hold no text")
        for out in outputs:
            writers[out.name].meta.update(documents=out.documents, tokens=out.tokens)
            writers[out.name].finish_shard()  # every shard of every output is in place before any manifest
        storage.write_text(result.tokenizer_uri, saved)  # the tokenizer too: manifests stay last
        for out in outputs:
            fs, _ = storage.filesystem(out.uri)
            out.stored_bytes = sum(int(fs.size(storage.join(out.uri, s["name"]))) for s in writers[out.name].shards)
    return result


def model_inputs(tokens: np.ndarray) -> np.ndarray:
    """What a language model reads of packed rows ``[B, L+1]``: tokens 0..L-1 (the last is only ever a target)."""
    return tokens[:, :-1]


def next_token_pairs(tokens: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of packed rows ``[B, L+1]`` as a language model sees it: inputs ``[B, L]`` (tokens 0..L-1),
    next-token targets ``[B, L]`` (tokens 1..L) and the mask of positions whose target is a real token
    (position t counts when t + 1 < the row's ``length``): padding is never a target."""
    tokens = np.asarray(tokens, dtype=np.int64)
    positions = np.arange(tokens.shape[1] - 1)
    return model_inputs(tokens), tokens[:, 1:], positions[None, :] < (np.asarray(length).reshape(-1, 1) - 1)


def next_token_scores(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scoring a language model (numpy, no framework): the negative log-likelihood of each position's target
    under ``logits`` ``[B, T, V]`` (float64 ``[B, T]``) and the argmax per position; the caller masks padding."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], logits.argmax(axis=-1)
