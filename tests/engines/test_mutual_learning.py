# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""MutualLearningTrainer: the two stages' losses, the teacher's modes, and a crash-then-resume run that ends
bit-for-bit where the uninterrupted run ends (both networks, the BMA teacher and its pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose, RandFlipd

from usseg.engines.mutual_learning import MutualLearningTrainer, PrepareMultiModalBatch, label_to_target
from usseg.handlers import EpochSeedHandler, RampUpHandler, TrainingCheckpointHandler
from usseg.handlers.bma import BMATeacherHandler, PhaseSwitchHandler
from usseg.losses.asc import ASCLoss, SoftDiceBCELoss
from usseg.networks.semi_cml import SemiCMLUNet

SIZE = 16
KEYS = ["image_m1", "image_m2", "label"]
MAX_EPOCHS = 3  # epochs 1-2 stage 1, epoch 3 stage 2 (PReL)
EPOCH_LENGTH = 2
CRASH_AT_ITERATION = 5  # the first iteration of epoch 3 (iterations 5-6), after epoch 2 was checkpointed


def _items(count: int, seed: int, labeled: bool) -> list[dict[str, Any]]:
    """Discs seen by two modalities: bright in modality 1, dark and blurry-edged in modality 2."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    items = []
    for _ in range(count):
        centre, radius = rng.uniform(5, SIZE - 5, 2), rng.uniform(3, 5)
        disc = (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.float32)
        item = {
            "image_m1": (0.2 + 0.6 * disc + rng.normal(0, 0.1, disc.shape)).astype(np.float32)[None],
            "image_m2": (0.8 - 0.5 * disc + rng.normal(0, 0.2, disc.shape)).astype(np.float32)[None],
        }
        if labeled:
            item["label"] = disc[None]
        items.append(item)
    return items


def _network() -> SemiCMLUNet:
    return SemiCMLUNet(features=4, depth=3, dropout=(0.1, 0.2, 0.3))


def _prepare_m2(batch: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
    return batch["image_m2"].to(device), batch["label"].to(device)


class _CrashError(RuntimeError):
    pass


def _run(output: Path, resume: bool = False, crash: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    nets = {name: _network() for name in ("m1", "m2", "teacher")}
    flip = RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1, allow_missing_keys=True)
    labeled = DataLoader(Dataset(_items(4, 1, True), Compose([flip])), batch_size=2, shuffle=True, drop_last=True)
    unlabeled = DataLoader(Dataset(_items(6, 2, False), Compose([flip])), batch_size=2, shuffle=True, drop_last=True)
    validation = DataLoader(Dataset(_items(3, 3, True)), batch_size=3)
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=validation,
        network=nets["m2"],
        prepare_batch=_prepare_m2,
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_val_metric={"val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    optimizers = {m: torch.optim.Adam(nets[m].parameters(), lr=1e-2) for m in ("m1", "m2")}
    bma = BMATeacherHandler(nets["teacher"], nets["m2"], evaluator, pool_size=1, start_epoch=-1, stop_epoch=3)
    phases = PhaseSwitchHandler(switch_epoch=2, wp2_schedule=1, teacher_handler=bma)
    losses: list[float] = []
    handlers: list[Any] = [
        EpochSeedHandler(seed=5),
        RampUpHandler("consistency", 1.0, length=6),
        phases,
        bma,
        TrainingCheckpointHandler(
            output / "checkpoints",
            {
                "model": nets["m1"],
                "model_m2": nets["m2"],
                "teacher": nets["teacher"],
                "optimizer": optimizers["m1"],
                "optimizer_m2": optimizers["m2"],
                "bma_pool": bma,
                "phase": phases,
            },
            seed=5,
            resume=resume,
        ),
    ]
    trainer = MutualLearningTrainer(
        device="cpu",
        max_epochs=MAX_EPOCHS,
        epoch_length=EPOCH_LENGTH,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled,
        network=nets["m1"],
        network_m2=nets["m2"],
        optimizer=optimizers["m1"],
        optimizer_m2=optimizers["m2"],
        teacher=nets["teacher"],
        teacher_passes=2,
        stage2_supervised_weight=0.5,
        train_handlers=handlers,
        decollate=False,
    )

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine: MutualLearningTrainer) -> None:
        losses.append(float(engine.state.output["loss"].detach()))
        if crash and engine.state.iteration == CRASH_AT_ITERATION:
            raise _CrashError("simulated crash inside epoch 3")

    trainer.run()
    return {
        "weights": {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in nets.items()},
        "pool": bma.state_dict(),
        "losses": losses,
        "phase": trainer.phase,
    }


def test_a_crashed_run_resumed_from_its_checkpoint_ends_bitwise_like_an_uninterrupted_one(tmp_path):
    reference = _run(tmp_path / "reference")
    with pytest.raises(_CrashError):
        _run(tmp_path / "crashed", crash=True)
    resumed = _run(tmp_path / "crashed", resume=True)
    assert reference["phase"] == resumed["phase"] == 2
    assert reference["pool"] == resumed["pool"] and reference["pool"]["initialized"]
    for name, state in reference["weights"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["weights"][name][key]), f"{name}.{key} differs after resume"
    # the resumed run replayed epoch 3 exactly: the same losses as the reference's last two iterations
    assert resumed["losses"] == reference["losses"][-2:]
    # and the teacher really moved away from its random start: it is a blend of the modality-2 network
    assert not torch.equal(reference["weights"]["teacher"]["head.weight"], _network().state_dict()["head.weight"])


def _trainer(**kwargs: Any) -> MutualLearningTrainer:
    loader = DataLoader(Dataset(_items(2, 0, True)), batch_size=2)
    nets = [_network() for _ in range(3)]
    return MutualLearningTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        unlabeled_data_loader=DataLoader(Dataset(_items(2, 1, False)), batch_size=2),
        network=nets[0],
        network_m2=nets[1],
        optimizer=torch.optim.SGD(nets[0].parameters(), lr=0.1),
        optimizer_m2=torch.optim.SGD(nets[1].parameters(), lr=0.1),
        teacher=nets[2],
        **kwargs,
    )


def _forward_output(pseudo: bool) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    output: dict[str, Any] = {
        "logits": {m: torch.randn(5, 1, 8, 8, generator=generator) for m in (1, 2)},
        "num_labeled": 2,
        "label": (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float(),
    }
    if pseudo:
        output["pseudo"] = torch.rand(3, 1, 8, 8, generator=generator)
        output["pseudo_std"] = torch.zeros(3, 1, 8, 8)
    return output


def test_stage_one_loss_is_the_weighted_sum_of_its_terms():
    trainer = _trainer(asc_weight=3.5)
    trainer.loss_weights["consistency"] = 0.25
    fwd = _forward_output(pseudo=False)
    losses = trainer.compute_losses(trainer, fwd)
    seg, asc = SoftDiceBCELoss(), ASCLoss()
    p = {m: torch.sigmoid(fwd["logits"][m][2:]) for m in (1, 2)}
    sup = seg(fwd["logits"][1][:2], fwd["label"]) + seg(fwd["logits"][2][:2], fwd["label"])
    expected = sup + 3.5 * asc(p[1], p[2]) + 0.25 * ((p[1] - p[2]) ** 2).mean()
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert {"sup_m1", "sup_m2", "asc", "mse", "phase"} <= set(losses)


@pytest.mark.parametrize("teacher_modality", [2, 1], ids=["released_teacher_m2", "teacher_m1"])
def test_stage_two_loss_reteaches_the_other_modality_with_wp2_on_the_teacher_side(teacher_modality):
    trainer = _trainer(
        phase=2, alpha_m1=0.1, alpha_m2=0.3, teacher_modality=teacher_modality, stage2_supervised_weight=0.5
    )
    trainer.loss_weights["teach_self"] = 0.4
    fwd = _forward_output(pseudo=True)
    losses = trainer.compute_losses(trainer, fwd)
    seg, asc = SoftDiceBCELoss(), ASCLoss()
    alpha = {1: 0.1, 2: 0.3}
    teach = {
        m: alpha[m] * asc(fwd["pseudo"], torch.sigmoid(fwd["logits"][m][2:]))
        + (1 - alpha[m]) * seg(fwd["logits"][m][2:], fwd["pseudo"])
        for m in (1, 2)
    }
    sup = seg(fwd["logits"][1][:2], fwd["label"]) + seg(fwd["logits"][2][:2], fwd["label"])
    other = 3 - teacher_modality
    expected = teach[other] + 0.4 * teach[teacher_modality] + 0.5 * sup
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["teach_m1"].item() == pytest.approx(teach[1].item(), rel=1e-6)
    assert {"pseudo_mean", "pseudo_foreground", "pseudo_mc_std", "asc_teach_m2"} <= set(losses)


@pytest.mark.parametrize("train_mode_bn", [False, True], ids=["fixed_eval_bn", "compat_train_bn"])
def test_teacher_batch_norm_mode_and_mc_dropout(train_mode_bn):
    trainer = _trainer(bma_train_mode_bn=train_mode_bn, teacher_passes=3)
    running_mean = trainer.teacher.encoders[0][1].running_mean.clone()
    images = torch.rand(2, 1, 16, 16)
    torch.manual_seed(0)
    mean, std = trainer.soft_pseudo_labels(images)
    assert mean.shape == (2, 1, 16, 16) and ((mean >= 0) & (mean <= 1)).all()
    assert std.mean() > 0  # MC dropout and input noise make the passes differ
    changed = not torch.equal(trainer.teacher.encoders[0][1].running_mean, running_mean)
    assert changed is train_mode_bn  # eval-mode BN leaves the teacher's statistics alone


def test_released_noise_is_positive_only_and_the_symmetric_option_is_zero_mean():
    assert _trainer().teacher_noise_clamp == (0.0, 0.2)
    assert _trainer(symmetric_noise=True).teacher_noise_clamp == (-0.2, 0.2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha_m1": "0.1"}, TypeError, "alpha_m1"),
        ({"alpha_m2": 1.5}, ValueError, "alpha_m2"),
        ({"teacher_modality": 3}, ValueError, "teacher_modality"),
        ({"teacher_passes": 0}, ValueError, "teacher_passes"),
        ({"student_dropout": "always"}, ValueError, "student_dropout"),
    ],
    ids=["alpha_string", "alpha_above_one", "modality", "passes", "student_dropout"],
)
def test_bad_settings_are_refused_quoting_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        _trainer(**kwargs)


def test_alphas_are_floats_even_when_given_as_ints():
    # the released argparse type=int truncated 0.1 to 0; here an int 0 or 1 stays exactly what it says
    trainer = _trainer(alpha_m1=0, alpha_m2=1)
    assert trainer.alpha == {1: 0.0, 2: 1.0} and all(isinstance(v, float) for v in trainer.alpha.values())


def test_label_to_target_for_binary_and_multi_structure_labels():
    label = torch.tensor([[[[0, 1], [2, 255]]]])
    torch.testing.assert_close(label_to_target(label, 1), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
    two = label_to_target(torch.tensor([[[[0, 1], [2, 2]]]]), 2)
    torch.testing.assert_close(two[0, 0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(two[0, 1], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="3 channels"):
        label_to_target(torch.zeros(1, 3, 2, 2), 2)


def test_prepare_multimodal_batch_names_the_missing_key():
    with pytest.raises(KeyError, match="image_m2"):
        PrepareMultiModalBatch()({"image_m1": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)})
