# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Supervised contrastive loss on image embeddings (SupCon), as used by Hermes for its image contrast."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss with optional per-sample weights [0].

    For :math:`N = V B` L2-normalised embeddings :math:`z_i` (all views of a batch of :math:`B`) with labels
    :math:`y_i`:

    .. math::
        \ell_i = -\frac{\tau}{\tau_b} \frac{1}{|P(i)|} \sum_{p \in P(i)} \log
            \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \neq i} \exp(z_i \cdot z_a / \tau)}

    :math:`P(i)` holds the other embeddings with label :math:`y_i` (so the other views of the same image are
    always positives). With ``reduction="none"`` the loss is returned per anchor as a ``(V, B)`` tensor (view-major,
    as the released ``SoftSupConLoss(reduction=None)``); with ``"mean"`` it is
    :math:`\frac{1}{VB}\sum_i w_{b(i)} \ell_i`, where :math:`w` are per-sample weights (Hermes passes its
    dual-threshold acceptance mask, so rejected samples contribute 0 but still count in the mean, as released).
    Anchors without any positive (a single view and a unique label) get :math:`\ell_i = 0`, never NaN.

    - [0] Khosla et al., 2020, Supervised Contrastive Learning, https://arxiv.org/abs/2004.11362
    - [1] Zhang et al., 2025, Hermes, https://arxiv.org/abs/2508.02265 (``Code/loss/soft_supconloss_no_reweight.py``)

    Args:
        temperature: :math:`\tau` (0.07 as released); must be positive.
        base_temperature: :math:`\tau_b` (0.07 as released); must be positive.
        reduction: ``"mean"`` or ``"none"``.

    Raises:
        ValueError: a non-positive temperature or an unknown reduction (the value is quoted).

    Examples:
        >>> loss_fn = SupConLoss(temperature=0.07)
        >>> z = torch.nn.functional.normalize(torch.randn(8, 2, 128), dim=-1)  # (batch, views, dim)
        >>> loss = loss_fn(z, labels=torch.randint(0, 2, (8,)), weights=torch.ones(8))
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07, reduction: str = "mean") -> None:
        super().__init__()
        for name, value in (("temperature", temperature), ("base_temperature", base_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)
        self.reduction = reduction

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: (B, V, D) L2-normalised embeddings, V views per sample.
            labels: (B,) integer labels; with neither ``labels`` nor ``mask`` only the other views are positives
                (SimCLR).
            mask: (B, B) positive-pair matrix (1 where sample j is a positive of sample i), instead of ``labels``.
            weights: (B,) per-sample weights applied to every view's loss (only with ``reduction="mean"`` or
                multiplied into the ``(V, B)`` result with ``"none"``).

        Returns:
            a scalar (``"mean"``) or a (V, B) tensor (``"none"``).

        Raises:
            ValueError: shapes that do not fit, or both ``labels`` and ``mask``.
        """
        if features.ndim != 3:
            raise ValueError(f"features must be (batch, views, dim), got shape {tuple(features.shape)}.")
        batch, views, _ = features.shape
        if labels is not None and mask is not None:
            raise ValueError("give labels or mask, not both.")
        if labels is not None:
            if labels.shape != (batch,):
                raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}.")
            positives = labels.view(-1, 1).eq(labels.view(1, -1)).float()  # (B, B)
        elif mask is not None:
            if mask.shape != (batch, batch):
                raise ValueError(f"mask must have shape ({batch}, {batch}), got {tuple(mask.shape)}.")
            positives = mask.float()
        else:
            positives = torch.eye(batch, device=features.device)
        if weights is not None and weights.shape != (batch,):
            raise ValueError(f"weights must have shape ({batch},), got {tuple(weights.shape)}.")

        features = features.float()
        contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # (V*B, D), view-major
        logits = contrast @ contrast.T / self.temperature  # (V*B, V*B)
        logits = logits - logits.detach().amax(dim=1, keepdim=True)  # numerical stability; cancels in the ratio
        not_self = 1.0 - torch.eye(views * batch, device=features.device)
        positives = positives.repeat(views, views) * not_self
        exp_logits = torch.exp(logits) * not_self
        log_prob = logits - torch.log(exp_logits.sum(dim=1, keepdim=True).clamp_min(1e-12))
        count = positives.sum(dim=1)
        mean_log_prob_pos = (positives * log_prob).sum(dim=1) / count.clamp_min(1.0)
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos  # (V*B,), 0 without positives
        loss = loss.view(views, batch)
        if weights is not None:
            loss = loss * weights.float().view(1, batch)
        return loss if self.reduction == "none" else loss.mean()
