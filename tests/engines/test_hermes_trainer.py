# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""HermesTrainer: which losses reach which network (each itc_gradient mode, IAS detaching, SupOnly), the logged
statistics, precision, and an interrupted-then-resumed bundle run that ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents

from usseg.bundles import bundle_root
from usseg.engines.hermes import HermesTrainer, released_itc_ramp
from usseg.losses.pixel_contrast import PixelContrastLoss
from usseg.networks.hermes import HermesClassificationNet, HermesSegmentationNet

SMALL = {"depth": 10, "widths": (8, 16, 16, 32)}
SIZE = 32
BATCH = 4


def batches(seed: int) -> tuple[list[dict], list[dict]]:
    generator = torch.Generator().manual_seed(seed)
    labeled = [
        {
            "image": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator),
            "label": (torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) > 0.6).float(),
            "class": torch.tensor([0, 1, 0, 1]),
        }
        for _ in range(2)
    ]
    unlabeled = [
        {
            "image_weak": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator),
            "image_strong": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator),
        }
        for _ in range(2)
    ]
    return labeled, unlabeled


def one_step(saliency: bool = False, **kwargs: object) -> tuple[HermesTrainer, dict[str, dict[str, float]]]:
    """Run one iteration and return the trainer and the gradient magnitude of each network part after backward."""
    torch.manual_seed(0)
    seg = HermesSegmentationNet(embedding_dim=16, consistency_dim=12, saliency=saliency, **SMALL)
    cls = HermesClassificationNet(embedding_dim=8, consistency_dim=12, ias=True, seg_channels=seg.ias_channels, **SMALL)
    labeled, unlabeled = batches(0)
    defaults = {
        "itc_rampup_length": 0,  # full ITC weight from the first step
        "contrast_start_iteration": 0,
        "pixel_contrast_loss": PixelContrastLoss(min_anchor_pixels=0),
        "decollate": False,
    }
    trainer = HermesTrainer(
        "cpu",
        1,
        labeled,
        unlabeled,
        seg,
        torch.optim.SGD(seg.parameters(), lr=0.0),
        cls,
        torch.optim.SGD(cls.parameters(), lr=0.0),
        epoch_length=1,
        **{**defaults, **kwargs},
    )
    grads: dict[str, dict[str, float]] = {}

    def record(engine: HermesTrainer) -> None:
        for name, net in (("seg", seg), ("cls", cls)):
            for part in ("encoder", "consistency_head", "embedding_head", "dec0", "ias_layer2", "classifier", "head"):
                module = getattr(net, part, None)
                if module is None:
                    continue
                values = [p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None]
                grads.setdefault(name, {})[part] = sum(values) if values else None

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, record)
    trainer.run()
    return trainer, grads


def test_itc_both_trains_both_consistency_heads_and_both_encoders() -> None:
    trainer, grads = one_step(itc_gradient="both")
    assert grads["cls"]["consistency_head"] > 0  # only ITC reaches it
    assert grads["seg"]["consistency_head"] > 0
    assert grads["seg"]["encoder"] > 0 and grads["cls"]["encoder"] > 0
    assert grads["seg"]["embedding_head"] is not None  # pixel contrast is in the graph (its values: loss tests)
    assert grads["cls"]["ias_layer2"] > 0  # IAS on the labeled batch


def test_itc_seg_only_leaves_the_classifier_consistency_head_untrained() -> None:
    _, grads = one_step(itc_gradient="seg_only")
    assert grads["cls"]["consistency_head"] is None  # the released effective semantics
    assert grads["seg"]["consistency_head"] > 0


@pytest.mark.parametrize("detach, reaches", [(True, False), (False, True)], ids=["detached", "attached"])
def test_ias_detach_decides_whether_classification_losses_reach_the_segmentation_decoder(
    detach: bool, reaches: bool
) -> None:
    # segmentation losses and ITC off: whatever reaches the decoder comes through IAS
    _, grads = one_step(detach_seg_features=detach, seg_weight=0.0, itc_weight=0.0)
    assert (grads["seg"]["dec0"] is not None and grads["seg"]["dec0"] > 0) is reaches


def test_supervised_only_uses_labeled_losses_only() -> None:
    trainer, grads = one_step(supervised_only=True)
    assert trainer._unlabeled_iter is None  # the unlabeled stream was never read
    assert grads["cls"]["embedding_head"] is None and grads["cls"]["consistency_head"] is None
    assert grads["seg"]["embedding_head"] is None
    assert grads["seg"]["head"] > 0 and grads["cls"]["classifier"] > 0
    assert {"cls_sup_loss", "seg_sup_loss", "cls_loss", "seg_loss"} <= set(trainer.state.output)


def test_every_loss_component_and_threshold_statistic_is_in_the_output() -> None:
    trainer, _ = one_step()
    output = trainer.state.output
    expected = {
        "loss",
        "cls_sup_loss",
        "cls_unsup_loss",
        "cls_contrast_loss",
        "seg_sup_loss",
        "seg_unsup_loss",
        "seg_contrast_loss",
        "itc_loss",
        "itc_weight",
        "contrast_weight",
        "cls_accept_rate",
        "seg_accept_rate",
        "cls_threshold_c0",
        "seg_threshold_c1",
        "seg_entropy_threshold",
        "pixel_contrast_ignored_rate",
    }
    assert expected <= set(output)
    assert all(torch.isfinite(torch.as_tensor(output[k])) for k in expected)
    assert output["itc_weight"] == 1.0 and output["contrast_weight"] == 1.0
    # the total is the documented combination of the terms
    total = 1.1 * (
        output["cls_sup_loss"] + 0.1 * output["cls_unsup_loss"] + 0.2 * output["cls_contrast_loss"]
    ) + 0.5 * (output["seg_sup_loss"] + 0.1 * output["seg_unsup_loss"] + 0.8 * output["seg_contrast_loss"])
    total = total + output["itc_loss"]
    assert float(output["loss"].detach()) == pytest.approx(float(total), rel=1e-5)


def test_a_pixel_contrast_without_two_classes_is_reported_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    class TwoClassContrast(torch.nn.Module):  # what a live pixel contrast reports (its counting: loss tests)
        last_contrast_classes = 2

        def forward(self, embedding: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
            return embedding.sum() * 0.0

    with caplog.at_level("WARNING"):
        live, _ = one_step(pixel_contrast_loss=TwoClassContrast())
    assert live.state.output["pixel_contrast_classes"] == 2.0
    assert not any("pixel contrast" in record.getMessage() for record in caplog.records)
    with caplog.at_level("WARNING"):
        dead, _ = one_step(pixel_contrast_loss=PixelContrastLoss(min_anchor_pixels=10_000))
    assert dead.state.output["pixel_contrast_classes"] == 0.0
    assert dead.state.output["seg_contrast_loss"].item() == 0.0
    assert any("pixel contrast saw fewer than two classes" in record.getMessage() for record in caplog.records)
    with caplog.at_level("WARNING"):
        caplog.clear()
        one_step(seg_contrast_weight=0.0, pixel_contrast_loss=PixelContrastLoss(min_anchor_pixels=10_000))
    assert not any("pixel contrast" in record.getMessage() for record in caplog.records)  # switched off: no warning


def test_saliency_bridge_and_bf16_train() -> None:
    trainer, grads = one_step(saliency=True, precision="bf16", channels_last=True)
    assert torch.isfinite(torch.as_tensor(trainer.state.output["loss"]))
    assert grads["seg"]["encoder"] > 0


def test_schedules_fixed_and_released() -> None:
    trainer, _ = one_step(itc_rampup_length=100, contrast_start_iteration=5)
    assert trainer.itc_weight_at(100) == 1.0 and trainer.itc_weight_at(0) == pytest.approx(0.006737947)
    assert trainer.contrast_weight_at(4) == 0.0 and trainer.contrast_weight_at(5) == 1.0
    assert released_itc_ramp(3000) == pytest.approx(0.7316156, rel=1e-6)  # never reaches 1 in 3000 steps


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"itc_gradient": "cls_only"}, "'cls_only'"), ({"ias_views": "weak"}, "'weak'"), ({"cls_weight": -1.0}, "-1.0")],
    ids=["itc_gradient", "ias_views", "negative_weight"],
)
def test_invalid_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        one_step(**kwargs)
    assert fragment in str(raised.value)


def test_a_string_flag_is_refused() -> None:
    with pytest.raises(TypeError, match="supervised_only must be True or False, got 'false'"):
        one_step(supervised_only="false")


# ------------------------------------------------------------------------------ interrupted, then resumed

CONFIG = str(Path(bundle_root("breast_us_hermes_classification_segmentation")) / "configs" / "train.yaml")
QUICK = {
    "max_epochs": 4,
    "iterations_per_epoch": 2,
    "batch_size": 2,
    "spatial_size": [32, 32],
    "num_phantom_images": 24,
    "phantom_size": 64,
    "contrast_warmup_passes": 0,
    "log_every": 100,
    # stateful policies, so the checkpoint must carry them: EMA class ratios and a pixel memory bank
    "dual_threshold#ratio_source": "ema",
    "pixel_contrast#memory_size": 8,
    "pixel_contrast#min_anchor_pixels": 0.05,
    "encoder_widths": [8, 16, 16, 32],
}


def _workflow(output_dir: Path, **overrides: object) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=CONFIG, workflow_type="train", output_dir=str(output_dir), **{**QUICK, **overrides}
    )
    workflow.initialize()
    return workflow


def _final(output_dir: Path) -> dict[str, dict]:
    return torch.load(output_dir / "models" / "model_final.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_interrupted_then_resumed_run_ends_bitwise_equal(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _workflow(reference).run()
    datalist = str(reference / "datalist.json")

    interrupted = tmp_path / "interrupted"
    workflow = _workflow(interrupted, datalist=datalist)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    # after the epoch-2 checkpoint (added last, so it runs after the checkpoint handler): the run stops there
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    workflow.run()
    assert not (interrupted / "models" / "model_final.pt").exists() or trainer.state.epoch == 2
    assert (interrupted / "checkpoints" / "checkpoint_epoch0002.pt").is_file()

    _workflow(interrupted, datalist=datalist, resume=True).run()
    expected, actual = _final(reference), _final(interrupted)
    for entry in ("model", "optimizer", "cls_optimizer"):
        flat_expected = _flatten(expected[entry])
        flat_actual = _flatten(actual[entry])
        assert flat_expected.keys() == flat_actual.keys()
        unequal = [k for k in flat_expected if not torch.equal(flat_expected[k], flat_actual[k])]
        assert not unequal, f"{entry}: {len(unequal)} tensors differ, e.g. {unequal[:3]}"


def _flatten(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for index, value in enumerate(state):
            out.update(_flatten(value, f"{prefix}.{index}"))
        return out
    return {prefix: torch.tensor(float(state))} if isinstance(state, (int, float)) else {}
