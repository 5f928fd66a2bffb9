# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Semi-CML losses: the area-similarity contrastive (ASC) loss and the weighted soft-Dice + BCE segmentation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASCLoss", "SoftDiceBCELoss", "soft_dice_similarity"]


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def soft_dice_similarity(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Pairwise soft-Dice similarity of flattened probability maps.

    .. math::
        S_{ab} = \frac{2 \sum_i z_{a,i} z_{b,i} + \epsilon}{\sum_i z_{a,i}^2 + \sum_i z_{b,i}^2 + \epsilon}

    Args:
        maps: ``(N, P)``, N maps of P pixels each.
        eps: the smoothing constant :math:`\epsilon`.

    Returns:
        ``(N, N)`` similarities in [0, 1] (1 on the diagonal).
    """
    squared = (maps * maps).sum(dim=1)  # (N,)
    overlap = maps @ maps.transpose(0, 1)  # (N, N)
    return (2.0 * overlap + eps) / (squared[:, None] + squared[None, :] + eps)


class ASCLoss(nn.Module):
    r"""Area-similarity contrastive (ASC) loss of Semi-CML [0]: an InfoNCE whose logits are soft-Dice similarities.

    For two stacks of probability maps :math:`U^1, U^2` of the same :math:`B` samples (two modalities, or a
    pseudo-label and a prediction), let :math:`z = [U^1; U^2]` be the :math:`2B` maps of one class, and
    :math:`S` their soft-Dice similarities (:func:`soft_dice_similarity`). The positive of map :math:`a` is the same
    sample in the other stack, :math:`p(a) = (a + B) \bmod 2B`; the negatives are the other :math:`2B - 2` maps:

    .. math::
        \mathcal{L}_{ASC} = \frac{1}{2B} \sum_{a=1}^{2B}
            -\log \frac{\exp(S_{a,p(a)} / \tau)}{\sum_{b \neq a} \exp(S_{ab} / \tau)}

    With :math:`C` channels (one sigmoid map per class) the loss is computed per class and averaged. The released code
    fixes :math:`B` when the loss is built; here any :math:`B \geq 1` works per call (with :math:`B = 1` only the
    positive remains and the loss is 0). The computation runs in fp32 whatever the input dtype. There is no
    projection head: the released per-call, untrained ``ProjHead`` learns nothing (methods.md, section 4.5 item 1).

    - [0] Zhang et al., 2023, Multi-modal contrastive mutual learning and pseudo-label re-learning for
      semi-supervised medical image segmentation, Medical Image Analysis 83:102656

    Args:
        temperature: :math:`\tau` > 0; 1.0 as released (the logits are the similarities themselves).
        eps: smoothing of the soft-Dice similarity, 1e-6 as released.

    Raises:
        ValueError: ``temperature`` or ``eps`` not a finite positive number.

    Examples:
        >>> loss_fn = ASCLoss()
        >>> p1, p2 = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)  # sigmoid maps of two modalities
        >>> loss = loss_fn(p1, p2)
    """

    def __init__(self, temperature: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.eps = _check_positive("eps", eps)

    def forward(self, maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
        """Shape: ``maps_a`` and ``maps_b`` ``(B, C, *spatial)`` probabilities, sample ``i`` paired -> scalar."""
        if maps_a.shape != maps_b.shape or maps_a.ndim < 3:
            raise ValueError(
                f"ASCLoss needs two (B, C, *spatial) stacks of the same shape, got {tuple(maps_a.shape)} and "
                f"{tuple(maps_b.shape)}."
            )
        batch, channels = maps_a.shape[:2]
        stacked = torch.cat([maps_a, maps_b], dim=0).float().flatten(2)  # (2B, C, P)
        positives = (torch.arange(2 * batch, device=stacked.device) + batch) % (2 * batch)  # (2B,)
        self_pairs = torch.eye(2 * batch, dtype=torch.bool, device=stacked.device)
        losses = []
        for channel in range(channels):
            logits = soft_dice_similarity(stacked[:, channel], self.eps) / self.temperature  # (2B, 2B)
            logits = logits.masked_fill(self_pairs, float("-inf"))  # a map is never its own negative
            losses.append(F.cross_entropy(logits, positives))
        return torch.stack(losses).mean()


class SoftDiceBCELoss(nn.Module):
    r"""Weighted BCE plus soft-Dice loss against hard or soft targets, the Semi-CML segmentation loss [0].

    .. math::
        \mathcal{L} = w_{bce} \, \mathrm{BCE}(p, y) + w_{dice} \left(1 - \frac{2 \sum p y + \epsilon}
            {\sum p^2 + \sum y^2 + \epsilon}\right), \qquad p = \sigma(x)

    The Dice sums run over the whole batch (as released), per channel, and are averaged over channels; BCE is the
    mean over all pixels. Targets may be soft (the teacher's averaged pseudo-labels). MONAI's ``DiceCELoss`` cannot
    express this: with several channels it switches to softmax cross-entropy, not per-class BCE. Computed in fp32.

    - [0] Zhang et al., 2023, Medical Image Analysis 83:102656 (``bce_w = 10``, ``dice_w = 7``)

    Args:
        bce_weight: :math:`w_{bce}` >= 0, 10 as released.
        dice_weight: :math:`w_{dice}` >= 0, 7 as released.
        eps: Dice smoothing, 1e-6 as released.
        logits: ``True`` when the input holds logits (usseg networks); ``False`` for probabilities.

    Raises:
        ValueError: a negative weight or a non-positive ``eps``.

    Examples:
        >>> loss_fn = SoftDiceBCELoss()
        >>> loss = loss_fn(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16)).float())
    """

    def __init__(
        self, bce_weight: float = 10.0, dice_weight: float = 7.0, eps: float = 1e-6, logits: bool = True
    ) -> None:
        super().__init__()
        self.bce_weight = _check_weight("bce_weight", bce_weight)
        self.dice_weight = _check_weight("dice_weight", dice_weight)
        self.eps = _check_positive("eps", eps)
        self.logits = bool(logits)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Shape: ``pred`` ``(B, C, *spatial)`` logits (or probabilities), ``target`` the same shape in [0, 1]."""
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape "
                "(one channel per foreground class)."
            )
        pred, target = pred.float(), target.float()
        if self.logits:
            bce = F.binary_cross_entropy_with_logits(pred, target)
            probs = torch.sigmoid(pred)
        else:
            probs = pred
            bce = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), target)
        per_channel_p = probs.transpose(0, 1).flatten(1)  # (C, B*P)
        per_channel_y = target.transpose(0, 1).flatten(1)
        overlap = (per_channel_p * per_channel_y).sum(dim=1)
        denominator = (per_channel_p * per_channel_p).sum(dim=1) + (per_channel_y * per_channel_y).sum(dim=1)
        dice = (2.0 * overlap + self.eps) / (denominator + self.eps)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice).mean()
