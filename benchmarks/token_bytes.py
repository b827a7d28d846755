"""Bytes per token of a language-model teacher's answers, on the wire and on disk: dense vs top-k.

A token teacher (a TorchScript causal model: embedding, running sum, linear head over the vocabulary)
is served by ``crossdistill teacher-serve`` on loopback at each vocabulary size of ``--vocab``; one
request of ``--rows`` x ``--seq`` token ids is answered dense (FP32, FP16) and top-k (``--k``, FP16
log-probabilities with UINT16 / INT32 indices, and FP32 log-probabilities). Wire: the serialized gRPC
response (protobuf bytes, ``TeacherClient.wire_bytes``) per token. Disk: the Parquet shard the offline
mode writes for those answers (``output_columns`` -> ``DatasetWriter``) per token. Target: top-8 at
32,000 entries <= 1/1000 of dense FP32 on the wire. Prints a table, writes ``<results>.json`` / ``.md``;
asserts nothing.

    .venv/bin/python -m benchmarks.token_bytes [--vocab 2048,32000] [--k 1,8,32,128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.report import write_results


def _teacher(path: Path, vocab: int, seq: int) -> None:
    import torch

    from crossdistill.teacher.adapters import TORCHSCRIPT_META

    class LM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, 16)
            self.out = torch.nn.Linear(16, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.cumsum(self.emb(x), dim=1))

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(LM().eval()), str(path), _extra_files={TORCHSCRIPT_META: json.dumps(
        {"input_shape": [seq], "num_classes": vocab, "input_dtype": "int64"})})


def _disk_bytes(out: Any, work: Path, name: str) -> int:
    from crossdistill.data.shards import DatasetWriter
    from crossdistill.teacher.labeling import output_columns

    cols = {"id": out.ids, **output_columns(out)}
    with DatasetWriter(str(work / name), {"kind": "soft-labels"}, rows_per_shard=10**9) as writer:
        writer.write(cols)
    return sum(f.stat().st_size for f in (work / name).glob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default="2048,32000", help="vocabulary sizes, comma-separated (2,048: make run-lm's)")
    parser.add_argument("--k", default="1,8,32,128", help="top-k sizes, comma-separated")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--results", default="benchmarks/results/token_bytes")
    args = parser.parse_args()
    import numpy as np

    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
    from crossdistill.teacher.client import TeacherClient, TeacherClientConfig

    tokens = args.rows * args.seq
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="token-bytes-") as tmp:
        work = Path(tmp)
        for vocab in [int(v) for v in args.vocab.split(",")]:
            model = work / f"lm-{vocab}.pt"
            _teacher(model, vocab, args.seq)
            serve = TeacherServeConfig(model_uri=str(model), name=f"token-bytes-{vocab}", workdir=str(work / "srv"),
                                       workers_threads=1, max_message_bytes=1 << 30)
            endpoint = deploy_teacher(serve)
            x = np.random.default_rng(vocab).integers(0, vocab, size=(args.rows, args.seq))
            ids = np.arange(args.rows, dtype=np.int64)
            settings = [("dense FP32", {}), ("dense FP16", {"fp16": True})]
            settings += [(f"top-{k} FP16", {"top_k": k, "fp16": True}) for k in map(int, args.k.split(","))]
            settings += [(f"top-{k} FP32", {"top_k": k}) for k in map(int, args.k.split(","))]
            try:
                for name, options in settings:
                    cfg = TeacherClientConfig(url=endpoint.grpc, model_name=endpoint.model_name,
                                              max_message_bytes=1 << 30, **options)
                    with TeacherClient(cfg) as client:
                        _, wire = client.wire_bytes(ids, x)
                        out = client.infer(ids, x)
                    disk = _disk_bytes(out, work, f"{vocab}-{name.replace(' ', '-')}")
                    rows.append({"vocab": vocab, "setting": name, "wire_bytes_per_token": wire / tokens,
                                 "disk_bytes_per_token": disk / tokens})
                    print(f"V={vocab:,} {name}: wire {wire / tokens:,.1f} B/token, disk {disk / tokens:,.1f} B/token",
                          flush=True)
            finally:
                teardown_teacher(serve)
    lines = [f"{tokens:,} tokens per request ({args.rows} x {args.seq}); bytes per token", "",
             "| vocabulary | answer | wire B/token | vs dense FP32 (wire) | disk B/token | vs dense FP32 (disk) |",
             "|---:|---|---:|---:|---:|---:|"]
    targets = []
    for r in rows:
        dense = next(d for d in rows if d["vocab"] == r["vocab"] and d["setting"] == "dense FP32")
        r["wire_vs_dense"] = r["wire_bytes_per_token"] / dense["wire_bytes_per_token"]
        r["disk_vs_dense"] = r["disk_bytes_per_token"] / dense["disk_bytes_per_token"]
        lines.append(f"| {r['vocab']:,} | {r['setting']} | {r['wire_bytes_per_token']:,.1f} | 1/{1 / r['wire_vs_dense']:,.0f} "
                     f"| {r['disk_bytes_per_token']:,.1f} | 1/{1 / r['disk_vs_dense']:,.0f} |")
        if r["vocab"] == 32000 and r["setting"] == "top-8 FP16":
            met = r["wire_vs_dense"] <= 1 / 1000
            targets.append(f"top-8 at 32,000 entries: 1/{1 / r['wire_vs_dense']:,.0f} of dense FP32 on the wire "
                           f"(target <= 1/1000: {'met' if met else 'NOT met'})")
    write_results(args.results, "token_bytes", lines, targets, tokens_per_request=tokens, runs=rows)


if __name__ == "__main__":
    main()
