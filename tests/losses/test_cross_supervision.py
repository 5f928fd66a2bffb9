# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The released soft Dice, the supervised 0.5 (CE + Dice) and the cross supervision of the dual-network method."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from usseg.losses.cross_supervision import CrossSupervisionLoss, SupervisedDiceCELoss, squared_soft_dice


def _slow_released_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> float:
    """The SSL4MIS DiceLoss written out class by class with Python sums."""
    classes = probs.shape[1]
    total = 0.0
    for c in range(classes):
        p = probs[:, c].flatten().tolist()
        t = target[:, c].flatten().tolist()
        intersect = sum(a * b for a, b in zip(p, t))
        z_sum = sum(a * a for a in p)
        y_sum = sum(b * b for b in t)
        total += 1.0 - (2 * intersect + smooth) / (z_sum + y_sum + smooth)
    return total / classes


def test_soft_dice_on_a_known_two_pixel_case() -> None:
    # one image, two classes, two pixels: p = [[0.8, 0.4], [0.2, 0.6]], t = one-hot of [0, 1]
    probs = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]])
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    # class 0: I = 0.8, sum p^2 = 0.8, sum t^2 = 1 -> 1 - 1.6/1.8 ; class 1: I = 0.6, p^2 = 0.4, t^2 = 1 -> 1 - 1.2/1.4
    expected = 0.5 * ((1 - (1.6 + 1e-5) / (1.8 + 1e-5)) + (1 - (1.2 + 1e-5) / (1.4 + 1e-5)))
    assert float(squared_soft_dice(probs, target)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 4], ids=["2_classes", "3_classes", "4_classes"])
def test_soft_dice_matches_the_released_formula_and_monai(classes: int) -> None:
    generator = torch.Generator().manual_seed(classes)
    probs = torch.rand(3, classes, 6, 5, generator=generator).softmax(dim=1)
    target = torch.rand(3, classes, 6, 5, generator=generator).softmax(dim=1)
    value = float(squared_soft_dice(probs, target))
    assert value == pytest.approx(_slow_released_dice(probs, target), rel=1e-5)
    monai = DiceLoss(include_background=True, squared_pred=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    assert value == pytest.approx(float(monai(probs, target)), rel=1e-5)


def test_soft_dice_of_a_perfect_one_hot_prediction_is_zero() -> None:
    target = F.one_hot(torch.randint(0, 3, (2, 8, 8)), 3).movedim(-1, 1).float()
    assert float(squared_soft_dice(target, target)) == pytest.approx(0.0, abs=1e-7)


def test_soft_dice_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 2, 4, 4\)"):
        squared_soft_dice(torch.rand(2, 3, 4, 4), torch.rand(2, 2, 4, 4))


def test_supervised_loss_is_half_ce_plus_half_dice_over_all_classes() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (2, 1, 8, 8), generator=generator).float()
    ce = F.cross_entropy(logits, labels[:, 0].long())
    one_hot = F.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).float()
    dice = _slow_released_dice(logits.softmax(dim=1), one_hot)
    assert float(SupervisedDiceCELoss()(logits, labels)) == pytest.approx(0.5 * float(ce) + 0.5 * dice, rel=1e-5)


def test_supervised_loss_truncates_fractional_labels_like_the_released_long_cast() -> None:
    logits = torch.randn(1, 3, 4, 4)
    fractional = torch.full((1, 1, 4, 4), 1.7)
    assert float(SupervisedDiceCELoss()(logits, fractional)) == float(
        SupervisedDiceCELoss()(logits, torch.ones(1, 1, 4, 4))
    )


def test_soft_cross_supervision_targets_the_other_probabilities_and_stops_their_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(4, 3, 8, 8, generator=generator, requires_grad=True)
    other = torch.randn(4, 3, 8, 8, generator=generator, requires_grad=True)
    loss = CrossSupervisionLoss()(student, other)
    expected = _slow_released_dice(student.detach().softmax(dim=1), other.detach().softmax(dim=1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert other.grad is None  # stop-gradient: the other network is a teacher here
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_hard_cross_supervision_is_cross_entropy_against_the_other_argmax() -> None:
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 3, 5, 5, generator=generator, requires_grad=True)
    other = torch.randn(2, 3, 5, 5, generator=generator, requires_grad=True)
    loss = CrossSupervisionLoss("hard_ce")(student, other)
    log_probs = student.detach().log_softmax(dim=1)
    pseudo = other.detach().argmax(dim=1)
    manual = -sum(float(log_probs[b, pseudo[b, i, j], i, j]) for b in range(2) for i in range(5) for j in range(5)) / (
        2 * 5 * 5
    )
    assert float(loss) == pytest.approx(manual, rel=1e-5)
    loss.backward()
    assert other.grad is None


def test_cross_supervision_between_identical_confident_networks_is_near_zero() -> None:
    logits = 20.0 * F.one_hot(torch.randint(0, 3, (2, 6, 6)), 3).movedim(-1, 1).float()
    assert float(CrossSupervisionLoss()(logits, logits.clone())) < 1e-6
    assert float(CrossSupervisionLoss("hard_ce")(logits, logits.clone())) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "mse"}, "mode"), ({"smooth": -1.0}, "smooth")],
    ids=["unknown_mode", "negative_smooth"],
)
def test_cross_supervision_validates_its_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CrossSupervisionLoss(**kwargs)


def test_cross_supervision_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        CrossSupervisionLoss()(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))


def test_released_dice_smoothing_makes_empty_classes_score_zero_loss() -> None:
    # a class absent from both prediction and target: (0 + s) / (0 + s) = 1, loss 0 for that class
    probs = torch.zeros(1, 2, 3, 3)
    probs[:, 0] = 1.0
    value = float(squared_soft_dice(probs, probs.clone()))
    assert math.isclose(value, 0.0, abs_tol=1e-7)
