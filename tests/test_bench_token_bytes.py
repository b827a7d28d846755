"""benchmarks/token_bytes.py at a tiny size: a token teacher served, its answers measured on the wire and on disk."""

from __future__ import annotations

import json
import sys


def test_token_bytes_benchmark_measures_dense_and_topk(tmp_path, monkeypatch):
    from benchmarks import token_bytes

    results = tmp_path / "bytes"
    monkeypatch.setattr(sys, "argv", ["token_bytes", "--vocab", "300,70000", "--k", "4", "--rows", "1", "--seq", "8",
                                      "--results", str(results)])
    token_bytes.main()
    runs = {(r["vocab"], r["setting"]): r for r in json.loads(results.with_suffix(".json").read_text())["runs"]}
    for vocab, index_bytes in ((300, 2), (70000, 4)):  # UINT16 indices below 65,536 entries, INT32 above
        dense = runs[(vocab, "dense FP32")]["wire_bytes_per_token"]
        assert vocab * 4 <= dense < vocab * 4 + 200  # 4 bytes per entry, plus framing
        assert runs[(vocab, "dense FP16")]["wire_bytes_per_token"] < 0.6 * dense
        top4 = runs[(vocab, "top-4 FP16")]["wire_bytes_per_token"]
        assert 4 * (2 + index_bytes) <= top4 < 4 * (2 + index_bytes) + 200
