"""User factories named as `pkg.module:function`, and calling them with the keyword arguments they accept."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from autoprune.errors import AutopruneError


def resolve_factory(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by `spec` (`pkg.module:function`); `what` names it in errors ("model", "dataset")."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a user module can fail to import in any way
        summary = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutopruneError(
            f"cannot import module {module_name!r} for {what} {spec!r} ({summary}); check that it is on PYTHONPATH"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutopruneError(f"module {module_name!r} has no callable {attr!r}; name a function returning the {what}")
    return factory


def accepted_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` that `factory` accepts (all of them if it takes `**kwargs`)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
