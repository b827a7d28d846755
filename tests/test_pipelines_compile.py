"""Compile every pipeline and read the compiled spec: placement, exit handler, loops, parameters, user URIs,
the teacher's Secrets, CLI."""

import filecmp
import json
import re
from pathlib import Path

import pytest
import yaml

from crossdistill import components, pipeline_cli
from crossdistill.errors import ConfigError
from crossdistill.pipelines.compile import PIPELINES, compile_component, compile_pipeline
from crossdistill.pipelines.placement import (
    GPU_ACCELERATOR_LABEL,
    TPU_ACCELERATOR_LABEL,
    TPU_TOPOLOGY_LABEL,
    Placement,
)
from crossdistill.pipelines.run_local import DockerUnavailableError, docker_available, make_runner
from crossdistill.pipelines.upload import client_from_env

TEACHER_TASKS = {"train-teacher"}
STUDENT_TASKS = {"student-train", "evaluate"}


def _compile(name: str, tmp_path: Path, placement: Placement | None = None) -> tuple[dict, dict]:
    path = compile_pipeline(name, tmp_path / f"{name}.yaml", placement)
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec, platform


def _executors(spec: dict) -> dict:
    """The container executors by task (importers have none)."""
    return {name.removeprefix("exec-"): ex["container"] for name, ex in spec["deploymentSpec"]["executors"].items()
            if "container" in ex}


def _component(task: str) -> str:
    """'evaluate-2' (or 'student-train-2-2') -> the component behind a (numbered) executor."""
    return re.sub(r"(-\d+)+$", "", task)


def _placement_only(k8s: dict) -> dict:
    """The platform config of one executor without the pod labels and Secret mounts (those are not placement)."""
    return {k: v for k, v in k8s.items() if k not in ("podMetadata", "secretAsVolume")}


def _tasks(spec: dict) -> dict:
    """Every task of every (sub-)DAG by its name in that DAG (same-named tasks: the last one wins)."""
    tasks = {}
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    tasks.update(spec["root"]["dag"]["tasks"])
    return tasks


def _dag_of(spec: dict, branch: str) -> dict:
    """The tasks of the condition branch whose display name is ``branch`` (e.g. ``your-data``)."""
    for comp in spec["components"].values():
        for task in comp.get("dag", {}).get("tasks", {}).values():
            if task["taskInfo"]["name"] == branch:
                return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]
    raise AssertionError(f"no branch {branch}")


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
    tasks = _tasks(spec)
    assert "prepare-data" in tasks and "student-train" in tasks and "evaluate" in tasks
    # The teardown derives the deployment name from the job id, like teacher-serve.
    job_id = root["teacher-teardown"]["inputs"]["parameters"]["job_id"]["runtimeValue"]["constant"]
    assert job_id == "{{$.pipeline_job_uuid}}"


TEACHER_CALLERS = {"online-distillation": {"student-train", "evaluate"},
                   "offline-distillation": {"pseudo-label", "evaluate"},
                   "multi-teacher-distillation": {"pseudo-label", "evaluate"}}


def test_only_tasks_that_call_the_teacher_are_labelled_as_students(compiled):
    """manifests/base's NetworkPolicy lets only crossdistill.dev/role=student pods reach the teacher."""
    name, spec, platform = compiled
    labelled = {ex.removeprefix("exec-") for ex, cfg in platform.items()
                if cfg.get("podMetadata", {}).get("labels", {}).get("crossdistill.dev/role") == "student"}
    assert {_component(t) for t in labelled} == TEACHER_CALLERS[name]
    # A student trained on labels or stored soft labels never talks to the teacher: not labelled.
    for task in _tasks(spec).values():
        mode = task.get("inputs", {}).get("parameters", {}).get("mode", {}).get("runtimeValue", {}).get("constant")
        if mode in ("hard", "offline"):
            assert task["componentRef"]["name"].removeprefix("comp-") not in labelled, task["taskInfo"]


def test_caching_and_retries(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
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
                 "student_config_json", "teacher_placement_json", "test_data_uri"):
        assert knob in params, f"{name} lacks parameter {knob}"
    assert params["dataset"]["defaultValue"] == "digits"


def test_teacher_replicas_reach_every_teacher_serve_task(compiled):
    name, spec, _ = compiled
    assert spec["root"]["inputDefinitions"]["parameters"]["teacher_replicas"]["defaultValue"] == 1
    serves = {t: task for t, task in _tasks(spec).items() if _component(t) == "teacher-serve"}
    assert serves, f"{name} serves no teacher"
    for t, task in serves.items():
        wired = task["inputs"]["parameters"]["replicas"]
        assert wired["componentInputParameter"].endswith("teacher_replicas"), f"{name}/{t}: replicas from {wired}"


def test_student_workers_reach_every_student_train_task(compiled):
    name, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["student_workers"]["defaultValue"] == 1
    assert json.loads(params["student_launch_json"]["defaultValue"])["backend"] == "local"
    [task] = [task for t, task in _tasks(spec).items() if t == "student-train"]
    for knob, param in (("workers", "student_workers"), ("launch_json", "student_launch_json")):
        assert task["inputs"]["parameters"][knob]["componentInputParameter"].endswith(param), f"{name}: {knob}"


def test_a_trainjob_student_launches_from_a_cpu_task_and_places_the_job_on_the_student_pool(tmp_path):
    placement = Placement.parse({"student": {"backend": "trainjob", "gpus": 2}})
    spec, platform = _compile("online-distillation", tmp_path, placement)
    launch = json.loads(spec["root"]["inputDefinitions"]["parameters"]["student_launch_json"]["defaultValue"])
    assert launch["backend"] == "trainjob" and launch["proc_per_node"] == 2
    assert launch["resources"]["accelerator_type"] == "nvidia.com/gpu" and launch["resources"]["accelerator_count"] == 2
    assert launch["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "accelerator" not in _executors(spec)["student-train"].get("resources", {})  # the job's pods get the GPUs
    assert "nodeSelector" not in platform.get("exec-student-train", {})
    assert _executors(spec)["evaluate"]["resources"]["accelerator"]["resourceCount"] == "2"  # the rest stays put


def test_offline_labels_in_a_parallel_loop_collected_by_the_student(tmp_path):
    spec, _ = _compile("offline-distillation", tmp_path)
    inner = spec["components"]["comp-distil-offline"]["dag"]["tasks"]
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


USER_URIS = {"online-distillation": {"teacher_model_uri", "student_data_uri", "test_data_uri"},
             "offline-distillation": {"teacher_model_uri", "student_data_uri", "test_data_uri"},
             "multi-teacher-distillation": {"val_data_uri", "unlabeled_data_uri", "test_data_uri"}}


def test_user_teacher_and_data_come_in_through_importers(compiled):
    """Empty URIs (the default) keep the demo path; set, they are imported and nothing is prepared or trained."""
    name, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(params[p]["defaultValue"] == "" for p in USER_URIS[name])
    yours = _dag_of(spec, "your-data")
    assert "prepare-data" not in yours and "train-teacher" not in yours
    imported = {t["taskInfo"]["name"]: t["inputs"]["parameters"]["uri"] for t in yours.values()
                if t["componentRef"]["name"].startswith("comp-importer")}
    wanted = {"import-test-data": "test_data_uri"} | (
        {"import-val-data": "val_data_uri", "import-unlabeled-data": "unlabeled_data_uri"}
        if name.startswith("multi") else {"import-student-data": "student_data_uri", "import-teacher": "teacher_model_uri"})
    for task, param in wanted.items():
        assert imported[task] == {"componentInputParameter": f"pipelinechannel--{param}"}
    importers = {k: v["importer"] for k, v in spec["deploymentSpec"]["executors"].items() if "importer" in v}
    assert {i["typeSchema"]["schemaTitle"] for i in importers.values()} == {"system.Dataset", "system.Model"}
    demo = _dag_of(spec, "demo-data")
    assert "prepare-data" in demo
    condition = next(t for t in _tasks(spec).values() if t["taskInfo"]["name"] == "demo-data")["triggerPolicy"]
    switch = "val_data_uri" if name.startswith("multi") else "student_data_uri"
    assert condition["condition"] == f"inputs.parameter_values['pipelinechannel--{switch}'] == ''"


def test_multi_teacher_imports_each_teachers_model_uri(tmp_path):
    spec, _ = _compile("multi-teacher-distillation", tmp_path)
    loop_comp = next(t["componentRef"]["name"] for t in _dag_of(spec, "your-data").values()
                     if t["taskInfo"]["name"] == "each-teacher")
    loop = spec["components"][loop_comp]["dag"]["tasks"]
    [importer] = [t for t in loop.values() if t["taskInfo"]["name"] == "import-teacher"]
    uri = importer["inputs"]["parameters"]["uri"]
    assert uri["componentInputParameter"].startswith("pipelinechannel--teachers-loop-item")
    assert uri.get("parameterExpressionSelector") == "parseJson(string_value)[\"model_uri\"]"


SECRETS = {"auth_secret": "teacher-token", "tls_secret": "teacher-server-tls", "ca_secret": "teacher-ca"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipelines_pass_secret_names_and_clients_mount_them(name, tmp_path):
    placement = Placement.parse({"teacher_access": SECRETS})
    spec, platform = _compile(name, tmp_path, placement)
    # teacher-serve gets the server's Secrets by name, through its placement (TeacherServeConfig keys).
    served = json.loads(spec["root"]["inputDefinitions"]["parameters"]["teacher_placement_json"]["defaultValue"])
    assert served["auth_secret"] == "teacher-token" and served["tls_secret"] == "teacher-server-tls"
    # Every task that calls the teacher mounts the token and the CA, never the server's key pair ...
    callers = {ex for ex, cfg in platform.items()
               if cfg.get("podMetadata", {}).get("labels", {}).get("crossdistill.dev/role") == "student"}
    assert callers
    for ex in callers:
        mounts = {m["secretName"]: m["mountPath"] for m in platform[ex]["secretAsVolume"]}
        assert mounts == {"teacher-token": "/var/run/secrets/crossdistill/teacher-auth",
                          "teacher-ca": "/var/run/secrets/crossdistill/teacher-ca"}
    # ... and nothing else mounts any Secret.
    assert not [ex for ex, cfg in platform.items() if ex not in callers and cfg.get("secretAsVolume")]
    # The callers are told where the files are.
    told = [t for t in _tasks(spec).values() if "teacher_token_file" in t.get("inputs", {}).get("parameters", {})]
    assert {t["componentRef"]["name"] for t in told} and all(
        t["inputs"]["parameters"]["teacher_token_file"]["runtimeValue"]["constant"]
        == "/var/run/secrets/crossdistill/teacher-auth/token"
        and t["inputs"]["parameters"]["teacher_ca_file"]["runtimeValue"]["constant"]
        == "/var/run/secrets/crossdistill/teacher-ca/ca.crt" for t in told)
    assert {_component(t["componentRef"]["name"].removeprefix("comp-")) for t in told} == TEACHER_CALLERS[name]
    # Without teacher_access nothing is mounted and no file is named.
    spec, platform = _compile(name, tmp_path)
    assert not any(cfg.get("secretAsVolume") for cfg in platform.values())
    assert "teacher_token_file" not in json.dumps(spec["root"]) and "auth_secret" not in json.dumps(spec["root"])


def test_run_local_refuses_unknown_or_incomplete_arguments(capsys):
    assert pipeline_cli.main(["run-local", "online", "--set", "teacher_uri=/x/teacher.keras"]) == 1
    err = capsys.readouterr().err
    assert "has no parameter 'teacher_uri'" in err and "teacher_model_uri (default '')" in err
    assert pipeline_cli.main(["run-local", "offline", "--set", "student_data_uri=/x/data"]) == 1
    assert "teacher_model_uri, test_data_uri must be set too" in capsys.readouterr().err
    assert pipeline_cli.main(["run-local", "multi-teacher", "--set", "val_data_uri=/v", "--set",
                              "unlabeled_data_uri=/u", "--set", "test_data_uri=/t"]) == 1
    assert "every item of teachers needs a model_uri" in capsys.readouterr().err


def test_set_values_are_typed_as_the_pipeline_expects():
    """--set parses YAML: a JSON parameter given a mapping gets it back as text, a float given an int a float."""
    from crossdistill.pipelines.compile import build_pipeline
    from crossdistill.pipelines.run_local import pipeline_arguments

    args = pipeline_arguments("online", build_pipeline("online"), pipeline_cli.load_config_dict(
        None, ["student_config_json={lr: 0.01}", "temperature=2", "student_epochs=3", "dataset=digits"]))
    assert args == {"student_config_json": '{"lr": 0.01}', "temperature": 2.0, "student_epochs": 3,
                    "dataset": "digits"}
    assert isinstance(args["temperature"], float)


PARAMETER_TYPES = {"String": "str", "Integer": "int", "Float": "float", "Boolean": "bool", "List": "list",
                   "Struct": "dict"}


def _type(spec, direction: str) -> str:
    """A component input/output as its Python annotation: ``Input[List[Dataset]]``, ``str``, ..."""
    if spec.type.startswith("system."):
        cls = spec.type.removeprefix("system.").split("@")[0]
        return f"`{direction}[List[{cls}]]`" if spec.is_artifact_list else f"`{direction}[{cls}]`"
    inner = re.fullmatch(r"List\[(\w+)\]", spec.type)
    return f"`list[{PARAMETER_TYPES[inner.group(1)]}]`" if inner else f"`{PARAMETER_TYPES[spec.type]}`"


def readme_tables(name: str) -> str:
    """The Inputs and Outputs tables a component's README must hold, from the component itself."""
    spec = components.load(name).component_spec
    lines = ["## Inputs", "", "| name | type | default |", "|---|---|---|"]
    for key, inp in spec.inputs.items():
        default = ("optional" if inp.type.startswith("system.") else f"`{inp.default!r}`") if inp.optional else "required"
        lines.append(f"| `{key}` | {_type(inp, 'Input')} | {default} |")
    lines += ["", "## Outputs", "", "| name | type |", "|---|---|"]
    for key, out in (spec.outputs or {}).items():
        lines.append(f"| `{key}` | {_type(out, 'Output')} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(components.COMPONENTS))
def test_component_readme_states_the_real_types_and_the_installed_path(name):
    folder = components.COMPONENTS[name][0]
    readme = (components.COMPONENTS_DIR / folder / "README.md").read_text()
    assert readme_tables(name) in readme, f"components/{folder}/README.md: Inputs/Outputs tables differ from:\n" + \
        readme_tables(name)
    assert f'load_component_from_file(str(yaml_path("{name}")))' in readme
