"""teacher-teardown: remove the teachers that teacher-serve started (runs in the exit handler)."""

from kfp import dsl

from crossdistill.components._common import CPU, image


@dsl.component(base_image=image(CPU), install_kfp_package=False)
def teacher_teardown(
    job_id: str,
    backend: str = "local",
    name_prefix: str = "crossdistill-teacher",
    teacher_ids: list = [],  # noqa: B006 - KFP defaults are compile-time constants
    config_json: str = "{}",
):
    """Tear down ``<name_prefix>[-<teacher_id>]-<job_id>`` for each teacher id (or the one unnamed teacher).

    Derives the names exactly as teacher-serve does, from pipeline parameters and the job id only,
    because an exit task cannot consume outputs of the tasks it guards. ``teacher_ids`` items are
    strings or objects with a ``teacher`` key (the multi-teacher pipeline's ``teachers`` list). Tries
    every teacher and fails at the end if any could not be removed. ``config_json`` is teacher-serve's
    (the pipelines pass the same one): a teardown reads only ``namespace`` and ``workdir`` from it,
    since it needs nothing but the deployment's name and where it lives (TeacherTeardownConfig).
    """
    import hashlib
    import json
    import os
    import re
    import tempfile

    from crossdistill.config import json_object, step_config
    from crossdistill.deploy.config import TeacherTeardownConfig
    from crossdistill.deploy.serve import teardown_teacher
    from crossdistill.errors import CrossdistillError

    # config_json is teacher-serve's: of it, teardown reads only what locates the deployment.
    serve_keys = json_object(config_json, "teacher-teardown: config_json")
    shared = json.dumps({k: v for k, v in serve_keys.items() if k in TeacherTeardownConfig.model_fields})
    ids = [t["teacher"] if isinstance(t, dict) else str(t) for t in teacher_ids] or [""]
    failures = []
    for teacher_id in ids:
        raw = "-".join(p for p in (name_prefix, teacher_id, job_id) if p)
        name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
        if len(name) > 63:
            name = name[:54].rstrip("-") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
        defaults = {"workdir": os.path.join(tempfile.gettempdir(), "crossdistill-teachers", name)}
        cfg = step_config(TeacherTeardownConfig, shared, {"backend": backend, "name": name}, "teacher-teardown",
                          defaults=defaults)
        try:
            teardown_teacher(cfg)
            print(f"teacher-teardown: removed {name} ({backend})")
        except CrossdistillError as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise RuntimeError("teacher-teardown could not remove: " + "; ".join(failures))
