"""The Python API on a model in memory: the README's example runs as written, and bad input is one error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoprune
from autoprune.data import load_dataset
from autoprune.errors import AutopruneError
from autoprune.search.runner import resume_search

README = Path(__file__).resolve().parents[1] / "README.md"


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """A user's own residual network, unknown to autoprune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def loader(split: str, shuffle: bool = False) -> DataLoader:
    digits = load_dataset("digits")
    images, labels = digits.split(split)
    return DataLoader(TensorDataset(digits.normalize(images), labels), batch_size=64, shuffle=shuffle)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for x, y in loader("train", shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def readme_example() -> str:
    text = README.read_text()
    block = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its API example"
    return block.group(1)


def test_readme_example_prunes_an_in_memory_resnet_in_ten_lines(trained, tmp_path, monkeypatch) -> None:
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    assert "evaluations=100" in code
    code = code.replace("evaluations=100", "evaluations=12")  # the README's budget, cut for the test's time
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    monkeypatch.chdir(tmp_path)
    scope = {"model": trained, "train_loader": loader("train"), "val_loader": loader("val")}
    exec(compile(code, "README.md", "exec"), scope)

    result, small, again = scope["result"], scope["small"], scope["again"]
    assert result.plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in trained.parameters())
    assert result.metrics["test_acc_recalibrated"] > result.metrics["test_acc_pruned"]
    assert result.metrics["test_acc_recalibrated"] > 0.5
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())  # the user's model untouched
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    saved = tmp_path / "runs" / "mine"
    assert {p.name for p in saved.iterdir()} >= {"plan.json", "pruned.pt", "summary.md"}
    reloaded = autoprune.load_pruned(saved / "pruned.pt", TinyResNet())
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), small(x), atol=1e-6)
    with pytest.raises(AutopruneError, match="pass its unpruned model"):
        autoprune.load_pruned(saved / "pruned.pt")


def test_score_fn_replaces_validation_accuracy(trained, tmp_path) -> None:
    scores: list[float] = []

    def fewest_parameters_in_block0(net: nn.Module) -> float:
        scores.append(-float(net.blocks[0].conv1.weight.shape[0]))
        return scores[-1]

    result = autoprune.prune(
        trained, torch.zeros(1, 1, 8, 8), train_loader=loader("train"), val_loader=loader("val"),
        method="random-masks", evaluations=6, score_fn=fewest_parameters_in_block0, progress=False,
        out=tmp_path / "run",
    )  # fmt: skip
    assert len(scores) == 1 + 6  # the unpruned model, then every evaluation
    assert result.metrics["search_val_acc_unpruned"] == -16.0
    assert result.metrics["search_val_acc_best"] == max(scores[1:])
    assert result.run_dir == tmp_path / "run" and (result.run_dir / "metrics.csv").is_file()
    (result.run_dir / "summary.md").unlink()  # as if killed before the end: the directory cannot rebuild the model
    with pytest.raises(AutopruneError, match="given in memory"):
        resume_search(result.run_dir)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"example_inputs": torch.zeros(1, 3, 8, 8)}, "example_inputs"),
        ({"train_loader": [torch.zeros(4, 1, 8, 8)]}, "(images, labels) batches"),
        ({"val_loader": []}, "val_loader gave no batches"),
        ({"score_fn": lambda net: float("nan")}, "finite number"),
        ({"target_flops": 1e-6}, "raise the target"),
    ],
    ids=["example-shape", "no-labels", "empty-val", "nan-score", "infeasible"],
)
def test_bad_input_is_one_autoprune_error(trained, change, fragment) -> None:
    args = {
        "example_inputs": torch.zeros(1, 1, 8, 8), "train_loader": loader("train"), "val_loader": loader("val"),
        "method": "random-masks", "evaluations": 2, "progress": False, **change,
    }  # fmt: skip
    with pytest.raises(AutopruneError, match=re.escape(fragment)) as caught:
        autoprune.prune(trained, **args)
    assert "\n" not in str(caught.value)
