"""`crossdistill <step> [--config FILE] [key=value ...]`: every pipeline step, runnable by hand.

Each step validates its options against the same strict schema its KFP component uses, so a typo
in a key is an error here exactly as it is on the cluster.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from crossdistill.config import StrictConfig, load_config, to_json
from crossdistill.errors import CrossdistillError


@dataclass(frozen=True)
class Step:
    module: str
    schema: str
    function: str
    summary: str


STEPS: dict[str, Step] = {
    "import-data": Step("crossdistill.data.importing", "ImportDataConfig", "import_data",
                        "import your own data (Parquet, CSV, JSON Lines, npy/npz, image folder, WebDataset, "
                        "HF dataset) as a crossdistill dataset"),
    "prepare-data": Step("crossdistill.data.splits", "PrepareDataConfig", "prepare_data",
                         "split digits / Fashion-MNIST into train, val, test, student (few labels), unlabeled"),
    "train-teacher": Step("crossdistill.teacher.train_keras", "TeacherTrainConfig", "train_keras_teacher",
                          "train the demo Keras teacher (the teacher owner's side)"),
    "teacher-serve": Step("crossdistill.deploy.serve", "TeacherServeConfig", "deploy_teacher",
                          "serve a teacher over the Open Inference Protocol (local process, Kubernetes or KServe)"),
    "teacher-teardown": Step("crossdistill.deploy.serve", "TeacherTeardownConfig", "teardown_teacher",
                             "remove a served teacher"),
    "pseudo-label": Step("crossdistill.teacher.pseudo_label", "PseudoLabelConfig", "run_pseudo_label",
                         "label a dataset (or one shard of it) with the teacher's soft outputs"),
    "student-train": Step("crossdistill.deploy.student", "StudentTrainConfig", "run_student_train",
                          "train the PyTorch student: online from a teacher, offline from soft labels, or hard labels"),
    "evaluate": Step("crossdistill.evaluate.run", "EvaluateConfig", "run_evaluate",
                     "metrics, exported student (TorchScript, ONNX), metrics.json and an HTML report"),
    "expert-evaluate": Step("crossdistill.experts.selection", "ExpertEvaluateConfig", "run_expert_evaluate",
                            "multi-teacher: find each label's expert teachers"),
    "trust-model-train": Step("crossdistill.experts.trust", "TrustModelTrainConfig", "run_trust_model_train",
                              "multi-teacher: train trust models that say when a teacher is right"),
    "assemble": Step("crossdistill.experts.assembly", "AssembleConfig", "run_assemble",
                     "multi-teacher: build the distillation set from the chosen experts / trusted outputs"),
    "multi-teacher": Step("crossdistill.experts.scenario", "ScenarioConfig", "run_scenario",
                          "multi-teacher: the shipped specialists-plus-generalist scenario, end to end"),
    "demo": Step("crossdistill.demo", "DemoConfig", "run_demo",
                 "the main job: a Keras teacher in its own process teaches a PyTorch student over gRPC"),
    "lm-demo": Step("crossdistill.lm_demo", "LMDemoConfig", "run_lm_demo",
                    "a Keras transformer language model teaches a PyTorch one token by token (make run-lm)"),
}


# Steps that print their own table and write their results to files: no JSON dump after them.
SELF_REPORTING = {"demo", "lm-demo", "multi-teacher", "import-data"}


def resolve(step: str) -> tuple[type[StrictConfig], Any]:
    """The schema class and entry function of ``step`` (imported lazily: TF and torch are heavy)."""
    spec = STEPS[step]
    module = importlib.import_module(spec.module)
    return getattr(module, spec.schema), getattr(module, spec.function)


def run_step(step: str, config: dict[str, Any] | str | None = None, overrides: list[str] | None = None) -> Any:
    """Validate ``config`` (a dict or JSON string) against the step's schema and run it."""
    schema, function = resolve(step)
    if isinstance(config, str):
        config = json.loads(config) if config.strip() else {}
    cfg = load_config(schema, None, overrides, base=config or {})
    return function(cfg)


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The pydantic model a field holds (``M``, ``M | None``, ``list[M]``, ``dict[str, M]``) and the key
    suffix its items take (``""``, ``"[]"`` for a list, ``"{}"`` for a dict); (None, "") for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple, set, frozenset) and args:
        model, _ = _nested_model(args[0])
        return model, "[]" if model else ""
    if origin is dict and len(args) == 2:
        model, _ = _nested_model(args[1])
        return model, "{}" if model else ""
    models = [m for m in (_nested_model(a) for a in args if a is not type(None)) if m[0]]
    return models[0] if len(models) == 1 else (None, "")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return re.sub(r"\b(?:typing|[a-z_]+(?:\.[a-z_]+)*)\.(?=[A-Za-z])", "", repr(annotation)).replace("NoneType", "None")


def describe_schema(schema: type[BaseModel], prefix: str = "", _seen: tuple[type, ...] = ()) -> list[str]:
    """One line per option of ``schema``: dotted key, type, default and description, nested models
    included (``teacher.url``; ``teachers[].client.url`` for a list of models, ``baselines{}`` for a dict)."""
    lines = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}{name}"
        default = "(required)" if field.is_required() else f"= {field.get_default(call_default_factory=True)!r}"
        desc = f"  {field.description}" if field.description else ""
        lines.append(f"  {key}: {_type_name(field.annotation)} {default}{desc}")
        model, suffix = _nested_model(field.annotation)
        if model is not None and model not in _seen:
            lines.extend(describe_schema(model, f"{key}{suffix}.", (*_seen, schema)))
    return lines


def _jsonable(result: Any) -> Any:
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    if hasattr(result, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossdistill",
        description="Distil a big teacher into a small student across platforms, over the Open Inference "
                    "Protocol. Every step takes --config FILE (YAML/JSON) and key=value overrides "
                    "(nested keys with dots, e.g. teacher.url=127.0.0.1:8081); unknown keys are errors.",
    )
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    for name, spec in STEPS.items():
        p = sub.add_parser(name, help=spec.summary, description=spec.summary +
                           f". Options: `crossdistill {name} --show-schema` lists every key.")
        p.add_argument("--config", help="YAML or JSON file (any fsspec URI) with the step's options")
        p.add_argument("--show-schema", action="store_true", help="list every option with its default and exit")
        p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
        p.add_argument("--out", dest="out_override", help="shorthand for out=URI")
        p.add_argument("overrides", nargs="*", metavar="key=value")
    try:
        from crossdistill.pipeline_cli import add_pipeline_parser
    except ImportError:  # the kfp extra is not installed
        pass
    else:
        add_pipeline_parser(sub)
    return parser


def _log_to_stderr() -> None:
    """crossdistill's own INFO lines (resume points, teacher outages, chosen windows) on stderr, prefixed by
    the rank under torchrun; other libraries keep their own levels."""
    logger = logging.getLogger("crossdistill")
    if logger.handlers:
        return
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s {rank}%(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.step:
        parser.print_help()
        return 2
    if args.step not in STEPS:
        return args.func(args)
    _log_to_stderr()
    try:
        schema, function = resolve(args.step)
        if args.show_schema:
            print(f"{args.step} options ({schema.__name__}):")
            print("\n".join(describe_schema(schema)))
            return 0
        overrides = list(args.overrides) + ([f"out={args.out_override}"] if args.out_override else [])
        cfg = load_config(schema, args.config, overrides)
        if args.print_config:
            print(to_json(cfg))
            return 0
        result = function(cfg)
    except CrossdistillError as exc:
        print(f"crossdistill {args.step}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"crossdistill {args.step}: interrupted", file=sys.stderr)
        return 130
    if args.step == "evaluate":  # a short table and the report's path; metrics.json holds the rest
        from crossdistill.evaluate.summary import terminal_summary

        print(terminal_summary(result))
    elif hasattr(result, "summary"):  # results that say themselves in a few lines (files hold the rest)
        if not getattr(result, "rank", 0):  # data-parallel ranks: rank 0 speaks for all
            print(result.summary())
    elif result is not None and args.step not in SELF_REPORTING:
        print(json.dumps(_jsonable(result), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
