# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``ConfidenceThreshold`` on hand-made classification and segmentation probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from usseg.engines.pseudo_label import ConfidenceThreshold


def test_classification_probabilities() -> None:
    # binary fractions so the float32 comparison with the threshold is exact
    probs = torch.tensor([[0.875, 0.125], [0.25, 0.75], [0.375, 0.625], [0.0, 1.0]])
    target, mask = ConfidenceThreshold(threshold=0.7)(probs)
    assert target.dtype == torch.long
    assert target.tolist() == [0, 1, 1, 1]
    assert mask.dtype == probs.dtype
    assert mask.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_segmentation_probabilities_class_axis_is_one() -> None:
    # (B=1, C=3, H=2, W=2): per pixel, the winning class and its probability
    probs = torch.tensor(
        [
            [
                [[0.5, 0.125], [0.25, 0.0]],
                [[0.25, 0.75], [0.25, 0.0625]],
                [[0.25, 0.125], [0.5, 0.9375]],
            ]
        ]
    )
    target, mask = ConfidenceThreshold(threshold=0.6)(probs)
    assert target.shape == mask.shape == (1, 2, 2)
    assert target.tolist() == [[[0, 1], [2, 2]]]
    assert mask.tolist() == [[[0.0, 1.0], [0.0, 1.0]]]


def test_segmentation_batch_of_two_matches_per_pixel_rule() -> None:
    logits = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    probs = logits.softmax(dim=1)
    target, mask = ConfidenceThreshold(threshold=0.5)(probs)
    for b in range(2):
        for i in range(5):
            for j in range(6):
                pixel = probs[b, :, i, j].tolist()
                best = max(range(4), key=pixel.__getitem__)
                assert target[b, i, j].item() == best
                assert mask[b, i, j].item() == float(pixel[best] >= 0.5)


@pytest.mark.parametrize(
    ("threshold", "expected_mask"),
    [
        pytest.param(0.75, [1.0, 1.0, 0.0], id="equal-is-kept"),
        pytest.param(0.0, [1.0, 1.0, 1.0], id="zero-keeps-all"),
        pytest.param(1.0, [1.0, 0.0, 0.0], id="one-keeps-only-certain"),
    ],
)
def test_threshold_boundary_is_inclusive(threshold: float, expected_mask: list[float]) -> None:
    probs = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5 - 2**-10]], dtype=torch.float64)
    _, mask = ConfidenceThreshold(threshold)(probs)
    assert mask.dtype == torch.float64
    assert mask.tolist() == expected_mask


def test_outputs_carry_no_gradient() -> None:
    probs = torch.tensor([[0.25, 0.75]], requires_grad=True)
    target, mask = ConfidenceThreshold(0.5)(probs)
    assert not target.requires_grad and not mask.requires_grad


def test_policy_is_a_module_with_an_empty_state_dict() -> None:
    policy = ConfidenceThreshold(0.9)
    assert isinstance(policy, torch.nn.Module)
    assert dict(policy.state_dict()) == {}
    assert policy.threshold == 0.9


@pytest.mark.parametrize("threshold", [-0.01, 1.01, 95, math.nan])
def test_invalid_threshold_raises_value_error_quoting_it(threshold: float) -> None:
    with pytest.raises(ValueError, match=str(threshold)):
        ConfidenceThreshold(threshold)


@pytest.mark.parametrize("shape", [(), (5,)])
def test_probabilities_without_a_class_axis_raise_value_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"class axis.*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
        ConfidenceThreshold(0.5)(torch.full(shape, 0.5))
