"""How every benchmark ends: its table and targets printed, and kept as ``<results>.json`` and ``.md``."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def write_results(results: str, module: str, lines: list[str], targets: list[str], **facts: Any) -> None:
    """Print ``lines`` (a Markdown table, notes) and ``targets``; write the JSON record (the command that ran,
    when, the machine, ``facts``) and the Markdown report to ``results`` + ``.json`` / ``.md``."""
    command = f"python -m benchmarks.{module} " + " ".join(sys.argv[1:])
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print("\n".join(["", *lines, "", *targets]))
    record = {"command": command, "date": date, "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_average_1min_end": os.getloadavg()[0], **facts, "targets": targets}
    out = Path(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text("\n".join([f"`{command}` ({date})", "", *lines, "", *targets, ""]))
    print(f"written: {out.with_suffix('.json')}, {out.with_suffix('.md')}")
