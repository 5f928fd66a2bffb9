# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``MaskedCrossEntropyLoss`` against cross-entropies computed by hand from softmax probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from usseg.losses.consistency import MaskedCrossEntropyLoss

# Segmentation case: one image, two classes, a 1 x 3 pixel row. Hand-computed per-pixel cross-entropies:
#   pixel 0: logits (0, ln 3), target 1 -> p = 3 / 4, CE = ln(4 / 3)
#   pixel 1: logits (0, 0),    target 0 -> p = 1 / 2, CE = ln 2
#   pixel 2: logits (ln 4, 0), target 1 -> p = 1 / 5, CE = ln 5
SEG_LOGITS = torch.tensor([[[[0.0, 0.0, math.log(4.0)]], [[math.log(3.0), 0.0, 0.0]]]])  # (1, 2, 1, 3)
SEG_TARGET = torch.tensor([[[1, 0, 1]]])  # (1, 1, 3)
SEG_CE = (math.log(4.0 / 3.0), math.log(2.0), math.log(5.0))

# Classification case: two images, three classes.
#   image 0: logits (ln 2, 0, 0), target 0 -> p = 2 / 4, CE = ln 2
#   image 1: logits (0, 0, ln 6), target 1 -> p = 1 / 8, CE = ln 8
CLS_LOGITS = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, math.log(6.0)]])  # (2, 3)
CLS_TARGET = torch.tensor([0, 1])
CLS_CE = (math.log(2.0), math.log(8.0))


@pytest.mark.parametrize(
    ("mask", "expected_all", "expected_accepted"),
    [
        pytest.param([1, 1, 1], sum(SEG_CE) / 3, sum(SEG_CE) / 3, id="all-accepted"),
        pytest.param([1, 0, 1], (SEG_CE[0] + SEG_CE[2]) / 3, (SEG_CE[0] + SEG_CE[2]) / 2, id="two-of-three"),
        pytest.param([0, 1, 0], SEG_CE[1] / 3, SEG_CE[1], id="one-of-three"),
    ],
)
def test_segmentation_values_for_both_normalisations(
    mask: list[int], expected_all: float, expected_accepted: float
) -> None:
    mask_tensor = torch.tensor([[mask]], dtype=torch.float32)
    loss_all = MaskedCrossEntropyLoss("all")(SEG_LOGITS, SEG_TARGET, mask_tensor)
    loss_accepted = MaskedCrossEntropyLoss("accepted")(SEG_LOGITS, SEG_TARGET, mask_tensor)
    assert loss_all.ndim == 0 and loss_accepted.ndim == 0
    assert loss_all.item() == pytest.approx(expected_all, rel=1e-6)
    assert loss_accepted.item() == pytest.approx(expected_accepted, rel=1e-6)


@pytest.mark.parametrize(
    ("normalize", "expected"),
    [
        pytest.param("all", CLS_CE[1] / 2, id="all"),
        pytest.param("accepted", CLS_CE[1], id="accepted"),
    ],
)
def test_classification_values(normalize: str, expected: float) -> None:
    loss = MaskedCrossEntropyLoss(normalize)(CLS_LOGITS, CLS_TARGET, torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_default_normalisation_divides_by_all_positions() -> None:
    loss = MaskedCrossEntropyLoss()(CLS_LOGITS, CLS_TARGET, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(CLS_CE[0] / 2, rel=1e-6)


def test_boolean_mask_and_half_precision_logits_are_accepted() -> None:
    loss = MaskedCrossEntropyLoss("accepted")(CLS_LOGITS.half(), CLS_TARGET, torch.tensor([True, True]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(CLS_CE) / 2, rel=1e-2)


def test_gradient_flows_only_through_accepted_positions() -> None:
    logits = SEG_LOGITS.clone().requires_grad_(True)
    MaskedCrossEntropyLoss("all")(logits, SEG_TARGET, torch.tensor([[[1.0, 0.0, 0.0]]])).backward()
    grad = logits.grad
    # d CE / d logits = softmax - onehot; pixel 0 has p = (1/4, 3/4), target 1; divided by N = 3
    assert grad[0, :, 0, 0].tolist() == pytest.approx([0.25 / 3, -0.25 / 3], rel=1e-5)
    assert torch.count_nonzero(grad[0, :, 0, 1:]) == 0


@pytest.mark.parametrize("normalize", ["all", "accepted"])
def test_all_masked_gives_exact_zero_and_zero_gradient(normalize: str) -> None:
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    loss = MaskedCrossEntropyLoss(normalize)(logits, target, torch.zeros(2, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "mask_shape"),
    [
        pytest.param((2, 3, 4, 4), (2, 4, 5), (2, 4, 5), id="target-spatial"),
        pytest.param((2, 3, 4, 4), (2, 4, 4), (2, 1, 4, 4), id="mask-with-channel"),
        pytest.param((2, 3), (3,), (3,), id="batch"),
        pytest.param((2, 3, 4, 4), (2, 1, 4, 4), (2, 1, 4, 4), id="target-with-channel"),
    ],
)
def test_shape_mismatch_raises_value_error_with_the_shapes(
    logits_shape: tuple[int, ...], target_shape: tuple[int, ...], mask_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError) as info:
        MaskedCrossEntropyLoss()(torch.zeros(logits_shape), torch.zeros(target_shape).long(), torch.ones(mask_shape))
    message = str(info.value)
    for shape in (logits_shape, target_shape, mask_shape):
        assert str(shape) in message


@pytest.mark.parametrize("normalize", ["mean", "", None, "ALL"])
def test_invalid_normalize_raises_value_error(normalize: object) -> None:
    with pytest.raises(ValueError, match=repr(normalize).replace("(", r"\(")):
        MaskedCrossEntropyLoss(normalize)  # type: ignore[arg-type]
