"""Scratch experiment behind bench/results/v12/refit_variants.md: least-squares re-fit variants on finished plans.

Run against the reconstruction of 0e4c8aa (re-fit only the layers that lost inputs, ridge towards zero), which it
patches: `base` is that code, `prior` pulls the ridge towards the layer's own weights, `all` also re-fits every
layer that kept its inputs; the number is the calibration images, `p` the sampled positions, `r` the ridge.
Prints, per plan and variant, (test %, val %, layers fitted, seconds of the re-fit).

    git worktree add /tmp/wt 0e4c8aa && cd /tmp/wt && pip install -e . && cd /work/main && \
        python bench/experiments/refit_variants.py resnet56 bench/runs/v10/quality-resnet56/rl-t0.5-s1 1 base256,all1024
(model, comma-separated run directories, threads, comma-separated variants; data and weights from ../shared).
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import autoprune.reconstruct as R
from autoprune.data import load_dataset
from autoprune.masking import recalibrate_bn
from autoprune.models import build_model, load_weights
from autoprune.plan import Plan
from autoprune.training import evaluate

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
model_name, runs = sys.argv[1], sys.argv[2].split(",")
bundle = load_dataset("cifar10", data_dir="../shared/data/cifar10-jpeg.tar.gz", cache_dir="/tmp/ap/cache")
model = build_model(model_name, num_classes=10)
load_weights(model, Path(f"../shared/models/{model_name}-cifar10jpeg.pt"))
model.eval()
val, test = bundle.batches("val", 500), bundle.batches("test", 500)

orig_solve = R._Normal.solve


def prior_solve(self, name, ridge):
    before = self.weights()
    diag = self.xtx.diagonal(dim1=1, dim2=2)
    lam = ridge * diag.mean(dim=1).clamp_min(1e-12)
    eye = torch.eye(self.xtx.shape[-1], dtype=self.xtx.dtype)
    w = torch.linalg.solve(self.xtx + lam[:, None, None] * eye, self.xty + lam[:, None, None] * before)
    fit = R.LayerFit(name, self.rows, self.error(before), self.error(w))
    m = self.module
    flat = w.transpose(1, 2).reshape(-1, w.shape[1])
    if self.bias:
        m.bias.copy_(flat[:, -1].to(m.bias.dtype))
        flat = flat[:, :-1]
    m.weight.copy_(flat.reshape(m.weight.shape).to(m.weight.dtype))
    return fit


orig_layers = R.layers_to_refit


def all_layers(original, pruned):
    names, skipped = orig_layers(original, pruned)
    convs = [n for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    extra = [n for n in convs if n not in names and n not in skipped]
    order = [n for n, _ in pruned.named_modules()]
    return sorted(set(names) | set(extra), key=order.index), skipped


VARIANTS = {
    "base256": dict(images=256),
    "base1024": dict(images=1024),
    "prior256": dict(images=256, prior=True),
    "all256": dict(images=256, all=True, prior=True),
    "all1024": dict(images=1024, all=True, prior=True),
    "all1024r1e-2": dict(images=1024, all=True, prior=True, ridge=1e-2),
    "all1024r1e-4": dict(images=1024, all=True, prior=True, ridge=1e-4),
    "all2048": dict(images=2048, all=True, prior=True),
    "all1024p128": dict(images=1024, all=True, prior=True, positions=128),
    "all1024p16": dict(images=1024, all=True, prior=True, positions=16),
    "all1024p32": dict(images=1024, all=True, prior=True, positions=32),
    "all4096p16": dict(images=4096, all=True, prior=True, positions=16),
}
names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(VARIANTS)
recal = [b for _, b in zip(range(20), bundle.loader("train", 128, shuffle=True, seed=0), strict=False)]
for run in runs:
    plan = Plan.load(Path(run) / "plan.json")
    pruned = plan.apply(model).eval()
    recalibrated = copy.deepcopy(pruned)
    recalibrate_bn(recalibrated, recal)
    row = {"run": run, "test_bn": evaluate(recalibrated, test), "val_bn": evaluate(recalibrated, val)}
    for v in names:
        cfg = VARIANTS[v]
        R._Normal.solve = prior_solve if cfg.get("prior") else orig_solve
        R.layers_to_refit = all_layers if cfg.get("all") else orig_layers
        loader = bundle.loader("train", 64, shuffle=True, seed=1)
        cal = [b for _, b in zip(range(cfg["images"] // 64), loader, strict=False)]
        net = plan.apply(model).eval()
        t = time.perf_counter()
        ridge, positions = cfg.get("ridge", 1e-3), cfg.get("positions", 64)
        rep = R.reconstruct(model, net, plan.modules, cal, ridge=ridge, positions=positions)
        secs = round(time.perf_counter() - t, 1)
        row[v] = (round(evaluate(net, test) * 100, 2), round(evaluate(net, val) * 100, 2), len(rep.layers), secs)
        print(run, v, row[v], flush=True)
    R._Normal.solve, R.layers_to_refit = orig_solve, orig_layers
    print(json.dumps(row), flush=True)
