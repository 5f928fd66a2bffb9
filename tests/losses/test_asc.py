# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The Semi-CML losses against hand-computed values and a loop written from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from usseg.losses.asc import ASCLoss, SoftDiceBCELoss, soft_dice_similarity


def _similarity(x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    return float((2 * (x * y).sum() + eps) / ((x**2).sum() + (y**2).sum() + eps))


def _loop_asc(maps_a: torch.Tensor, maps_b: torch.Tensor, temperature: float = 1.0, eps: float = 1e-6) -> float:
    """InfoNCE over soft-Dice similarities, one anchor at a time, in float64 (methods.md, section 4.2)."""
    batch, channels = maps_a.shape[:2]
    per_class = []
    for c in range(channels):
        z = [m[c].double().flatten() for m in torch.cat([maps_a, maps_b])]
        total = 0.0
        for a in range(2 * batch):
            positive = (a + batch) % (2 * batch)
            logits = {b: _similarity(z[a], z[b], eps) / temperature for b in range(2 * batch) if b != a}
            total += -math.log(math.exp(logits[positive]) / sum(math.exp(v) for v in logits.values()))
        per_class.append(total / (2 * batch))
    return sum(per_class) / channels


def test_asc_matches_a_hand_computed_case():
    # two samples, two pixels: sample 1 fills pixel 0, sample 2 fills pixel 1, identical in both modalities.
    # Each anchor: positive similarity 1, two negatives of similarity eps / (2 + eps) (disjoint maps)
    first = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B=2, C=1, P=2)
    eps = 1e-6
    negative = eps / (2 + eps)
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + 2 * math.exp(negative)))  # = log(1 + 2 e^{s-1})
    assert ASCLoss(eps=eps)(first, first.clone()).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(math.log(1 + 2 / math.e), rel=1e-5)


@pytest.mark.parametrize(
    "batch, channels, temperature",
    [(1, 1, 1.0), (3, 1, 1.0), (4, 2, 0.5), (5, 3, 2.0)],
    ids=["one_pair", "three_pairs", "two_classes_tau_half", "three_classes_tau_two"],
)
def test_asc_matches_the_formula_for_any_batch_and_class_count(batch, channels, temperature):
    generator = torch.Generator().manual_seed(batch * 10 + channels)
    maps_a = torch.rand(batch, channels, 6, 5, generator=generator)
    maps_b = torch.rand(batch, channels, 6, 5, generator=generator)
    loss = ASCLoss(temperature=temperature)(maps_a, maps_b)
    assert loss.item() == pytest.approx(_loop_asc(maps_a, maps_b, temperature), rel=1e-5, abs=1e-7)


def test_asc_is_lowest_when_the_two_modalities_agree():
    generator = torch.Generator().manual_seed(0)
    # distinct blob-like maps per sample, so similarity separates the samples
    maps = (torch.rand(6, 1, 16, 16, generator=generator) > 0.7).float() * 0.9 + 0.05
    agree = ASCLoss()(maps, maps.clone())
    shuffled = ASCLoss()(maps, maps[torch.tensor([1, 2, 3, 4, 5, 0])])
    noisy = ASCLoss()(maps, (maps + 0.3 * torch.rand(maps.shape, generator=generator)).clamp(0, 1))
    unrelated = ASCLoss()(maps, torch.rand(6, 1, 16, 16, generator=generator))
    assert agree < noisy < unrelated
    assert agree < shuffled


def test_asc_is_symmetric_and_per_class_averaged():
    generator = torch.Generator().manual_seed(1)
    maps_a, maps_b = torch.rand(3, 2, 8, 8, generator=generator), torch.rand(3, 2, 8, 8, generator=generator)
    loss = ASCLoss()
    assert loss(maps_a, maps_b).item() == pytest.approx(loss(maps_b, maps_a).item(), rel=1e-6)
    per_class = [loss(maps_a[:, c : c + 1], maps_b[:, c : c + 1]).item() for c in range(2)]
    assert loss(maps_a, maps_b).item() == pytest.approx(sum(per_class) / 2, rel=1e-6)


def test_asc_gradients_flow_to_both_inputs_and_bf16_inputs_are_computed_in_fp32():
    maps_a = torch.rand(2, 1, 8, 8, requires_grad=True)
    maps_b = torch.rand(2, 1, 8, 8, requires_grad=True)
    ASCLoss()(maps_a, maps_b).backward()
    assert maps_a.grad.abs().sum() > 0 and maps_b.grad.abs().sum() > 0
    low = ASCLoss()(maps_a.detach().bfloat16(), maps_b.detach().bfloat16())
    assert low.dtype == torch.float32


def test_soft_dice_similarity_has_ones_on_the_diagonal_and_matches_the_formula():
    maps = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    similarity = soft_dice_similarity(maps, eps=0.0)
    assert torch.allclose(similarity.diagonal(), torch.ones(2))
    expected = 2 * (0.2 + 0.1) / ((1 + 0.25) + 3 * 0.04)
    assert similarity[0, 1].item() == pytest.approx(expected) and similarity[1, 0].item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"temperature": 0.0}, ValueError), ({"temperature": "1"}, TypeError), ({"eps": -1.0}, ValueError)],
    ids=["zero_temperature", "string_temperature", "negative_eps"],
)
def test_asc_rejects_bad_settings(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        ASCLoss(**kwargs)


def test_asc_rejects_stacks_of_different_shapes_naming_both():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\) and \(3, 1, 4, 4\)"):
        ASCLoss()(torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4))


def test_soft_dice_bce_matches_a_hand_computed_value():
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 1.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[0.0, 1.0], [0.0, 0.5]]]])  # soft target allowed
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = (2 * (p * target).sum() + 1e-6) / ((p**2).sum() + (target**2).sum() + 1e-6)
    expected = 10 * bce + 7 * (1 - dice)
    assert SoftDiceBCELoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # probabilities as input give the same value
    assert SoftDiceBCELoss(logits=False)(p, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_dice_bce_pools_the_batch_per_class_then_averages_classes():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 5, 5, generator=generator)
    target = (torch.rand(3, 2, 5, 5, generator=generator) > 0.5).float()
    only_dice = SoftDiceBCELoss(bce_weight=0.0, dice_weight=1.0)(logits, target)
    per_class = []
    for c in range(2):
        p, y = torch.sigmoid(logits[:, c]), target[:, c]
        per_class.append(1 - (2 * (p * y).sum() + 1e-6) / ((p * p).sum() + (y * y).sum() + 1e-6))
    assert only_dice.item() == pytest.approx(torch.stack(per_class).mean().item(), rel=1e-6)
    only_bce = SoftDiceBCELoss(bce_weight=1.0, dice_weight=0.0)(logits, target)
    assert only_bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)


def test_soft_dice_bce_rejects_mismatched_shapes_and_negative_weights():
    with pytest.raises(ValueError, match=r"\(1, 1, 4, 4\).*\(1, 2, 4, 4\)"):
        SoftDiceBCELoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="bce_weight"):
        SoftDiceBCELoss(bce_weight=-1.0)
