"""User factories named as `pkg.module:function` or `path/to/file.py:function`, and calling them.

A factory in a file runs code from that file, so it is loaded only when the user vouched for the file: the CLI does
so for a `--model`/`--dataset` given on its own command line (`trust_file`), never for a name read from a plan,
a run directory or a pruned-model file. Trusted files are kept in the environment (`AUTOPRUNE_TRUSTED_FILES`), so
worker processes started by this one inherit the permission.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError

TRUSTED_ENV = "AUTOPRUNE_TRUSTED_FILES"
"""Environment variable holding the resolved paths of trusted factory files (os.pathsep-separated)."""


def is_file_spec(spec: str) -> bool:
    """Whether `spec` names a factory in a Python file (`path/to/file.py:function`) rather than a module."""
    return spec.rpartition(":")[0].endswith(".py")


def trust_file(spec: str) -> None:
    """Allow `resolve_factory` to run the file a `path/to/file.py:function` spec names (no-op for other specs)."""
    if not is_file_spec(spec):
        return
    path = str(Path(spec.rpartition(":")[0]).resolve())
    trusted = [p for p in os.environ.get(TRUSTED_ENV, "").split(os.pathsep) if p]
    if path not in trusted:
        os.environ[TRUSTED_ENV] = os.pathsep.join([*trusted, path])


def resolve_factory(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by `spec` (`pkg.module:function` or `file.py:function`); `what` names it in errors."""
    if is_file_spec(spec):
        module_name, attr = _load_file(spec, what)
    else:
        module_name, _, attr = spec.partition(":")
        try:
            importlib.import_module(module_name)
        except Exception as e:  # a user module can fail to import in any way
            raise AutopruneError(
                f"cannot import module {module_name!r} for {what} {spec!r} ({_summary(e)}); check that it is on "
                "PYTHONPATH"
            ) from e
    factory = getattr(sys.modules[module_name], attr, None)
    if not callable(factory):
        raise AutopruneError(
            f"{spec.rpartition(':')[0]!r} has no callable {attr!r}; name a function returning the {what}"
        )
    return factory


def _load_file(spec: str, what: str) -> tuple[str, str]:
    """Execute the file of a trusted `file.py:function` spec as a module; its module name and the attribute."""
    file, _, attr = spec.rpartition(":")
    path = Path(file).resolve()
    if str(path) not in os.environ.get(TRUSTED_ENV, "").split(os.pathsep):
        raise AutopruneError(
            f"{what} {spec!r} runs code from {file}, which is loaded only when named on the command line "
            f"(--{what}) or allowed in Python with autoprune.factory.trust_file({spec!r})"
        )
    if not path.is_file():
        raise AutopruneError(f"{what} file not found: {file}")
    module_name = f"autoprune_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return module_name, attr
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise AutopruneError(f"cannot load {file} as Python code for {what} {spec!r}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # user code can fail in any way
        del sys.modules[module_name]
        raise AutopruneError(f"running {file} for {what} {spec!r} failed ({_summary(e)})") from e
    return module_name, attr


def _summary(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def accepted_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` that `factory` accepts (all of them if it takes `**kwargs`)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}
