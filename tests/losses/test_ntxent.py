# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""NT-Xent / weighted InfoNCE against a loop written from the formula, closed forms and the uniform-weight identity."""

from __future__ import annotations

import math

import pytest
import torch

from usseg.losses.ntxent import NTXentLoss


def _reference(z_i: torch.Tensor, z_j: torch.Tensor, tau: float, weights: list[float] | None = None) -> float:
    """The SimCLR formula, query by query, in float64: positive = other view, denominator = all but self."""
    views = [v.double() / v.double().norm() for v in torch.cat([z_i, z_j])]
    n = z_i.shape[0]
    losses = []
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        sims = {m: float(views[k] @ views[m]) / tau for m in range(2 * n) if m != k}
        losses.append(-(sims[positive] - math.log(sum(math.exp(s) for s in sims.values()))))
    if weights is None:
        return sum(losses) / (2 * n)
    both = list(weights) + list(weights)
    return sum(w * loss for w, loss in zip(both, losses)) / sum(both)


@pytest.mark.parametrize("num_pairs", [1, 2, 7], ids=["one_pair", "two_pairs", "seven_pairs"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0], ids=["tau0.1", "tau0.5", "tau1"])
def test_unweighted_matches_the_formula(num_pairs: int, tau: float) -> None:
    generator = torch.Generator().manual_seed(num_pairs)
    z_i, z_j = torch.randn(num_pairs, 16, generator=generator), torch.randn(num_pairs, 16, generator=generator)
    assert float(NTXentLoss(tau)(z_i, z_j)) == pytest.approx(_reference(z_i, z_j, tau), rel=1e-5, abs=1e-6)


def test_weighted_matches_the_formula_and_uniform_weights_give_the_unweighted_loss() -> None:
    generator = torch.Generator().manual_seed(3)
    z_i, z_j = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    weights = [0.9, 0.1, 0.5, 0.3, 0.05, 0.7]
    loss = NTXentLoss(0.5)
    assert float(loss(z_i, z_j, torch.tensor(weights))) == pytest.approx(_reference(z_i, z_j, 0.5, weights), rel=1e-5)
    for uniform in (0.2, 1.0, 37.0):
        assert torch.allclose(loss(z_i, z_j, torch.full((6,), uniform)), loss(z_i, z_j), rtol=1e-6)
    # normalised: scaling all weights changes nothing, reweighting does
    assert torch.allclose(loss(z_i, z_j, 4 * torch.tensor(weights)), loss(z_i, z_j, torch.tensor(weights)))
    assert not torch.allclose(loss(z_i, z_j, torch.tensor(weights)), loss(z_i, z_j))


def test_identical_embeddings_give_log_of_the_candidate_count() -> None:
    # every similarity is 1: each query picks its positive among 2N - 1 equal candidates
    z = torch.ones(5, 4)
    assert float(NTXentLoss(0.5)(z, z)) == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)


def test_swapping_the_views_leaves_the_loss_unchanged_and_self_is_excluded() -> None:
    generator = torch.Generator().manual_seed(9)
    z_i, z_j = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    loss = NTXentLoss(0.5)
    assert torch.allclose(loss(z_i, z_j), loss(z_j, z_i), rtol=1e-6)
    # perfectly aligned, well separated pairs: the loss tends to 0 only because self-similarity is excluded
    basis = torch.eye(4) * 50
    assert float(NTXentLoss(0.05)(basis, basis)) < 1e-6


def test_gradients_reach_both_views_and_weights_are_per_pair() -> None:
    z_i, z_j = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    NTXentLoss()(z_i, z_j, torch.tensor([1.0, 0.0, 0.0])).backward()
    assert z_i.grad.abs().sum() > 0 and z_j.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, z_shapes, weights, message",
    [
        ({"temperature": 0.0}, None, None, "temperature must be a positive number, got 0.0"),
        ({"temperature": True}, None, None, "got True"),
        ({}, ((3, 4), (2, 4)), None, r"\(3, 4\) and \(2, 4\)"),
        ({}, ((3,), (3,)), None, r"\(3,\) and \(3,\)"),
        ({}, ((3, 4), (3, 4)), [1.0, 1.0], r"shape \(3,\), one per pair, got \(2,\)"),
        ({}, ((3, 4), (3, 4)), [1.0, -1.0, 1.0], "non-negative"),
        ({}, ((3, 4), (3, 4)), [0.0, 0.0, 0.0], "positive sum"),
    ],
    ids=["zero_tau", "bool_tau", "shape_mismatch", "not_2d", "weights_shape", "negative_weight", "zero_weights"],
)
def test_bad_arguments_raise_quoting_the_value(kwargs, z_shapes, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        loss = NTXentLoss(**kwargs)
        z_i, z_j = torch.randn(*z_shapes[0]), torch.randn(*z_shapes[1])
        loss(z_i, z_j, None if weights is None else torch.tensor(weights))
