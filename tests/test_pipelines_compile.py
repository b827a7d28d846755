"""Compile every pipeline and read the compiled spec: placement, exit handler, loops, parameters, CLI."""

import filecmp
from pathlib import Path

import components
import pytest
import yaml
from pipelines.compile import PIPELINES, compile_component, compile_pipeline
from pipelines.placement import GPU_ACCELERATOR_LABEL, TPU_ACCELERATOR_LABEL, TPU_TOPOLOGY_LABEL, Placement
from pipelines.run_local import DockerUnavailableError, docker_available, make_runner
from pipelines.upload import client_from_env

from crossdistill import pipeline_cli
from crossdistill.errors import ConfigError

TEACHER_TASKS = {"train-teacher"}
STUDENT_TASKS = {"student-train", "evaluate"}


def _compile(name: str, tmp_path: Path, placement: Placement | None = None) -> tuple[dict, dict]:
    path = compile_pipeline(name, tmp_path / f"{name}.yaml", placement)
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec, platform


def _executors(spec: dict) -> dict:
    return {name.removeprefix("exec-"): ex["container"] for name, ex in spec["deploymentSpec"]["executors"].items()}


def _component(task: str) -> str:
    """'evaluate-2' -> 'evaluate': the component behind a (numbered) executor."""
    base, _, suffix = task.rpartition("-")
    return base if suffix.isdigit() else task


def _placement_only(k8s: dict) -> dict:
    """The platform config of one executor without the pod labels (those are not placement)."""
    return {k: v for k, v in k8s.items() if k != "podMetadata"}


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def compiled(request, tmp_path_factory):
    return request.param, *_compile(request.param, tmp_path_factory.mktemp("compiled"))


def test_teacher_asks_for_tpu_and_student_for_gpu(compiled):
    _, spec, platform = compiled
    for task, container in _executors(spec).items():
        acc = container.get("resources", {}).get("accelerator")
        kind = _component(task)
        if kind in TEACHER_TASKS:
            assert acc["resourceType"] == "google.com/tpu" and acc["resourceCount"] == "4"
            assert container["image"].endswith("crossdistill-teacher-tpu:0.1.0") or "teacher-tpu" in container["image"]
            k8s = platform[f"exec-{task}"]
            assert k8s["nodeSelector"]["labels"] == {TPU_ACCELERATOR_LABEL: "tpu-v5-lite-podslice",
                                                     TPU_TOPOLOGY_LABEL: "2x2"}
            assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
        elif kind in STUDENT_TASKS:
            assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
            assert platform[f"exec-{task}"]["nodeSelector"]["labels"] == {GPU_ACCELERATOR_LABEL: "nvidia-l4"}
        else:
            assert acc is None, f"{task} should not ask for an accelerator"
            assert not _placement_only(platform.get(f"exec-{task}", {}))
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"]


def test_exit_handler_wraps_the_dag_and_tears_the_teacher_down(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "teacher-teardown"}
    assert root["teacher-teardown"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["teacher-teardown"]["dependentTasks"] == ["exit-handler-1"]
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert "prepare-data" in inner and "student-train" in inner and "evaluate" in inner
    # The teardown derives the deployment name from the job id, like teacher-serve.
    job_id = root["teacher-teardown"]["inputs"]["parameters"]["job_id"]["runtimeValue"]["constant"]
    assert job_id == "{{$.pipeline_job_uuid}}"


def test_only_tasks_that_call_the_teacher_are_labelled_as_students(compiled):
    """manifests/base's NetworkPolicy lets only crossdistill.dev/role=student pods reach the teacher."""
    name, _, platform = compiled
    labelled = {_component(ex.removeprefix("exec-")) for ex, cfg in platform.items()
                if cfg.get("podMetadata", {}).get("labels", {}).get("crossdistill.dev/role") == "student"}
    assert {"student-train", "evaluate"} <= labelled
    if name == "offline-distillation":
        assert "pseudo-label" in labelled
    assert not labelled & {"train-teacher", "teacher-serve", "teacher-teardown", "prepare-data"}


def test_caching_and_retries(compiled):
    _, spec, _ = compiled
    tasks = {}
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    tasks.update(spec["root"]["dag"]["tasks"])
    assert tasks["teacher-teardown"]["cachingOptions"] == {}
    serve = next(t for n, t in tasks.items() if n.startswith("teacher-serve"))
    assert serve["cachingOptions"] == {}
    assert tasks["prepare-data"]["cachingOptions"] == {"enableCache": True}
    assert tasks["student-train"]["retryPolicy"]["maxRetryCount"] == 3
    assert "retryPolicy" not in serve


def test_knobs_are_pipeline_parameters(compiled):
    name, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for knob in ("dataset", "student_labels", "teacher_backend", "student_epochs", "temperature",
                 "student_config_json", "teacher_placement_json"):
        assert knob in params, f"{name} lacks parameter {knob}"
    assert params["dataset"]["defaultValue"] == "digits"


def test_offline_labels_in_a_parallel_loop_collected_by_the_student(tmp_path):
    spec, _ = _compile("offline-distillation", tmp_path)
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    shard_dag = spec["components"]["comp-label-shards"]["dag"]
    loop = shard_dag["tasks"]["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--shards"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4
    assert "pseudo-label" in spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    collected = shard_dag["outputs"]["artifacts"]["Output"]["artifactSelectors"][0]
    assert collected["producerSubtask"] == "for-loop-1"
    soft = inner["student-train"]["inputs"]["artifacts"]["soft_labels"]["taskOutputArtifact"]
    assert soft["producerTask"] == "label-shards"
    endpoint = inner["label-shards"]["inputs"]["parameters"]["teacher_endpoint"]["taskOutputParameter"]
    assert endpoint == {"outputParameterKey": "endpoint", "producerTask": "teacher-serve"}


def test_cpu_switch_removes_every_accelerator_selector_and_toleration(tmp_path):
    for name in PIPELINES:
        spec, platform = _compile(name, tmp_path, Placement.cpu_only())
        for task, container in _executors(spec).items():
            assert "accelerator" not in container.get("resources", {}), task
            assert "tpu" not in container["image"]
        assert all(not _placement_only(k8s) for k8s in platform.values())
        default = spec["root"]["inputDefinitions"]["parameters"]["teacher_placement_json"]["defaultValue"]
        assert "tpu" not in default


def test_placement_values_come_from_config(tmp_path):
    placement = Placement.parse({"teacher": {"tpu_topology": "2x4", "chips": 8}, "student": {"gpu_accelerator": "nvidia-h100-80gb"}})
    spec, platform = _compile("online-distillation", tmp_path, placement)
    assert _executors(spec)["train-teacher"]["resources"]["accelerator"]["resourceCount"] == "8"
    assert platform["exec-train-teacher"]["nodeSelector"]["labels"][TPU_TOPOLOGY_LABEL] == "2x4"
    assert platform["exec-student-train"]["nodeSelector"]["labels"][GPU_ACCELERATOR_LABEL] == "nvidia-h100-80gb"
    with pytest.raises(ConfigError, match="unknown key 'teacher.topology'"):
        Placement.parse({"teacher": {"topology": "2x4"}})


@pytest.mark.parametrize("name", sorted(components.COMPONENTS))
def test_committed_component_yaml_loads_and_is_current(name, tmp_path):
    from kfp.components import load_component_from_file

    committed = components.yaml_path(name)
    assert committed.is_file(), f"{committed} missing: run `crossdistill pipeline compile`"
    loaded = load_component_from_file(str(committed))
    assert loaded.name == name
    fresh = compile_component(name, tmp_path / "component.yaml")
    assert filecmp.cmp(fresh, committed, shallow=False), (
        f"{committed} is stale versus components/{components.COMPONENTS[name][0]}/component.py: "
        "run `crossdistill pipeline compile`")


def test_cli_compile_list_and_errors(tmp_path, capsys):
    assert pipeline_cli.main(["compile", "--out-dir", str(tmp_path), "--no-components", "--cpu", "online"]) == 0
    assert (tmp_path / "online-distillation.yaml").is_file()
    assert not (tmp_path / "offline-distillation.yaml").exists()
    assert pipeline_cli.main(["list"]) == 0
    assert "multi-teacher-distillation" in capsys.readouterr().out
    assert pipeline_cli.main(["compile", "--out-dir", str(tmp_path), "--no-components", "nope"]) == 1
    assert "unknown pipeline 'nope'" in capsys.readouterr().err


def test_upload_without_endpoint_says_what_to_set(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="KFP_HOST is not set"):
        client_from_env({})
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert pipeline_cli.main(["upload", "--out-dir", str(tmp_path)]) == 1
    assert "not compiled yet" in capsys.readouterr().err
    pipeline_cli.main(["compile", "--out-dir", str(tmp_path), "--no-components"])
    assert pipeline_cli.main(["upload", "--out-dir", str(tmp_path)]) == 1
    assert "KFP_HOST is not set" in capsys.readouterr().err
    assert pipeline_cli.main(["submit", "online", "--out-dir", str(tmp_path), "--set", "student_epochs=2"]) == 1
    assert "KFP_HOST is not set" in capsys.readouterr().err


def test_docker_runner_only_when_an_engine_answers():
    ok, why = docker_available()
    if ok:
        assert make_runner("docker") is not None
    else:
        with pytest.raises(DockerUnavailableError, match="--runner subprocess"):
            make_runner("docker")
        assert why
