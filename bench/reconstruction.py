"""Recovery without a training loop: BN recalibration vs least-squares reconstruction vs a 1-epoch fine-tune.

For the plan of every finished run in the given study directories (as written by `bench/quality.py`), measures
test and validation accuracy of the pruned network after BN recalibration (20 batches of 128, what a search's
`finish` does), after reconstruction (`autoprune.reconstruct`, 1024 training images by default) of the network as
cut, after that and BN recalibration, and after the same 1-epoch fine-tune the quality study uses, once from the
BN-recalibrated network and once from the re-fitted one (what a search with `--finetune-epochs` delivers), plus
the reconstruction's wall time and peak memory. Writes a markdown table.

    python bench/reconstruction.py bench/runs/quality-resnet56 --model resnet56 \
        --weights ../shared/models/resnet56-cifar10jpeg.pt --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --out bench/results/reconstruction_resnet56.md
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from autoprune.data import load_dataset
from autoprune.masking import recalibrate_bn
from autoprune.models import build_model, load_weights
from autoprune.plan import Plan
from autoprune.reconstruct import reconstruct
from autoprune.training import evaluate, train


def measure(plan: Plan, model: torch.nn.Module, bundle, finetune_epochs: float, images: int) -> dict:
    """Accuracies at each recovery stage and the reconstruction's cost, for one plan."""
    val, test = bundle.batches("val", 500), bundle.batches("test", 500)
    row: dict = {}

    def score(stage: str, net: torch.nn.Module) -> None:
        row[f"val_{stage}"], row[f"test_{stage}"] = evaluate(net, val), evaluate(net, test)

    pruned = plan.apply(model).eval()
    recal = [b for _, b in zip(range(20), bundle.loader("train", 128, shuffle=True, seed=0), strict=False)]
    recalibrated = copy.deepcopy(pruned)
    recalibrate_bn(recalibrated, recal)
    score("bn", recalibrated)
    calibration = [
        b for _, b in zip(range(images // 64), bundle.loader("train", 64, shuffle=True, seed=1), strict=False)
    ]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = reconstruct(model, pruned, plan.modules, calibration)
    row["recon_seconds"] = report.seconds
    row["recon_peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    row["recon_layers"] = len(report.layers)
    score("recon", pruned)
    delivered = copy.deepcopy(pruned) if finetune_epochs > 0 else None
    recalibrate_bn(pruned, recal)
    score("recon_bn", pruned)
    if finetune_epochs > 0:
        train(recalibrated, bundle, epochs=finetune_epochs, seed=0)
        score("ft", recalibrated.eval())
        train(delivered, bundle, epochs=finetune_epochs, seed=0)  # what `--finetune-epochs` does after the re-fit
        score("recon_ft", delivered.eval())
    return row


COLUMNS = [
    ("test_bn", "test +BN"),
    ("test_recon", "test +recon"),
    ("test_recon_bn", "test +recon +BN"),
    ("test_ft", "test +FT"),
    ("test_recon_ft", "test +recon +FT"),
    ("val_bn", "val +BN"),
    ("val_recon", "val +recon"),
    ("val_recon_bn", "val +recon +BN"),
]


def table(rows: list[dict]) -> str:
    """Markdown: one line per plan, then the mean over plans."""
    head = ["run", *[label for _, label in COLUMNS], "recon s", "recon peak MB", "layers re-fitted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(r: dict, key: str) -> str:
        return f"{100 * r[key]:.2f}%" if key in r else "–"

    for r in rows:
        cells = [r["run"], *[pct(r, k) for k, _ in COLUMNS]]
        cells += [f"{r['recon_seconds']:.1f}", f"{max(r['recon_peak_mb'], 0):.0f}", str(r["recon_layers"])]
        lines.append("| " + " | ".join(cells) + " |")
    means = {k: statistics.mean(r[k] for r in rows) for k, _ in COLUMNS if all(k in r for r in rows)}
    means["run"] = f"**mean of {len(rows)}**"
    cells = [means["run"], *[pct(means, k) for k, _ in COLUMNS]]
    cells += [f"{statistics.mean(r['recon_seconds'] for r in rows):.1f}", "", ""]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="study directories of run directories with plan.json")
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=1024, help="calibration images for reconstruction")
    parser.add_argument("--runs", nargs="*", default=None, help="only these run names (default: all finished)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_dataset("cifar10", data_dir=args.data_dir, cache_dir=args.cache_dir)
    model = build_model(args.model, num_classes=bundle.num_classes)
    load_weights(model, Path(args.weights))
    model.eval()
    partial = args.out.with_suffix(".jsonl")
    done = (
        {json.loads(line)["run"]: json.loads(line) for line in partial.read_text().splitlines()}
        if partial.exists()
        else {}
    )
    rows = []
    found = [p.parent for study in args.studies for p in sorted(study.glob("*/plan.json"))]
    if args.runs:  # in the order given
        found = [r for name in args.runs for r in found if r.name == name]
    for run in found:
        if run.name not in done:
            start = time.perf_counter()
            row = {
                "run": run.name,
                **measure(Plan.load(run / "plan.json"), model, bundle, args.finetune_epochs, args.images),
            }
            row["seconds"] = time.perf_counter() - start
            with partial.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[run.name] = row
            print(f"{run.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "run"), flush=True)
        rows.append(done[run.name])
    header = (
        f"# Recovery without training: BN recalibration vs reconstruction vs 1-epoch fine-tune ({args.model})\n\n"
        f"Command: `python bench/reconstruction.py {' '.join(str(s) for s in args.studies)} --model {args.model} "
        f"--weights {args.weights} --data-dir {args.data_dir} --finetune-epochs {args.finetune_epochs} "
        f"--images {args.images}{' --runs ' + ' '.join(args.runs) if args.runs else ''} --out {args.out}`; "
        f"date {time.strftime('%Y-%m-%d')}; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}.\n\n"
    )
    args.out.write_text(header + table(rows) + "\n")


if __name__ == "__main__":
    main()
