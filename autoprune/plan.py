"""Pruning plans: versioned JSON saying which channels of which module to keep, and applying them.

A plan is self-contained: besides the kept indices it records the model's structure (to refuse a plan made for
another model), the constraint, the achieved FLOPs/params and the search's metrics. The JSON Schema is
`autoprune/schemas/plan-v1.json`; `docs/plan-format.md` shows how to apply a plan without autoprune.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import torch
from torch import nn

import autoprune
from autoprune.atomic import atomic_write_text
from autoprune.constraints import Constraints
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph, fingerprint
from autoprune.pruning import apply_kept_channels, is_depthwise

SCHEMA_VERSION = 1
MAX_BYTES = 16 * 2**20
"""Largest plan file read (a ResNet-110 plan is about 40 KiB)."""
MAX_DEPTH = 16
"""Deepest nesting of JSON arrays and objects in a plan (a valid one nests 5 deep)."""
MAX_INPUT_ELEMENTS = 2**24
"""Largest input (elements of one sample) a plan may declare: `apply` runs one forward pass on such an input."""


@cache
def plan_schema() -> dict:
    """The JSON Schema of the current plan version."""
    text = resources.files("autoprune").joinpath(f"schemas/plan-v{SCHEMA_VERSION}.json").read_text()
    return json.loads(text)


@dataclass
class Plan:
    """Which channels to keep per module, and everything needed to check and report it.

    Attributes:
        model_name: the model's name (built-in name, `pkg.module:factory`, or "custom").
        fingerprint: hash of the model's structure (see `autoprune.graph.channel_graph.fingerprint`).
        structure: `[name, type, [param shapes]]` for every module with parameters.
        input_shape: shape of one input without the batch dimension.
        modules: `{module: {"out": kept output channels, "in": kept input channels}}` for changed modules.
        constraint: the budgets the search was given (`flops`, `params` ratios or None; `latency` where set).
        achieved: FLOPs (MACs) and params, absolute and as ratios of the unpruned model; with a latency table,
            the estimated latency (`latency_ms`, `latency_ratio`, `base_latency_ms` measured, `latency_batch`).
        metrics: accuracies and other numbers the search measured.
        mask: the keep decisions the plan came from (optional).
    """

    model_name: str
    fingerprint: str
    structure: list
    input_shape: tuple[int, ...]
    modules: dict[str, dict[str, list[int]]]
    constraint: dict[str, float | None]
    achieved: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    mask: list[int] | None = None

    @classmethod
    def from_mask(
        cls,
        model: nn.Module,
        graph: ChannelGraph,
        keep: np.ndarray,
        constraints: Constraints | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Plan:
        """The plan that keeps exactly the channels of `keep` in `model` (the model `graph` was built from)."""
        keep = graph.check_mask(keep)
        digest, structure = fingerprint(model)
        modules = dict(named for named in model.named_modules())
        kept = graph.kept_channels(keep)
        for name, sides in kept.items():
            if name in modules and is_depthwise(modules[name]):  # else an unwrapped parameter
                sides["in"] = sides["out"]
        flops, params = graph.flops(keep), graph.params(keep)
        constraints = constraints or Constraints()
        constraint: dict[str, float | None] = {"flops": constraints.flops, "params": constraints.params}
        latency: dict[str, float] = {}
        if constraints.latency is not None:
            constraint["latency"] = constraints.latency
        table = constraints.latency_table
        if table is not None:  # estimated on the device the search ran on
            latency = {
                "latency_ms": table.seconds(graph, keep) * 1e3,
                "latency_ratio": table.ratio(graph, keep),
                "base_latency_ms": table.base_seconds * 1e3,
                "latency_batch": table.key["batch"],
            }
        return cls(
            model_name=graph.model_name,
            fingerprint=digest,
            structure=structure,
            input_shape=tuple(int(s) for s in graph.input_shape),
            modules=kept,
            constraint=constraint,
            achieved={
                "flops": flops,
                "params": params,
                "flops_ratio": flops / graph.base_flops,
                "params_ratio": params / graph.base_params,
                "base_flops": graph.base_flops,
                "base_params": graph.base_params,
                **latency,
            },
            metrics=dict(metrics or {}),
            mask=keep.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema version `SCHEMA_VERSION`)."""
        doc = {
            "format": "autoprune-plan",
            "schema_version": SCHEMA_VERSION,
            "autoprune_version": autoprune.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "name": self.model_name,
                "fingerprint": self.fingerprint,
                "input_shape": list(self.input_shape),
                "structure": self.structure,
            },
            "constraint": self.constraint,
            "achieved": self.achieved,
            "metrics": self.metrics,
            "modules": self.modules,
        }
        if self.mask is not None:
            doc["mask"] = self.mask
        return doc

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, doc: Any, source: str = "plan") -> Plan:
        """Validate `doc` against the schema and build the plan; AutopruneError on any problem."""
        if not isinstance(doc, dict) or doc.get("format") != "autoprune-plan":
            raise AutopruneError(f'{source} is not an autoprune plan (no "format": "autoprune-plan")')
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AutopruneError(
                f"{source} has schema version {version!r}; this autoprune ({autoprune.__version__}) reads version "
                f"{SCHEMA_VERSION}"
            )
        if _depth(doc) > MAX_DEPTH:
            raise AutopruneError(f"{source} nests deeper than {MAX_DEPTH} levels; it is not a plan autoprune wrote")
        try:
            jsonschema.validate(doc, plan_schema())
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            raise AutopruneError(f"{source} is invalid at {where}: {exc.message:.200}") from None
        model = doc["model"]
        if math.prod(model["input_shape"]) > MAX_INPUT_ELEMENTS:
            raise AutopruneError(f"{source} declares an input of shape {model['input_shape']}, larger than any it runs")
        return cls(
            model_name=model["name"],
            fingerprint=model["fingerprint"],
            structure=model["structure"],
            input_shape=tuple(model["input_shape"]),
            modules=doc["modules"],
            constraint=doc["constraint"],
            achieved=doc["achieved"],
            metrics=doc.get("metrics", {}),
            mask=doc.get("mask"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and validate a plan file; a missing, truncated or invalid file gives a one-line AutopruneError."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise AutopruneError(f"plan file not found: {path}") from None
        except OSError as exc:
            raise AutopruneError(f"cannot read plan file {path}: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            raise AutopruneError(f"plan file {path} is larger than {MAX_BYTES // 2**20} MiB; it is not a plan")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 decoding errors are ValueErrors
            raise AutopruneError(
                f"plan file {path} is not valid JSON (truncated or corrupt?): {one_line(exc)[:200]}"
            ) from None
        return cls.from_dict(doc, source=f"plan {path}")

    def check_model(self, model: nn.Module) -> None:
        """Raise AutopruneError unless `model` has the structure the plan was made for."""
        digest, structure = fingerprint(model)
        if digest == self.fingerprint:
            return
        ours = {entry[0]: entry for entry in structure}
        theirs = {entry[0]: entry for entry in self.structure}
        diff = next(
            (n for n in list(theirs) + list(ours) if ours.get(n) != theirs.get(n)),
            "?",
        )
        raise AutopruneError(
            f"this plan was made for model {self.model_name!r} ({len(self.structure)} weighted modules), which "
            f"differs from the given model ({len(structure)} weighted modules) first at module {diff!r}; "
            "use the plan with the model it was made for"
        )

    def apply(self, model: nn.Module, inplace: bool = False) -> nn.Module:
        """The physically pruned model, checked against the plan's fingerprint before and by one forward after.

        A plan can fit the model module by module and still give a network that cannot run (a conv keeping other
        channels than its BatchNorm): that is an AutopruneError, not a model that fails later.
        """
        import copy

        self.check_model(model)
        target = model if inplace else copy.deepcopy(model)
        pruned = apply_kept_channels(target, self.modules)
        training = pruned.training
        device = next(pruned.parameters()).device
        try:
            with torch.no_grad():
                pruned.eval()(torch.zeros(1, *self.input_shape, device=device))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise AutopruneError(
                f"this plan gives a network that cannot run ({one_line(exc)[:200]}); its modules keep channels "
                "that do not fit each other"
            ) from None
        finally:
            pruned.train(training)
        return pruned


def _depth(doc: Any) -> int:
    """How deeply JSON arrays and objects nest in `doc` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest
