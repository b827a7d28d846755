"""README.md's commands run as written: the "Distil your own teacher" walk-through end to end, and every
other `crossdistill <step> ...` line validated against its step's schema."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crossdistill.cli import STEPS, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _walkthrough() -> str:
    block = README.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.split("```bash", 1)[1].rsplit("```", 1)[0]


def _step_lines() -> list[list[str]]:
    """Every `.venv/bin/crossdistill <step> key=value ...` command in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) > 1 and words[0].endswith("bin/crossdistill") and words[1] in STEPS:
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("command", _step_lines(), ids=lambda c: " ".join(c)[:60])
def test_every_readme_step_command_is_valid(command, capsys):
    """Keys, values and types of each README command pass the step's strict schema."""
    extra = [] if "--show-schema" in command else ["--print-config"]
    assert main([*command, *extra]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_distil_your_own_teacher_walkthrough_runs_as_written(tmp_path):
    """The walk-through: import a CSV, serve a Keras teacher with a token, distil online and offline,
    evaluate, tear down, and the same through `pipeline run-local online` with the user's URIs."""
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = ("set -euo pipefail\n"
              "trap '.venv/bin/crossdistill teacher-teardown name=my-teacher workdir=my/serve "
              ">/dev/null 2>&1 || true' EXIT\n" + _walkthrough())
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not (ROOT / ".venv" / "bin" / "crossdistill").exists():
        pytest.skip(f"no .venv beside the checkout ({sys.prefix} runs the tests): run `make test`")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Traceback" not in done.stderr
    metrics = json.loads((tmp_path / "my" / "eval" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "student" in metrics and metrics["student"]["accuracy"] > 0.85, flat[:2000]
    assert (tmp_path / "my" / "offline" / "model.pt").exists()
    assert "student-train finished" in done.stdout and "report:" in done.stdout
    assert list((tmp_path / "my" / "kfp").rglob("metrics.json")), "the pipeline wrote no evaluation"
