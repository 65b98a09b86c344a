"""Frozen config dataclasses: their field docs, and building them from YAML or pipeline parameters.

Every setting is a dataclass field followed by its docstring (meaning and unit, one sentence). That
docstring is the setting's only help text: ``field_docs`` reads it once for the command line
(:mod:`repotune.options`) and anything else that describes settings. ``from_dict`` turns a YAML
mapping into those dataclasses and refuses unknown keys and wrong types with a message that names
the setting, before any work starts.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
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


# A number in exponent form that YAML 1.1 (PyYAML) reads as a string, wanting a '.' and a signed
# exponent: `1e-4`, `2.0e4`, `5E+3`.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # `1e-4`: a number in YAML 1.2 and JSON, a string to PyYAML (YAML 1.1)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RepotuneError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RepotuneError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {hint!r} at {where}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and its dataclass bases), with its
    lines joined and ``double`` backquotes made single, by field name; fields without one are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(klass))).body
        for field, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                text = " ".join(inspect.cleandoc(after.value.value).split())
                docs[field.target.id] = text.replace("``", "`")
    return docs


def from_struct(values: dict[str, Any]) -> dict[str, Any]:
    """A KFP ``dict`` parameter as the library expects it: whole numbers back to ``int``.

    KFP carries dict parameters as protobuf Structs, whose numbers are all floats (40 arrives as 40.0).
    """
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain data for logging and summaries (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))
