"""`crossdistill pipeline ...`: compile, upload, submit, run-local and list the Kubeflow pipelines.

The pipelines and components ship inside the distribution (``crossdistill.pipelines``,
``crossdistill.components``), so this works from any folder once ``crossdistill[kfp]`` is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crossdistill.config import load_config
from crossdistill.errors import ConfigError, CrossdistillError


def _placement(args: argparse.Namespace) -> Any:
    from crossdistill.pipelines.placement import Placement

    placement = load_config(Placement, args.placement, args.overrides)
    if args.cpu:
        placement = placement.model_copy(update={"accelerators": False})
    return placement


def _out_dir(args: argparse.Namespace) -> Path:
    from crossdistill.pipelines.compile import default_out_dir

    return Path(args.out_dir) if args.out_dir else default_out_dir()


def cmd_compile(args: argparse.Namespace) -> int:
    from crossdistill import components
    from crossdistill.pipelines.compile import (
        PIPELINES,
        compile_component,
        compile_pipeline,
        in_checkout,
        resolve_name,
    )

    placement = _placement(args)
    out_dir = _out_dir(args)
    names = [resolve_name(n) for n in args.names] or list(PIPELINES)
    for name in names:
        print(f"pipeline  {name:<28} -> {compile_pipeline(name, out_dir / f'{name}.yaml', placement)}")
    if args.no_components:
        return 0
    if not in_checkout():
        print(f"components: compiled in the installed package ({components.COMPONENTS_DIR}/<name>/component.yaml)")
        return 0
    for name in components.COMPONENTS:
        print(f"component {name:<28} -> {compile_component(name)}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from crossdistill.pipelines.compile import PIPELINES, resolve_name
    from crossdistill.pipelines.upload import client_from_env, upload

    out_dir = _out_dir(args)
    names = [resolve_name(n) for n in args.names] or list(PIPELINES)
    missing = [n for n in names if not (out_dir / f"{n}.yaml").is_file()]
    if missing:
        raise ConfigError(f"not compiled yet: {', '.join(missing)} in {out_dir}; run `crossdistill pipeline compile`")
    client = client_from_env()
    for name in names:
        print(json.dumps(upload(client, out_dir / f"{name}.yaml", name, version=args.version)))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from crossdistill.pipelines.compile import build_pipeline, resolve_name
    from crossdistill.pipelines.run_local import pipeline_arguments
    from crossdistill.pipelines.upload import client_from_env, submit

    name = resolve_name(args.name)
    package = _out_dir(args) / f"{name}.yaml"
    if not package.is_file():
        raise ConfigError(f"not compiled yet: {package}; run `crossdistill pipeline compile`")
    arguments = pipeline_arguments(name, build_pipeline(name), load_config_dict(args.params, args.overrides))
    client = client_from_env()
    print(json.dumps(submit(client, package, arguments, experiment=args.experiment, run_name=args.run_name,
                            service_account=args.service_account)))
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    from crossdistill.pipelines.run_local import run_local

    run_local(args.name, load_config_dict(args.params, args.overrides), runner=args.runner, pipeline_root=args.pipeline_root,
              enable_caching=args.cache)
    print(f"pipeline {args.name}: finished; outputs under {args.pipeline_root}")
    return 0


def load_config_dict(path: str | None, overrides: list[str]) -> dict[str, Any]:
    """Pipeline arguments from a YAML/JSON file and ``key=value`` pairs (no schema: KFP checks them)."""
    import yaml

    from crossdistill.config import deep_merge, parse_overrides

    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: pipeline arguments must be a mapping of parameter names to values")
        data = loaded
    return deep_merge(data, parse_overrides(overrides))


def cmd_list(args: argparse.Namespace) -> int:
    from crossdistill import components
    from crossdistill.pipelines.compile import PIPELINES, build_pipeline

    for name in PIPELINES:
        pipeline = build_pipeline(name)
        params = ", ".join(pipeline.component_spec.inputs or {})
        print(f"pipeline  {name}\n          {pipeline.description}\n          parameters: {params}")
    for name in components.COMPONENTS:
        print(f"component {name}")
    return 0


COMPILED_HELP = "pipelines/compiled in the source checkout, else ./compiled"


def add_pipeline_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pipeline`` command (compile, upload, submit, run-local, list) to ``subparsers``."""
    p = subparsers.add_parser("pipeline", help="compile, upload or run the Kubeflow pipelines",
                              description="Compile, upload or locally run crossdistill's Kubeflow pipelines.")
    sub = p.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)

    c = sub.add_parser("compile", help="pipelines -> pipelines/compiled/*.yaml, components -> component.yaml")
    c.add_argument("names", nargs="*", help="pipelines to compile (default: all)")
    c.add_argument("--out-dir", help=f"where pipeline YAMLs go (default: {COMPILED_HELP})")
    c.add_argument("--placement", help="YAML/JSON with node-pool placement and the teacher's Secrets "
                                       "(crossdistill.pipelines.placement.Placement)")
    c.add_argument("--cpu", action="store_true", help="every task on CPU: no TPU/GPU asks, selectors, tolerations")
    c.add_argument("--no-components", action="store_true", help="skip the components' component.yaml")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="placement override, e.g. --set teacher.tpu_topology=2x4 "
                        "--set teacher_access.auth_secret=teacher-token")
    c.set_defaults(func=cmd_compile)

    u = sub.add_parser("upload", help="upload compiled pipelines (KFP_HOST, KFP_NAMESPACE, KFP_TOKEN)")
    u.add_argument("names", nargs="*", help="pipelines to upload (default: all)")
    u.add_argument("--out-dir", help=f"where the compiled YAMLs are (default: {COMPILED_HELP})")
    u.add_argument("--version", help="version name when the pipeline exists (default: a UTC timestamp)")
    u.set_defaults(func=cmd_upload)

    s = sub.add_parser("submit", help="start a run of a compiled pipeline on KFP_HOST")
    s.add_argument("name", help="online | offline | multi-teacher (or the full pipeline name)")
    s.add_argument("--params", help="YAML/JSON file of pipeline arguments")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                   help="pipeline argument, e.g. --set teacher_backend=kserve (repeatable)")
    s.add_argument("--experiment", default="crossdistill", help="KFP experiment (created when missing)")
    s.add_argument("--run-name", help="run name (default: KFP's)")
    s.add_argument("--service-account", default="crossdistill-pipeline",
                   help="Kubernetes service account of the run's pods (manifests/base creates it)")
    s.add_argument("--out-dir", help=f"where the compiled YAMLs are (default: {COMPILED_HELP})")
    s.set_defaults(func=cmd_submit)

    r = sub.add_parser("run-local", help="run a pipeline here through kfp.local")
    r.add_argument("name", help="online | offline | multi-teacher (or the full pipeline name)")
    r.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess")
    r.add_argument("--params", help="YAML/JSON file of pipeline arguments")
    r.add_argument("--pipeline-root", default="runs/kfp-local", help="where task outputs go")
    r.add_argument("--cache", action="store_true", help="reuse outputs of cached tasks from earlier runs")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                   help="pipeline argument, e.g. --set student_epochs=2 (repeatable)")
    r.set_defaults(func=cmd_run_local)

    ls = sub.add_parser("list", help="list pipelines (with their parameters) and components")
    ls.set_defaults(func=cmd_list)

    for sp in (c, u, s, r, ls):
        sp.set_defaults(func=_guarded(sp.get_default("func")))
    return p


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CrossdistillError, KeyError) as exc:
            print(f"crossdistill pipeline {args.pipeline_command}: error: {exc}", file=sys.stderr)
            return 1
    return run


def main(argv: list[str] | None = None) -> int:
    """``python -m crossdistill.pipeline_cli COMMAND ...`` (the same as ``crossdistill pipeline COMMAND``)."""
    parser = argparse.ArgumentParser(prog="crossdistill")
    subparsers = parser.add_subparsers(dest="step", required=True)
    add_pipeline_parser(subparsers)
    args = parser.parse_args(["pipeline", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
