"""teacher-serve: serve a teacher model over the Open Inference Protocol and output its gRPC address."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from crossdistill.components._common import TEACHER, image


@dsl.component(base_image=image(TEACHER), install_kfp_package=False)
def teacher_serve(
    model: Input[Model],
    job_id: str,
    backend: str = "local",
    name_prefix: str = "crossdistill-teacher",
    teacher_id: str = "",
    replicas: int = 1,
    placement_json: str = "{}",
    config_json: str = "{}",
) -> NamedTuple("Outputs", [("endpoint", str), ("http", str), ("name", str)]):
    """Deploy with crossdistill.deploy.serve.deploy_teacher; outputs ``endpoint`` (gRPC host:port).

    The deployment is named ``<name_prefix>[-<teacher_id>]-<job_id>`` (DNS-1123, at most 63
    characters) so that teacher-teardown, which runs in the pipeline's exit handler and cannot read
    this step's outputs, finds it again. Backends: ``local`` (a detached process on this machine:
    for kfp.local), ``kubernetes`` (Deployment + Service) and ``kserve`` (InferenceService); the
    last two read the model from ``model.uri`` (object storage), the local one from ``model.path``.
    ``placement_json`` (resources, node_selector, tolerations of the server pod) comes from the
    pipeline's placement; ``config_json`` holds any other TeacherServeConfig key and wins over it,
    e.g. ``expose_layers`` (none by default) and, for a teacher served to another party, the names
    (never the values) of the Secrets holding its token and TLS files: ``auth_secret``, ``tls_secret``.
    ``replicas`` > 1 (kubernetes, kserve) serves a pool of pods; ``endpoint`` is then a ``dns:///`` name
    that students balance round-robin.
    """
    import hashlib
    import os
    import re
    import tempfile
    from collections import namedtuple

    from crossdistill.config import json_object, step_config
    from crossdistill.deploy.config import TeacherServeConfig
    from crossdistill.deploy.serve import deploy_teacher

    # Keep in step with teacher-teardown: both derive the same name from the job id.
    raw = "-".join(p for p in (name_prefix, teacher_id, job_id) if p)
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    if len(name) > 63:
        name = name[:54].rstrip("-") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    location = model.path if backend == "local" else model.uri
    model_file = model.metadata.get("file", "")
    model_uri = location.rstrip("/") + "/" + model_file if model_file else location
    defaults = {"workdir": os.path.join(tempfile.gettempdir(), "crossdistill-teachers", name),
                **json_object(placement_json, "teacher-serve: placement_json")}
    cfg = step_config(TeacherServeConfig, config_json, {"model_uri": model_uri, "backend": backend, "name": name, "replicas": replicas},
                      "teacher-serve", defaults=defaults)
    endpoint = deploy_teacher(cfg)
    print(f"teacher-serve: {cfg.name} answers at grpc {endpoint.grpc} (REST {endpoint.http})")
    outputs = namedtuple("Outputs", ["endpoint", "http", "name"])
    return outputs(endpoint.grpc, endpoint.http or "", endpoint.name)
