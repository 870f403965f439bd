"""Recovery stages after pruning: measured after each, and one more stage slots in without other changes."""

from __future__ import annotations

import torch

from autoprune.constraints import Constraints, project
from autoprune.graph import build_channel_graph
from autoprune.plan import Plan
from autoprune.recovery import Stage, calibration_images, quiet, recover, recovery_stages, stage_label
from autoprune.search.report import stages
from autoprune.training import pretrained_default


def pruned_digits(cache_dir):
    model, bundle = pretrained_default(cache_dir=cache_dir)
    graph = build_channel_graph(model, torch.zeros(1, 1, 8, 8), model_name="digits_cnn")
    keep = project(graph, graph.full_mask(), Constraints(flops=0.4))
    return Plan.from_mask(model, graph, keep).apply(model), bundle


def test_recalibration_and_finetuning_recover_accuracy_stage_by_stage(cache_dir) -> None:
    pruned, bundle = pruned_digits(cache_dir)
    lines: list[str] = []
    metrics = recover(pruned, bundle, recalibrate=True, finetune_epochs=1, log=lines.append)
    assert stages(metrics) == ["pruned", "recalibrated", "finetuned"]
    assert metrics["test_acc_recalibrated"] > metrics["test_acc_pruned"] + 0.1
    assert metrics["test_acc_finetuned"] >= metrics["test_acc_recalibrated"] - 0.02
    assert any("fine-tuning for 1 epochs" in line for line in lines)
    assert not pruned.training


def test_another_stage_slots_in_and_reports_show_it(cache_dir) -> None:
    pruned, bundle = pruned_digits(cache_dir)
    seen: list[str] = []

    def record(model, data, device) -> None:
        seen.append(data.name)

    extra = Stage("reconstructed", record, "reconstructing layers")
    order = [extra, *recovery_stages(recalibrate=True)]
    metrics = recover(pruned, bundle, stages=order, splits=("test",), log=quiet)
    assert seen == ["digits"]
    assert stages(metrics) == ["pruned", "reconstructed", "recalibrated"]
    assert "val_acc_pruned" not in metrics
    assert stage_label("reconstructed") == "+ reconstruction" and stage_label("custom") == "custom"


def test_reconstruction_calibrates_on_a_bounded_number_of_pixels() -> None:
    """1024 CIFAR-sized images, fewer for larger inputs (one batch in memory), never below 64."""
    assert calibration_images((3, 32, 32)) == 1024
    assert calibration_images((1, 8, 8)) == 1024
    assert calibration_images((3, 64, 64)) == 256
    assert calibration_images((3, 224, 224)) == 64


def _zero_weights(model, data, device) -> dict:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return {"zeroing": "applied"}


def test_a_guarded_stage_that_lowers_validation_accuracy_is_undone(cache_dir) -> None:
    """`Stage.verdict`: the stage's weights are rolled back and its accuracies are the previous stage's."""
    pruned, bundle = pruned_digits(cache_dir)
    order = [*recovery_stages(recalibrate=True), Stage("zeroed", _zero_weights, verdict="zeroing")]
    x = bundle.batches("test", 64)[0][0]
    metrics = recover(pruned, bundle, stages=order, log=quiet)
    assert metrics["zeroing"].startswith("skipped: it lowered validation accuracy")
    assert metrics["val_acc_zeroed"] == metrics["val_acc_recalibrated"] > 0.5
    assert metrics["test_acc_zeroed"] == metrics["test_acc_recalibrated"]
    assert pruned(x).abs().sum() > 0
    unmeasured = recover(pruned_digits(cache_dir)[0], bundle, stages=order, splits=(), log=quiet)
    assert unmeasured["zeroing"].startswith("skipped")


def test_a_guarded_stage_that_helps_is_kept(cache_dir) -> None:
    pruned, bundle = pruned_digits(cache_dir)
    metrics = recover(pruned, bundle, stages=[Stage("recal", recovery_stages()[0].run, verdict="recal")], log=quiet)
    assert metrics["val_acc_recal"] > metrics["val_acc_pruned"] + 0.1
    assert "recal" not in metrics
