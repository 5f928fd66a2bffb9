# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""ContrastivePretrainer: the meta step against a plain step and against SGD's own update, the schedule of meta
steps, logged statistics, resume, and the downstream cross-validation bookkeeping."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset

from usseg.engines.contrastive import (
    ContrastiveLossMetric,
    ContrastivePretrainer,
    classification_summary,
    weight_statistics,
)
from usseg.handlers import EpochSeedHandler, TrainingCheckpointHandler
from usseg.losses.ntxent import NTXentLoss
from usseg.networks.contrastive import CMWNet, ContrastiveOutputs, build_contrastive_network
from usseg.transforms import VideoFramePaird
from usseg.transforms.video.augment import contrastive_augmentation

WIDTHS = (4, 8, 8, 16)
SIZE = 32


def _network(seed: int = 0, num_classes: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_contrastive_network("meta_uscl", depth=10, widths=WIDTHS, num_classes=num_classes)


def _pair_batch(seed: int, pairs: int = 4, label: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {f"view_{k}": torch.randn(pairs, 1, SIZE, SIZE, generator=generator) for k in (1, 2)}
    if label:
        batch["class"] = torch.tensor([0, -1, 1, -1][:pairs])
    return batch


def _trainer(network, cmw=None, train=None, meta=None, epochs=1, epoch_length=1, **kwargs) -> ContrastivePretrainer:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    weight_optimizer = torch.optim.Adam(cmw.parameters(), lr=0.01) if cmw is not None else None
    return ContrastivePretrainer(
        device="cpu",
        max_epochs=epochs,
        epoch_length=epoch_length,
        train_data_loader=train if train is not None else [_pair_batch(1)],
        network=ContrastiveOutputs(network),
        optimizer=optimizer,
        meta_data_loader=meta if meta is not None else ([_pair_batch(2)] if cmw is not None else None),
        weight_network=cmw,
        weight_optimizer=weight_optimizer,
        decollate=False,
        **kwargs,
    )


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize("virtual_lr", ["meta", "scheduled"], ids=["meta_lr_fixed", "scheduled_lr_released"])
def test_meta_step_changes_cmw_net_and_the_main_model_takes_the_plain_weighted_step(virtual_lr: str) -> None:
    network, cmw = _network(), CMWNet(WIDTHS[-1])
    start_network, start_cmw = copy.deepcopy(network), _params(cmw)
    trainer = _trainer(network, cmw, virtual_lr=virtual_lr, meta_lr=0.05)
    trainer.run()
    assert "meta_loss" in trainer.state.output
    assert any(not torch.equal(value, start_cmw[name]) for name, value in cmw.state_dict().items())

    # a plain SGD step from the same start, on the same batch, with the weights of the UPDATED CMW-Net
    reference = start_network.train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batch = _pair_batch(1)
    out_1, out_2 = reference.forward_all(batch["view_1"]), reference.forward_all(batch["view_2"])
    with torch.no_grad():
        weights = cmw(out_1["h"], out_2["h"])
    NTXentLoss(0.5)(out_1["z"], out_2["z"], weights).backward()
    optimizer.step()
    for name, value in reference.state_dict().items():  # parameters AND batch-norm statistics
        assert torch.allclose(network.state_dict()[name], value, atol=1e-6), name
    assert float(trainer.state.output["weight_mean"]) == pytest.approx(float(weights.mean()), rel=1e-5)


@pytest.mark.parametrize(
    "momentum, dampening, nesterov, weight_decay",
    [(0.9, 0.0, False, 1e-4), (0.9, 0.0, True, 1e-3), (0.5, 0.3, False, 0.0), (0.0, 0.0, False, 1e-2)],
    ids=["momentum_wd", "nesterov", "dampening", "no_momentum"],
)
def test_virtual_step_replays_sgd_including_an_existing_momentum_buffer(momentum, dampening, nesterov, weight_decay):
    network, cmw = _network(), CMWNet(WIDTHS[-1])
    trainer = _trainer(network, cmw, virtual_lr="scheduled")
    trainer.optimizer = torch.optim.SGD(
        network.parameters(), lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov,
        weight_decay=weight_decay,
    )  # fmt: skip
    network.train()

    def loss_of(seed: int) -> torch.Tensor:
        batch = _pair_batch(seed)
        return NTXentLoss()(network(batch["view_1"]), network(batch["view_2"]))

    trainer.optimizer.zero_grad()
    loss_of(5).backward()
    trainer.optimizer.step()  # fills the momentum buffers
    trainer.optimizer.zero_grad()
    loss = loss_of(6)
    virtual = trainer._virtual_parameters(loss)
    loss.backward()
    trainer.optimizer.step()
    for name, param in network.named_parameters():
        assert torch.allclose(virtual[name], param.detach(), atol=1e-6), name


def test_virtual_step_restricted_to_some_parameters_keeps_the_others() -> None:
    network, cmw = _network(), CMWNet(WIDTHS[-1])
    trainer = _trainer(network, cmw, meta_parameters=["encoder.layer4", "projection"])
    batch = _pair_batch(3)
    virtual = trainer._virtual_parameters(NTXentLoss()(network(batch["view_1"]), network(batch["view_2"])))
    for name, param in network.named_parameters():
        moved = name.startswith(("encoder.layer4", "projection"))
        assert torch.equal(virtual[name], param.detach()) is not moved, name
        assert virtual[name].requires_grad is moved  # only the moved parameters carry the second-order graph


def test_meta_interval_runs_the_meta_step_every_k_iterations() -> None:
    network, cmw = _network(), CMWNet(WIDTHS[-1])
    trainer = _trainer(network, cmw, train=[_pair_batch(1), _pair_batch(3)], epochs=2, epoch_length=2, meta_interval=2)
    seen: list[tuple[int, bool, bool]] = []
    previous = {"cmw": _params(cmw)}

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine) -> None:
        now = _params(cmw)
        changed = any(not torch.equal(now[k], previous["cmw"][k]) for k in now)
        seen.append((engine.state.iteration, "meta_loss" in engine.state.output, changed))
        previous["cmw"] = now

    trainer.run()
    assert seen == [(1, False, False), (2, True, True), (3, False, False), (4, True, True)]


def test_output_holds_every_loss_and_statistic_and_uscl_cross_entropy_skips_unlabeled() -> None:
    network = _network(num_classes=2)
    trainer = _trainer(network, train=[_pair_batch(1, label=True)], classification_weight=0.2)
    trainer.optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    trainer.run()
    output = trainer.state.output
    expected = {"loss", "contrastive_loss", "cls_loss", "labeled_fraction", "weight_mean", "weight_std"}
    assert expected | {"weight_entropy", "embedding_std", "collapse_rank_score", "cls_weight"} <= set(output)
    assert float(output["labeled_fraction"]) == 0.5
    assert float(output["weight_entropy"]) == pytest.approx(1.0) and float(output["weight_std"]) == 0.0
    expected_total = float(output["contrastive_loss"]) + 0.2 * float(output["cls_loss"])
    assert float(output["loss"].detach()) == pytest.approx(expected_total)


@pytest.mark.parametrize("double_forward, passes", [(False, 2), (True, 4)], ids=["fixed", "compat_uscl_4_forwards"])
def test_uscl_double_forward_compat_moves_batch_norm_statistics_four_times(double_forward: bool, passes: int) -> None:
    network = _network(num_classes=2)
    trainer = _trainer(network, train=[_pair_batch(1, label=True)], classification_weight=0.2,
                       double_forward=double_forward)  # fmt: skip
    trainer.run()
    assert int(network.encoder.bn1.num_batches_tracked) == passes


def test_weight_statistics_and_the_validation_metric() -> None:
    stats = weight_statistics(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert float(stats["weight_entropy"]) == pytest.approx(0.0, abs=1e-6)
    assert float(weight_statistics(torch.full((4,), 0.3))["weight_entropy"]) == pytest.approx(1.0)
    metric = ContrastiveLossMetric()
    metric.reset()
    z = torch.randn(6, 8)
    metric.update(torch.cat([z[:3], z[3:]]))
    metric.update(torch.cat([z[:1], z[1:2]]))
    expected = (3 * float(NTXentLoss()(z[:3], z[3:])) + float(NTXentLoss()(z[:1], z[1:2]))) / 4
    assert metric.compute() == pytest.approx(expected, rel=1e-6)


def test_classification_summary_of_a_known_confusion_matrix() -> None:
    summary = classification_summary(np.array([[3, 1], [0, 4]]), ["a", "b"])
    assert summary["accuracy"] == pytest.approx(7 / 8)
    assert summary["per_class"]["a"] == {"precision": 1.0, "recall": 0.75, "support": 4}
    assert summary["per_class"]["b"]["precision"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"meta_interval": 0}, ValueError, "meta_interval must be a positive integer, got 0"),
        ({"virtual_lr": "main"}, ValueError, "virtual_lr must be one of .* got 'main'"),
        ({"meta_parameters": ["decoder"]}, ValueError, r"\['decoder'\] match no parameter"),
        ({"meta_parameters": "encoder"}, TypeError, "got the string 'encoder'"),
        ({"precision": "fp16"}, ValueError, "fp16"),
    ],
    ids=["zero_interval", "unknown_virtual_lr", "unmatched_prefix", "string_prefix", "fp16_meta"],
)
def test_bad_arguments_raise_quoting_the_value(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _trainer(_network(), CMWNet(WIDTHS[-1]), **kwargs)


def test_meta_weighting_needs_sgd_and_a_meta_loader() -> None:
    network = _network()
    with pytest.raises(TypeError, match="Adam"):
        ContrastivePretrainer(
            "cpu", 1, [_pair_batch(1)], ContrastiveOutputs(network), torch.optim.Adam(network.parameters()),
            meta_data_loader=[_pair_batch(2)], weight_network=CMWNet(16),
            weight_optimizer=torch.optim.Adam(network.parameters()),
        )  # fmt: skip
    with pytest.raises(ValueError, match="meta_data_loader=None"):
        _trainer(network, CMWNet(16), meta=None).__class__(
            "cpu", 1, [_pair_batch(1)], ContrastiveOutputs(network), torch.optim.SGD(network.parameters(), lr=0.1),
            weight_network=CMWNet(16), weight_optimizer=torch.optim.Adam(network.parameters()),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- resume


def _videos(seed: int, count: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"video": rng.integers(0, 256, (6, 40, 40), dtype=np.uint8)} for _ in range(count)]


def _run(folder: Path, epochs: int, stop_after: int | None = None, resume: bool = False) -> dict:
    """A Meta-USCL run on random videos with random augmentations, seeded per epoch, checkpointed every epoch."""
    network, cmw = _network(seed=7), CMWNet(WIDTHS[-1])
    augment = contrastive_augmentation("meta_uscl", SIZE)
    train = Dataset(_videos(0, 8), VideoFramePaird(preset="meta_uscl", augment=augment, info_key=None))
    meta_aug = contrastive_augmentation("meta_uscl", SIZE)
    meta = Dataset(_videos(1, 4), VideoFramePaird(preset="meta_uscl", samples=1, augment=meta_aug, info_key=None))
    trainer = _trainer(
        network,
        cmw,
        train=DataLoader(train, batch_size=4, shuffle=True),
        meta=DataLoader(meta, batch_size=4, shuffle=True),
        epochs=epochs,
        epoch_length=None,
    )
    EpochSeedHandler(seed=3).attach(trainer)
    save_dict = {"network": network, "optimizer": trainer.optimizer, "cmw": cmw, "cmw_opt": trainer.weight_optimizer}
    TrainingCheckpointHandler(folder, save_dict, seed=3, resume=resume).attach(trainer)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run()
    return {"network": _params(network), "cmw": _params(cmw), "losses": losses}


def test_an_interrupted_then_resumed_run_equals_the_uninterrupted_one_bitwise(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the same reduction order in both runs
    reference = _run(tmp_path / "reference", epochs=3)
    first = _run(tmp_path / "resumed", epochs=3, stop_after=1)
    second = _run(tmp_path / "resumed", epochs=3, resume=True)
    assert len(first["losses"]) == 2 and len(second["losses"]) == 4
    assert first["losses"] + second["losses"] == reference["losses"]
    for part in ("network", "cmw"):
        for name, value in reference[part].items():
            assert torch.equal(second[part][name], value), f"{part}.{name}"
