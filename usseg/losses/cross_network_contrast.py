# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Contrastive terms on the deep representations of the dual-network method (methods.md section 3.7, item 3).

The released InfoNCE term is identically zero and detached (section 3.2 a-c). The two pairings here are real terms
with gradients into both networks' encoders. Both take the projected embedding maps of the two networks
(``usseg.networks.dual.ProjectedSegmenter``) and the same arguments, so the trainer can swap them by config:

- :class:`CrossNetworkContrastLoss` (``cross_network``, the default): the same image seen by the other network is the
  positive, the other images of the batch (in either network) are the negatives;
- :class:`PrototypeContrastLoss` (``prototype``): within each network, unlabeled images' class embeddings are pulled
  to the prototypes of the same class computed on the labeled images of the batch and pushed from the others'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONTRASTIVE_PAIRINGS", "CrossNetworkContrastLoss", "PrototypeContrastLoss", "build_contrastive_loss"]

CONTRASTIVE_PAIRINGS = ("cross_network", "prototype")


def _check_temperature(temperature: float) -> float:
    if not float(temperature) > 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    return float(temperature)


def _pooled(embeddings: torch.Tensor) -> torch.Tensor:
    """``(B, D, h, w)`` maps or ``(B, D)`` vectors -> L2-normalised ``(B, D)`` (maps are averaged over pixels)."""
    if embeddings.ndim > 2:
        embeddings = embeddings.flatten(2).mean(dim=2)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D) or (B, D, ...), got shape {tuple(embeddings.shape)}.")
    return F.normalize(embeddings.float(), dim=1)


class CrossNetworkContrastLoss(nn.Module):
    r"""InfoNCE (NT-Xent [0]) between the two networks' embeddings of the same batch.

    With :math:`u_b` and :math:`v_b` the L2-normalised, pixel-averaged projections of image :math:`b` by network 1 and
    network 2, stack :math:`z = (u_1, \dots, u_B, v_1, \dots, v_B)` and let :math:`p(i)` be the other network's
    embedding of the same image (:math:`i \pm B`):

    .. math::
        \mathcal{L} = \frac{1}{2B} \sum_{i=1}^{2B} -\log
            \frac{\exp(z_i \cdot z_{p(i)} / \tau)}{\sum_{k \neq i} \exp(z_i \cdot z_k / \tau)}

    Negatives are the other :math:`2B - 2` embeddings (other images, both networks). Labeled and unlabeled images
    are treated alike; the class arguments of :meth:`forward` are accepted for interface compatibility and ignored.

    - [0] Chen et al., 2020, SimCLR, https://arxiv.org/abs/2002.05709

    Args:
        temperature: :math:`\tau` (0.07 as released).

    Examples:
        >>> loss_fn = CrossNetworkContrastLoss()
        >>> z1, z2 = torch.randn(8, 128, 8, 8, requires_grad=True), torch.randn(8, 128, 8, 8, requires_grad=True)
        >>> loss_fn(z1, z2).backward()
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(
        self,
        embeddings1: torch.Tensor,
        embeddings2: torch.Tensor,
        class_weights1: torch.Tensor | None = None,
        class_weights2: torch.Tensor | None = None,
        num_labeled: int = 0,
    ) -> torch.Tensor:
        """Shape: both ``(B, D, h, w)`` (or ``(B, D)``) with B >= 2 -> scalar."""
        if embeddings1.shape[0] != embeddings2.shape[0] or embeddings1.shape[0] < 2:
            raise ValueError(
                f"both networks must embed the same batch of >= 2 images, got {tuple(embeddings1.shape)} and "
                f"{tuple(embeddings2.shape)}."
            )
        z = torch.cat([_pooled(embeddings1), _pooled(embeddings2)], dim=0)  # (2B, D)
        batch = embeddings1.shape[0]
        similarity = z @ z.t() / self.temperature  # (2B, 2B)
        self_pairs = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
        similarity = similarity.masked_fill(self_pairs, float("-inf"))  # exp(-inf) = 0: i is not its own negative
        positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
        return F.cross_entropy(similarity, positives)


class PrototypeContrastLoss(nn.Module):
    r"""Labeled class prototypes against unlabeled class embeddings, within each network.

    For one network with projected embedding map :math:`z_b(x)` (normalised per pixel) and class weights
    :math:`w_{bc}(x)` at the embedding's resolution (the area-downsampled one-hot label for the :math:`L` labeled
    images, the OTHER network's detached probabilities for the unlabeled ones):

    .. math::
        \pi_c = \mathrm{norm}\Big(\sum_{b \le L, x} w_{bc}(x) z_b(x)\Big), \qquad
        e_{bc} = \mathrm{norm}\Big(\sum_x w_{bc}(x) z_b(x)\Big) \; (b > L),

    .. math::
        \ell = \frac{1}{|V|} \sum_{(b, c) \in V} -\log
            \frac{\exp(e_{bc} \cdot \pi_c / \tau)}{\sum_{c' \in P} \exp(e_{bc} \cdot \pi_{c'} / \tau)}

    :math:`P` holds the classes with at least ``min_mass`` labeled weight and :math:`V` the unlabeled (image, class)
    pairs with :math:`c \in P` and at least ``min_mass`` weight. The loss is the mean of both networks' :math:`\ell`.
    With fewer than two prototypes or no valid pair it is 0 (with a zero gradient, so distributed training still
    sees every parameter used). Gradients reach both the prototypes and the unlabeled embeddings.

    Args:
        temperature: :math:`\tau`.
        min_mass: minimum summed class weight (in embedding pixels) for a prototype or a pair to count.

    Examples:
        >>> loss_fn = PrototypeContrastLoss()
        >>> z1, z2 = torch.randn(8, 64, 8, 8, requires_grad=True), torch.randn(8, 64, 8, 8, requires_grad=True)
        >>> weights = torch.rand(8, 3, 8, 8).softmax(dim=1)
        >>> loss_fn(z1, z2, weights, weights, num_labeled=2).backward()
    """

    def __init__(self, temperature: float = 0.07, min_mass: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if float(min_mass) <= 0:
            raise ValueError(f"min_mass must be > 0, got {min_mass}.")
        self.min_mass = float(min_mass)

    def network_term(self, embeddings: torch.Tensor, class_weights: torch.Tensor, num_labeled: int) -> torch.Tensor:
        """:math:`\\ell` of one network. Shape: ``(B, D, h, w)`` and ``(B, C, h, w)`` -> scalar."""
        if embeddings.ndim != 4 or class_weights.ndim != 4 or embeddings.shape[0] != class_weights.shape[0]:
            raise ValueError(
                f"embeddings (B, D, h, w) and class_weights (B, C, h, w) must share B, h, w; got "
                f"{tuple(embeddings.shape)} and {tuple(class_weights.shape)}."
            )
        if class_weights.shape[2:] != embeddings.shape[2:]:
            class_weights = F.adaptive_avg_pool2d(class_weights.float(), embeddings.shape[2:])
        if not 0 < num_labeled < embeddings.shape[0]:
            raise ValueError(f"num_labeled must lie in [1, B - 1] = [1, {embeddings.shape[0] - 1}], got {num_labeled}.")
        z = F.normalize(embeddings.float(), dim=1)
        weights = class_weights.float().detach()
        sums = torch.einsum("bchw,bdhw->bcd", weights, z)  # (B, C, D): class-weighted sums of embeddings
        mass = weights.sum(dim=(2, 3))  # (B, C)
        labeled_mass = mass[:num_labeled].sum(dim=0)  # (C,)
        prototypes = F.normalize(sums[:num_labeled].sum(dim=0), dim=1)  # (C, D)
        unlabeled = F.normalize(sums[num_labeled:], dim=2)  # (U, C, D)
        present = labeled_mass >= self.min_mass  # (C,)
        valid = (mass[num_labeled:] >= self.min_mass) & present  # (U, C)
        zero = embeddings.sum() * 0.0
        if int(present.sum()) < 2 or not bool(valid.any()):
            return zero
        logits = torch.einsum("ucd,kd->uck", unlabeled, prototypes) / self.temperature  # (U, C, C)
        logits = logits.masked_fill(~present.view(1, 1, -1), float("-inf"))
        targets = torch.arange(weights.shape[1], device=z.device).expand(valid.shape)  # class c for pair (u, c)
        return F.cross_entropy(logits[valid], targets[valid]) + zero

    def forward(
        self,
        embeddings1: torch.Tensor,
        embeddings2: torch.Tensor,
        class_weights1: torch.Tensor | None = None,
        class_weights2: torch.Tensor | None = None,
        num_labeled: int = 0,
    ) -> torch.Tensor:
        """Shape: embeddings ``(B, D, h, w)``, class weights ``(B, C, h', w')`` (area-pooled to h, w) -> scalar."""
        if class_weights1 is None or class_weights2 is None:
            raise ValueError(
                "the prototype pairing needs class_weights1 and class_weights2 (labels and pseudo-labels)."
            )
        term1 = self.network_term(embeddings1, class_weights1, num_labeled)
        term2 = self.network_term(embeddings2, class_weights2, num_labeled)
        return 0.5 * (term1 + term2)


def build_contrastive_loss(pairing: str = "cross_network", temperature: float = 0.07) -> nn.Module:
    """The contrastive loss of a pairing name (``cross_network`` or ``prototype``), for configs.

    Raises:
        ValueError: an unknown pairing.
    """
    if pairing not in CONTRASTIVE_PAIRINGS:
        raise ValueError(f"pairing must be one of {CONTRASTIVE_PAIRINGS}, got {pairing!r}.")
    if pairing == "cross_network":
        return CrossNetworkContrastLoss(temperature)
    return PrototypeContrastLoss(temperature)
