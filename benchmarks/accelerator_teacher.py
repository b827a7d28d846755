"""A served teacher whose cost is time on an accelerator of its own, not this machine's CPU (benchmark-only).

``python -m benchmarks.accelerator_teacher --hold-ms 20 --config serve.yaml --ready-file F`` runs
``crossdistill.teacher.server`` with every loaded adapter wrapped so that a replica works on one
request at a time and holds it ``--hold-ms`` (sleeping, so the CPU is free) before answering, as one
TPU or GPU would: replicas then add capacity the way accelerators do, which 2 shared CPU cores cannot
show with real compute.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any


class OneAtATime:
    """``adapter`` behind a lock that holds each predict call ``hold_s`` (the accelerator's busy time)."""

    def __init__(self, adapter: Any, hold_s: float) -> None:
        self._adapter, self._hold_s, self._busy = adapter, hold_s, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._busy:
            time.sleep(self._hold_s)
            return self._adapter.predict(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-ms", type=float, required=True, help="accelerator time per request")
    args, rest = parser.parse_known_args()
    from crossdistill.teacher import server

    load = server.load_teacher
    server.load_teacher = lambda *a, **k: OneAtATime(load(*a, **k), args.hold_ms / 1000)
    server.main(rest)


if __name__ == "__main__":
    main()
    sys.exit(0)
