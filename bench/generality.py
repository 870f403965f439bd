"""Generality study: every torchvision classification model through the converter, a 50%-FLOPs mask and a plan.

For each model (random init, batch 1): convert it (`build_channel_graph`, with validation), draw a random mask and
project it onto 50% of the FLOPs, compare the masked network with the physically pruned one (max |difference|
relative to the output scale), compare the FLOPs counted by the graph with torch-pruning's counter on the pruned
model, and apply the plan through its JSON form to a fresh copy. Each model runs in its own process (a crash or a
timeout costs one row), and each result is appended to a JSON-lines file at once, so an interrupted run resumes
where it stopped.

    OMP_NUM_THREADS=1 python bench/generality.py                       # all models, resumable
    OMP_NUM_THREADS=1 python bench/generality.py --models resnet18,convnext_tiny
    python bench/generality.py --table                                  # write bench/results/generality.md

torchvision is optional for autoprune and needed only here. The CPU torch cannot load the compiled operators of
the torchvision wheels on the package index (CUDA builds); the model definitions need none of them, so this
script imports `torchvision.models` with the operator registrations stubbed out (see `import_torchvision_models`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SMALL_SIZE = 128
"""Spatial size of the input, to save CPU: the convolutional models take any size this large."""
NOTES = (
    "Notes (2026-11-30 run). ShuffleNet V2: each stage's residual stream passes a channel shuffle (`view` to "
    "(N, 2, C/2, H, W), `transpose`, `view` back: a permutation torch-pruning cannot map), so the groups reaching it "
    "are frozen with that reason; the bottleneck widths and the last 1x1 conv are pruned (95-96% of the FLOPs). "
    "Swin, Swin V2 and MaxViT: the MLP widths (and MaxViT's MBConv widths) are pruned; the residual stream and the "
    "qkv width stay frozen, since the attention splits its input into heads by the input's width (`C // num_heads`, "
    "written in the code). Swin's qkv and output projections are called through `F.linear`; they are traced and "
    "counted as layers (torch-pruning's counter alone leaves them out, which had overstated Swin's prunable share). "
    "Swin V1 runs at 224 pixels: at 128 its 7-token windows are padded and only 41-43% of its FLOPs are prunable, "
    "short of the 50% budget. vit_h_14 and regnet_y_128gf ran with `--memory-gb 16` (about 630M parameters: the "
    "10 GiB default address-space limit is too small for them). ViT's embedding group is frozen because "
    "torchvision's ViT reshapes by `self.hidden_dim`, a width written in its code; its MLP widths are pruned. Times "
    "are on 2 cores shared with other work (load average about 3.5), so they are upper bounds."
)
BUDGET = 0.5
TOLERANCE = 1e-4


def import_torchvision_models() -> types.ModuleType:
    """`torchvision.models`, without torchvision's compiled operators (detection ops the classifiers never use).

    `torchvision/__init__.py` registers fake and autograd kernels for operators of its `_C` extension; with a
    torchvision wheel built for another torch (the CUDA wheels beside a CPU torch) that extension does not load
    and the registration raises. Empty stand-ins for the two registration modules skip it.
    """
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision.models

    return torchvision.models


def input_size(name: str) -> int:
    """128, except MaxViT and Swin V1 (224: MaxViT's windows need it; Swin's 7-token windows tile 224 pixels, while
    at 128 they are padded, which triples the attention's cost in the late stages) and ViT (built for 112, or 128
    with 32-pixel patches)."""
    if name.startswith("maxvit") or name in ("swin_t", "swin_s", "swin_b"):
        return 224
    if name.startswith("vit"):
        return 128 if name.endswith("_32") else 112
    return SMALL_SIZE


def run_one(name: str, seed: int = 0) -> dict:
    """Convert, mask, prune and apply the plan of one torchvision model; the measured row."""
    import copy

    import numpy as np
    import torch
    import torch_pruning as tp

    from autoprune.constraints import Constraints, project
    from autoprune.errors import AutopruneError
    from autoprune.graph import build_channel_graph
    from autoprune.graph.depgraph import LayersAsModules
    from autoprune.masking import ChannelMasker
    from autoprune.plan import Plan
    from autoprune.pruning import prune_model

    models = import_torchvision_models()
    torch.manual_seed(seed)
    size = input_size(name)
    row: dict = {"model": name, "size": size}
    start = time.perf_counter()
    extra = {"image_size": size} if name.startswith("vit") else {}  # a ViT's position embedding fixes its size
    model = models.get_model(name, weights=None, **extra).eval()
    row["build_s"] = round(time.perf_counter() - start, 2)
    example = torch.zeros(1, 3, size, size)
    try:
        start = time.perf_counter()
        graph = build_channel_graph(model, example, model_name=f"torchvision:{name}")
        row["convert_s"] = round(time.perf_counter() - start, 2)
        row.update(
            groups=len(graph.groups),
            prunable_groups=len(graph.prunable_groups),
            decisions=graph.num_decisions,
            gflops=round(graph.base_flops / 1e9, 3),
            prunable_share=round(graph.prunable_share(), 4),
        )
        frozen = sorted(graph.frozen_flops().items(), key=lambda kv: -kv[1])
        row["frozen"] = [
            f"{graph.groups[i].root or i}: {share:.1%} ({graph.groups[i].reason})" for i, share in frozen[:3]
        ]
        rng = np.random.default_rng(seed)
        keep = project(graph, (rng.random(graph.num_decisions) < 0.7).astype(np.int8), Constraints(flops=BUDGET))
        row["flops_ratio"] = round(graph.flops(keep) / graph.base_flops, 4)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad(), ChannelMasker(model, graph) as masker:
            masker.set_mask(keep)
            masked = model(x)
        pruned = prune_model(model, graph, keep)
        with torch.no_grad():
            got = pruned(x)
        row["rel_diff"] = float((got - masked).abs().max() / masked.abs().max().clamp(min=1e-12))
        with LayersAsModules():  # layers called through `F.linear` (Swin's attention) counted too
            counted, _ = tp.utils.count_ops_and_params(pruned, example)
        row["flops_rel_err"] = abs(graph.flops(keep) - counted) / counted
        plan = Plan.from_dict(json.loads(json.dumps(Plan.from_mask(model, graph, keep).to_dict())))
        with torch.no_grad():
            applied = plan.apply(copy.deepcopy(model))(x)
        row["plan_applies"] = bool((applied - got).abs().max() <= TOLERANCE * got.abs().max())
        row["ok"] = passed(row)
    except AutopruneError as exc:
        row.update(ok=False, reason=str(exc))
    row["total_s"] = round(time.perf_counter() - start, 2)
    return row


def passed(row: dict) -> bool:
    """Masked = pruned, FLOPs counted right, within the budget, and the plan applies."""
    return bool(
        row.get("rel_diff", 1.0) <= TOLERANCE
        and row.get("flops_rel_err", 1.0) <= 5e-3
        and row.get("plan_applies")
        and row.get("flops_ratio", 1.0) <= BUDGET + 1e-9
    )


def run_all(names: list[str], out: Path, timeout: int, memory_gb: float) -> None:
    done = set()
    if out.exists():
        done = {json.loads(line)["model"] for line in out.read_text().splitlines() if line.strip()}
    for name in names:
        if name in done:
            continue
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, "--memory-gb", str(memory_gb)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "ok": False, "traceback": tail[:300]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "ok": False, "reason": f"timed out after {timeout} s"}
        row["wall_s"] = round(time.perf_counter() - start, 1)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        status = "ok" if row.get("ok") else row.get("reason") or row.get("traceback") or "mismatch"
        print(f"{name}: {status} ({row['wall_s']} s)", flush=True)


def write_table(source: Path, target: Path) -> None:
    import torch

    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["model"])
    for r in rows:
        r["ok"] = passed(r)
    count = sum(bool(r.get("ok")) for r in rows)
    fast = sum(bool(r.get("ok")) and r.get("total_s", 1e9) < 60 for r in rows)
    fast_wall = sum(bool(r.get("ok")) and r.get("wall_s", 1e9) < 60 for r in rows)
    version = rows[0].get("torchvision", "?") if rows else "?"
    lines = [
        "# Generality: torchvision classification models",
        "",
        f"torchvision {version}, torch {torch.__version__}, random init, batch 1, CPU with `OMP_NUM_THREADS=1` "
        "(2 cores shared with other work). Input 3x128x128, except MaxViT and Swin V1 (3x224x224, which their "
        "windows need or tile) and ViT (built with `image_size` 112, or 128 for 32-pixel patches). A random mask "
        "is projected onto 50% of the FLOPs; `diff` is max |masked - pruned| relative to the largest output, "
        "`FLOPs err` the graph's count against torch-pruning's counter on the pruned model, `plan` whether the "
        "plan, through JSON, applies to a fresh copy and gives the same outputs. `work s` is conversion (with "
        "validation), pruning and the checks; `wall s` adds the process start, imports and building the model.",
        "",
        "Command: `OMP_NUM_THREADS=1 python bench/generality.py && python bench/generality.py --table` "
        f"(table written {time.strftime('%Y-%m-%d')}; torchvision installed as `bench/README.md` says).",
        "",
        f"**{count} of {len(rows)} pass** (convert, prune at 50% FLOPs, masked = pruned, plan applies); "
        f"{fast} of them with under 60 s of work, {fast_wall} under 60 s wall time.",
        "",
        "| model | ok | convert s | work s | wall s | groups (prunable) | prunable FLOPs | diff | FLOPs err | plan | "
        "largest frozen groups / reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "convert_s" not in r:
            why = r.get("reason") or r.get("traceback", "")
            lines.append(f"| {r['model']} | no | | | {r.get('wall_s', '')} | | | | | | {why} |")
            continue
        diff = f"{r['rel_diff']:.1e}" if "rel_diff" in r else ""
        err = f"{r['flops_rel_err']:.1e}" if "flops_rel_err" in r else ""
        frozen = "; ".join(r.get("frozen", [])) or r.get("reason", "")
        lines.append(
            f"| {r['model']} | {'yes' if r.get('ok') else 'no'} | {r['convert_s']} | {r.get('total_s', '')} | "
            f"{r.get('wall_s', '')} | "
            f"{r['groups']} ({r['prunable_groups']}) | {r['prunable_share']:.1%} | {diff} | {err} | "
            f"{'yes' if r.get('plan_applies') else 'no'} | {frozen.replace('|', '/')} |"
        )
    lines += ["", NOTES]
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target}: {count}/{len(rows)} pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: all classification models)")
    parser.add_argument("--out", type=Path, default=RESULTS / "generality.jsonl")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--memory-gb", type=float, default=10.0, help="address-space limit per model process")
    parser.add_argument("--table", action="store_true", help="write the markdown table from --out and exit")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.one:
        import resource
        import warnings

        import torch

        # Torch-pruning's tracing of some models (Swin V2) grows past 19 GB: fail alone, not the machine.
        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        warnings.filterwarnings("ignore")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        try:
            row = run_one(args.one)
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
                raise
            row = {"model": args.one, "ok": False, "reason": f"out of memory (limit {args.memory_gb:g} GiB)"}
        import torchvision

        row["torchvision"] = torchvision.__version__
        print(json.dumps(row))
        return
    if args.table:
        write_table(args.out, RESULTS / "generality.md")
        return
    models = import_torchvision_models()
    names = args.models.split(",") if args.models else models.list_models(module=models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_all(names, args.out, args.timeout, args.memory_gb)


if __name__ == "__main__":
    main()
