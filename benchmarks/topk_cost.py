"""What top-k costs in perplexity against the dense teacher, at the vocabulary of `make run-lm`.

Reuses the data and the Keras teacher `make run-lm` left in ``--demo`` (its ``summary.json`` holds the
settings). The demo's student is distilled online from the served teacher, one seed, once with dense
FP16 logits per token and once per top-k (``--k``, FP16 log-probabilities, the tail spread as for
classes), everything else as in the demo; each is scored on the val and test documents. Prints a
table, writes ``<results>.json`` / ``.md``; asserts nothing.

    make run-lm && .venv/bin/python -m benchmarks.topk_cost [--k 1,8,32,128] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.report import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="runs/lm-demo", help="the out folder of make run-lm")
    parser.add_argument("--k", default="1,8,32,128", help="top-k sizes, comma-separated (dense always runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/results/topk_cost")
    args = parser.parse_args()
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher, teardown_teacher
    from crossdistill.evaluate.run import EvaluateConfig, run_evaluate
    from crossdistill.lm_demo import LMDemoConfig, _student

    demo = Path(args.demo)
    summary = demo / "summary.json"
    if not summary.exists():
        raise SystemExit(f"{summary} is missing: run `make run-lm` first")
    cfg = LMDemoConfig(**{**json.loads(summary.read_text())["config"], "out": str(demo)})
    data = {part: str(demo / "data" / part) for part in ("train", "val", "test")}
    work = demo / "topk-cost"
    serve = TeacherServeConfig(model_uri=str(demo / "teacher" / "teacher.keras"), name="topk-cost-teacher",
                               workdir=str(work / "server"), workers_threads=cfg.threads)
    endpoint = deploy_teacher(serve)
    rows: list[dict[str, Any]] = []
    try:
        for k in [0, *(int(v) for v in args.k.split(","))]:
            name = "dense FP16" if k == 0 else f"top-{k} FP16"
            model = _student(cfg, data["train"], str(work / f"student-k{k}"), args.seed, "online",
                             teacher={"url": endpoint.grpc, "top_k": k, "fp16": True})
            row: dict[str, Any] = {"setting": name, "top_k": k}
            for part in ("val", "test"):
                scored = run_evaluate(EvaluateConfig(test_data=data[part], student=model, out=str(work / f"eval-k{k}-{part}"),
                                                     latency_repeats=1, latency_warmup=0, export=[]))
                row[f"{part}_perplexity"] = scored["student"]["perplexity"]
            rows.append(row)
            print(f"{name}: val {row['val_perplexity']:.2f}, test {row['test_perplexity']:.2f}", flush=True)
    finally:
        teardown_teacher(serve)
    dense = rows[0]
    lines = [f"`make run-lm`'s student distilled online (vocabulary {cfg.vocab_size:,}, T = {cfg.temperature:g}, "
             f"seed {args.seed}) from dense and top-k teacher outputs", "",
             "| teacher output per token | val perplexity | test perplexity | test vs dense |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['val_perplexity']:.2f} | {r['test_perplexity']:.2f} | "
              f"{r['test_perplexity'] / dense['test_perplexity']:.3f} |" for r in rows]
    write_results(args.results, "topk_cost", lines, [], vocab_size=cfg.vocab_size, seed=args.seed, runs=rows)


if __name__ == "__main__":
    main()
