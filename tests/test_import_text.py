"""`import-data` with text: documents in, packed token rows and the tokenizer out; read back by BatchStream."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from crossdistill import storage
from crossdistill.cli import main
from crossdistill.data import text
from crossdistill.data.importing import ImportDataConfig, import_data
from crossdistill.data.shards import MANIFEST, DatasetReader, read_dataset
from crossdistill.data.stream import BatchStream
from crossdistill.errors import ConfigError, DataError

EOS = "<|endoftext|>"
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly zebras; naïve café "
         "owners sell crème brûlée at 12:30, 日本語 too").split()
SEQ_LEN = 16


def _corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` documents, each starting with its own marker (``doc007``), one to three lines of sentences."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, rng.integers(3, 15))).capitalize() + "."
                 for _ in range(rng.integers(1, 4))]
        docs.append(f"doc{i:03d} " + "\n".join(lines))
    return docs


def _import(tmp_path, **cfg):
    """A small import: seq_len 16 and, unless a tokenizer is given, a 300-token vocabulary."""
    small = {"seq_len": SEQ_LEN, **({} if "tokenizer" in cfg else {"vocab_size": 300})}
    return import_data(ImportDataConfig(**{"out": str(tmp_path / "ds"), **small, **cfg}))


def _stream_text(uri: str) -> str:
    """A text dataset's real tokens, row after row, decoded with its saved tokenizer (specials kept)."""
    ds = read_dataset(uri)
    tok = text.load_tokenizer(text.tokenizer_uri(uri, ds.meta))
    ids = np.concatenate([row[:n] for row, n in zip(ds["tokens"], ds["length"], strict=True)])
    return tok.decode(ids.tolist(), skip_special_tokens=False)


def _packed(docs: list[str]) -> str:
    return EOS.join(docs) + EOS


def _check_rows(uri: str, seq_len: int = SEQ_LEN) -> None:
    """ids 0..N-1, every row seq_len + 1 tokens, only the last one partial and padded with the pad id."""
    ds = read_dataset(uri)
    n = len(ds)
    np.testing.assert_array_equal(ds["id"], np.arange(n))
    assert ds["tokens"].shape == (n, seq_len + 1)
    assert (ds["length"][:-1] == seq_len + 1).all() and 1 <= ds["length"][-1] <= seq_len + 1
    assert (ds["tokens"][-1, ds["length"][-1]:] == ds.meta["pad_id"]).all()
    assert ds.meta["documents"] and ds.meta["tokens"] == int(ds["length"].sum())


# ------------------------------------------------------------------------------------------------ sources
def test_text_folder_packs_documents_into_rows_that_decode_back(tmp_path, monkeypatch, capsys):
    docs = _corpus(30)
    folder = tmp_path / "docs"
    (folder / "more").mkdir(parents=True)
    for i, doc in enumerate(docs):  # sorted path order = document order; a sub-folder too
        (folder / ("more" if i >= 20 else "") / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    (folder / "README.md").write_text("not a document")
    written: list[str] = []
    real_write_text = storage.write_text
    monkeypatch.setattr(storage, "write_text", lambda uri, body: (written.append(uri), real_write_text(uri, body)))
    summary = _import(tmp_path, source=str(folder))
    out = str(tmp_path / "ds")
    assert _stream_text(out) == _packed(docs)
    _check_rows(out)
    reader = DatasetReader(out)
    assert reader.spec == {"id": {"dtype": "int64", "shape": []}, "tokens": {"dtype": "uint16", "shape": [17]},
                           "length": {"dtype": "int32", "shape": []}}
    meta = reader.meta
    assert meta["kind"] == "text" and meta["source_format"] == "text" and meta["seq_len"] == 16
    assert meta["vocab_size"] == 300 and (meta["eos_id"], meta["pad_id"]) == (0, 1)
    assert meta["tokenizer"] == "tokenizer.json" and (tmp_path / "ds" / "tokenizer.json").exists()
    tok = text.load_tokenizer(str(tmp_path / "ds" / "tokenizer.json"))
    canonical = json.dumps(tok.get_vocab(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert meta["vocab_fingerprint"] == hashlib.sha256(canonical.encode()).hexdigest() == text.vocab_fingerprint(tok)
    assert meta["documents"] == 30 and summary["documents"] == 30 and summary["rows"] == len(reader)
    assert written.index(str(tmp_path / "ds" / "tokenizer.json")) < written.index(str(tmp_path / "ds" / MANIFEST))
    printed = capsys.readouterr().out
    for words in ("30 documents", f"{summary['tokens']} tokens", f"{len(reader)} rows", "vocabulary: 300 tokens",
                  "bytes per token"):
        assert words in printed


def test_json_lines_field_parquet_and_csv_columns(tmp_path):
    docs = _corpus(40, seed=1)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"n": i, "body": d}) + "\n" for i, d in enumerate(docs)))
    pq.write_table(pa.table({"text": docs, "n": range(40)}), tmp_path / "d.parquet", row_group_size=7)
    csv_docs = ["12345", 'a "quoted", multi-line\ncell', *docs[:5]]  # digits stay text; a cell spans lines
    (tmp_path / "d.csv").write_text("k,text\n" + "".join(f'{i},"{d.replace(chr(34), chr(34) * 2)}"\n'
                                                          for i, d in enumerate(csv_docs)))
    for name, column, expected in (("d.jsonl", "body", docs), ("d.parquet", "text", docs), ("d.csv", "text", csv_docs)):
        out = tmp_path / name.replace(".", "_")
        summary = _import(tmp_path, source=str(tmp_path / name), text=column, out=str(out))
        assert summary["documents"] == len(expected) and summary["format"] == name.split(".")[1]
        assert summary["columns"] == ["id", "tokens", "length"]
        assert _stream_text(str(out)) == _packed(expected), name
        _check_rows(str(out))


def test_a_given_tokenizer_is_used_as_is(tmp_path):
    _import(tmp_path, source=_jsonl(tmp_path, _corpus(30)), text="body", out=str(tmp_path / "first"))
    given = tmp_path / "first" / "tokenizer.json"
    other = _corpus(20, seed=5)
    summary = _import(tmp_path, source=_jsonl(tmp_path, other, "other.jsonl"), text="body", tokenizer=str(given),
                      out=str(tmp_path / "second"))
    first, second = read_dataset(str(tmp_path / "first")), read_dataset(str(tmp_path / "second"))
    assert second.meta["vocab_fingerprint"] == first.meta["vocab_fingerprint"] == summary["vocab_fingerprint"]
    assert (tmp_path / "second" / "tokenizer.json").read_bytes() == given.read_bytes()
    assert not summary["tokenizer_trained"] and _stream_text(str(tmp_path / "second")) == _packed(other)
    with pytest.raises(ConfigError, match="vocab_size is the size of a trained tokenizer"):
        _import(tmp_path, source=str(tmp_path / "other.jsonl"), text="body", tokenizer=str(given), vocab_size=300,
                out=str(tmp_path / "third"))


def test_a_vocabulary_beyond_65536_entries_is_stored_as_int32(tmp_path):
    vocab = {EOS: 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOS])
    tok.save(str(tmp_path / "words.json"))
    docs = ["w1 w69999 w65536", "w70000 w3", "w0"]  # w70000 is unknown
    summary = _import(tmp_path, source=_jsonl(tmp_path, docs), text="body", tokenizer=str(tmp_path / "words.json"),
                      seq_len=4)
    ds = read_dataset(str(tmp_path / "ds"))
    assert ds["tokens"].dtype == np.int32 and summary["dtype"] == "int32" and ds.meta["vocab_size"] == 70_002
    assert ds.meta["pad_id"] == ds.meta["eos_id"] == 0  # no padding token: the end-of-text one pads
    real = np.concatenate([r[:n] for r, n in zip(ds["tokens"], ds["length"], strict=True)])
    np.testing.assert_array_equal(real, [3, 70_001, 65_538, 0, 1, 5, 0, 2, 0])
    _check_rows(str(tmp_path / "ds"), seq_len=4)


def test_the_end_of_text_token_of_a_given_tokenizer(tmp_path):
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "<s>": 3, "</doc>": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<s>", "</doc>"])
    tok.save(str(tmp_path / "t.json"))
    src = _jsonl(tmp_path, ["a b", "b"])
    _refused(tmp_path, DataError, r"t\.json: none of the end-of-text tokens .* set eos_token= to one of its special "
             r"tokens \['<s>', '</doc>'\]", source=src, text="body", tokenizer=str(tmp_path / "t.json"))
    _refused(tmp_path, DataError, r"no end-of-text token '<eot>' in its vocabulary", source=src, text="body",
             tokenizer=str(tmp_path / "t.json"), eos_token="<eot>")
    _import(tmp_path, source=src, text="body", tokenizer=str(tmp_path / "t.json"), eos_token="</doc>", seq_len=2)
    ds = read_dataset(str(tmp_path / "ds"))
    assert (ds.meta["eos_token"], ds.meta["eos_id"], ds.meta["pad_id"]) == ("</doc>", 4, 4)
    assert ds["tokens"].tolist() == [[1, 2, 4], [2, 4, 4]] and ds["length"].tolist() == [3, 2]


# ---------------------------------------------------------------------------------------------- holdout
def _documents(uri: str) -> list[str]:
    parts = _stream_text(uri).split(EOS)
    assert parts[-1] == ""
    return parts[:-1]


def test_holdout_splits_by_document_and_is_seed_stable(tmp_path):
    docs = _corpus(60, seed=2)
    src = _jsonl(tmp_path, docs)
    cfg = {"source": src, "text": "body", "holdout": {"test": 0.2, "val": 0.1}, "seed": 3}
    summary = _import(tmp_path, out=str(tmp_path / "a"), **cfg)
    parts = {name: _documents(str(tmp_path / "a" / name)) for name in ("train", "val", "test")}
    assert [len(parts[n]) for n in ("train", "val", "test")] == [42, 6, 12]
    assert sorted(sum(parts.values(), [])) == sorted(docs)  # every document whole, in exactly one split
    for name, part in parts.items():
        meta = read_dataset(str(tmp_path / "a" / name)).meta
        assert meta["split"] == name and meta["tokenizer"] == "../tokenizer.json" and meta["documents"] == len(part)
        assert summary["datasets"][name]["documents"] == len(part)
        _check_rows(str(tmp_path / "a" / name))
    assert (tmp_path / "a" / "tokenizer.json").exists() and not (tmp_path / "a" / "train" / "tokenizer.json").exists()
    _import(tmp_path, out=str(tmp_path / "b"), **cfg)
    assert _documents(str(tmp_path / "b" / "test")) == parts["test"]
    _import(tmp_path, out=str(tmp_path / "c"), **{**cfg, "seed": 4})
    assert _documents(str(tmp_path / "c" / "test")) != parts["test"]


# ------------------------------------------------------------------------------------------------ reading
def test_batch_stream_gives_int64_tokens_and_lengths_and_resumes(tmp_path):
    _import(tmp_path, source=_jsonl(tmp_path, _corpus(80, seed=4)), text="body", rows_per_shard=40)
    uri = str(tmp_path / "ds")
    ds = read_dataset(uri)
    assert len(DatasetReader(uri).fragments) > 3

    def stream() -> BatchStream:
        return BatchStream(uri, batch_size=16, seed=7, shuffle_buffer=32, num_classes=1)

    full = list(stream().batches(0, 0, 2))
    for batch in full:
        assert batch.x.dtype == np.int64 and batch.x.shape == (len(batch), 17)
        np.testing.assert_array_equal(batch.x, ds["tokens"][batch.ids].astype(np.int64))
        np.testing.assert_array_equal(batch.soft["length"], ds["length"][batch.ids])
        assert batch.soft["length"].dtype == np.int64 and set(batch.soft) == {"length"}
    first_epoch = np.concatenate([b.ids for b in full if b.epoch == 0])
    assert sorted(first_epoch) == list(range(len(ds)))
    assert stream().input_shape() == (17,)
    per_epoch = stream().batches_per_epoch
    resumed = list(stream().batches(0, 3, 2))
    assert len(resumed) == len(full) - 3 and resumed[0].index == 3 and resumed[per_epoch - 3].epoch == 1
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.x, b.x)


def test_packer_cuts_the_stream_back_to_back():
    packer = text.Packer(seq_len=3, eos_id=0, pad_id=9, dtype=np.uint16)
    np.testing.assert_array_equal(packer.add([[5, 6], [7]]), [[5, 6, 0, 7]])
    assert packer.add([[]]).shape == (0, 4)  # an end-of-text token alone: still short of a row
    np.testing.assert_array_equal(packer.add([[8, 8, 8, 8, 8]]), [[0, 0, 8, 8], [8, 8, 8, 0]])
    rows, lengths = packer.finish()
    assert rows.shape == (0, 4) and lengths.shape == (0,)
    packer.add([[1, 2]])
    rows, lengths = packer.finish()
    np.testing.assert_array_equal(rows, [[1, 2, 0, 9]])
    assert lengths.tolist() == [3] and rows.dtype == np.uint16


# ------------------------------------------------------------------------------------------------- errors
def _jsonl(tmp_path, docs, name="d.jsonl") -> str:
    (tmp_path / name).write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    return str(tmp_path / name)


def _refused(tmp_path, error, pattern: str, **cfg) -> None:
    with pytest.raises(error, match=pattern):
        _import(tmp_path, **{"out": str(tmp_path / "bad"), **cfg})
    bad = tmp_path / "bad"
    assert not (bad.exists() and list(bad.rglob(MANIFEST)))


def test_missing_text_column_lists_the_columns(tmp_path):
    pq.write_table(pa.table({"text": ["a b"], "n": [1]}), tmp_path / "d.parquet")
    _refused(tmp_path, DataError, r"d\.parquet: no text column 'body' \(columns: \['text', 'n'\]\)",
             source=str(tmp_path / "d.parquet"), text="body")
    (tmp_path / "d.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n{"text": "c", "n": 2}\n')
    _refused(tmp_path, DataError, r"d\.jsonl: row 2 \(line 3\): no text field 'body' \(fields: \['n', 'text'\]\)",
             source=str(tmp_path / "d.jsonl"), text="body")


def test_a_value_that_is_not_a_string_names_its_row(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "a"}\n\n{"body": "b"}\n{"body": 5}\n')
    _refused(tmp_path, DataError, r"d\.jsonl: row 2 \(line 4\), column 'body': 5 \(int\) is not a string",
             source=str(tmp_path / "d.jsonl"), text="body")
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "n.parquet")
    _refused(tmp_path, DataError, r"n\.parquet: row 1, column 'text': no text \(null\)",
             source=str(tmp_path / "n.parquet"), text="text")
    pq.write_table(pa.table({"text": [7, 8]}), tmp_path / "i.parquet")
    _refused(tmp_path, DataError, r"i\.parquet: row 0, column 'text': 7 \(int64\) is not text",
             source=str(tmp_path / "i.parquet"), text="text")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    _refused(tmp_path, DataError, r"bad\.txt: not UTF-8 text \(byte 3", source=str(tmp_path / "bad.txt"))


def test_an_empty_corpus(tmp_path):
    (tmp_path / "none.jsonl").write_text("\n")
    _refused(tmp_path, DataError, r"none\.jsonl: an empty corpus: no documents",
             source=str(tmp_path / "none.jsonl"), text="body")
    _refused(tmp_path, DataError, r"an empty corpus: the 3 training documents hold no text",
             source=_jsonl(tmp_path, ["", "", ""]), text="body")
    (tmp_path / "docs").mkdir()
    _refused(tmp_path, DataError, r"docs: matched no files", source=str(tmp_path / "docs"), format="text")


def test_a_tokenizer_file_that_does_not_load(tmp_path):
    src = _jsonl(tmp_path, _corpus(5))
    (tmp_path / "tok.json").write_text('{"model": "nothing like a tokenizer"}')
    _refused(tmp_path, DataError, r"tok\.json is not a Hugging Face tokenizer\.json that loads",
             source=src, text="body", tokenizer=str(tmp_path / "tok.json"))
    _refused(tmp_path, DataError, r"tokenizer .*missing\.json: no such file", source=src, text="body",
             tokenizer=str(tmp_path / "missing.json"))


def test_a_failed_text_import_leaves_no_manifest_behind(tmp_path):
    docs = _corpus(300, seed=6)
    _import(tmp_path, source=_jsonl(tmp_path, docs), text="body", out=str(tmp_path / "bad"), rows_per_shard=50)
    assert (tmp_path / "bad" / MANIFEST).exists()
    (tmp_path / "tok.json").write_bytes((tmp_path / "bad" / "tokenizer.json").read_bytes())
    lines = [json.dumps({"body": d}) for d in docs] + ['{"body": ["not", "text"]}']
    (tmp_path / "late.jsonl").write_text("\n".join(lines) + "\n")  # fails in the writing pass, after shards
    with pytest.raises(DataError, match=r"row 300 \(line 301\), column 'body'"):
        import_data(ImportDataConfig(source=str(tmp_path / "late.jsonl"), text="body", seq_len=16,
                                     tokenizer=str(tmp_path / "tok.json"), rows_per_shard=50,
                                     out=str(tmp_path / "bad")))
    assert list((tmp_path / "bad").glob("shard-*.parquet")) and not (tmp_path / "bad" / MANIFEST).exists()


def test_text_options_do_not_mix_with_feature_and_image_options(tmp_path):
    src = _jsonl(tmp_path, _corpus(5))
    _refused(tmp_path, ConfigError, r"text='body' imports documents as token rows; label, size belong to feature",
             source=src, text="body", label="y", size=8)
    (tmp_path / "a.txt").write_text("hello")
    _refused(tmp_path, ConfigError, r"format text imports documents .*; features belong",
             source=str(tmp_path / "a.txt"), features=["x"])
    _refused(tmp_path, ConfigError, r"format text reads each file as one document", source=str(tmp_path / "a.txt"),
             text="body")
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    _refused(tmp_path, ConfigError, r"format npy has none", source=str(tmp_path / "x.npy"), text="body")
    (tmp_path / "d.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"for text imports only: seq_len, tokenizer; set text=<column>"):
        import_data(ImportDataConfig(source=str(tmp_path / "d.csv"), tokenizer="t.json", seq_len=8,
                                     out=str(tmp_path / "bad")))


def test_cli_imports_text_and_names_a_bad_seq_len(tmp_path, capsys):
    src = _jsonl(tmp_path, _corpus(20))
    out = tmp_path / "ds"
    assert main(["import-data", f"source={src}", "text=body", "vocab_size=300", "seq_len=8", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "20 documents" in printed and "rows of seq_len 8 + 1 tokens" in printed and "bytes per token" in printed
    assert read_dataset(str(out))["tokens"].shape[1] == 9
    assert main(["import-data", f"source={src}", "text=body", "seq_len=1", f"out={tmp_path / 'bad'}"]) == 1
    assert "seq_len 1: expected at least 2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["import-data", "--show-schema"]) == 0
    shown = capsys.readouterr().out
    assert "seq_len: int = 128" in shown and "tokenizer:" in shown and "vocab_size: int = 4096" in shown
