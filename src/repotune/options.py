"""Command-line parameters built from config dataclasses, so that a default and a help text exist once.

A command names the config fields it exposes, each as a ``Setting``; ``@settings(Config, ...)`` gives
the typer command one option (or argument) per setting whose type, default and help come from the
field: its annotation, its default, and the docstring written under it (:func:`repotune.config.field_docs`).
Nested configs are reached by dotted paths (``split.eval_fraction``). The command function receives
what was given as its first parameter, a nested dict by field name, and builds the config with
:func:`build`, after adding what the command line does not map one to one (a recipe resolved from a
name and ``--set`` overrides, say). Parameters of the function's own stay as they are: they are the
command's alone (``repotune run --no-query``), so they too are written once.

    @app.command()
    @settings(CleanConfig, Setting("input", argument=True), Setting("output", ("-o", "--output")),
              Setting("split.eval_fraction"), Setting("redact_pii"))
    def clean(values: Values) -> None:
        result = repotune.clean.run(build(CleanConfig, values))

Like TRL's ``TrlParser``, which builds its parser from ``field(metadata={"help": ...})``; here the
help is the field's docstring, the form every config of this project already has.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from repotune.config import field_docs

T = TypeVar("T")
Values = dict[str, Any]
"""What a command was given for its settings: field name to value, nested configs as nested dicts."""


@dataclass(frozen=True)
class Setting:
    """One config field as a command-line parameter."""

    path: str
    """The field, dotted through nested configs: ``split.eval_fraction``."""
    flags: tuple[str, ...] = ()
    """Option names, e.g. ``("-o", "--output")``; default: ``--`` and the field's name with dashes."""
    argument: bool = False
    """A positional argument instead of an option."""
    metavar: str | None = None
    """How the help names the value (``DIR``)."""
    envvar: str | None = None
    """Environment variable read when the option is not given."""
    parse: Callable[[Any], Any] | None = None
    """Turns the option's text into the field's value (``--include code,docs`` into record kinds); such
    an option takes text, and leaving it out leaves the field's own default."""
    multiple: bool = False
    """With ``parse``: the option may be repeated, and ``parse`` gets the list of texts
    (``--set a=1 --set b=2``); an argument takes one or more values (``SOURCE...``)."""

    @property
    def name(self) -> str:
        """The parameter's Python name (what typer passes it as)."""
        if self.flags:
            longest = max(self.flags, key=len)
            return longest.lstrip("-").replace("-", "_")
        return self.path.rsplit(".", 1)[-1]


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def field_of(cls: type, path: str) -> tuple[type, dataclasses.Field, Any]:
    """The dataclass that declares the field at dotted ``path`` under ``cls``, the field, and its type."""
    owner = cls
    *parents, leaf = path.split(".")
    for part in parents:
        owner = _unwrap_optional(typing.get_type_hints(owner)[part])
        if not dataclasses.is_dataclass(owner):
            raise TypeError(f"{cls.__name__}.{path}: {part} is not a nested config")
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if leaf not in fields:
        raise TypeError(f"{cls.__name__} has no setting {path}")
    return owner, fields[leaf], typing.get_type_hints(owner)[leaf]


def default_of(field: dataclasses.Field) -> Any:
    """The field's default value, or ``inspect.Parameter.empty`` when it has none (a required setting)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def help_of(cls: type, path: str) -> str:
    """The help text of the setting at ``path``: the docstring under its field."""
    owner, field, _ = field_of(cls, path)
    text = field_docs(owner).get(field.name)
    if not text:
        raise TypeError(f"{owner.__name__}.{field.name} has no docstring to serve as its help")
    return text


def _parameter(cls: type, setting: Setting) -> inspect.Parameter:
    import typer

    _, field, hint = field_of(cls, setting.path)
    info: dict[str, Any] = {"help": help_of(cls, setting.path)}
    if setting.metavar is not None:
        info["metavar"] = setting.metavar
    if setting.envvar is not None:
        info["envvar"] = setting.envvar
    if setting.parse is not None:
        hint, default = (list[str] | None) if setting.multiple else (str | None), None
        if isinstance(default_of(field), int | float | str) and not setting.multiple:
            info["show_default"] = str(default_of(field))  # what leaving the option out gives
        if setting.argument and default_of(field) is inspect.Parameter.empty:
            default = inspect.Parameter.empty  # the field is required, and so is the argument
    else:
        default = default_of(field)
    marker = typer.Argument(**info) if setting.argument else typer.Option(*setting.flags, **info)
    return inspect.Parameter(
        setting.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, marker]
    )


def settings(cls: type, *exposed: Setting) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorates a typer command so that it takes ``exposed`` as parameters (see the module docstring)."""

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]
        generated = [_parameter(cls, setting) for setting in exposed]

        @functools.wraps(func)
        def command(**given: Any) -> T:
            values: Values = {}
            for setting in exposed:
                value = given.pop(setting.name)
                if setting.parse is not None:
                    if value is None:
                        continue
                    value = setting.parse(value)
                _put(values, setting.path, value)
            return func(values, **given)

        parameters = generated + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {}  # the signature carries every type, already evaluated
        command.settings = (cls, exposed)  # type: ignore[attr-defined]  (what it exposes, for checks)
        return command

    return decorate


def _put(values: Values, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def build(cls: type[T], values: Values) -> T:
    """``cls`` from ``values`` (field name to value; a nested config as a dict of its own fields, or as
    the object itself); what ``values`` leaves out keeps its default."""
    hints = typing.get_type_hints(cls)
    arguments = {}
    for name, value in values.items():
        nested = _unwrap_optional(hints[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(nested):
            value = build(nested, value)
        arguments[name] = value
    return cls(**arguments)
