"""Upload compiled pipelines to a Kubeflow Pipelines endpoint: create the pipeline, or add a version.

The endpoint comes from the environment: ``KFP_HOST`` (e.g. https://kfp.example.com/pipeline),
``KFP_NAMESPACE`` (multi-user installs) and ``KFP_TOKEN`` (a bearer token, e.g. from
``gcloud auth print-access-token``); nothing is read from files or prompted for.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crossdistill.errors import ConfigError


def client_from_env(env: dict[str, str] | None = None) -> Any:
    """A ``kfp.Client`` for ``KFP_HOST`` / ``KFP_NAMESPACE`` / ``KFP_TOKEN``; ConfigError when KFP_HOST is unset."""
    env = dict(os.environ if env is None else env)
    host = env.get("KFP_HOST", "").strip()
    if not host:
        raise ConfigError("KFP_HOST is not set: export KFP_HOST=https://<your-kfp>/pipeline "
                          "(and KFP_NAMESPACE, KFP_TOKEN if your install needs them) before uploading")
    from kfp import Client

    return Client(host=host, namespace=env.get("KFP_NAMESPACE") or "kubeflow",
                  existing_token=env.get("KFP_TOKEN") or None)


def upload(client: Any, package: str | Path, name: str, *, version: str | None = None,
           description: str | None = None) -> dict[str, str]:
    """Create pipeline ``name`` from ``package``, or add a new version when it exists already."""
    package = str(package)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        created = client.upload_pipeline(package, pipeline_name=name, description=description)
        return {"pipeline": name, "pipeline_id": created.pipeline_id, "action": "created"}
    version = version or datetime.now(timezone.utc).strftime("v%Y%m%d-%H%M%S")
    made = client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id,
                                          description=description)
    return {"pipeline": name, "pipeline_id": pipeline_id, "version": version,
            "version_id": made.pipeline_version_id, "action": "new version"}


def submit(client: Any, package: str | Path, arguments: dict[str, Any], *, experiment: str = "crossdistill",
           run_name: str | None = None, service_account: str | None = None) -> dict[str, str]:
    """Start a run of compiled ``package`` with ``arguments`` in ``experiment``; returns the run id."""
    run = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, experiment_name=experiment, run_name=run_name,
        service_account=service_account)
    return {"run_id": run.run_id, "experiment": experiment}
