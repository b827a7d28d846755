"""teacher-teardown: remove the teachers that teacher-serve started (runs in the exit handler)."""

from components._common import CPU, image
from kfp import dsl


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
    every teacher and fails at the end if any could not be removed.
    """
    import hashlib
    import os
    import re
    import tempfile

    from crossdistill.config import step_config
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import teardown_teacher
    from crossdistill.errors import CrossdistillError

    ids = [t["teacher"] if isinstance(t, dict) else str(t) for t in teacher_ids] or [""]
    failures = []
    for teacher_id in ids:
        raw = "-".join(p for p in (name_prefix, teacher_id, job_id) if p)
        name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
        if len(name) > 63:
            name = name[:54].rstrip("-") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
        defaults = {"workdir": os.path.join(tempfile.gettempdir(), "crossdistill-teachers", name),
                    "model_uri": "unused-by-teardown"}
        cfg = step_config(TeacherServeConfig, config_json, {"backend": backend, "name": name},
                          "teacher-teardown", defaults=defaults)
        try:
            teardown_teacher(cfg)
            print(f"teacher-teardown: removed {name} ({backend})")
        except CrossdistillError as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise RuntimeError("teacher-teardown could not remove: " + "; ".join(failures))
