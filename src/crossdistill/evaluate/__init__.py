"""Evaluation of a distilled student: metrics, size and latency, exports, HTML report.

``metrics`` (numpy), ``latency``, ``export`` and ``report`` stand alone; ``run`` ties them into the
evaluate step (``EvaluateConfig``, ``run_evaluate``), imported lazily because it pulls in the
teacher client (gRPC).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvaluateConfig", "run_evaluate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crossdistill.evaluate import run

        return getattr(run, name)
    raise AttributeError(f"module 'crossdistill.evaluate' has no attribute {name!r}")
