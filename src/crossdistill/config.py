"""Strict configuration: one pydantic schema per step, shared by the CLI and the KFP components.

Unknown keys are errors (``extra="forbid"``), so a typo never becomes a silent default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from crossdistill.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base for every step's configuration."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def parse(cls: type[C], data: dict[str, Any] | None = None, *, source: str = "config") -> C:
        """Validate ``data``; on failure raise ConfigError naming ``source`` and each bad field."""
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, cls.__name__, source)) from None


def _describe(exc: ValidationError, schema: str, source: str) -> str:
    lines = [f"invalid {schema} in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}' (not a field of {schema}; check the spelling)")
        else:
            lines.append(f"  - {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like key=value (e.g. epochs=5)")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: nested dicts merge key by key, anything else in ``extra`` replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def json_object(text: str | None, where: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object (empty = ``{}``); anything else is a ConfigError naming ``where``."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object of config keys, got {type(value).__name__}")
    return value


def step_config(schema: type[C], config_json: str | None, explicit: dict[str, Any], step: str, *,
                defaults: dict[str, Any] | None = None) -> C:
    """The validated config of a KFP component: ``defaults`` < ``config_json`` < ``explicit``.

    ``config_json`` is the component's free-form JSON parameter (any key of ``schema``);
    ``explicit`` holds what the component sets from its own typed parameters and artifact paths,
    which win (dicts merge key by key). Errors name the component ``step``.
    """
    base = deep_merge(defaults or {}, json_object(config_json, f"{step}: config_json"))
    return schema.parse(deep_merge(base, explicit), source=f"{step} config_json")


def load_config(schema: type[C], path: str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Read YAML/JSON at ``path`` (optional), apply ``key=value`` overrides, validate against ``schema``."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path:
        text = Path(path).read_text() if "://" not in path else _read_uri_text(path)
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        data = deep_merge(data, loaded)
        source = path
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source = f"{source} + overrides"
    return schema.parse(data, source=source)


def _read_uri_text(uri: str) -> str:
    from crossdistill.storage import read_text

    return read_text(uri)


def to_json(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
