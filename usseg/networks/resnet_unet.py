# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A 2D U-Net whose encoder is a usseg encoder, so any pretrained encoder file starts a segmentation network.

:class:`ResNetUNet` is the segmentation network of the encoder contract (:mod:`usseg.networks.encoders`): its
``encoder`` is exactly ``build_resnet_encoder(depth, in_channels, widths)``, so an ``encoder.pt`` written by
``save_encoder`` (the Meta-USCL bundle's ``models/encoder.pt``, ResNet-18 at widths 32-256 by default) loads into it
whatever its depth and widths, where MONAI's ``FlexibleUNet`` only takes the standard widths (64-512).

Decoder: the five encoder maps ``f0`` (stem, H/2) ... ``f4`` (layer4, H/32) are merged from the deepest up; each
level upsamples (bilinear) to its skip map's size, concatenates the skip and applies two 3x3 conv-norm-ReLU blocks
that keep the skip's channel count; a last stage upsamples to the input size, applies two more blocks at half the
stem's width, and a 1x1 convolution gives the logits.

Input sizes: any ``H, W``. Each upsampling goes to the exact size of its skip map (not a fixed factor 2), so sizes
that are not multiples of 32 still line up; multiples of 32 make every step an exact x2. Hermes' decoder
(:class:`usseg.networks.hermes.HermesSegmentationNet`) is not reused: it is the released ``preUnet`` (no layer4,
dropout, batch norm only) and lives in that network's own attributes, so sharing it would rename Hermes' weights;
only its ``encoder_stage_channels`` helper is shared.

:func:`unet_or_resnet_unet` is the supervised bundle's ``network_def``: MONAI's ``UNet`` unless an encoder file is
given (training) or the checkpoint to be loaded holds a :class:`ResNetUNet` (evaluation and inference, which so need
no extra setting).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from monai.networks.nets.resnet import resnet_params
from torch import nn

from usseg.errors import InputError
from usseg.networks.encoders import (
    build_resnet_encoder,
    load_encoder_weights,
    read_encoder_architecture,
    read_state_dict,
    resnet_features,
)
from usseg.networks.hermes import encoder_stage_channels

__all__ = [
    "ResNetUNet",
    "checkpoint_architecture",
    "encoder_file_architecture",
    "unet_or_resnet_unet",
]

_ENCODER_PREFIX = "encoder."


def _upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class _DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2; (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str | tuple) -> None:
        super().__init__(
            Convolution(2, in_channels, out_channels, kernel_size=3, act="relu", norm=norm),
            Convolution(2, out_channels, out_channels, kernel_size=3, act="relu", norm=norm),
        )


def _architecture_from_state(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any] | None:
    """Depth, input channels and widths of the MONAI ResNet whose tensors are ``state[prefix + ...]``.

    Returns:
        ``{"depth", "in_channels", "widths"}``, or None when the tensors are not those of a ResNet of a depth
        MONAI defines.
    """
    stem = state.get(prefix + "conv1.weight")
    if not isinstance(stem, torch.Tensor) or stem.dim() != 4:
        return None
    counts, widths, kinds = [], [], set()
    for index in range(1, 5):
        stage = f"{prefix}layer{index}."
        blocks = {key[len(stage) :].split(".", 1)[0] for key in state if key.startswith(stage)}
        if not blocks or blocks != {str(i) for i in range(len(blocks))}:
            return None
        first_conv = state.get(f"{stage}0.conv1.weight")
        if not isinstance(first_conv, torch.Tensor):
            return None
        counts.append(len(blocks))
        widths.append(int(first_conv.shape[0]))  # conv1 of a block has `planes` outputs in both block kinds
        kinds.add("bottleneck" if f"{stage}0.conv3.weight" in state else "basic")
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    depth = next(
        (
            int(name[len("resnet") :])
            for name, spec in resnet_params.items()
            if spec[0] == kind and list(spec[1]) == counts
        ),
        None,
    )
    if depth is None:
        return None
    return {"depth": depth, "in_channels": int(stem.shape[1]), "widths": widths}


def encoder_file_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """Depth, input channels and widths of the encoder in an encoder file.

    Read from ``encoder.json`` next to the weights (``save_encoder`` writes it); an encoder file without one (a
    plain state dict) is described from its tensors' names and shapes.

    Args:
        path: an ``encoder.pt``.

    Returns:
        ``{"depth": int, "in_channels": int, "widths": [int, int, int, int]}``.

    Raises:
        InputError: naming the file, when it is missing, unreadable, describes a 3D or non-ResNet encoder, or holds
            tensors that are not a ResNet's.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(source, "encoder weights file not found.")
    args = read_encoder_architecture(source).get("args")
    if isinstance(args, Mapping):
        recipe = source.with_suffix(".json")
        try:
            architecture = {
                "depth": int(args["depth"]),
                "in_channels": int(args["in_channels"]),
                "widths": [int(width) for width in args["widths"]],
            }
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(recipe, f"has no usable depth, in_channels and widths in 'args' ({error!r}).") from error
        if int(args.get("spatial_dims", 2)) != 2:
            raise InputError(recipe, f"describes a {args['spatial_dims']}D encoder; ResNetUNet is 2D.")
        return architecture
    architecture = _architecture_from_state(read_state_dict(source))
    if architecture is None:
        raise InputError(source, "holds no encoder.json and its tensors are not those of a MONAI ResNet.")
    return architecture


def _check_file_matches(path: str | os.PathLike, expected: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Raise naming the file when explicitly requested architecture values differ from the file's."""
    differences = [
        f"{name} {requested[name]!r} (the file has {expected[name]!r})"
        for name in ("depth", "in_channels", "widths")
        if requested.get(name) is not None and requested[name] != expected[name]
    ]
    if differences:
        raise InputError(
            path,
            "does not match the network asked for: "
            + ", ".join(differences)
            + ". ResNetUNet.from_encoder_file takes them from the file when they are left out.",
        )


class ResNetUNet(nn.Module):
    """A 2D U-Net with a usseg ResNet encoder (``self.encoder``) and a light decoder (see the module docstring).

    ``self.encoder`` is ``build_resnet_encoder(depth, in_channels, widths)``, so its ``state_dict`` keys are those of
    an encoder file and ``load_encoder_weights(net.encoder, path)`` initialises it; scripts with TorchScript and
    exports to ONNX.

    Args:
        num_classes: output channels, background included (>= 2).
        in_channels: image channels.
        depth: encoder depth (10, 18, 34, 50, 101, 152, 200).
        widths: the encoder's four stage widths.
        decoder_norm: normalisation of the decoder blocks, any MONAI norm spec (``"batch"``, ``"instance"``,
            ``("group", {"num_groups": 8})``).
        encoder_weights: an encoder file (``usseg.networks.encoders.save_encoder``) loaded strictly into the
            encoder, or None for random weights. Its ``encoder.json`` must describe this depth, width and channel
            count: :meth:`from_encoder_file` takes them from the file instead.

    Raises:
        ValueError: ``num_classes < 2``, bad depth, widths or channels.
        InputError: ``encoder_weights`` is missing, unreadable, or describes another architecture (naming the file).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        depth: int = 18,
        widths: Sequence[int] = (32, 64, 128, 256),
        decoder_norm: str | tuple = "batch",
        encoder_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes!r}.")
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TypeError(f"widths must be a sequence of four integers, got {widths!r}.")
        widths = [int(width) for width in widths]
        if encoder_weights is not None:
            _check_file_matches(
                encoder_weights,
                encoder_file_architecture(encoder_weights),
                {"depth": depth, "in_channels": in_channels, "widths": widths},
            )
        self.encoder = build_resnet_encoder(depth=depth, in_channels=in_channels, widths=widths, spatial_dims=2)
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights, strict=True)
        c0, c1, c2, c3, c4 = encoder_stage_channels(self.encoder)
        self.decoder = nn.ModuleList(
            [
                _DoubleConv(c4 + c3, c3, decoder_norm),
                _DoubleConv(c3 + c2, c2, decoder_norm),
                _DoubleConv(c2 + c1, c1, decoder_norm),
                _DoubleConv(c1 + c0, c0, decoder_norm),
            ]
        )
        head_channels = max(1, c0 // 2)
        self.final = _DoubleConv(c0, head_channels, decoder_norm)
        self.head = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.use_maxpool = not self.encoder.no_max_pool
        self.architecture = {"depth": depth, "in_channels": in_channels, "widths": widths}

    @classmethod
    def from_encoder_file(
        cls,
        path: str | os.PathLike,
        num_classes: int,
        in_channels: int | None = None,
        depth: int | None = None,
        widths: Sequence[int] | None = None,
        decoder_norm: str | tuple = "batch",
    ) -> ResNetUNet:
        """A network whose encoder is built as described by an encoder file and initialised from it.

        Args:
            path: an ``encoder.pt`` (with ``encoder.json`` next to it, or a plain encoder state dict).
            num_classes: output channels, background included.
            in_channels: None takes the file's; a value must equal it.
            depth: None takes the file's; a value must equal it.
            widths: None takes the file's; a value must equal it.
            decoder_norm: see :class:`ResNetUNet`.

        Returns:
            The network, encoder weights loaded.

        Raises:
            InputError: naming the file, when it cannot be read or an explicit value differs from it.
        """
        architecture = encoder_file_architecture(path)
        requested = {
            "depth": depth,
            "in_channels": in_channels,
            "widths": None if widths is None else [int(width) for width in widths],
        }
        _check_file_matches(path, architecture, requested)
        return cls(num_classes=num_classes, decoder_norm=decoder_norm, encoder_weights=path, **architecture)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five encoder maps of ``resnet_features``: stem (H/2), layer1 (H/4) ... layer4 (H/32)."""
        if not torch.jit.is_scripting():
            return resnet_features(self.encoder, x)
        # TorchScript cannot pass a module to a free function: the same steps as resnet_features, inline
        stem = self.encoder.act(self.encoder.bn1(self.encoder.conv1(x)))
        x = self.encoder.maxpool(stem) if self.use_maxpool else stem
        x1 = self.encoder.layer1(x)
        x2 = self.encoder.layer2(x1)
        x3 = self.encoder.layer3(x2)
        return [stem, x1, x2, x3, self.encoder.layer4(x3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits.

        Args:
            x: images (B, in_channels, H, W), any H and W.

        Returns:
            logits (B, num_classes, H, W).

        Raises:
            ValueError: ``x`` is not 4D or has another channel count.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetUNet expects images (B, {self.in_channels}, H, W), got shape {list(x.shape)}.")
        features = self.encode(x)
        y = features[4]
        for level, block in enumerate(self.decoder):
            skip = features[3 - level]
            y = block(torch.cat([_upsample_to(y, skip), skip], dim=1))
        return self.head(self.final(_upsample_to(y, x)))


def checkpoint_architecture(path: str | os.PathLike) -> dict[str, Any] | None:
    """The encoder architecture of a :class:`ResNetUNet` checkpoint, or None when the file holds another network.

    Args:
        path: a ``model.pt`` (bare state dict) or ``model_final.pt`` (``{"model": ...}``) written by training.

    Returns:
        ``{"depth", "in_channels", "widths"}`` for a ResNetUNet state dict; None when the file does not exist, cannot
        be read, or holds another network (whoever loads it reports the problem with its own checks).
    """
    source = Path(path)
    if not source.is_file():
        return None
    try:
        state = read_state_dict(source)
    except InputError:
        return None
    if "head.weight" not in state or not any(key.startswith("decoder.") for key in state):
        return None
    return _architecture_from_state(state, _ENCODER_PREFIX)


def unet_or_resnet_unet(
    encoder_weights: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    decoder_norm: str | tuple = "batch",
    **unet_args: Any,
) -> nn.Module:
    """The supervised bundle's network: MONAI ``UNet(**unet_args)``, or a :class:`ResNetUNet` for an encoder.

    In order: with ``encoder_weights``, a ResNetUNet built as that file describes and initialised from it; else, when
    ``checkpoint`` holds a ResNetUNet (a run trained with an encoder), a ResNetUNet of that architecture with random
    weights, for the caller to load the checkpoint into; else ``UNet(**unet_args)``, exactly as if it were called
    directly (same class, parameters and random draws).

    Args:
        encoder_weights: an encoder file (e.g. the Meta-USCL bundle's ``models/encoder.pt``) or None.
        checkpoint: the weights that will be loaded into the network, or None.
        decoder_norm: the ResNetUNet decoder's normalisation.
        unet_args: MONAI ``UNet`` arguments; ``in_channels`` and ``out_channels`` (the classes) also size the
            ResNetUNet, whose other settings come from the encoder file or the checkpoint.

    Returns:
        The network, input (B, in_channels, H, W), output logits (B, out_channels, H, W).

    Raises:
        TypeError: ``encoder_weights`` or ``checkpoint`` is neither a path nor None.
        ValueError: ``in_channels`` or ``out_channels`` is missing, or ``spatial_dims`` is not 2 with an encoder.
        InputError: the encoder file is unreadable or does not match ``in_channels`` (naming the file).
    """
    for name, value in (("encoder_weights", encoder_weights), ("checkpoint", checkpoint)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a file path or None, got {value!r} ({type(value).__name__}).")
    missing = [name for name in ("in_channels", "out_channels") if name not in unet_args]
    if missing:
        raise ValueError(f"unet_or_resnet_unet needs the UNet arguments {missing}, got {sorted(unet_args)}.")
    if encoder_weights is None:
        architecture = None if checkpoint is None else checkpoint_architecture(checkpoint)
        if architecture is None:
            return UNet(**unet_args)
    _check_2d(unet_args)
    num_classes, in_channels = int(unet_args["out_channels"]), int(unet_args["in_channels"])
    if encoder_weights is not None:
        return ResNetUNet.from_encoder_file(
            encoder_weights, num_classes=num_classes, in_channels=in_channels, decoder_norm=decoder_norm
        )
    if architecture["in_channels"] != in_channels:
        raise InputError(
            checkpoint, f"holds a ResNetUNet for {architecture['in_channels']} input channels, not {in_channels}."
        )
    return ResNetUNet(num_classes=num_classes, decoder_norm=decoder_norm, **architecture)


def _check_2d(unet_args: Mapping[str, Any]) -> None:
    if unet_args.get("spatial_dims", 2) != 2:
        raise ValueError(f"a ResNetUNet is 2D, got spatial_dims={unet_args['spatial_dims']!r}.")
