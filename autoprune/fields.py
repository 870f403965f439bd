"""Type checks for the typed config dataclasses, whose values may come from JSON files or Python callers."""

from __future__ import annotations

import types
import typing
from typing import Any

from autoprune.errors import AutopruneError


def check_types(config: Any) -> None:
    """Raise AutopruneError unless every field of the dataclass `config` holds a value of its annotated type."""
    for name, hint in typing.get_type_hints(type(config)).items():
        if not _matches(getattr(config, name), hint):
            raise AutopruneError(f"{name} must be of type {_describe(hint)}, got {getattr(config, name)!r:.60}")


def _matches(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:  # tuple[T, ...]
        return isinstance(value, tuple) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return type(value) in (int, float)
    if hint in (int, bool, type(None)):
        return type(value) is hint
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("NoneType", "None")
