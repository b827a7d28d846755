"""Strict configuration and the CLI around it."""

import json
import subprocess
import sys

import pytest

from crossdistill.cli import main
from crossdistill.config import load_config, parse_overrides
from crossdistill.data.splits import PrepareDataConfig
from crossdistill.deploy.config import TeacherServeConfig
from crossdistill.errors import ConfigError


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nstudent_lables: 10\n")
    with pytest.raises(ConfigError, match=r"unknown key 'student_lables'.*check the spelling"):
        load_config(PrepareDataConfig, str(cfg))


def test_nested_unknown_key_and_bad_value_are_named():
    with pytest.raises(ConfigError, match=r"unknown key 'resources.gpus'"):
        TeacherServeConfig.parse({"model_uri": "m.keras", "resources": {"gpus": 1}})
    with pytest.raises(ConfigError, match=r"name: String should match pattern"):
        TeacherServeConfig.parse({"model_uri": "m.keras", "name": "Not_DNS"})


def test_overrides_are_nested_and_typed():
    assert parse_overrides(["a.b=3", "c=x", "d=[1, 2]", "e=true"]) == {
        "a": {"b": 3}, "c": "x", "d": [1, 2], "e": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_file_then_overrides(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"student_labels": 10, "seed": 1}))
    merged = load_config(PrepareDataConfig, str(cfg), ["seed=7"])
    assert (merged.student_labels, merged.seed) == (10, 7)


def test_cli_rejects_unknown_key_with_exit_code_1(capsys):
    assert main(["prepare-data", "--print-config", "student_lables=3"]) == 1
    assert "unknown key 'student_lables'" in capsys.readouterr().err


def test_cli_prints_validated_config_and_schema(capsys):
    assert main(["prepare-data", "--print-config", "seed=4"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 4
    assert main(["prepare-data", "--show-schema"]) == 0
    assert "student_labels: int = 64" in capsys.readouterr().out


def test_console_script_help_lists_every_step():
    out = subprocess.run([sys.executable, "-m", "crossdistill.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for step in ("teacher-serve", "pseudo-label", "student-train", "evaluate", "expert-evaluate",
                 "trust-model-train", "demo"):
        assert step in out


def test_step_config_layers_defaults_config_json_and_explicit():
    from crossdistill.config import step_config

    cfg = step_config(TeacherServeConfig, '{"name": "from-json", "resources": {"cpu": "2"}, "workers_threads": 3}',
                      {"model_uri": "m.keras", "resources": {"memory": "1Gi"}, "name": "explicit"}, "teacher-serve",
                      defaults={"workers_threads": 1, "workdir": "/tmp/w", "resources": {"cpu": "1"}})
    assert cfg.name == "explicit"  # explicit wins over config_json
    assert cfg.workers_threads == 3  # config_json wins over defaults
    assert cfg.workdir == "/tmp/w"  # a default no one overrides
    assert (cfg.resources.cpu, cfg.resources.memory) == ("2", "1Gi")  # nested dicts merge key by key
    assert step_config(PrepareDataConfig, "", {"seed": 5}, "prepare-data").seed == 5  # empty = {}


def test_step_config_errors_name_the_step():
    from crossdistill.config import step_config

    with pytest.raises(ConfigError, match=r"^prepare-data: config_json is not valid JSON"):
        step_config(PrepareDataConfig, "{seed: 1}", {}, "prepare-data")
    with pytest.raises(ConfigError, match=r"prepare-data: config_json must be a JSON object.*list"):
        step_config(PrepareDataConfig, "[1]", {}, "prepare-data")
    with pytest.raises(ConfigError, match=r"PrepareDataConfig in prepare-data config_json:\n.*unknown key 'sed'"):
        step_config(PrepareDataConfig, '{"sed": 1}', {}, "prepare-data")


def test_show_schema_lists_nested_keys_with_type_default_and_description(capsys):
    """Optional models (teacher), nested ones (teacher.tls), lists of models (features[]) are walked."""
    assert main(["student-train", "--show-schema"]) == 0
    lines = {line.split(":", 1)[0].strip(): line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["teacher"].startswith("  teacher: TeacherClientConfig | None = None")
    assert "(required)" in lines["teacher.url"] and "host:port" in lines["teacher.url"]
    assert "teacher.top_k: int = 0" in lines["teacher.top_k"]
    assert "teacher.tls.ca_file" in lines and "teacher.token_file" in lines
    assert "(required)" in lines["features[].student"]
    assert "model.name: str = 'mlp'" in lines["model.name"]
    assert main(["evaluate", "--show-schema"]) == 0
    out = capsys.readouterr().out
    assert "  teachers[].client.url: str (required)" in out and "  teachers[].label_map:" in out
