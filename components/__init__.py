"""crossdistill's KFP components: one folder per step, each a thin shell over the crossdistill library.

Installed as ``crossdistill.components`` (the checkout's ``components/``). ``COMPONENTS`` maps the
component name (as KFP shows it) to its folder; ``load(name)`` imports the Python definition.
Each folder's ``component.yaml`` is the compiled form (``crossdistill pipeline compile``), shipped
in the distribution and loadable from any folder::

    from kfp.components import load_component_from_file
    from crossdistill.components import yaml_path
    student_train = load_component_from_file(str(yaml_path("student-train")))
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kfp.dsl.base_component import BaseComponent

COMPONENTS_DIR = Path(__file__).resolve().parent

# component name -> (folder, function name)
COMPONENTS: dict[str, tuple[str, str]] = {
    "import-data": ("import_data", "import_data"),
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
    module = importlib.import_module(f"crossdistill.components.{folder}.component")
    return getattr(module, func)


def yaml_path(name: str) -> Path:
    """Where the compiled YAML of component ``name`` lives."""
    return COMPONENTS_DIR / COMPONENTS[name][0] / "component.yaml"
