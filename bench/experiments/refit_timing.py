"""Time `autoprune.reconstruct` alone on one ResNet-56 and one ResNet-20 plan, at 256 and 1024 images (2 threads).

    python bench/experiments/refit_timing.py   # from the repository root, data and weights in ../shared

The README's "timed alone" re-fit figures (2026-12-01) come from this script on the otherwise idle machine.
"""

import time
from pathlib import Path

import torch

from autoprune.data import load_dataset
from autoprune.models import build_model, load_weights
from autoprune.plan import Plan
from autoprune.reconstruct import reconstruct

PLANS = [
    ("resnet56", "bench/runs/v12/quality-resnet56/rl-t0.5-s0"),
    ("resnet20", "bench/runs/v10/quality-resnet20/rl-t0.5-s1"),
]

torch.set_num_threads(2)
bundle = load_dataset("cifar10", data_dir="../shared/data/cifar10-jpeg.tar.gz")
for name, run in PLANS:
    model = build_model(name, num_classes=10)
    load_weights(model, Path(f"../shared/models/{name}-cifar10jpeg.pt"))
    model.eval()
    plan = Plan.load(Path(run) / "plan.json")
    for images in (256, 1024):
        loader = bundle.loader("train", 64, shuffle=True, seed=1)
        calibration = [b for _, b in zip(range(images // 64), loader, strict=False)]
        net = plan.apply(model).eval()
        start = time.perf_counter()
        report = reconstruct(model, net, plan.modules, calibration)
        print(name, images, f"{time.perf_counter() - start:.1f} s", len(report.layers), "layers", flush=True)
