"""Data-parallel student training as a TrainJob (Kubeflow Trainer v2) or a PyTorchJob (training operator v1).

The objects are checked against the SDK models of both APIs (kubeflow_trainer_api, kubeflow-training);
``launch`` talks to the API server stand-in of ``k8s_stand_in``, which runs a job and then completes or
fails it, through the real ``kubernetes`` client.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossdistill.deploy import kubernetes, trainjob
from crossdistill.errors import ConfigError, TrainingJobError
from crossdistill.images import image_for
from crossdistill.train.trainer import StudentTrainConfig
from k8s_stand_in import FakeApiServer, serving

pytest.importorskip("kubernetes")

CONFIG_URI = "gs://bucket/runs/s1/launch/student-train.json"
GPU_LAUNCH = {
    "proc_per_node": 2, "namespace": "ns1",
    "resources": {"cpu": "8", "memory": "32Gi", "accelerator_type": "nvidia.com/gpu", "accelerator_count": 2},
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    "secret_mounts": {"teacher-token": "/etc/crossdistill/teacher"}, "service_account": "student-wi",
}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with serving(ready_after=1) as server:
        yield server


def _cfg(backend: str = "trainjob", workers: int = 4, out: str = "gs://bucket/runs/s1", **launch: Any
         ) -> StudentTrainConfig:
    return StudentTrainConfig.parse({"train_data": "gs://bucket/data/student", "out": out, "workers": workers,
                                     "launch": {**GPU_LAUNCH, "backend": backend, **launch}})


def _pod(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template (metadata, spec) that carries placement, whichever the kind."""
    if job["kind"] == "TrainJob":
        (patch,) = job["spec"]["runtimePatches"]
        (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        assert node["name"] == trainjob.NODE
        template = node["template"]["spec"]["template"]
    else:
        template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return template["metadata"], template["spec"]


# --- the objects --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_gpu_placement_fits_the_schema_and_reaches_the_pods(backend: str) -> None:
    (job,) = trainjob.build_objects(_cfg(backend), CONFIG_URI)
    assert trainjob.schema_errors(job) == []
    meta, pod = _pod(job)
    assert meta["labels"][kubernetes.ROLE_LABEL] == kubernetes.STUDENT_ROLE  # the teacher's NetworkPolicy admits it
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "student-wi"
    assert {"name": "secret-0", "secret": {"secretName": "teacher-token", "defaultMode": 0o440}} in pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == kubernetes.RUN_AS_USER
    (container,) = pod["containers"]
    assert {"name": "secret-0", "mountPath": "/etc/crossdistill/teacher", "readOnly": True} in container["volumeMounts"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/dev/shm"}
    gpus = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    command = ["torchrun", "--no-python", "crossdistill", "student-train", "--config", CONFIG_URI]
    if backend == "trainjob":
        spec = job["spec"]
        assert (job["apiVersion"], spec["runtimeRef"]["name"]) == ("trainer.kubeflow.org/v1alpha1", "torch-distributed")
        trainer = spec["trainer"]
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 2)
        assert trainer["command"] == command and trainer["image"] == image_for("student")
        assert trainer["resourcesPerNode"] == {"requests": gpus, "limits": gpus}
        # No envFrom in a TrainJob: the defaults come key by key, optional.
        refs = {e["name"]: e["valueFrom"] for e in trainer["env"] if "valueFrom" in e}
        assert refs["CROSSDISTILL_S3_ENDPOINT"]["configMapKeyRef"]["name"] == kubernetes.DEFAULTS_CONFIGMAP
        assert refs["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {
            "name": kubernetes.S3_CREDENTIALS_SECRET, "key": "AWS_SECRET_ACCESS_KEY", "optional": True}
        assert container == {"name": "node", "securityContext": container["securityContext"],
                             "volumeMounts": container["volumeMounts"]}  # only what a patch may set
    else:
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert job["apiVersion"] == "kubeflow.org/v1" and job["spec"]["nprocPerNode"] == "2"
        assert {k: r["replicas"] for k, r in replicas.items()} == {"Master": 1, "Worker": 1}
        assert replicas["Worker"]["template"] == replicas["Master"]["template"]
        assert container["name"] == "pytorch" and container["command"] == command
        assert container["image"] == image_for("student")
        assert container["resources"] == {"requests": gpus, "limits": gpus}
        assert {"configMapRef": {"name": kubernetes.DEFAULTS_CONFIGMAP, "optional": True}} in container["envFrom"]


def test_schema_errors_catch_misspelt_fields_and_wrong_types() -> None:
    (job,) = trainjob.build_objects(_cfg("trainjob"), CONFIG_URI)
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNode"] = bad["spec"]["trainer"].pop("numNodes")
    bad["spec"]["trainer"]["numProcPerNode"] = "2"
    _pod(bad)[1]["tolerations"][0]["tolerationSeconds"] = "60"
    bad["spec"]["trainer"]["resourcesPerNode"]["limits"]["cpu"] = True
    errors = trainjob.schema_errors(bad)
    assert "TrainJob.spec.trainer.numNode: unknown field (not in TrainerV1alpha1Trainer)" in errors
    assert any(e.startswith("TrainJob.spec.trainer.numProcPerNode: Input should be a valid integer") for e in errors)
    assert any(".tolerations[0].tolerationSeconds: Input should be a valid integer" in e for e in errors)
    assert any(e.startswith("TrainJob.spec.trainer.resourcesPerNode.limits.cpu: expected one of") for e in errors)
    assert len(errors) == 4
    (job,) = trainjob.build_objects(_cfg("pytorchjob"), CONFIG_URI)
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["replica"] = 1
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "1"
    assert trainjob.schema_errors(bad) == [
        "PyTorchJob.spec.pytorchReplicaSpecs.Master.replicas: expected int, got str '1'",
        "PyTorchJob.spec.pytorchReplicaSpecs.Worker.replica: unknown field (not in KubeflowOrgV1ReplicaSpec)"]
    assert trainjob.schema_errors({**job, "apiVersion": "kubeflow.org/v2"}) == [
        "apiVersion: expected kubeflow.org/v1, got 'kubeflow.org/v2'"]


def test_the_worker_command_is_what_torchrun_runs_from_the_operators_environment(monkeypatch) -> None:
    """torchrun takes nodes, processes, rank and master from the PET_* variables both operators set."""
    pytest.importorskip("torch")
    from torch.distributed.run import get_args_parser

    (job,) = trainjob.build_objects(_cfg("trainjob"), CONFIG_URI)
    command = job["spec"]["trainer"]["command"]
    for name, value in {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "1",
                        "PET_MASTER_ADDR": "job-node-0-0.job", "PET_MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert command[0] == "torchrun"
    args = get_args_parser().parse_args(command[1:])
    assert (args.nnodes, args.nproc_per_node, int(args.node_rank)) == ("2", "2", 1)
    assert (args.master_addr, int(args.master_port)) == ("job-node-0-0.job", 29500)
    assert args.no_python and args.training_script == "crossdistill"
    assert args.training_script_args == ["student-train", "--config", CONFIG_URI]


def test_one_node_and_names() -> None:
    (job,) = trainjob.build_objects(_cfg("pytorchjob", workers=2), CONFIG_URI)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]  # the operator refuses 0 Workers
    assert trainjob.schema_errors(job) == []
    name = job["metadata"]["name"]
    assert name == "student-" + hashlib.sha256(b"gs://bucket/runs/s1").hexdigest()[:12]
    # KFP's local mount of the same folder is the same run: the same job.
    assert trainjob.build_objects(_cfg("trainjob", out="/gcs/bucket/runs/s1"), CONFIG_URI)[0]["metadata"][
        "name"] == name
    assert trainjob.build_objects(_cfg(out="gs://bucket/runs/s2"), CONFIG_URI)[0]["metadata"]["name"] != name
    assert trainjob.build_objects(_cfg(name="distil-7"), CONFIG_URI)[0]["metadata"]["name"] == "distil-7"
    with pytest.raises(ConfigError, match="DNS-1035"):
        trainjob.build_objects(_cfg(name="7_Distil"), CONFIG_URI)
    with pytest.raises(ConfigError, match="workers=6 is not a multiple of launch.proc_per_node=4"):
        trainjob.build_objects(_cfg(workers=6, proc_per_node=4), CONFIG_URI)
    with pytest.raises(ConfigError, match="object storage"):
        trainjob.build_objects(_cfg(), "/tmp/student-train.json")


def test_shared_uri() -> None:
    assert trainjob.shared_uri("gs://b/runs/x") == "gs://b/runs/x"
    assert trainjob.shared_uri("s3://b/x") == "s3://b/x"
    assert trainjob.shared_uri("abfs://c/x") == "abfs://c/x"
    assert trainjob.shared_uri("/gcs/b/runs/x") == "gs://b/runs/x"
    assert trainjob.shared_uri("/s3/b/x") == "s3://b/x"
    assert trainjob.shared_uri("/minio/mlpipeline/v2/artifacts/x") == "minio://mlpipeline/v2/artifacts/x"
    for local in ("/tmp/runs/x", "runs/x", "file:///tmp/x", "memory://x"):
        with pytest.raises(ConfigError, match="workers run in other pods"):
            trainjob.shared_uri(local)


def test_the_trainjob_env_covers_the_object_store_keys_of_the_manifests() -> None:
    root = Path(__file__).resolve().parents[1] / "manifests"
    keys: set[str] = set()
    for path in (root / "base" / "configmap.yaml", root / "overlays" / "minio" / "patches" / "defaults-patch.yaml"):
        keys |= set(yaml.safe_load(path.read_text())["data"])
    placement = ("CROSSDISTILL_TEACHER_", "CROSSDISTILL_STUDENT_", "KERAS_", "TF_")
    assert {k for k in keys if not k.startswith(placement)} <= set(trainjob.DEFAULTS_KEYS)


def test_the_shared_walker_still_checks_kserve_objects() -> None:
    from crossdistill.deploy import kserve
    from crossdistill.deploy.config import TeacherServeConfig

    (isvc,) = kserve.build_objects(TeacherServeConfig(model_uri="gs://m/t.keras", name="t1"))
    isvc["spec"]["predictor"]["minReplica"] = 1
    isvc["spec"]["predictor"]["model"]["args"] = "x=1"
    assert sorted(kserve.schema_errors(isvc)) == [
        "InferenceService.spec.predictor.minReplica: unknown field (not in V1beta1PredictorSpec)",
        "InferenceService.spec.predictor.model.args: expected a list, got str"]


# --- launching ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backend", "path"), [
    ("trainjob", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns1/trainjobs/"),
    ("pytorchjob", "/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs/"),
])
def test_launch_applies_the_job_and_waits_until_it_succeeds(api: FakeApiServer, caplog, backend: str,
                                                            path: str) -> None:
    cfg = _cfg(backend)
    (job,) = trainjob.build_objects(cfg, CONFIG_URI)
    with caplog.at_level(logging.INFO, logger="crossdistill.deploy.trainjob"):
        trainjob.launch(cfg, CONFIG_URI, client=api.client())
    (patch,) = api.sent("PATCH")
    assert patch["path"] == path + job["metadata"]["name"]
    assert patch["body"] == job
    assert patch["content_type"] == "application/apply-patch+yaml"
    assert patch["query"] == {"fieldManager": ["crossdistill"], "force": ["true"]}
    assert api.gets[patch["path"]] == 2  # running, then done
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith(f"created {job['kind']} ns1/{job['metadata']['name']}: 2 node(s) x 2 process(es)")
    assert any("Running" in line for line in said)
    assert "Complete (AllJobsCompleted" in said[-1] or "Succeeded (PyTorchJobSucceeded" in said[-1]

    # A retried step re-attaches: the same object under the same name, and it is already done.
    trainjob.launch(cfg, CONFIG_URI, client=api.client())
    assert [p["path"] for p in api.sent("PATCH")] == [patch["path"]] * 2
    assert api.sent("PATCH")[1]["body"] == job


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_a_failed_job_raises_with_its_reason(api: FakeApiServer, backend: str) -> None:
    api.job_failure = ("FailedJobs", "jobset failed due to one or more job failures")
    with pytest.raises(TrainingJobError) as info:
        trainjob.launch(_cfg(backend), CONFIG_URI, client=api.client())
    message = str(info.value)
    assert "ns1/student-" in message and "failed: Failed (FailedJobs: jobset failed due to one or more job" in message
    assert "left in place" in message and "kubectl describe" in message


def test_a_job_that_never_finishes_times_out_with_its_last_status(api: FakeApiServer) -> None:
    api.ready_after = None
    with pytest.raises(TrainingJobError, match=r"TrainJob ns1/student-\w+ was not finished after "
                                               r"launch.timeout_s=0.3 s: Running node: 2 active.*left in place"):
        trainjob.launch(_cfg(timeout_s=0.3), CONFIG_URI, client=api.client())


def test_refused_calls_are_training_job_errors() -> None:
    with serving(deny=True) as api, pytest.raises(TrainingJobError, match=r"TrainJob ns1/.*HTTP 403.*RoleBinding"):
        trainjob.launch(_cfg(), CONFIG_URI, client=api.client())
