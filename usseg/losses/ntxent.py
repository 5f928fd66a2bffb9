# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""NT-Xent / InfoNCE of SimCLR, with the per-pair weights of Meta-USCL.

For ``N`` positive pairs ``(z_i[k], z_j[k])`` the ``2N`` embeddings are compared by cosine similarity divided by the
temperature. Every embedding is a query; its positive is the other view of its pair, its negatives are the other
``2N - 2`` embeddings (itself excluded). With per-query cross-entropies ``CE_k`` [0, eq. 1]:

.. math::
    \\mathcal{L} = \\sum_{k=1}^{2N} w_k \\, \\mathrm{CE}_k, \\qquad
    \\mathrm{CE}_k = -\\log \\frac{\\exp(s_{k,p(k)} / \\tau)}{\\sum_{m \\ne k} \\exp(s_{k,m} / \\tau)}

Unweighted, ``w_k = 1 / (2N)`` (the ``sum / 2N`` reduction of the USCL and Meta-USCL code). Weighted, the weight of
pair ``k`` is used for both of its queries and the weights are normalised so that they sum to 1 over the ``2N``
queries [1, weighted InfoNCE]; only their relative values matter, and uniform weights give the unweighted loss.

- [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
  https://arxiv.org/abs/2002.05709
- [1] Chen et al., "Generating and Weighting Semantically Consistent Sample Pairs for Ultrasound Contrastive
  Learning", IEEE TMI, https://arxiv.org/abs/2212.04097 (code ``Schuture/Meta-USCL: loss.py``)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["NTXentLoss"]

_MIN_TEMPERATURE = 1e-8


def _gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; gradients flow back to each rank's own part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


class NTXentLoss(nn.Module):
    """NT-Xent (InfoNCE) over two views, optionally with per-pair weights (Meta-USCL's weighted InfoNCE).

    Args:
        temperature: softmax temperature ``tau``. Defaults to 0.5 (USCL and Meta-USCL).
        gather_distributed: under ``torch.distributed``, use the embeddings of every rank as negatives (each rank
            still computes the loss of its own queries). Off by default: a per-rank batch of 32 then has the
            negative count of the released single-GPU code.

    Raises:
        ValueError: when ``temperature`` is not a positive number.
        RuntimeError: when ``gather_distributed=True`` but ``torch.distributed`` is unavailable.

    Examples:
        >>> import torch
        >>> loss = NTXentLoss(temperature=0.5)
        >>> z_i, z_j = torch.randn(8, 128), torch.randn(8, 128)
        >>> bool(torch.isclose(loss(z_i, z_j), loss(z_i, z_j, weights=torch.full((8,), 3.0))))
        True
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < _MIN_TEMPERATURE:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        if gather_distributed and not dist.is_available():
            raise RuntimeError(
                "gather_distributed=True needs torch.distributed, which this torch build lacks; "
                "set gather_distributed=False."
            )
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def per_query_losses(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of every query, ``CE_k``.

        Args:
            z_i: embeddings of the first views, shape ``(N, D)``.
            z_j: embeddings of the second views, shape ``(N, D)``; row ``k`` is the positive of ``z_i[k]``.

        Returns:
            ``(2N,)`` float32: the losses of the queries ``z_i[0..N-1]`` then ``z_j[0..N-1]``.

        Raises:
            ValueError: when the shapes differ, are not 2D, or ``N < 1``.
        """
        if z_i.ndim != 2 or z_i.shape != z_j.shape or z_i.shape[0] < 1:
            raise ValueError(
                f"z_i and z_j must both be (N, D) with N >= 1, got {tuple(z_i.shape)} and {tuple(z_j.shape)}."
            )
        # fp32 maths: bf16 logits divided by tau = 0.5 lose the small differences the softmax depends on
        queries = F.normalize(torch.cat([z_i, z_j], dim=0).float(), dim=1)  # (2N, D)
        num_pairs = z_i.shape[0]
        offset, keys_i, keys_j = 0, queries[:num_pairs], queries[num_pairs:]
        if self.gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
            offset = dist.get_rank() * num_pairs
            keys_i, keys_j = _gather_with_grad(keys_i), _gather_with_grad(keys_j)
        keys = torch.cat([keys_i, keys_j], dim=0)  # (2M, D); M = N, or N x world size when gathering
        total = keys_i.shape[0]
        logits = queries @ keys.T / self.temperature  # (2N, 2M)
        local = torch.arange(num_pairs, device=queries.device) + offset
        own = torch.cat([local, local + total])  # where each query sits among the keys
        positive = torch.cat([local + total, local])  # the other view of its pair
        rows = torch.arange(2 * num_pairs, device=queries.device)
        logits = logits.index_put((rows, own), torch.tensor(float("-inf"), device=logits.device))
        return F.cross_entropy(logits, positive, reduction="none")

    def query_weights(self, weights: torch.Tensor | None, num_pairs: int) -> torch.Tensor | None:
        """Per-pair weights as normalised per-query weights (each pair's weight used for both its queries).

        Args:
            weights: ``(N,)`` non-negative pair weights, or ``None``.
            num_pairs: ``N``.

        Returns:
            ``(2N,)`` weights summing to 1, or ``None`` when ``weights`` is ``None``.

        Raises:
            ValueError: on a wrong shape, or weights that are negative or sum to zero.
        """
        if weights is None:
            return None
        weights = weights.float().reshape(-1) if weights.ndim == 2 and weights.shape[1] == 1 else weights.float()
        if weights.shape != (num_pairs,):
            raise ValueError(f"weights must have shape ({num_pairs},), one per pair, got {tuple(weights.shape)}.")
        if bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights.detach().tolist()}.")
        both = torch.cat([weights, weights])
        return both / both.sum()

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The (weighted) NT-Xent loss.

        Args:
            z_i: first views' embeddings ``(N, D)``.
            z_j: second views' embeddings ``(N, D)``.
            weights: optional ``(N,)`` (or ``(N, 1)``) pair weights, normalised here to sum to 1 over the queries.

        Returns:
            a 0-d float32 tensor.
        """
        losses = self.per_query_losses(z_i, z_j)
        query_weights = self.query_weights(weights, z_i.shape[0])
        if query_weights is None:
            return losses.mean()
        return (query_weights * losses).sum()
