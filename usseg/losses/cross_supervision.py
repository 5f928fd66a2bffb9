# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Supervision between two segmentation networks on unlabeled images (dual-network method, methods.md section 3.2).

Both losses here use the soft Dice of the released code (SSL4MIS ``losses.DiceLoss``): per class, squared
denominators, a smoothing constant of 1e-5, sums pooled over the whole batch, averaged over ALL classes including
the background:

.. math::
    \\mathrm{Dice}(p, t) = \\frac{1}{C} \\sum_{c=0}^{C-1} \\Big(1 - \\frac{2 \\sum_{b,x} p_{bcx} t_{bcx} + s}
        {\\sum_{b,x} p_{bcx}^2 + \\sum_{b,x} t_{bcx}^2 + s}\\Big), \\qquad s = 10^{-5}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["squared_soft_dice", "SupervisedDiceCELoss", "CrossSupervisionLoss"]


def squared_soft_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The released soft Dice loss (module docstring) between probabilities and a soft or one-hot target.

    Args:
        probs: ``(B, C, ...)`` probabilities.
        target: ``(B, C, ...)`` target probabilities or one-hot labels, same shape.
        smooth: the smoothing constant ``s``, added to numerator and denominator.

    Returns:
        A scalar: 1 - Dice per class, averaged over the ``C`` classes.

    Raises:
        ValueError: the shapes differ or have no class axis.
    """
    if probs.shape != target.shape or probs.ndim < 2:
        raise ValueError(
            f"probs and target must share a (B, C, ...) shape, got {tuple(probs.shape)} and {tuple(target.shape)}."
        )
    dims = [0, *range(2, probs.ndim)]  # pooled over batch and pixels, one value per class
    probs, target = probs.float(), target.float()
    intersection = (probs * target).sum(dim=dims)
    denominator = (probs * probs).sum(dim=dims) + (target * target).sum(dim=dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, ...)`` or ``(B, ...)`` integer labels -> ``(B, C, ...)`` float one-hot."""
    if labels.ndim >= 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


class SupervisedDiceCELoss(nn.Module):
    """The released supervised loss of each network: ``0.5 * (CE + Dice)``, Dice as in the module docstring.

    Labels are truncated to integers with ``.long()`` first, exactly as the released code does; with labels resized
    by nearest neighbour (the usseg default) this changes nothing.

    Args:
        ce_weight: weight of the cross-entropy term.
        dice_weight: weight of the Dice term.
        smooth: Dice smoothing constant.
    """

    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1e-5) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or smooth < 0:
            raise ValueError(f"weights and smooth must be >= 0, got {ce_weight}, {dice_weight}, {smooth}.")
        self.ce_weight, self.dice_weight, self.smooth = float(ce_weight), float(dice_weight), float(smooth)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shape: ``logits`` (B, C, H, W), ``labels`` (B, 1, H, W) or (B, H, W) class indices -> scalar."""
        if labels.ndim == logits.ndim:
            if labels.shape[1] != 1:
                raise ValueError(f"labels must hold one channel of class indices, got shape {tuple(labels.shape)}.")
            labels = labels[:, 0]
        if labels.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}.")
        labels = labels.long()
        logits = logits.float()
        ce = F.cross_entropy(logits, labels)
        dice = squared_soft_dice(logits.softmax(dim=1), _one_hot(labels, logits.shape[1]), self.smooth)
        return self.ce_weight * ce + self.dice_weight * dice


class CrossSupervisionLoss(nn.Module):
    """Supervise one network with the other network's prediction on unlabeled images, through a stop-gradient.

    - ``"soft_dice"`` (the released form, section 3.2): :math:`\\mathrm{Dice}(\\mathrm{softmax}(s),
      \\mathrm{sg}(\\mathrm{softmax}(o)))`, the module docstring's Dice against the other network's probabilities;
    - ``"hard_ce"`` (cross pseudo supervision, Chen et al. 2021): :math:`\\mathrm{CE}(s, \\arg\\max_c o)`, the
      released code's commented-out variant.

    :math:`s` are the supervised network's logits and :math:`o` the other network's; no gradient reaches the other
    network. The trainer calls the loss twice, once per direction.

    - [0] Wang, Curran, Silvestre, 2025, https://arxiv.org/abs/2503.17057
    - [1] Chen et al., 2021, Cross Pseudo Supervision, https://arxiv.org/abs/2106.01226

    Args:
        mode: ``"soft_dice"`` or ``"hard_ce"``.
        smooth: Dice smoothing constant.

    Examples:
        >>> loss_fn = CrossSupervisionLoss()
        >>> student, other = torch.randn(4, 3, 16, 16, requires_grad=True), torch.randn(4, 3, 16, 16)
        >>> loss_fn(student, other).backward()
    """

    def __init__(self, mode: str = "soft_dice", smooth: float = 1e-5) -> None:
        super().__init__()
        if mode not in ("soft_dice", "hard_ce"):
            raise ValueError(f"mode must be 'soft_dice' or 'hard_ce', got {mode!r}.")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}.")
        self.mode, self.smooth = mode, float(smooth)

    def forward(self, logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
        """Shape: both ``(B, C, H, W)`` logits -> scalar."""
        if logits.shape != other_logits.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and other_logits {tuple(other_logits.shape)} differ.")
        other = other_logits.detach().float()
        if self.mode == "hard_ce":
            return F.cross_entropy(logits.float(), other.argmax(dim=1))
        return squared_soft_dice(logits.float().softmax(dim=1), other.softmax(dim=1), self.smooth)
