# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""SupConLoss against a slow loop written from the paper's formula, closed forms, weights and degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from usseg.losses.supcon import SupConLoss


def slow_supcon(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla et al. eq. 2, one anchor at a time; returns (V, B)."""
    batch, views, _ = features.shape
    z = [features[b, v] for v in range(views) for b in range(batch)]  # view-major
    y = [int(labels[b]) for _ in range(views) for b in range(batch)]
    out = torch.zeros(views * batch, dtype=torch.float64)
    for i in range(len(z)):
        denominator = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(z)) if a != i)
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if positives:
            out[i] = -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in positives) / len(
                positives
            )
    return out.view(views, batch)


@pytest.mark.parametrize("tau", [0.07, 0.5], ids=["tau_0.07", "tau_0.5"])
@pytest.mark.parametrize("batch, views", [(6, 2), (5, 3)], ids=["b6_v2", "b5_v3"])
def test_matches_the_slow_loop(tau: float, batch: int, views: int) -> None:
    generator = torch.Generator().manual_seed(batch * views)
    features = F.normalize(torch.randn(batch, views, 8, generator=generator), dim=-1).double()
    labels = torch.randint(0, 2, (batch,), generator=generator)
    expected = slow_supcon(features, labels, tau)
    loss = SupConLoss(tau, tau, reduction="none")(features, labels=labels)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5)
    assert SupConLoss(tau, tau)(features, labels=labels).item() == pytest.approx(expected.mean().item(), rel=1e-4)


def test_closed_form_for_two_orthogonal_classes() -> None:
    # 2 images of one class share embedding e0, 2 of the other e1 (orthogonal), 2 views each: every anchor has 3
    # positives at similarity 1 and 4 negatives at 0, so l = -log(e^{1/t} / (3 e^{1/t} + 4))
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    features = torch.stack([e0, e0, e1, e1])[:, None].repeat(1, 2, 1)
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (3 * math.exp(1 / tau) + 4))
    loss = SupConLoss(tau, tau)(features, labels=torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_multiply_every_view_and_count_in_the_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(4, 2, 8, generator=generator), dim=-1)
    labels = torch.tensor([0, 1, 0, 1])
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0])
    per_anchor = SupConLoss(reduction="none")(features, labels=labels)
    loss = SupConLoss()(features, labels=labels, weights=weights)
    assert loss.item() == pytest.approx((per_anchor * weights).sum().item() / 8, rel=1e-6)  # mean over all 2B


def test_all_masked_and_single_class_batches_are_finite() -> None:
    features = F.normalize(torch.randn(4, 2, 8), dim=-1).requires_grad_(True)
    masked = SupConLoss()(features, labels=torch.tensor([0, 1, 0, 1]), weights=torch.zeros(4))
    assert masked.item() == 0.0
    masked.backward()
    assert torch.isfinite(features.grad).all()
    single = SupConLoss()(features, labels=torch.zeros(4, dtype=torch.long))
    assert torch.isfinite(single)
    # one view and unique labels: no anchor has a positive -> 0, not NaN
    lonely = SupConLoss(reduction="none")(features[:, :1], labels=torch.arange(4))
    assert torch.equal(lonely, torch.zeros(1, 4))


def test_mask_equals_labels_and_no_labels_is_simclr() -> None:
    features = F.normalize(torch.randn(4, 2, 8), dim=-1)
    labels = torch.tensor([0, 1, 1, 0])
    mask = (labels[:, None] == labels[None]).float()
    torch.testing.assert_close(SupConLoss()(features, mask=mask), SupConLoss()(features, labels=labels))
    torch.testing.assert_close(SupConLoss()(features), SupConLoss()(features, labels=torch.arange(4)))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"temperature": 0.0}, "0.0"), ({"base_temperature": -1.0}, "-1.0"), ({"reduction": "sum"}, "'sum'")],
    ids=["temperature", "base_temperature", "reduction"],
)
def test_invalid_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        SupConLoss(**kwargs)
    assert fragment in str(raised.value)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\(batch, views, dim\)"):
        SupConLoss()(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        SupConLoss()(torch.randn(4, 2, 8), labels=torch.zeros(3))
