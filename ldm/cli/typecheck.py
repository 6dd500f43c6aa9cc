"""Config values checked against the type hints of what they build, before anything is built.

`model.beta=abc`, `labels=[1.7,2.9]`, `trainer.max_epochs=ten` or a misspelt argument would
otherwise fail deep inside a constructor or a training step (or, worse, be truncated silently).
Every node with a `_target_` is matched against the signature of its target: unknown argument
names, and values whose type does not fit the annotation (`int`, `float`, `bool`, `str`,
`Literal`, `X | None`, lists of those, a class given a plain value). What cannot be decided from
the annotation alone is left to the constructor, whose own range checks name the key too.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hydra.utils import get_object

from ldm.errors import ConfigError

_UNKNOWN = None  # "cannot tell": left to the constructor


def _annotations(fn: Callable) -> dict[str, Any]:
    """Resolved annotations of `fn`'s parameters; ones that cannot be resolved are left out."""
    try:
        return get_type_hints(fn)
    except Exception:  # forward references to names imported only for type checking
        namespace = vars(sys.modules.get(getattr(fn, "__module__", ""), sys))
        hints = {}
        for name, parameter in inspect.signature(fn).parameters.items():
            annotation = parameter.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)  # noqa: S307  (the library's own annotations)
                except Exception:
                    continue
            if annotation is not inspect.Parameter.empty:
                hints[name] = annotation
        return hints


def matches(value: Any, hint: Any) -> bool | None:
    """Whether a plain config value fits `hint`: True, False, or None when the hint cannot tell."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return _UNKNOWN
    if origin in (Union, types.UnionType):
        results = [matches(value, a) for a in args]
        return True if True in results else (False if all(r is False for r in results) else _UNKNOWN)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if isinstance(value, dict):  # an object built from a node of its own, or a mapping
        return _UNKNOWN
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or hint is Path:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            element_hints = list(args) if len(args) == len(value) else None
            if element_hints is None:
                return False
        else:
            element_hints = [args[0] if args else Any] * len(value)
        results = [matches(v, h) for v, h in zip(value, element_hints)]
        return False if False in results else (True if all(results) else _UNKNOWN)
    if isinstance(hint, type) and hint.__module__ != "builtins":  # a class: a plain value cannot be one
        if isinstance(value, str) and issubclass(hint, (os.PathLike, enum.Enum)):
            return _UNKNOWN  # converted from its name or path
        return False if value is None or isinstance(value, (bool, int, float, list, str)) else _UNKNOWN
    return _UNKNOWN


def describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence) and args:
        plural = {bool: "booleans", int: "ints", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], describe(args[0]))}"
    names = {
        bool: "true or false",
        int: "an int",
        float: "a number",
        str: "a string",
        type(None): "null",
        Path: "a path",
    }
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_values(values: dict[str, Any], hints: dict[str, Any], where: str = "") -> None:
    """Raise ConfigError for the first of `values` that does not fit its hint in `hints`."""
    for name, hint in hints.items():
        if name in values and matches(values[name], hint) is False:
            raise ConfigError(f"{where}{name}={values[name]!r} must be {describe(hint)}")


def check_known(keys: Iterable[str], hints: dict[str, Any], groups: tuple[str, ...]) -> None:
    """Raise ConfigError for a top-level key that is neither a setting (`hints`) nor a config group:
    Hydra accepts `+num_sample=4` (its own advice for a typo) and the run would ignore it."""
    for key in keys:
        if key not in hints and key not in groups and key != "hydra":
            close = difflib.get_close_matches(key, [*hints, *groups], n=1)
            hint = f": did you mean {close[0]}=?" if close else ""
            raise ConfigError(f"{key}= is not a setting here{hint} (--help lists them)")


def _check_node(node: dict[str, Any], path: str) -> None:
    target = node["_target_"]
    try:
        fn = get_object(target)
    except Exception as e:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported ({e})") from e
    init = fn.__init__ if inspect.isclass(fn) else fn
    try:
        parameters = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature
    given = {k: v for k, v in node.items() if not k.startswith("_")}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(given) - set(parameters)) if not takes_any else []
    if unknown:
        known = [n for n, p in parameters.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ConfigError(f"{path}.{unknown[0]} is not an argument of {target} (it takes: {', '.join(known)})")
    prefix = f"{path}." if path else ""
    try:
        check_values(given, _annotations(init), prefix)
    except ConfigError as e:
        raise ConfigError(f"{e} (an argument of {target})") from None


def check_config(config: Any, path: str = "") -> None:
    """Check every `_target_` node of a resolved, plain config (see the module docstring)."""
    if isinstance(config, dict):
        if isinstance(config.get("_target_"), str):
            _check_node(config, path)
        for key, value in config.items():
            check_config(value, f"{path}.{key}" if path else str(key))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            check_config(value, f"{path}[{i}]")
