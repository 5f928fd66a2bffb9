# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Networks of USCL [0] and Meta-USCL [1]: projection heads, the encoder + head model, and CMW-Net.

- :class:`ProjectionHead`: ``Linear(512, 512) -> ReLU -> Linear(512, d)`` with ``d = 256`` (USCL,
  ``train_USCL/models/resnet_simclr.py``) or ``d = 128`` (Meta-USCL, ``model.py::ContrastiveModel``).
- :class:`ContrastiveNetwork`: an encoder returning pooled features ``h`` (``usseg.networks.encoders``' ResNet-18 by
  default), the projection head giving ``z``, and USCL's optional semi-supervised classifier on ``z`` (released
  code) or on ``h`` (paper figure). ``forward(image)`` returns the embedding ``z``: it is the bundle's
  ``network_def`` for the zoo checks and exports.
- :class:`CMWNet`: Meta-USCL's weighting network ``concat(h_i, h_j) -> 10 -> ReLU -> 1 -> sigmoid``
  (``model.py::WNet``), one weight per positive pair.

- [0] Chen et al., USCL, MICCAI 2021, https://arxiv.org/abs/2011.13066
- [1] Chen et al., Meta-USCL, IEEE TMI, https://arxiv.org/abs/2212.04097
"""

from __future__ import annotations

import torch
from torch import nn

from usseg.networks.encoders import build_resnet_encoder, encoder_feature_dim

__all__ = [
    "PROJECTION_PRESETS",
    "ProjectionHead",
    "ContrastiveNetwork",
    "ContrastiveOutputs",
    "CMWNet",
    "build_contrastive_network",
]

PROJECTION_PRESETS: dict[str, tuple[int, int]] = {"uscl": (512, 256), "meta_uscl": (512, 128)}
"""``preset -> (hidden, output)`` widths of the projection head as released."""

_CLASSIFIER_INPUTS = ("z", "h")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


class ProjectionHead(nn.Sequential):
    """SimCLR's projection ``g``: ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``.

    Args:
        in_features: width of the encoder features ``h``. Defaults to 512 (ResNet-18).
        hidden_features: hidden width. Defaults to 512.
        out_features: embedding width: 128 for Meta-USCL (default), 256 for USCL (see :data:`PROJECTION_PRESETS`).

    Raises:
        ValueError: when a width is not a positive integer.
    """

    def __init__(self, in_features: int = 512, hidden_features: int = 512, out_features: int = 128) -> None:
        super().__init__(
            nn.Linear(_positive_int("in_features", in_features), _positive_int("hidden_features", hidden_features)),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, _positive_int("out_features", out_features)),
        )


class CMWNet(nn.Module):
    """Meta-USCL's contrastive meta-weighting network: one weight in (0, 1) per positive pair.

    The input is the pair's two encoder representations (not the projections), concatenated.

    Args:
        feature_dim: width of one view's representation ``h``. Defaults to 512.
        hidden_features: hidden width. Defaults to 10 (released).

    Raises:
        ValueError: when a width is not a positive integer.
    """

    def __init__(self, feature_dim: int = 512, hidden_features: int = 10) -> None:
        super().__init__()
        _positive_int("feature_dim", feature_dim)
        self.layers = nn.Sequential(
            nn.Linear(2 * feature_dim, _positive_int("hidden_features", hidden_features)),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, 1),
        )

    def forward(self, h_i: torch.Tensor, h_j: torch.Tensor) -> torch.Tensor:
        """Pair weights.

        Args:
            h_i: representations of the first views, ``(N, feature_dim)``.
            h_j: representations of the second views, ``(N, feature_dim)``.

        Returns:
            ``(N,)`` weights in (0, 1).
        """
        return torch.sigmoid(self.layers(torch.cat([h_i, h_j], dim=1))).squeeze(1)


class ContrastiveNetwork(nn.Module):
    """Encoder + projection head (+ optional classifier) for contrastive pre-training.

    Args:
        encoder: module mapping images ``(B, C, H, W)`` to pooled features ``(B, F)``; any MONAI-constructible
            backbone that does so can be used (e.g. from ``build_resnet_encoder``).
        projection_head: module mapping ``(B, F)`` to embeddings ``(B, D)``.
        num_classes: classes of USCL's semi-supervised classifier; 0 (default) for none.
        classifier_input: ``"z"`` (released USCL code, default) or ``"h"`` (the paper's figure).
        classifier_in_features: input width of the classifier (``D`` for ``"z"``, ``F`` for ``"h"``); required
            when ``num_classes > 0``.

    Raises:
        ValueError: on an unknown ``classifier_input``, a negative ``num_classes``, or a classifier without its
            input width.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_head: nn.Module,
        num_classes: int = 0,
        classifier_input: str = "z",
        classifier_in_features: int | None = None,
    ) -> None:
        super().__init__()
        if classifier_input not in _CLASSIFIER_INPUTS:
            raise ValueError(f"classifier_input must be one of {_CLASSIFIER_INPUTS}, got {classifier_input!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}.")
        if num_classes and classifier_in_features is None:
            raise ValueError("classifier_in_features is required when num_classes > 0.")
        self.encoder = encoder
        self.projection = projection_head
        self.classifier_input = classifier_input
        self.classifier = nn.Linear(int(classifier_in_features), num_classes) if num_classes else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The embedding ``z`` of each image.

        Args:
            image: ``(B, C, H, W)``.

        Returns:
            ``(B, D)`` embeddings (not normalised).
        """
        return self.projection(self.encoder(image))

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Representation, embedding and (when configured) class logits in one pass.

        Args:
            image: ``(B, C, H, W)``.

        Returns:
            ``{"h": (B, F), "z": (B, D)}`` plus ``"logits": (B, K)`` when the network has a classifier.
        """
        h = self.encoder(image)
        z = self.projection(h)
        out = {"h": h, "z": z}
        if self.classifier is not None:
            out["logits"] = self.classifier(z if self.classifier_input == "z" else h)
        return out


class ContrastiveOutputs(nn.Module):
    """The training view of a :class:`ContrastiveNetwork`: ``forward`` returns :meth:`~ContrastiveNetwork.forward_all`.

    ``DistributedDataParallel`` only calls ``forward``, which returns the embedding alone (the exported model's
    output); wrapping the network in this module lets the trainer get the representation and the class logits
    through DDP as well. It holds no parameters of its own: checkpoint ``network`` itself.

    Args:
        network: the wrapped network (with a ``forward_all`` method).

    Raises:
        TypeError: when ``network`` has no ``forward_all``.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(network, "forward_all", None)):
            raise TypeError(f"network must provide forward_all(image), got {type(network).__name__}.")
        self.network = network

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"h": (B, F), "z": (B, D)[, "logits": (B, K)]}`` for images ``(B, C, H, W)``."""
        return self.network.forward_all(image)


def build_contrastive_network(
    preset: str = "meta_uscl",
    depth: int = 18,
    in_channels: int = 1,
    widths: tuple[int, int, int, int] | list[int] = (64, 128, 256, 512),
    num_classes: int = 0,
    classifier_input: str = "z",
) -> ContrastiveNetwork:
    """A ResNet encoder (``usseg.networks.encoders``) with the preset's projection head.

    Args:
        preset: ``"meta_uscl"`` (head 512 -> 512 -> 128) or ``"uscl"`` (512 -> 512 -> 256); with reduced ``widths``
            the head's input and hidden widths follow the encoder's feature width.
        depth: ResNet depth. Defaults to 18.
        in_channels: image channels. Defaults to 1 (grayscale B-mode).
        widths: channels of the four ResNet stages.
        num_classes: USCL's semi-supervised classifier classes; 0 for none.
        classifier_input: ``"z"`` or ``"h"``.

    Returns:
        the network; ``network.encoder`` is what ``usseg.networks.encoders.save_encoder`` exports.

    Raises:
        ValueError: on an unknown preset (or any invalid encoder argument).
    """
    if preset not in PROJECTION_PRESETS:
        raise ValueError(f"preset must be one of {sorted(PROJECTION_PRESETS)}, got {preset!r}.")
    encoder = build_resnet_encoder(depth=depth, in_channels=in_channels, widths=tuple(widths))
    features = encoder_feature_dim(encoder)
    hidden, out = PROJECTION_PRESETS[preset]
    hidden = hidden if features == 512 else features  # released widths for ResNet-18; scaled for CPU-sized ones
    head = ProjectionHead(features, hidden, out)
    classifier_features = out if classifier_input == "z" else features
    return ContrastiveNetwork(
        encoder, head, num_classes, classifier_input, classifier_features if num_classes else None
    )
