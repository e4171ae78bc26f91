"""Gin for the command lines: parsing a run's configuration, and its bindings checked by type.

`parse_config` parses the files and bindings the trainer and the exporter
are given, turning a missing file or a bad binding into one ConfigError line.

Gin passes a bound value as it was written: `train.steps = '20'` hands
`train` the string '20', which fails many frames later (`unsupported operand
type(s) for -: 'str' and 'int'`). `check_bindings` compares every binding
with its parameter's annotation before anything runs and names the
parameter, the value and the type it takes. Annotations it cannot judge
(callables, layers, classes) pass; references (`@f`, `%MACRO`) are checked
where they are resolved, not here.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 (lets gin report a missing config file: it uses importlib.util unimported)
import inspect
import os
import re
import types
import typing

import gin

_SIMPLE = (bool, int, float, str)


class ConfigError(Exception):
    """A mistake in a run's configuration (a missing file, a bad binding), reported in one line."""


def one_line(error: BaseException) -> str:
    """The error's message on one line, without gin's caret markers and call-site note."""
    lines = [line.strip() for line in str(error).splitlines()]
    text = " ".join(line for line in lines if line and set(line) != {"^"})
    return re.sub(r" In call to configurable '[\w.]+' \(<[^>]*>\)$", "", text)


def parse_config(files, bindings) -> None:
    """Parses gin `files`, then `bindings`; raises ConfigError naming a missing file or a bad binding."""
    for path in files:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
    try:
        gin.parse_config_files_and_bindings(files, bindings)
    except (ValueError, SyntaxError, ImportError, OSError) as e:
        raise ConfigError(f"bad gin configuration: {one_line(e)}") from e


class BindingTypeError(TypeError):
    """A gin binding whose value is not of the type its parameter is annotated with."""


def _matches_simple(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # An int is a fine float (`lr = 1`).
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def matches(value, annotation) -> bool:
    """Whether `value` fits `annotation`; True for annotations this module does not judge."""
    if annotation is type(None):
        return value is None
    if annotation in _SIMPLE:
        return _matches_simple(value, annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(annotation))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        return len(set(args)) != 1 or all(matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def describe(annotation) -> str:
    """`int`, `int or None`, `list[int]`: the annotation as a message says it."""
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _function_of(configurable) -> object:
    wrapped = configurable.wrapped
    return wrapped.__init__ if inspect.isclass(wrapped) else wrapped


def _hints(configurable) -> dict:
    try:
        return typing.get_type_hints(_function_of(configurable))
    except Exception:  # noqa: BLE001 (an annotation that does not evaluate is one we cannot judge)
        return {}


def _hint_to_unquote(value, annotation) -> str:
    """', without quotes' when a quoted value would have been right unquoted."""
    if not isinstance(value, str):
        return ""
    for kind in (int, float):
        try:
            unquoted = kind(value)
        except ValueError:
            continue
        if matches(unquoted, annotation):
            return f" (write {value} without quotes)"
    return ""


def check_bindings() -> None:
    """Raises BindingTypeError for the first gin binding whose value does not fit its parameter."""
    config = getattr(gin.config, "_CONFIG", {})  # gin keeps its bindings here; no public listing.
    for (scope, selector), values in list(config.items()):
        configurable = gin.config._REGISTRY.get_match(selector)
        if configurable is None or selector == "gin.macro":
            continue
        hints = _hints(configurable)
        for name, value in values.items():
            if name not in hints or isinstance(value, gin.config.ConfigurableReference):
                continue
            if not matches(value, hints[name]):
                where = f"{scope}/{configurable.name}" if scope else configurable.name
                raise BindingTypeError(
                    f"{where}.{name} = {value!r} has type {type(value).__name__}, but {configurable.name}'s "
                    f"{name} takes {describe(hints[name])}{_hint_to_unquote(value, hints[name])}"
                )
