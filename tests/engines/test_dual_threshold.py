# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""DualThreshold (Hermes): threshold arithmetic against hand-computed cases, combine rules, EMA ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from usseg.engines.pseudo_label import ConfidenceThreshold, DualThreshold

# four samples of a binary task: pseudo-labels 0, 0, 1, 0, so r = (3/4, 1/4)
PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
# by hand: tau_0 = 0.5 + 0.45 * 0.75 = 0.8375, tau_1 = 0.5 + 0.45 * 0.25 = 0.6125
TAU = (0.8375, 0.6125)
CONFIDENT = [True, False, True, True]  # 0.9 > 0.8375, 0.6 < 0.8375, 0.7 > 0.6125, 0.95 > 0.8375


def entropy(p: list[float]) -> float:
    return -sum(q * math.log(q + 1e-6) for q in p)


def theta(step: int, length: int, h0: float = 0.75) -> float:
    ramp = math.exp(-5.0 * (1.0 - min(step, length) / length) ** 2)
    return (h0 + (1.0 - h0) * ramp) * math.log(2)


def test_class_thresholds_follow_the_batch_ratios() -> None:
    result = DualThreshold(rampup_length=100)(PROBS, step=0)
    np.testing.assert_allclose(result.class_ratios.numpy(), [0.75, 0.25])
    np.testing.assert_allclose(result.class_thresholds.numpy(), TAU, rtol=1e-6)
    assert result.confident.tolist() == CONFIDENT
    assert result.target.tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("step", [0, 40, 100, 500], ids=["start", "ramping", "end", "after_end"])
def test_entropy_threshold_ramps_from_h0_to_ln2(step: int) -> None:
    policy = DualThreshold(rampup_length=100)
    assert policy.entropy_threshold(step) == pytest.approx(theta(step, 100))
    result = policy(PROBS, step=step)
    expected_uncertain = [entropy(p) > theta(step, 100) for p in PROBS.tolist()]
    assert result.uncertain.tolist() == expected_uncertain
    assert result.entropy_threshold == pytest.approx(theta(step, 100))


@pytest.mark.parametrize(
    "combine, step, expected",
    [
        # step 0: theta = 0.5210; H = 0.325, 0.673, 0.611, 0.199 -> certain = T, F, F, T
        ("and", 0, [1.0, 0.0, 0.0, 1.0]),  # confident AND certain
        ("or", 0, [1.0, 0.0, 1.0, 1.0]),  # ignored only where NOT confident AND uncertain (sample 1)
        # end of the ramp: theta = ln 2 = 0.693 -> every sample certain
        ("and", 100, [1.0, 0.0, 1.0, 1.0]),
        ("or", 100, [1.0, 1.0, 1.0, 1.0]),
    ],
    ids=["and_start", "or_start", "and_end", "or_end"],
)
def test_combine_rules_by_hand(combine: str, step: int, expected: list[float]) -> None:
    target, mask = DualThreshold(rampup_length=100, combine=combine)(PROBS, step=step)
    assert mask.tolist() == expected
    assert target.tolist() == [0, 0, 1, 0]


def test_ema_ratios_are_a_buffer_that_moves_and_is_saved() -> None:
    policy = DualThreshold(ratio_source="ema", ratio_momentum=0.5, rampup_length=100)
    result = policy(PROBS, step=0)
    # EMA from (0.5, 0.5) towards (0.75, 0.25) with momentum 0.5
    np.testing.assert_allclose(result.class_ratios.numpy(), [0.625, 0.375])
    np.testing.assert_allclose(result.class_thresholds.numpy(), [0.5 + 0.45 * 0.625, 0.5 + 0.45 * 0.375])
    np.testing.assert_allclose(policy.state_dict()["ema_ratio"].numpy(), [0.625, 0.375])
    result = policy(PROBS, step=1)
    np.testing.assert_allclose(result.class_ratios.numpy(), [0.6875, 0.3125])
    restored = DualThreshold(ratio_source="ema", ratio_momentum=0.5)
    restored.load_state_dict(policy.state_dict())
    np.testing.assert_allclose(restored.ema_ratio.numpy(), [0.6875, 0.3125])


def test_segmentation_maps_use_pixel_ratios_and_keep_the_spatial_shape() -> None:
    # 1 image, 2x2 pixels: pseudo-labels 0, 1, 1, 1 -> r = (0.25, 0.75), tau = (0.6125, 0.8375)
    p1 = torch.tensor([[0.2, 0.9], [0.7, 0.8]])
    probs = torch.stack([1 - p1, p1])[None]  # (1, 2, 2, 2)
    result = DualThreshold(rampup_length=0, combine="or")(probs, step=0)
    assert result.target.shape == result.mask.shape == (1, 2, 2)
    np.testing.assert_allclose(result.class_thresholds.numpy(), [0.6125, 0.8375], rtol=1e-6)
    # confident: 0.8 > 0.6125; 0.9 > 0.8375; 0.7 < 0.8375; 0.8 < 0.8375
    assert result.confident[0].tolist() == [[True, True], [False, False]]
    # ramp length 0: theta = ln 2, every binary entropy is below it -> all kept by "or"
    assert result.mask.sum() == 4


def test_statistics_are_floats_with_prefixed_names() -> None:
    stats = DualThreshold(rampup_length=100)(PROBS, step=0).statistics("cls_")
    assert stats["cls_accept_rate"] == pytest.approx(0.5)
    assert stats["cls_confident_rate"] == pytest.approx(0.75)
    assert stats["cls_threshold_c0"] == pytest.approx(TAU[0])
    assert stats["cls_ratio_c1"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in stats.values())


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_classes": 1}, "1"),
        ({"min_threshold": 0.9, "max_threshold": 0.5}, "0.9"),
        ({"entropy_start": 1.5}, "1.5"),
        ({"combine": "xor"}, "'xor'"),
        ({"ratio_source": "epoch"}, "'epoch'"),
        ({"ratio_momentum": 1.0}, "1.0"),
        ({"rampup_length": -1}, "-1"),
    ],
    ids=["one_class", "reversed", "h0", "combine", "ratio_source", "momentum", "ramp"],
)
def test_invalid_arguments_raise_quoting_the_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match="got") as raised:
        DualThreshold(**kwargs)
    assert fragment in str(raised.value)


def test_wrong_class_axis_raises() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        DualThreshold()(torch.full((4, 3), 1 / 3))


def test_confidence_threshold_still_works() -> None:
    target, mask = ConfidenceThreshold(0.8)(PROBS)
    assert target.tolist() == [0, 0, 1, 0] and mask.tolist() == [1.0, 0.0, 0.0, 1.0]
