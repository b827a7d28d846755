"""Compile every pipeline to ``<out>/<name>.yaml`` and every component to its ``component.yaml``.

In the source checkout (an editable install) the pipelines go to ``pipelines/compiled/`` and the
components next to their ``component.py``, which is what the distribution ships; from an installed
wheel the pipelines go to ``./compiled`` and the shipped components stay as they are.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kfp import compiler
from kfp.dsl.graph_component import GraphComponent

from crossdistill import components
from crossdistill.pipelines.placement import Placement

PIPELINES_DIR = Path(__file__).resolve().parent
COMPILED_DIR = PIPELINES_DIR / "compiled"  # the compiled pipelines this package ships

# pipeline name -> module with build(placement) -> GraphComponent
PIPELINES: dict[str, str] = {
    "online-distillation": "crossdistill.pipelines.online",
    "offline-distillation": "crossdistill.pipelines.offline",
    "multi-teacher-distillation": "crossdistill.pipelines.multi_teacher",
}
ALIASES = {"online": "online-distillation", "offline": "offline-distillation",
           "multi-teacher": "multi-teacher-distillation", "multi_teacher": "multi-teacher-distillation"}


def in_checkout() -> bool:
    """Whether these pipelines run from the source checkout (editable install) rather than an installed wheel."""
    return (PIPELINES_DIR.parent / "pyproject.toml").is_file() and (PIPELINES_DIR.parent / "components").is_dir()


def default_out_dir() -> Path:
    """Where ``crossdistill pipeline`` compiles to and uploads from by default: the checkout's
    ``pipelines/compiled``, or ``./compiled`` when running from an installed wheel."""
    return COMPILED_DIR if in_checkout() else Path.cwd() / "compiled"


def resolve_name(name: str) -> str:
    """The full pipeline name of ``name`` (``online`` or ``online-distillation``)."""
    full = ALIASES.get(name, name)
    if full not in PIPELINES:
        raise KeyError(f"unknown pipeline '{name}'; choose one of {', '.join([*PIPELINES, *ALIASES])}")
    return full


def build_pipeline(name: str, placement: Placement | None = None) -> GraphComponent:
    """The pipeline ``name`` built with ``placement`` (default: TPU teacher, GPU student)."""
    module = importlib.import_module(PIPELINES[resolve_name(name)])
    return module.build(placement or Placement())


def compile_pipeline(name: str, out: str | Path, placement: Placement | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(name, placement), str(out))
    return out


def compile_component(name: str, out: str | Path | None = None) -> Path:
    """Compile component ``name`` to ``out`` (default: its folder's component.yaml)."""
    path = Path(out) if out else components.yaml_path(name)
    compiler.Compiler().compile(components.load(name), str(path))
    return path


def compile_all(out_dir: str | Path = COMPILED_DIR, placement: Placement | None = None,
                with_components: bool = True) -> list[Path]:
    """Compile every pipeline (and, by default, every component); returns the files written."""
    written = [compile_pipeline(name, Path(out_dir) / f"{name}.yaml", placement) for name in PIPELINES]
    if with_components:
        written += [compile_component(name) for name in components.COMPONENTS]
    return written
