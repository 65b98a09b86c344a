"""Frozen dataclasses from YAML: unknown keys and wrong types are errors that name the setting.

Every recipe setting is a dataclass field with a docstring; this module turns a YAML mapping into
those dataclasses and refuses what does not fit, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from repotune.errors import RepotuneError

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RepotuneError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RepotuneError(f"recipe {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RepotuneError(f"recipe {path} must be a mapping of settings, not a {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` prefixes error messages (e.g. the file name)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
        raise RepotuneError(f"{where}: unknown key {key!r}{hint}")
    values = {}
    for name, value in data.items():
        values[name] = _convert(value, hints[name], f"{where}: {name}")
    return cls(**values)


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, where)
            except RepotuneError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise RepotuneError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RepotuneError(f"{where} must be a mapping of settings, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise RepotuneError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RepotuneError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RepotuneError(f"{where} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RepotuneError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RepotuneError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {hint!r} at {where}")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain data for logging and summaries (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))
