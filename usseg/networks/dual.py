# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The two segmentation networks of the dual-network method (methods.md, section 3), their projection heads and
their ensemble.

- :func:`build_segmenter` makes either network by name, from MONAI architectures that need no download:

  ============================ =========================================================================================
  name                         network
  ============================ =========================================================================================
  ``unet``                     MONAI ``UNet`` configured as the released U-Net (section 3.1): channels 16-32-64-128-256,
                               batch norm, LeakyReLU, transposed-convolution upsampling. Differences: strided
                               convolutions instead of max-pooling, residual units, one dropout rate for every level.
  ``attention_unet``           MONAI ``AttentionUnet`` with the same channels (the released "Attention U-Net" variant).
                               The usseg default second network: 0.2-0.3 s per step of 8 images at 128² on 2 CPU cores.
  ``resnet18_unet``            MONAI ``FlexibleUNet`` with a ResNet-18 encoder, random weights (the released
                               "ResNet-UNet" used ImageNet weights; here the encoder can come from a Meta-USCL file).
                               Its widths are fixed (64-512): an encoder file of other widths does not load.
  ``resnet_unet``              :class:`usseg.networks.resnet_unet.ResNetUNet`: a usseg ResNet encoder of any depth and
                               width + a light U-Net decoder. With ``encoder_weights`` its depth and widths are the
                               file's (the Meta-USCL default export, ResNet-18 at 32-256, loads); without, ResNet-18
                               at widths 32-256, random weights.
  ``efficientnet_b3_unet``     MONAI ``FlexibleUNet`` with an EfficientNet-b3 encoder, random weights (the released
                               "Efficient-UNet" used ImageNet weights and scSE attention, which MONAI's decoder lacks).
  ``swin_unetr``               MONAI ``SwinUNETR`` in 2D: the nearest MONAI substitute for Swin-UNet (Cao et al.), which
                               it is NOT (different decoder, no ImageNet weights). Needs the ``einops`` package.
  ============================ =========================================================================================

- :class:`ProjectedSegmenter` wraps one network for training: a forward hook keeps its deepest representation, a
  :class:`ProjectionHead` maps it to a common embedding dimension, and ``forward`` returns ``(logits, embedding)``
  in ONE call, so ``DistributedDataParallel`` sees every parameter used in the call it wraps.
- :class:`DualNetworkEnsemble` holds the two bare networks (state-dict keys ``net1.*``, ``net2.*``) and predicts with
  network 1, network 2 or their ensemble (averaged probabilities). It is the bundle's exported model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.networks.nets import AttentionUnet, FlexibleUNet, SwinUNETR, UNet
from monai.utils import optional_import
from torch import nn

from usseg.networks.resnet_unet import ResNetUNet

__all__ = [
    "SEGMENTERS",
    "build_segmenter",
    "bottleneck_module_name",
    "load_segmenter_encoder",
    "ProjectionHead",
    "ProjectedSegmenter",
    "DualNetworkEnsemble",
]

SEGMENTERS = ("unet", "attention_unet", "resnet18_unet", "resnet_unet", "efficientnet_b3_unet", "swin_unetr")
ENCODER_SEGMENTERS = ("resnet18_unet", "resnet_unet")  # the ones with a ResNet encoder that takes encoder_weights
ENSEMBLE_MODES = ("net1", "net2", "ensemble")
UNET_CHANNELS = (16, 32, 64, 128, 256)  # methods.md section 3.1


def build_segmenter(
    name: str,
    num_classes: int,
    in_channels: int = 1,
    dropout: float = 0.1,
    encoder_weights: str | os.PathLike | None = None,
    swin_feature_size: int = 24,
) -> nn.Module:
    """Build one of the dual-network method's segmentation networks (2D, logits out).

    Args:
        name: one of :data:`SEGMENTERS` (see the module docstring).
        num_classes: output channels, background included.
        in_channels: input channels (1 for grey B-mode).
        dropout: dropout rate of the U-Net variants (MONAI applies one rate at every level; ``resnet_unet`` has no
            dropout).
        encoder_weights: an ``encoder.pt`` file from ``usseg.networks.encoders.save_encoder`` (the Meta-USCL
            bundle's export) loaded into the network's ResNet encoder; only ``resnet18_unet`` (ResNet-18 at widths
            64-512 only) and ``resnet_unet`` (any depth and widths, read from the file) have one.
        swin_feature_size: SwinUNETR embedding size (a multiple of 12).

    Returns:
        The network: input ``(B, in_channels, H, W)`` with H and W multiples of 16 (32 for ``swin_unetr`` and
        ``resnet18_unet``; any size for ``resnet_unet``), output ``(B, num_classes, H, W)`` logits.

    Raises:
        ValueError: an unknown ``name``, ``num_classes < 2``, ``in_channels < 1``, dropout outside [0, 1), or
            ``encoder_weights`` for a network without a ResNet encoder.
        ImportError: ``swin_unetr`` without ``einops``.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"name must be one of {SEGMENTERS}, got {name!r}.")
    if int(num_classes) < 2 or int(in_channels) < 1:
        raise ValueError(f"num_classes must be >= 2 and in_channels >= 1, got {num_classes} and {in_channels}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
    if encoder_weights is not None and name not in ENCODER_SEGMENTERS:
        raise ValueError(
            f"encoder_weights ({encoder_weights}) needs a network with a ResNet encoder {ENCODER_SEGMENTERS}, "
            f"got {name!r}."
        )
    network: nn.Module
    if name == "unet":
        network = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=UNET_CHANNELS,
            strides=(2, 2, 2, 2),
            num_res_units=2,
            act=("leakyrelu", {"negative_slope": 0.01}),
            norm="batch",
            dropout=float(dropout),
        )
    elif name == "attention_unet":
        network = AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=UNET_CHANNELS,
            strides=(2, 2, 2, 2),
            dropout=float(dropout),
        )
    elif name == "resnet_unet":
        if encoder_weights is not None:  # depth and widths are the file's: the file is loaded while building
            return ResNetUNet.from_encoder_file(
                encoder_weights, num_classes=int(num_classes), in_channels=int(in_channels)
            )
        network = ResNetUNet(int(num_classes), in_channels=int(in_channels), depth=18, widths=(32, 64, 128, 256))
    elif name in ("resnet18_unet", "efficientnet_b3_unet"):
        backbone = "resnet18" if name == "resnet18_unet" else "efficientnet-b3"
        network = FlexibleUNet(
            in_channels=in_channels, out_channels=num_classes, backbone=backbone, pretrained=False, spatial_dims=2
        )
    else:
        _, has_einops = optional_import("einops")
        if not has_einops:
            raise ImportError("swin_unetr needs the einops package (pip install einops); choose another network.")
        network = SwinUNETR(
            in_channels=in_channels, out_channels=num_classes, feature_size=swin_feature_size, spatial_dims=2
        )
    if encoder_weights is not None:
        load_segmenter_encoder(network, encoder_weights)
    return network


def load_segmenter_encoder(network: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load an encoder file (``usseg.networks.encoders``) into the ResNet encoder of a ``FlexibleUNet`` or ResNetUNet.

    MONAI's ``FlexibleUNet`` ResNet encoder is a subclass of ``monai.networks.nets.ResNet`` with the same parameter
    names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), and a ResNetUNet's encoder is a usseg encoder, so the file
    loads with ``usseg.networks.encoders.load_encoder_weights``, which names missing, unexpected and mis-shaped keys.

    Args:
        network: a ``FlexibleUNet`` with a ResNet backbone, or a ``ResNetUNet``.
        path: the ``encoder.pt`` file.
        strict: refuse missing or unexpected keys.

    Returns:
        What ``load_encoder_weights`` returns (the encoder's architecture record).

    Raises:
        ValueError: ``network`` has no ResNet encoder.
    """
    from usseg.networks.encoders import load_encoder_weights  # the shared encoder contract

    encoder = getattr(network, "encoder", None)
    if not isinstance(network, (FlexibleUNet, ResNetUNet)) or not hasattr(encoder, "layer4"):
        raise ValueError(
            f"{type(network).__name__} has no ResNet encoder to load {path} into; use one of {ENCODER_SEGMENTERS}."
        )
    return load_encoder_weights(encoder, path, strict=strict)


def bottleneck_module_name(network: nn.Module) -> str:
    """The name of the module whose output is the network's deepest representation.

    MONAI ``UNet`` and ``AttentionUnet`` nest one ``submodule`` per level: the most deeply nested one is the
    bottleneck. ``FlexibleUNet`` has an ``encoder`` that returns its feature pyramid (the last item is the deepest).
    ``SwinUNETR``'s ``encoder10`` processes the deepest Swin stage. A ``ResNetUNet`` calls its encoder's stages one
    by one (its ``encoder.forward`` never runs), so its bottleneck is ``encoder.layer4``.

    Raises:
        ValueError: none of these layouts is recognised (pass ``feature_module`` explicitly).
    """
    if isinstance(network, ResNetUNet):
        return "encoder.layer4"
    names = [name for name, _ in network.named_modules() if name.split(".")[-1] == "submodule"]
    if names:
        return max(names, key=lambda name: name.count("."))
    for candidate in ("encoder10", "encoder"):
        if isinstance(getattr(network, candidate, None), nn.Module):
            return candidate
    raise ValueError(f"cannot find the bottleneck of a {type(network).__name__}; name the feature_module explicitly.")


class ProjectionHead(nn.Module):
    """A per-pixel two-layer MLP (1x1 convolutions) from a network's deepest features to the common embedding space.

    Per-pixel rather than pooled, so one head serves both contrastive pairings: the image-level one pools the
    projected map, the prototype one pools it under class masks.

    Args:
        in_channels: channels of the deepest features (e.g. 256 for the U-Net variants, 512 for ResNet-18).
        embedding_dim: the common dimension both networks project to.
        hidden_channels: width of the hidden layer.
    """

    def __init__(self, in_channels: int, embedding_dim: int = 128, hidden_channels: int = 256) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("embedding_dim", embedding_dim),
            ("hidden_channels", hidden_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self.layers = nn.Sequential(
            nn.Conv2d(int(in_channels), int(hidden_channels), kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(int(hidden_channels), int(embedding_dim), kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Shape: ``(B, in_channels, h, w)`` -> ``(B, embedding_dim, h, w)`` (not normalised)."""
        return self.layers(features)


class ProjectedSegmenter(nn.Module):
    """A segmentation network that also returns its projected deepest representation, for contrastive training.

    A forward hook on ``feature_module`` keeps that module's output during the network's own forward pass (the
    released code ran the encoder a second time, updating batch-norm statistics twice per step; section 3.4).

    Args:
        segmenter: the segmentation network (logits out).
        embedding_dim: dimension of the common embedding space.
        feature_module: name of the module whose output is the deepest representation; ``None`` finds it with
            :func:`bottleneck_module_name`. A module returning a list or tuple contributes its last item.
        feature_channels: channels of that representation; ``None`` measures them with one forward pass of a
            ``probe_size`` input at construction (the segmenter's mode and batch-norm statistics are restored).
        hidden_channels: hidden width of the :class:`ProjectionHead`.
        in_channels: input channels, for the probe.
        probe_size: side of the probe image.

    Raises:
        ValueError: ``feature_module`` is not a module of ``segmenter``.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        embedding_dim: int = 128,
        feature_module: str | None = None,
        feature_channels: int | None = None,
        hidden_channels: int = 256,
        in_channels: int = 1,
        probe_size: int = 64,
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.feature_module = bottleneck_module_name(segmenter) if feature_module is None else feature_module
        modules = dict(segmenter.named_modules())
        if self.feature_module not in modules:
            raise ValueError(f"feature_module {self.feature_module!r} is not a module of {type(segmenter).__name__}.")
        self._features: torch.Tensor | None = None
        modules[self.feature_module].register_forward_hook(self._keep_features)
        if feature_channels is None:
            feature_channels = self._probe_channels(in_channels, probe_size)
        self.head = ProjectionHead(feature_channels, embedding_dim, hidden_channels)

    def _keep_features(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._features = output[-1] if isinstance(output, (list, tuple)) else output

    @torch.no_grad()
    def _probe_channels(self, in_channels: int, probe_size: int) -> int:
        state = {k: v.clone() for k, v in self.segmenter.state_dict().items()}
        was_training = self.segmenter.training
        self.segmenter.eval()
        try:
            self.segmenter(torch.zeros(1, in_channels, probe_size, probe_size))
        finally:
            self.segmenter.train(was_training)
            self.segmenter.load_state_dict(state)
        channels = int(self._take_features().shape[1])
        return channels

    def _take_features(self) -> torch.Tensor:
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError(f"the hook on {self.feature_module!r} did not fire during the forward pass.")
        return features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: ``(B, C_in, H, W)`` -> logits ``(B, num_classes, H, W)``, embedding map ``(B, D, h, w)``."""
        logits = self.segmenter(images)
        return logits, self.head(self._take_features())


class DualNetworkEnsemble(nn.Module):
    """Predict with network 1, network 2, or the ensemble of both (their softmax probabilities averaged).

    In ``"ensemble"`` mode the output is ``log(mean_k softmax(logits_k))``: a softmax of it gives back the averaged
    probabilities exactly, so the same post-processing (softmax, then argmax) serves all three modes.

    Args:
        net1: network 1 (logits out).
        net2: network 2 (logits out, same number of classes).
        mode: ``"net1"``, ``"net2"`` or ``"ensemble"``.
    """

    def __init__(self, net1: nn.Module, net2: nn.Module, mode: str = "ensemble") -> None:
        super().__init__()
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"mode must be one of {ENSEMBLE_MODES}, got {mode!r}.")
        self.net1, self.net2 = net1, net2
        self.mode = mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Shape: ``(B, C_in, H, W)`` -> ``(B, num_classes, H, W)`` logits (log-probabilities for the ensemble)."""
        if self.mode == "net1":
            return self.net1(images)
        if self.mode == "net2":
            return self.net2(images)
        probs = 0.5 * (
            torch.softmax(self.net1(images).float(), dim=1) + torch.softmax(self.net2(images).float(), dim=1)
        )
        return torch.log(probs.clamp_min(1e-12))
