# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Checkpoint loading and multi-checkpoint evaluation with a tiny MONAI ``SupervisedEvaluator``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted, Compose
from torch import nn

from usseg.engines.evaluation import evaluate_checkpoints, load_model_weights


def _conv(out_channels: int = 2) -> nn.Conv2d:
    return nn.Conv2d(1, out_channels, kernel_size=1)


def _constant_class_state(winner: int) -> dict[str, torch.Tensor]:
    """Weights of a 1x1 conv whose argmax is ``winner`` at every pixel, whatever the input."""
    bias = torch.zeros(2)
    bias[winner] = 1.0
    return {"weight": torch.zeros(2, 1, 1, 1), "bias": bias}


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("wrap", "key"),
    [
        pytest.param(lambda state: {"model": state, "optimizer": {"lr": 0.1}, "epoch": 3}, "model", id="model-entry"),
        pytest.param(lambda state: state, "model", id="bare-state-dict"),
        pytest.param(lambda state: {"student": state, "epoch": 3}, "student", id="custom-key"),
    ],
)
def test_load_model_weights_from_checkpoint_layouts(tmp_path: Path, wrap: object, key: str) -> None:
    source = _conv()
    torch.nn.init.normal_(source.weight, generator=torch.Generator().manual_seed(0))
    path = _save(wrap(source.state_dict()), tmp_path / "ckpt.pt")
    target = _conv()
    returned = load_model_weights(target, path, key=key)
    assert returned is target
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)


def test_load_model_weights_accepts_a_string_path(tmp_path: Path) -> None:
    path = _save({"model": _constant_class_state(1)}, tmp_path / "ckpt.pt")
    network = load_model_weights(_conv(), str(path))
    assert torch.equal(network.bias, torch.tensor([0.0, 1.0]))


def test_load_model_weights_into_a_ddp_wrapped_network(tmp_path: Path) -> None:
    path = _save({"model": _constant_class_state(1)}, tmp_path / "ckpt.pt")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(_conv())
        returned = load_model_weights(wrapped, path)
        assert returned is wrapped
        assert torch.equal(wrapped.module.bias, torch.tensor([0.0, 1.0]))
    finally:
        dist.destroy_process_group()


def test_missing_checkpoint_raises_file_not_found_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_model_weights(_conv(), path)


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(_conv(3).state_dict(), id="wrong-channel-count"),
        pytest.param(nn.Linear(2, 2).state_dict() | {"extra": torch.zeros(1)}, id="unexpected-keys"),
        pytest.param({"weight": torch.zeros(2, 1, 1, 1)}, id="missing-bias"),
    ],
)
def test_wrong_architecture_raises_key_error_naming_the_file(tmp_path: Path, state: dict) -> None:
    path = _save({"model": state}, tmp_path / "other_arch.pt")
    with pytest.raises(KeyError) as info:
        load_model_weights(_conv(), path)
    message = info.value.args[0]  # str(KeyError) is the repr of the message
    assert message.startswith(f"{path}: ")
    assert "Conv2d" in message


def test_checkpoint_without_the_key_raises_key_error(tmp_path: Path) -> None:
    path = _save({"teacher": _constant_class_state(0)}, tmp_path / "ema.pt")
    with pytest.raises(KeyError) as info:
        load_model_weights(_conv(), path)
    assert str(path) in info.value.args[0]
    assert "'model'" in info.value.args[0] and "teacher" in info.value.args[0]


def test_pickled_module_is_refused_by_weights_only_loading(tmp_path: Path) -> None:
    path = _save(_conv(), tmp_path / "whole_module.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_model_weights(_conv(), path)


class _PrefixRecorder:
    """Stands in for ``SegmentationReportHandler``: records its prefix at every epoch end."""

    def __init__(self) -> None:
        self.prefix = ""
        self.seen: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _record(self, engine: Engine) -> None:
        self.seen.append(self.prefix)
        # a report handler publishes prefixed entries; the evaluator keeps them across runs
        engine.state.metrics[f"{self.prefix}marker"] = len(self.seen)


def _evaluator(network: nn.Module, handler: _PrefixRecorder) -> SupervisedEvaluator:
    label = torch.zeros(1, 4, 4)
    label[:, :, :2] = 1  # left half is foreground: 8 of 16 pixels
    items = [{"image": torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(i)), "label": label} for i in (0, 1)]
    post = Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=2), AsDiscreted(keys="label", to_onehot=2)])
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=2),
        network=network,
        postprocessing=post,
        key_val_metric={
            "val_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=[handler],
    )


def test_evaluate_checkpoints_gives_each_checkpoint_its_own_metrics_and_prefix(tmp_path: Path) -> None:
    network = _conv()
    handler = _PrefixRecorder()
    evaluator = _evaluator(network, handler)
    checkpoints = {
        "final": _save({"model": _constant_class_state(1)}, tmp_path / "model_final.pt"),
        "best": _save(_constant_class_state(0), tmp_path / "model.pt"),
    }
    results = evaluate_checkpoints(evaluator, network, checkpoints, report_handler=handler)

    assert list(results) == ["final", "best"]
    assert handler.seen == ["final_", "best_"]
    # all-foreground prediction vs a half-foreground label: Dice = 2 * 8 / (16 + 8)
    assert results["final"]["val_dice"] == pytest.approx(2 / 3)
    # all-background prediction vs a non-empty label: Dice = 0
    assert results["best"]["val_dice"] == pytest.approx(0.0)
    # each result holds only its own prefixed entries, though the evaluator keeps both
    assert results["final"] == {"val_dice": pytest.approx(2 / 3), "final_marker": 1}
    assert results["best"] == {"val_dice": pytest.approx(0.0), "best_marker": 2}
    assert {"final_marker", "best_marker"} <= set(evaluator.state.metrics)
    # the network ends with the last checkpoint loaded
    assert torch.equal(network.bias.detach(), torch.tensor([1.0, 0.0]))


def test_checkpoint_names_that_prefix_each_other_keep_their_own_entries(tmp_path: Path) -> None:
    network = _conv()
    handler = _PrefixRecorder()
    evaluator = _evaluator(network, handler)
    state = _save(_constant_class_state(0), tmp_path / "model.pt")
    results = evaluate_checkpoints(evaluator, network, {"best": state, "best_net1": state}, report_handler=handler)
    assert results["best"] == {"val_dice": pytest.approx(0.0), "best_marker": 1}
    assert results["best_net1"] == {"val_dice": pytest.approx(0.0), "best_net1_marker": 2}


def test_evaluate_checkpoints_without_report_handler(tmp_path: Path) -> None:
    network = _conv()
    handler = _PrefixRecorder()
    evaluator = _evaluator(network, handler)
    path = _save({"model": _constant_class_state(1)}, tmp_path / "model.pt")
    results = evaluate_checkpoints(evaluator, network, {"only": path})
    assert handler.seen == [""]
    assert results == {"only": {"val_dice": pytest.approx(2 / 3), "marker": 1}}


def test_evaluate_checkpoints_stops_at_a_missing_checkpoint(tmp_path: Path) -> None:
    network = _conv()
    handler = _PrefixRecorder()
    evaluator = _evaluator(network, handler)
    missing = tmp_path / "model_final.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        evaluate_checkpoints(evaluator, network, {"final": missing}, report_handler=handler)
    assert handler.seen == []
