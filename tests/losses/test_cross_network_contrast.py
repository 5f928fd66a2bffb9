# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The dual-network contrastive terms: values against slow references, non-zero, gradients into both encoders."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from usseg.losses.cross_network_contrast import (
    CrossNetworkContrastLoss,
    PrototypeContrastLoss,
    build_contrastive_loss,
)
from usseg.networks.dual import ProjectedSegmenter, build_segmenter


def _slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """NT-Xent from its definition, with Python loops over the 2B anchors."""
    vectors = [F.normalize(v.flatten(1).mean(dim=1) if v.ndim > 1 else v, dim=0) for v in [*z1, *z2]]
    n = len(vectors)
    batch = n // 2
    total = 0.0
    for i in range(n):
        positive = (i + batch) % n
        denominator = sum(math.exp(float(vectors[i] @ vectors[k]) / tau) for k in range(n) if k != i)
        total += -math.log(math.exp(float(vectors[i] @ vectors[positive]) / tau) / denominator)
    return total / n


@pytest.mark.parametrize("tau", [0.07, 0.5], ids=["tau_0.07", "tau_0.5"])
@pytest.mark.parametrize("shape", [(4, 16), (3, 8, 2, 2)], ids=["vectors", "maps"])
def test_cross_network_loss_matches_a_slow_reference(tau: float, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    z1, z2 = torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)
    assert float(CrossNetworkContrastLoss(tau)(z1, z2)) == pytest.approx(_slow_nt_xent(z1, z2, tau), rel=1e-4)


def test_cross_network_loss_is_symmetric_in_the_networks() -> None:
    z1, z2 = torch.randn(5, 12), torch.randn(5, 12)
    loss = CrossNetworkContrastLoss(0.2)
    assert float(loss(z1, z2)) == pytest.approx(float(loss(z2, z1)), rel=1e-6)


def test_cross_network_loss_is_low_when_each_image_matches_itself_across_networks() -> None:
    orthogonal = torch.eye(6)  # each image its own direction, identical in both networks
    matched = float(CrossNetworkContrastLoss(0.07)(orthogonal, orthogonal))
    shuffled = float(CrossNetworkContrastLoss(0.07)(orthogonal, orthogonal.roll(1, dims=0)))
    assert matched < 1e-3 < shuffled


def _prototype_reference(z: torch.Tensor, w: torch.Tensor, num_labeled: int, tau: float, min_mass: float) -> float:
    """The prototype term of one network, from its formula, with loops."""
    z = F.normalize(z, dim=1)
    classes = w.shape[1]
    prototypes, present = [], []
    for c in range(classes):
        weighted = sum((w[b, c][None] * z[b]).sum(dim=(1, 2)) for b in range(num_labeled))
        prototypes.append(F.normalize(weighted, dim=0))
        present.append(float(w[:num_labeled, c].sum()) >= min_mass)
    terms = []
    for b in range(num_labeled, z.shape[0]):
        for c in range(classes):
            if not present[c] or float(w[b, c].sum()) < min_mass:
                continue
            embedding = F.normalize((w[b, c][None] * z[b]).sum(dim=(1, 2)), dim=0)
            logits = {k: float(embedding @ prototypes[k]) / tau for k in range(classes) if present[k]}
            terms.append(-logits[c] + math.log(sum(math.exp(v) for v in logits.values())))
    return sum(terms) / len(terms)


def test_prototype_loss_matches_its_formula() -> None:
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 6, 4, 4, generator=generator), torch.randn(5, 6, 4, 4, generator=generator)
    w1 = torch.rand(5, 3, 4, 4, generator=generator).softmax(dim=1)
    w2 = torch.rand(5, 3, 4, 4, generator=generator).softmax(dim=1)
    loss = PrototypeContrastLoss(temperature=0.1, min_mass=1.0)
    expected = 0.5 * (_prototype_reference(z1, w1, 2, 0.1, 1.0) + _prototype_reference(z2, w2, 2, 0.1, 1.0))
    assert float(loss(z1, z2, w1, w2, num_labeled=2)) == pytest.approx(expected, rel=1e-4)


def test_prototype_loss_pools_full_resolution_class_weights_to_the_embedding_size() -> None:
    z = torch.randn(4, 6, 4, 4)
    full = F.one_hot(torch.randint(0, 2, (4, 16, 16)), 2).movedim(-1, 1).float()
    loss = PrototypeContrastLoss()
    pooled = F.adaptive_avg_pool2d(full, (4, 4))
    assert float(loss(z, z, full, full, 1)) == pytest.approx(float(loss(z, z, pooled, pooled, 1)), rel=1e-6)


def test_prototype_loss_is_zero_with_a_single_prototype_but_keeps_the_graph() -> None:
    z = torch.randn(4, 6, 4, 4, requires_grad=True)
    background_only = torch.zeros(4, 2, 4, 4)
    background_only[:, 0] = 1.0
    value = PrototypeContrastLoss()(z, z, background_only, background_only, 2)
    assert float(value) == 0.0
    value.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) == 0.0


def test_prototype_loss_needs_class_weights_and_a_labeled_and_unlabeled_part() -> None:
    z = torch.randn(4, 6, 4, 4)
    with pytest.raises(ValueError, match="class_weights"):
        PrototypeContrastLoss()(z, z)
    with pytest.raises(ValueError, match="num_labeled"):
        PrototypeContrastLoss()(z, z, torch.rand(4, 2, 4, 4), torch.rand(4, 2, 4, 4), num_labeled=4)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}], ids=["zero", "negative"])
def test_temperatures_must_be_positive(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="temperature"):
        CrossNetworkContrastLoss(**kwargs)
    with pytest.raises(ValueError, match="temperature"):
        PrototypeContrastLoss(**kwargs)


def test_build_contrastive_loss_by_name() -> None:
    assert isinstance(build_contrastive_loss("cross_network"), CrossNetworkContrastLoss)
    assert isinstance(build_contrastive_loss("prototype", 0.1), PrototypeContrastLoss)
    with pytest.raises(ValueError, match="intra"):
        build_contrastive_loss("intra")


@pytest.mark.parametrize("pairing", ["cross_network", "prototype"])
def test_contrastive_term_is_nonzero_and_sends_gradient_into_both_encoders(pairing: str) -> None:
    """The released term was identically zero and detached (methods.md 3.2): ours reaches both encoders."""
    torch.manual_seed(0)
    net1 = ProjectedSegmenter(build_segmenter("unet", 3, dropout=0.0), embedding_dim=16, hidden_channels=32)
    net2 = ProjectedSegmenter(build_segmenter("attention_unet", 3, dropout=0.0), embedding_dim=16, hidden_channels=32)
    images = torch.rand(4, 1, 32, 32)
    logits1, z1 = net1(images)
    logits2, z2 = net2(images)
    labels = torch.randint(0, 3, (2, 32, 32))
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).float()
    weights1 = torch.cat([one_hot, logits2[2:].detach().softmax(dim=1)])
    weights2 = torch.cat([one_hot, logits1[2:].detach().softmax(dim=1)])
    loss = build_contrastive_loss(pairing)(z1, z2, weights1, weights2, 2)
    assert torch.isfinite(loss) and float(loss) > 0.0
    loss.backward()
    # the first convolution of each encoder: the gradient crossed the whole encoder
    first1 = next(p for n, p in net1.segmenter.named_parameters() if n.endswith("weight") and p.ndim == 4)
    first2 = next(p for n, p in net2.segmenter.named_parameters() if n.endswith("weight") and p.ndim == 4)
    assert first1.grad is not None and float(first1.grad.abs().sum()) > 0.0
    assert first2.grad is not None and float(first2.grad.abs().sum()) > 0.0
    for head in (net1.head, net2.head):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0.0 for p in head.parameters())
