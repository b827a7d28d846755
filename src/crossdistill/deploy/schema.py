"""Offline schema checks of Kubernetes objects against the Python SDK models of their APIs.

Two families of generated models are understood:

- ``OpenApiModels``: openapi-generator's classic Python models (``kubernetes``, ``kserve``,
  ``kubeflow-training``): classes with ``openapi_types`` and ``attribute_map``, types named by strings
  such as ``list[V1Container]`` or ``dict(str, str)``;
- ``PydanticModels``: its pydantic v2 models (``kubeflow_trainer_api``): fields under their JSON aliases,
  types as annotations; pydantic itself checks every scalar.

``errors(value, model, path, models)`` walks an object by JSON field names and lists every unknown key
and every value of the wrong type as ``path: what is wrong`` (empty = the object fits the schema).
"""

from __future__ import annotations

import importlib
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from crossdistill.errors import ConfigError

# What a type is, for the walker: ("scalar", check) where check(value) -> problem or None;
# ("list", item type); ("dict", value type); ("optional", type); ("object", (name, {json key: type}, required)).
Node = tuple[str, Any]


def errors(value: Any, model: Any, path: str, models: OpenApiModels | PydanticModels) -> list[str]:
    """Every unknown field and type mismatch of ``value`` against ``model`` (a type of ``models``)."""
    found: list[str] = []
    _walk(value, model, path, models, found)
    return found


def _walk(value: Any, type_: Any, path: str, models: OpenApiModels | PydanticModels, found: list[str]) -> None:
    kind, arg = models.node(type_)
    if kind == "optional":
        if value is not None:
            _walk(value, arg, path, models, found)
    elif kind == "scalar":
        problem = arg(value)
        if problem:
            found.append(f"{path}: {problem}")
    elif kind == "list":
        if not isinstance(value, list):
            found.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, arg, f"{path}[{i}]", models, found)
    elif kind == "dict":
        if not isinstance(value, dict):
            found.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            _walk(item, arg, f"{path}.{key}", models, found)
    else:
        name, fields, required = arg
        if not isinstance(value, dict):
            found.append(f"{path}: expected an object ({name}), got {type(value).__name__}")
            return
        for key, item in value.items():
            if key not in fields:
                found.append(f"{path}.{key}: unknown field (not in {name})")
                continue
            _walk(item, fields[key], f"{path}.{key}", models, found)
        found.extend(f"{path}.{key}: required field missing (in {name})" for key in sorted(required - value.keys()))


# --- openapi-generator's classic models -----------------------------------------------------------

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+), (.+)\)$")
_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                         "object": (object,), "datetime": (str,), "date": (str,)}


def module_resolver(*modules: str) -> Callable[[str], type]:
    """A ``resolve(name)`` that looks a model class up in ``modules``, in order."""

    def resolve(name: str) -> type:
        for module in modules:
            cls = getattr(importlib.import_module(module), name, None)
            if cls is not None:
                return cls
        raise ConfigError(f"no OpenAPI model {name} in {', '.join(modules)}")

    return resolve


def _scalar_problem(type_name: str, value: Any) -> str | None:
    ok = isinstance(value, _SCALARS[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
    return None if ok else f"expected {type_name}, got {type(value).__name__} {value!r}"


class OpenApiModels:
    """Types named by strings; ``resolve(name)`` gives the model class of a name."""

    def __init__(self, resolve: Callable[[str], type]) -> None:
        self.resolve = resolve

    def node(self, type_name: str) -> Node:
        if type_name in _SCALARS:
            return "scalar", lambda value: _scalar_problem(type_name, value)
        if m := _LIST.match(type_name):
            return "list", m.group(1)
        if m := _DICT.match(type_name):
            return "dict", m.group(2)
        cls = self.resolve(type_name)
        fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
        return "object", (type_name, fields, frozenset())


# --- openapi-generator's pydantic models ----------------------------------------------------------

_ADAPTERS: dict[Any, Any] = {}


def _pydantic_problem(annotation: Any, value: Any) -> str | None:
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = _ADAPTERS.get(annotation)
        if adapter is None:
            adapter = _ADAPTERS[annotation] = TypeAdapter(annotation)
    except TypeError:  # an annotation that cannot be a dict key
        adapter = TypeAdapter(annotation)
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return f"{exc.errors()[0]['msg']}, got {type(value).__name__} {value!r}"
    return None


def _one_of_problem(cls: Any, value: Any) -> str | None:
    try:
        cls.from_json(json.dumps(value))
    except (ValueError, TypeError):
        return f"expected one of {', '.join(sorted(cls.model_fields['one_of_schemas'].default))} " \
               f"({cls.__name__}), got {type(value).__name__} {value!r}"
    return None


class PydanticModels:
    """Types as annotations of pydantic models; fields by their JSON aliases."""

    def node(self, annotation: Any) -> Node:
        from pydantic import BaseModel

        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (Union, types.UnionType) and type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            return "optional", rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 (built at run time)
        if origin is list:
            return "list", args[0]
        if origin is dict:
            return "dict", args[1]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if "actual_instance" in annotation.model_fields:  # a oneOf wrapper (IntOrString, Quantity)
                return "scalar", lambda value: _one_of_problem(annotation, value)
            fields, required = {}, set()
            for name, field in annotation.model_fields.items():
                key = field.alias or name
                fields[key] = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata \
                    else field.annotation
                if field.is_required():
                    required.add(key)
            return "object", (annotation.__name__, fields, frozenset(required))
        return "scalar", lambda value: _pydantic_problem(annotation, value)
