"""crossdistill's KFP components: one folder per step, each a thin shell over the crossdistill library.

``COMPONENTS`` maps the component name (as KFP shows it) to its folder; ``load(name)`` imports the
Python definition. Each folder's ``component.yaml`` is the compiled form (``crossdistill pipeline
compile``), loadable with ``kfp.components.load_component_from_file``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kfp.dsl.base_component import BaseComponent

COMPONENTS_DIR = Path(__file__).resolve().parent

# component name -> (folder, function name)
COMPONENTS: dict[str, tuple[str, str]] = {
    "prepare-data": ("prepare_data", "prepare_data"),
    "train-teacher": ("train_teacher", "train_teacher"),
    "teacher-serve": ("teacher_serve", "teacher_serve"),
    "teacher-teardown": ("teacher_teardown", "teacher_teardown"),
    "pseudo-label": ("pseudo_label", "pseudo_label"),
    "expert-evaluate": ("expert_evaluate", "expert_evaluate"),
    "trust-model-train": ("trust_model_train", "trust_model_train"),
    "assemble": ("assemble", "assemble"),
    "student-train": ("student_train", "student_train"),
    "evaluate": ("evaluate", "evaluate"),
}


def load(name: str) -> BaseComponent:
    """The Python definition of component ``name`` (e.g. ``teacher-serve``)."""
    folder, func = COMPONENTS[name]
    module = importlib.import_module(f"components.{folder}.component")
    return getattr(module, func)


def yaml_path(name: str) -> Path:
    """Where the compiled YAML of component ``name`` lives."""
    return COMPONENTS_DIR / COMPONENTS[name][0] / "component.yaml"
