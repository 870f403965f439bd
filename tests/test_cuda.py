"""The CUDA path: masks, scores, searches and fine-tunes on a GPU agree with the CPU. Skipped without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from conftest import run_cli
from test_equivalence import random_masks, randomize_bn

from autoprune.export import load_pruned
from autoprune.graph import build_channel_graph
from autoprune.masking import ChannelMasker
from autoprune.models import MODELS, build_model
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig, load_problem
from autoprune.pruning import prune_model
from autoprune.training import evaluate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 convolutions differ from the CPU by ~1e-3; compare in full float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_masked_equals_pruned_and_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    randomize_bn(model)
    shape = MODELS[name].input_shape
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    cpu_graph = build_channel_graph(model, torch.zeros(1, *shape), model_name=name)
    model.cuda()
    graph = build_channel_graph(model, torch.zeros(1, *shape, device="cuda"), model_name=name)
    assert graph.num_decisions == cpu_graph.num_decisions
    for keep in random_masks(graph, 3, seed=len(name)):
        assert graph.flops(keep) == cpu_graph.flops(keep)
        with torch.no_grad(), ChannelMasker(model, graph) as masker:
            masker.set_mask(keep)
            masked = model(x.cuda())
            masker.set_mask(None)
            pruned = prune_model(model, graph, keep)
            assert next(pruned.parameters()).is_cuda
            assert (pruned(x.cuda()) - masked).abs().max().item() <= 1e-4
            flops, _ = tp.utils.count_ops_and_params(pruned, torch.zeros(1, *shape, device="cuda"))
            assert graph.flops(keep) == pytest.approx(flops, rel=5e-3)
            cpu_pruned = prune_model(model.cpu(), cpu_graph, keep)
            assert (cpu_pruned(x) - masked.cpu()).abs().max().item() <= 1e-4
            model.cuda()


def test_cuda_scores_match_cpu(cache_dir: Path) -> None:
    problems = {d: load_problem(ProblemConfig(device=d, eval_samples=300)) for d in ("cpu", "cuda")}
    assert problems["cuda"].device.type == "cuda"
    assert next(problems["cuda"].model.parameters()).is_cuda
    graph = problems["cpu"].graph
    for keep in [graph.full_mask(), *random_masks(graph, 3, seed=0)]:
        scores = {d: p.score(keep) for d, p in problems.items()}
        assert scores["cuda"] == pytest.approx(scores["cpu"], abs=2 / 300)  # a prediction or two may flip


def test_cuda_fine_tune_improves_a_pruned_model(cache_dir: Path) -> None:
    problem = load_problem(ProblemConfig(device="cuda", eval_samples=300))
    keep = next(random_masks(problem.graph, 1, seed=1))
    pruned = prune_model(problem.model, problem.graph, keep)
    val = problem.bundle.batches("val", 100, device="cuda")
    before = evaluate(pruned, val, "cuda")
    train(pruned, problem.bundle, epochs=1.0, device="cuda", seed=0)
    assert next(pruned.parameters()).is_cuda
    assert evaluate(pruned, val, "cuda") > before


def test_cli_search_on_cuda_gives_a_plan_that_applies_on_cpu(cache_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(
        "search", "--device", "cuda", "--target-flops", "0.5", "--evaluations", "24", "--rollout", "8",
        "--eval-samples", "200", "--finetune-epochs", "0.2", "--quiet", "--out", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = Plan.load(run / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert plan.metrics["test_acc_finetuned"] > 0.5
    pruned = load_pruned(run / "pruned.pt")  # saved from the GPU, loads on the CPU
    assert not next(pruned.parameters()).is_cuda
    applied = tmp_path / "applied.pt"
    weights = cache_dir / "digits_cnn-digits-seed0.pt"
    result = run_cli(
        "apply", "--plan", str(run / "plan.json"), "--model", "digits_cnn", "--weights", str(weights),
        "--out", str(applied),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    params = sum(p.numel() for p in load_pruned(applied).parameters())
    assert params == pytest.approx(plan.achieved["params"], rel=1e-6)
    config = json.loads((run / "config.json").read_text())
    assert config["problem"]["device"] == "cuda"
