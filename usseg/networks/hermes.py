# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes networks: a segmentation U-Net and a classification ResNet trained jointly, linked by IAS [0].

Both networks use the usseg encoder family (:func:`usseg.networks.encoders.build_resnet_encoder`, MONAI ``ResNet``),
so an encoder pretrained by the Meta-USCL bundle initialises either one with ``encoder_weights=path/encoder.pt``.
Depth and width are arguments: ``depth=10, widths=(32, 64, 128, 256)`` is the CPU variant, ``depth=18,
widths=(64, 128, 256, 512)`` the paper-sized one (the paper uses a Res2Net-101 segmentation encoder; usseg does not
ship that backbone and downloads nothing).

- :class:`HermesSegmentationNet` (``preUnet`` in the released code): encoder stem..layer3, a decoder of
  :class:`ConvBlock` stages with skip connections, a pixel-embedding head (1x1-conv MLP, L2-normalised) on the
  layer2 map, an inter-task consistency head on pooled layer3 features, and an optional saliency bridge.
- :class:`HermesClassificationNet` (``ResNet18``): encoder, linear classifier, image-embedding head, consistency head,
  and the inter-task attention of IAS (channel attention fusing segmentation features at 4 stages, each followed by
  spatial attention).
- :class:`HermesInferenceModel`: both networks in one module; ``forward(image)`` returns segmentation logits (the
  zoo's exported network), :meth:`HermesInferenceModel.classify` returns class logits.

Input normalisation (``normalization="none" | "imagenet"``, :func:`input_normalization_stats`) is the first step of
both networks, an :class:`InputNormalization` whose per-channel mean and standard deviation are persistent buffers:
they are saved in every checkpoint, so a network built with the default (identity) and loaded from a checkpoint
trained with ImageNet statistics normalises as it did in training, whatever the loading config says. Every caller
(trainer, evaluator, ``usseg infer``, the zoo exports) therefore feeds images in [0, 1].

IAS in usseg (methods.md section 1.10 item 6): ``ias=True`` builds the attention modules. Whether the trainer feeds
segmentation features to it for the labeled batch only (released) or every view, and whether inference uses it
(``HermesInferenceModel(ias_at_eval=...)``), are trainer/bundle settings.

- [0] Zhang, Lai, Kong, 2025, Semi-Supervised Dual-Threshold Contrastive Learning for Ultrasound Image
  Classification and Segmentation (Hermes), ECAI, https://arxiv.org/abs/2508.02265
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

from usseg.errors import require_bool
from usseg.networks.encoders import build_resnet_encoder, load_encoder_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "ConvBlock",
    "ChannelAttention",
    "SpatialAttention",
    "InterTaskAttention",
    "HermesSegmentationNet",
    "HermesClassificationNet",
    "HermesInferenceModel",
    "InputNormalization",
    "encoder_stage_channels",
    "gradient_saliency",
    "input_normalization_stats",
]

NORMALIZATIONS = ("none", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for images in [0, 1] (torchvision's ImageNet statistics)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalization_stats(mode: str, in_channels: int) -> tuple[list[float], list[float]] | None:
    """Per-channel ``(mean, std)`` of the network-input normalisation ``(x - mean) / std``, or ``None`` for none.

    ``"imagenet"`` gives ImageNet's RGB statistics for 3 channels. A 1-channel (grayscale) input gets the mean of
    the three means and the mean of the three standard deviations (0.449 and 0.226): a gray image replicated on
    three channels would otherwise be normalised differently per channel, which a 1-channel network cannot mirror.

    Args:
        mode: ``"none"`` (released: images stay in [0, 1]) or ``"imagenet"``.
        in_channels: channels of the network input, 1 or 3.

    Returns:
        ``None`` for ``"none"``; else two lists of ``in_channels`` floats.

    Raises:
        ValueError: an unknown ``mode`` or ``in_channels`` other than 1 or 3 (the value is quoted).
    """
    if not isinstance(mode, str) or mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}.")
    if isinstance(in_channels, bool) or in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels!r}.")
    if mode == "none":
        return None
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]


class InputNormalization(nn.Module):
    """Per-channel ``(x - mean) / std`` whose statistics are persistent buffers, so they travel with the weights.

    The defaults (mean 0, std 1) are the exact identity. A network built with the defaults and loaded from the
    state dict of a normalising one normalises exactly as that one did: the buffers, not the constructor, decide.
    Shape: (B, C, H, W) -> (B, C, H, W); buffers ``mean`` and ``std`` are (1, C, 1, 1) float32.

    Args:
        in_channels: C.
        mean: C per-channel means, or None for zeros.
        std: C per-channel standard deviations (finite, > 0), or None for ones.

    Raises:
        ValueError: ``in_channels`` is not a positive integer, or ``mean``/``std`` have another length than
            ``in_channels`` or values that are not finite (``std``: not > 0); the value is quoted.
    """

    def __init__(
        self, in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels)
        mean_t = self._statistic("mean", mean, in_channels, 0.0)
        std_t = self._statistic("std", std, in_channels, 1.0)
        if not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"mean must be finite, got {mean!r}.")
        if not bool(torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError(f"std must be finite and > 0, got {std!r}.")
        self.register_buffer("mean", mean_t.view(1, in_channels, 1, 1), persistent=True)
        self.register_buffer("std", std_t.view(1, in_channels, 1, 1), persistent=True)

    @staticmethod
    def _statistic(name: str, values: Sequence[float] | None, in_channels: int, default: float) -> torch.Tensor:
        if values is None:
            return torch.full((in_channels,), default, dtype=torch.float32)
        try:
            tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a sequence of {in_channels} numbers, got {values!r}.") from err
        if tensor.numel() != in_channels:
            raise ValueError(f"{name} must hold one value per input channel ({in_channels}), got {values!r}.")
        return tensor

    @classmethod
    def from_mode(cls, normalization: str, in_channels: int) -> InputNormalization:
        """The normalisation named by ``normalization`` (:func:`input_normalization_stats`) for ``in_channels``.

        ``"none"`` is the identity for any positive ``in_channels``; ``"imagenet"`` needs 1 or 3 channels.

        Raises:
            ValueError: an unknown ``normalization``, or ``"imagenet"`` with ``in_channels`` other than 1 or 3.
        """
        if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        if normalization == "none":  # identity: no channel restriction (only ImageNet's statistics need 1 or 3)
            return cls(in_channels)
        stats = input_normalization_stats(normalization, in_channels)
        return cls(in_channels) if stats is None else cls(in_channels, stats[0], stats[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``, per channel; (B, C, H, W) -> (B, C, H, W)."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def encoder_stage_channels(encoder: ResNet) -> list[int]:
    """Channels of the five feature maps of :func:`usseg.networks.encoders.resnet_features` (stem, layer1..4)."""
    channels = [int(encoder.conv1.out_channels)]
    for stage in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        last = stage[-1]
        conv = getattr(last, "conv3", None) or last.conv2  # bottleneck blocks end in conv3, basic blocks in conv2
        channels.append(int(conv.out_channels))
    return channels


def _build_encoder(
    depth: int, in_channels: int, widths: Sequence[int], encoder_weights: str | os.PathLike | None
) -> ResNet:
    encoder = build_resnet_encoder(depth=depth, in_channels=in_channels, widths=widths, spatial_dims=2)
    if encoder_weights is not None:
        load_encoder_weights(encoder, encoder_weights, strict=True)  # InputError names the file and the keys
    return encoder


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # to the reference's size rather than x2: odd intermediate sizes (inputs not a multiple of 16) still line up
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=True)


class ConvBlock(nn.Sequential):
    """The released ``CONV_Block``: (conv3x3 -> BN -> LeakyReLU(0.2)) x 2 -> Dropout.

    Args:
        in_channels: input channels.
        mid_channels: channels after the first convolution.
        out_channels: output channels.
        dropout: dropout probability (0.25 as released).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, dropout: float = 0.25) -> None:
        _check_positive(in_channels=in_channels, mid_channels=mid_channels, out_channels=out_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}.")
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1),
            nn.BatchNorm2d(mid_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
        )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]


class ChannelAttention(nn.Module):
    """Channel attention of IAS: re-weight the classification feature by a gate computed from both tasks.

    ``gate = sigmoid(FC(ReLU(FC(GAP(conv3x3([cls, seg]))))))`` with a C -> C/4 -> C bottleneck; returns
    ``cls * gate``. Shapes: ``cls`` and ``seg`` (B, C, H, W) -> (B, C, H, W).

    Args:
        channels: C, the channels of both inputs.
        reduction: bottleneck reduction (4 as released).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        _check_positive(channels=channels, reduction=reduction)
        hidden = max(1, channels // reduction)
        self.fuse = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, cls_feature: torch.Tensor, seg_feature: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([cls_feature, seg_feature], dim=1))
        gate = self.gate(fused.mean(dim=(2, 3)))  # (B, C)
        return cls_feature * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: ``x * sigmoid(conv3x3([max_c x, mean_c x]))``; (B, C, H, W) -> same."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class InterTaskAttention(nn.Module):
    """One IAS stage: adapt a segmentation feature to the classification channels, channel then spatial attention.

    The adapter is two (conv3x3 -> BN -> ReLU) blocks (the released ``confuesedK``); it is the identity when the
    channel counts already agree, as at the released stem stage.

    Args:
        cls_channels: channels of the classification feature.
        seg_channels: channels of the segmentation feature fused into it.
        reduction: channel-attention bottleneck reduction.
    """

    def __init__(self, cls_channels: int, seg_channels: int, reduction: int = 4) -> None:
        super().__init__()
        _check_positive(cls_channels=cls_channels, seg_channels=seg_channels)
        if cls_channels == seg_channels:
            self.adapter: nn.Module = nn.Identity()
        else:
            middle = max(cls_channels, (cls_channels + seg_channels) // 2)
            self.adapter = nn.Sequential(*_conv_bn_relu(seg_channels, middle), *_conv_bn_relu(middle, cls_channels))
        self.channel = ChannelAttention(cls_channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, cls_feature: torch.Tensor, seg_feature: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(cls_feature, self.adapter(seg_feature)))


class _NoFusion(nn.Module):
    """Stand-in for an IAS stage when IAS is off: returns the classification feature unchanged."""

    def forward(self, cls_feature: torch.Tensor, seg_feature: torch.Tensor) -> torch.Tensor:
        return cls_feature


def _gated(fused: torch.Tensor, plain: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``fused`` where the per-sample ``gate`` (B,) is true, else ``plain``; everything fused without a gate."""
    if gate is None:
        return fused
    return torch.where(gate.view(-1, 1, 1, 1), fused, plain)


class HermesSegmentationNet(nn.Module):
    """Hermes segmentation network: ResNet encoder (stem..layer3) + U-Net decoder + pixel-embedding and ITC heads.

    With encoder maps ``x0`` (stem, H/2), ``x1`` (layer1, H/4), ``x2`` (layer2, H/8), ``x3`` (layer3, H/16) of
    channels ``c0..c3``, the decoder is, as released (``Code/model/pretrained_unet.py``):

    ``d2 = Conv([Conv(up(x3)), x2])`` (c2), ``d1 = Conv([Conv(up(d2)), x1])`` (c1), ``d0 = Conv([Conv(up(d1)),
    x0])`` (c0), ``logits = conv1x1(up(d0))``. Layer4 is not used (as released) and is removed after the encoder
    weights are loaded, so distributed training sees no unused parameter.

    Saliency bridge (``saliency=True``, a usseg variant; the released one crashes on a channel mismatch): the
    classifier's gradient saliency (one channel) is concatenated with the image, resized to H/4 and fused into the
    H/4 decoder stage before its skip connection, by a ConvBlock from ``c1 + in_channels + 1`` to ``c1`` channels.

    Args:
        in_channels: image channels.
        num_classes: segmentation classes (background included).
        depth: encoder depth (10, 18, 34, ...).
        widths: encoder stage widths.
        embedding_dim: pixel-embedding channels (256 as released).
        consistency_dim: inter-task consistency vector size (256; must equal the classification net's).
        dropout: ConvBlock dropout.
        saliency: build the saliency bridge.
        encoder_weights: an encoder file (``usseg.networks.encoders.save_encoder``) loaded strictly, or None.
        normalization: input normalisation, ``"none"`` (identity) or ``"imagenet"`` (:func:`input_normalization_stats`),
            applied by :meth:`forward` and :meth:`segment` (an :class:`InputNormalization` whose statistics are
            saved in the state dict). :meth:`encode` and :meth:`decode` take the normalised image.

    Raises:
        ValueError: a non-positive size, ``num_classes`` < 2, or an unknown ``normalization`` (the value is quoted).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 10,
        widths: Sequence[int] = (32, 64, 128, 256),
        embedding_dim: int = 256,
        consistency_dim: int = 256,
        dropout: float = 0.25,
        saliency: bool = False,
        encoder_weights: str | os.PathLike | None = None,
        normalization: str = "none",
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels,
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            consistency_dim=consistency_dim,
        )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes!r}.")
        self.input_normalization = InputNormalization.from_mode(normalization, in_channels)
        self.encoder = _build_encoder(depth, in_channels, widths, encoder_weights)
        c0, c1, c2, c3, _ = encoder_stage_channels(self.encoder)
        self.encoder.layer4 = nn.Identity()  # unused, as released; dropped so DDP finds no unused parameter
        self.use_maxpool = not self.encoder.no_max_pool
        self.up3 = ConvBlock(c3, c3, c2, dropout)
        self.dec2 = ConvBlock(2 * c2, c2, c2, dropout)
        self.up2 = ConvBlock(c2, c2, c1, dropout)
        self.dec1 = ConvBlock(2 * c1, c1, c1, dropout)
        self.up1 = ConvBlock(c1, c1, c0, dropout)
        self.dec0 = ConvBlock(2 * c0, c0, c0, dropout)
        self.head = nn.Conv2d(c0, num_classes, 1)
        require_bool(saliency=saliency)
        self.saliency_enabled = saliency
        self.saliency_fuse = ConvBlock(c1 + in_channels + 1, c1, c1, dropout) if saliency else None
        self.embedding_head = nn.Sequential(
            nn.Conv2d(c2, c2, 1), nn.BatchNorm2d(c2), nn.ReLU(), nn.Conv2d(c2, embedding_dim, 1)
        )
        hidden = max(1, c3 // 2)
        self.consistency_head = nn.Sequential(
            nn.Linear(c3, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, consistency_dim),
            nn.BatchNorm1d(consistency_dim),
            nn.ReLU(),
        )
        self.num_classes = num_classes
        self.ias_channels = [c0, c1, c2, c3]  # channels of the maps handed to IAS (d0, d1, d2, x3)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder maps ``[x0, x1, x2, x3]`` (stem before max-pooling, layer1, layer2, layer3) of normalised images."""
        x0 = self.encoder.act(self.encoder.bn1(self.encoder.conv1(x)))
        x = self.encoder.maxpool(x0) if self.use_maxpool else x0
        x1 = self.encoder.layer1(x)
        x2 = self.encoder.layer2(x1)
        x3 = self.encoder.layer3(x2)
        return [x0, x1, x2, x3]

    def decode(
        self, image: torch.Tensor, features: list[torch.Tensor], saliency: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Decoder maps ``[logits, d0, d1, d2]``; ``saliency`` (B, 1, H, W) is fused when the bridge is built.

        ``image`` is the normalised image (what :meth:`encode` received): the bridge fuses it as training saw it.
        """
        x0, x1, x2, x3 = features[0], features[1], features[2], features[3]
        d2 = self.dec2(torch.cat([self.up3(_upsample_to(x3, x2)), x2], dim=1))
        u1 = self.up2(_upsample_to(d2, x1))
        if self.saliency_fuse is not None:
            if saliency is None:
                raise ValueError("this network was built with saliency=True: pass the classifier's saliency map.")
            bridge = F.interpolate(torch.cat([image, saliency], dim=1), size=u1.shape[-2:], mode="bilinear")
            u1 = self.saliency_fuse(torch.cat([u1, bridge], dim=1))
        d1 = self.dec1(torch.cat([u1, x1], dim=1))
        d0 = self.dec0(torch.cat([self.up1(_upsample_to(d1, x0)), x0], dim=1))
        logits = self.head(_upsample_to(d0, image))
        return [logits, d0, d1, d2]

    def forward(
        self, x: torch.Tensor, saliency: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Everything training needs from one pass (one call, so a DDP wrapper sees one forward per backward).

        Args:
            x: images (B, in_channels, H, W) before normalisation (in [0, 1] for the bundle).
            saliency: (B, 1, H, W) classifier saliency; required when the bridge is built, ignored otherwise.

        Returns:
            ``(logits (B, K, H, W), embedding (B, E, H/8, W/8) L2-normalised over channels, consistency (B, D),
            ias_features [d0, d1, d2, x3])``. :meth:`segment` returns the logits only.
        """
        x = self.input_normalization(x)
        features = self.encode(x)
        logits, d0, d1, d2 = self.decode(x, features, saliency)
        embedding = F.normalize(self.embedding_head(features[2]), dim=1)
        consistency = self.consistency_head(features[3].mean(dim=(2, 3)))
        return logits, embedding, consistency, [d0, d1, d2, features[3]]

    def segment(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Segmentation logits only. Shape: (B, in_channels, H, W) -> (B, num_classes, H, W)."""
        x = self.input_normalization(x)
        return self.decode(x, self.encode(x), saliency)[0]


class HermesClassificationNet(nn.Module):
    """Hermes classification network: ResNet encoder, linear classifier, embedding and consistency heads, IAS.

    Heads (released ``Code/model/ResNet18.py``, widths scaled with the encoder's last stage ``c4``):

    - classifier: ``Linear(c4, num_classes)`` on globally pooled layer4 features;
    - image embedding: ``Linear(c4, c4/2) -> LeakyReLU(0.1) -> Linear(c4/2, embedding_dim)``, L2-normalised;
    - consistency: ``Linear(c4, c4/2, no bias) -> BN -> ReLU -> Linear(c4/2, consistency_dim) -> BN -> ReLU``.

    IAS (``ias=True``): after the stem (before max-pooling) and after layer1, layer2 and layer3, an
    :class:`InterTaskAttention` fuses the segmentation maps ``[d0, d1, d2, x3]`` of
    :meth:`HermesSegmentationNet.forward` into the classification features. Samples whose ``ias_gate`` is
    false skip the fusion (the released code applies it to the labeled batch only).

    Args:
        in_channels: image channels.
        num_classes: classes.
        depth: encoder depth.
        widths: encoder widths.
        embedding_dim: image-embedding size (128 as released).
        consistency_dim: consistency vector size (256).
        ias: build the inter-task attention.
        seg_channels: channels of the four segmentation maps fused by IAS
            (``HermesSegmentationNet.ias_channels``); required when ``ias`` is true.
        encoder_weights: an encoder file loaded strictly, or None.
        normalization: input normalisation, ``"none"`` (identity) or ``"imagenet"``, the first step of
            :meth:`features` (so of :meth:`forward` and :meth:`classify`), with its statistics in the state dict.

    Raises:
        ValueError: a non-positive size, ``ias=True`` without ``seg_channels``, or an unknown ``normalization``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 10,
        widths: Sequence[int] = (32, 64, 128, 256),
        embedding_dim: int = 128,
        consistency_dim: int = 256,
        ias: bool = False,
        seg_channels: Sequence[int] | None = None,
        encoder_weights: str | os.PathLike | None = None,
        normalization: str = "none",
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels,
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            consistency_dim=consistency_dim,
        )
        self.input_normalization = InputNormalization.from_mode(normalization, in_channels)
        self.encoder = _build_encoder(depth, in_channels, widths, encoder_weights)
        channels = encoder_stage_channels(self.encoder)
        self.use_maxpool = not self.encoder.no_max_pool
        c4 = channels[4]
        hidden = max(1, c4 // 2)
        self.classifier = nn.Linear(c4, num_classes)
        self.embedding_head = nn.Sequential(nn.Linear(c4, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, embedding_dim))
        self.consistency_head = nn.Sequential(
            nn.Linear(c4, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, consistency_dim),
            nn.BatchNorm1d(consistency_dim),
            nn.ReLU(),
        )
        require_bool(ias=ias)
        self.ias_enabled = ias
        if ias and (seg_channels is None or len(seg_channels) != 4):
            raise ValueError(f"ias=True needs the four segmentation channel counts, got seg_channels={seg_channels!r}.")
        # named stages (not a list) so TorchScript can call them; without IAS they are parameter-free pass-throughs
        self.ias_stem = self._attention(ias, channels[0], seg_channels, 0)
        self.ias_layer1 = self._attention(ias, channels[1], seg_channels, 1)
        self.ias_layer2 = self._attention(ias, channels[2], seg_channels, 2)
        self.ias_layer3 = self._attention(ias, channels[3], seg_channels, 3)
        self.num_classes = num_classes

    @staticmethod
    def _attention(ias: bool, cls_channels: int, seg_channels: Sequence[int] | None, stage: int) -> nn.Module:
        if not ias or seg_channels is None:
            return _NoFusion()
        return InterTaskAttention(cls_channels, int(seg_channels[stage]))

    def features(
        self, x: torch.Tensor, seg_features: list[torch.Tensor] | None = None, ias_gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled layer4 features (B, c4) of images (B, C, H, W) before normalisation, with IAS fusion when
        ``seg_features`` are given (and IAS is built)."""
        encoder = self.encoder
        x = encoder.act(encoder.bn1(encoder.conv1(self.input_normalization(x))))
        fuse = seg_features is not None and self.ias_enabled
        if fuse and seg_features is not None:
            x = _gated(self.ias_stem(x, seg_features[0]), x, ias_gate)
        if self.use_maxpool:
            x = encoder.maxpool(x)
        x = encoder.layer1(x)
        if fuse and seg_features is not None:
            x = _gated(self.ias_layer1(x, seg_features[1]), x, ias_gate)
        x = encoder.layer2(x)
        if fuse and seg_features is not None:
            x = _gated(self.ias_layer2(x, seg_features[2]), x, ias_gate)
        x = encoder.layer3(x)
        if fuse and seg_features is not None:
            x = _gated(self.ias_layer3(x, seg_features[3]), x, ias_gate)
        return encoder.layer4(x).mean(dim=(2, 3))

    def forward(
        self, x: torch.Tensor, seg_features: list[torch.Tensor] | None = None, ias_gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything training needs from one pass.

        Args:
            x: images (B, in_channels, H, W) before normalisation.
            seg_features: the segmentation maps ``[d0, d1, d2, x3]`` for IAS, or None (no fusion).
            ias_gate: (B,) bool, the samples that get the fusion; None fuses all.

        Returns:
            ``(logits (B, K), embedding (B, E) L2-normalised, consistency (B, D))``. :meth:`classify` returns the
            logits only.
        """
        pooled = self.features(x, seg_features, ias_gate)
        embedding = F.normalize(self.embedding_head(pooled), dim=1)
        return self.classifier(pooled), embedding, self.consistency_head(pooled)

    def classify(
        self, x: torch.Tensor, seg_features: list[torch.Tensor] | None = None, ias_gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits only. Shape: (B, in_channels, H, W) -> (B, num_classes)."""
        return self.classifier(self.features(x, seg_features, ias_gate))


def gradient_saliency(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Vanilla-gradient saliency of a classifier, as the released ``generate_saliency``.

    ``|d max_k logit_k / d image|``, maximum over channels. The classifier runs in eval mode (its batch-norm
    statistics are not touched) and no parameter gradient is accumulated; the result is detached. The gradient is
    taken with respect to ``images`` as given, before the classifier's own input normalisation (with ImageNet
    statistics it is the gradient with respect to the normalised image divided by ``std``, per channel).

    Args:
        classifier: a :class:`HermesClassificationNet` (a DDP wrapper is unwrapped).
        images: (B, C, H, W), as fed to the networks (before normalisation).

    Returns:
        (B, 1, H, W) saliency.
    """
    module = classifier.module if hasattr(classifier, "module") else classifier
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            probe = images.detach().float().requires_grad_(True)
            top = module.classify(probe).max(dim=1).values.sum()
            (grad,) = torch.autograd.grad(top, probe)
    finally:
        module.train(was_training)
    return grad.abs().amax(dim=1, keepdim=True).detach()


class HermesInferenceModel(nn.Module):
    """Both Hermes networks as one deployable module (the bundle's ``network_def``).

    ``forward(image)`` returns segmentation logits, so zoo exports (TorchScript, ONNX) and ``verify_net_in_out``
    see a plain segmentation network; :meth:`classify` returns class logits and :meth:`predict` both. The state
    dict holds ``segmentation.*`` and ``classification.*``: one checkpoint carries the whole model, input
    normalisation statistics included. Each network normalises its own input, so this module passes the image
    through untouched (normalising here too would normalise twice).

    Args:
        segmentation: a :class:`HermesSegmentationNet`.
        classification: a :class:`HermesClassificationNet`.
        ias_at_eval: feed the segmentation maps to the classifier's IAS at inference (the released code does not:
            ``False``). Needs a classifier built with ``ias=True``.
    """

    def __init__(
        self, segmentation: HermesSegmentationNet, classification: HermesClassificationNet, ias_at_eval: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(segmentation, HermesSegmentationNet):
            raise TypeError(f"segmentation must be a HermesSegmentationNet, got {type(segmentation).__name__}.")
        if not isinstance(classification, HermesClassificationNet):
            raise TypeError(f"classification must be a HermesClassificationNet, got {type(classification).__name__}.")
        require_bool(ias_at_eval=ias_at_eval)
        if ias_at_eval and not classification.ias_enabled:
            raise ValueError("ias_at_eval=True needs a classification network built with ias=True.")
        self.segmentation = segmentation
        self.classification = classification
        self.ias_at_eval = bool(ias_at_eval)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, K, H, W) of images (B, C, H, W)."""
        # nested on purpose: TorchScript skips an `if not torch.jit.is_scripting()` block only when it stands alone
        if not torch.jit.is_scripting():  # noqa: SIM102
            # autograd inside forward: eager only (TorchScript/ONNX exports support the bridge-free network)
            if self.segmentation.saliency_enabled:
                return self.segmentation.segment(image, gradient_saliency(self.classification, image))
        return self.segmentation.segment(image)

    @torch.jit.unused
    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(segmentation logits (B, K, H, W), class logits (B, K_cls))`` from one pass of each network."""
        saliency = gradient_saliency(self.classification, image) if self.segmentation.saliency_enabled else None
        if not self.ias_at_eval:
            return self.segmentation.segment(image, saliency), self.classification.classify(image)
        logits, _, _, ias_features = self.segmentation(image, saliency)
        return logits, self.classification.classify(image, ias_features)

    @torch.jit.unused
    def classify(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K_cls) of images (B, C, H, W)."""
        if not self.ias_at_eval:
            return self.classification.classify(image)
        return self.predict(image)[1]
