"""Training and evaluation: accuracy, the one-cycle schedule, determinism, the cached default model."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune.training as training
from autoprune.data import load_dataset
from autoprune.errors import AutopruneError
from autoprune.training import evaluate, one_cycle, pretrained_default, train


def tiny_digits_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def test_evaluate_counts_top1_and_restores_mode() -> None:
    x = torch.randn(100, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    model.train()
    batches = [(x[:30], y[:30]), (x[30:], y[30:])]
    assert evaluate(model, batches) == 1.0
    assert model.training
    assert evaluate(model, [(x, 1 - y)]) == 0.0
    flipped = torch.cat([y[:25], 1 - y[25:50]])
    assert evaluate(model, [(x[:50], flipped)]) == 0.5
    with pytest.raises(AutopruneError, match="no samples"):
        evaluate(model, [])


def test_one_cycle_warms_up_then_anneals() -> None:
    factors = [one_cycle(s, 100) for s in range(100)]
    peak = factors.index(max(factors))
    assert factors[0] < 0.2 and 10 <= peak <= 20 and max(factors) > 0.95 and factors[-1] < 0.01
    assert all(a <= b for a, b in pairwise(factors[: peak + 1]))
    assert all(a >= b for a, b in pairwise(factors[peak:]))
    assert 0 < one_cycle(0, 1) <= 1


def test_train_improves_a_tiny_model_on_digits() -> None:
    bundle = load_dataset("digits")
    model = tiny_digits_model()
    before = evaluate(model, bundle.batches("val", 256))
    train(model, bundle, epochs=3, lr=0.1, batch_size=64)
    after = evaluate(model, bundle.batches("val", 256))
    assert before < 0.4 and after > 0.85


def test_train_is_deterministic_and_keeps_global_rng() -> None:
    bundle = load_dataset("digits")
    state = torch.get_rng_state()
    a = train(tiny_digits_model(), bundle, epochs=0.5, seed=1).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    b = train(tiny_digits_model(), bundle, epochs=0.5, seed=1).state_dict()
    c = train(tiny_digits_model(), bundle, epochs=0.5, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


@pytest.mark.parametrize(("epochs", "steps"), [(0.25, 5), (1, 20), (1.5, 30), (0.001, 1), (0, 0)])
def test_fractional_epochs_count_steps(epochs: float, steps: int) -> None:
    bundle = load_dataset("digits")  # 1,294 training samples: 20 full batches of 64
    model = tiny_digits_model()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, bundle, epochs=epochs, batch_size=64)
    assert calls == [64] * steps
    assert (steps == 0) == all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_rejects_bad_arguments() -> None:
    bundle = load_dataset("digits")
    with pytest.raises(AutopruneError, match="epochs"):
        train(tiny_digits_model(), bundle, epochs=-1)
    with pytest.raises(AutopruneError, match="32×32 RGB"):
        train(tiny_digits_model(), bundle, epochs=0.1, augment=True)
    with pytest.raises(AutopruneError, match="diverged"):
        train(tiny_digits_model(), bundle, epochs=1, lr=1e30)


def test_pretrained_default_trains_once_then_loads(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, bundle = pretrained_default(cache_dir=cache_dir)
    assert bundle.name == "digits" and not model.training
    val = bundle.batches("val", 256)
    accuracy = evaluate(model, val)
    assert accuracy > 0.9
    checkpoint = cache_dir / "digits_cnn-digits-seed0.pt"
    assert torch.load(checkpoint, weights_only=True)["val_acc"] == pytest.approx(accuracy)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(training, "train", no_training)
    again, _ = pretrained_default(cache_dir=cache_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_pretrained_default_retrains_over_a_bad_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "digits_cnn-digits-seed0.pt").write_bytes(b"garbage")
    trained = []
    monkeypatch.setattr(training, "train", lambda model, *args, **kwargs: trained.append(model))
    with pytest.warns(UserWarning, match="retraining"):
        pretrained_default(cache_dir=tmp_path)
    assert len(trained) == 1
    assert torch.load(tmp_path / "digits_cnn-digits-seed0.pt", weights_only=True)["state_dict"]
