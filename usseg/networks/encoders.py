# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The pretrained-encoder contract shared by every bundle.

The Meta-USCL bundle pretrains a ResNet on ultrasound videos and exports it; the Hermes, dual-network and supervised
bundles start from it. Keeping one encoder family (MONAI's ``ResNet``, 2D, no classifier) and one file format means an
exported encoder loads anywhere with a single config override:

- ``encoder.pt``: the encoder's ``state_dict`` (classifier ``fc.*`` entries are never written);
- ``encoder.json``: how to rebuild it (``{"builder": ..., "args": {...}}``) plus whatever the exporter adds
  (training data, epochs, usseg version).

Key names follow MONAI's ``ResNet`` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), which is also what
``monai.networks.nets.FlexibleUNet`` uses for its ``resnet*`` backbones; ``build_resnet_encoder`` uses the same shortcut
and bias settings as those backbones for the standard depths, so an exported ResNet-18 loads into a FlexibleUNet's
``encoder`` unchanged.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import resnet_params
from torch import nn

from usseg.data.io import atomic_write, atomic_write_json
from usseg.errors import InputError

__all__ = [
    "ENCODER_BUILDER",
    "build_resnet_encoder",
    "encoder_architecture",
    "encoder_feature_dim",
    "load_encoder_weights",
    "read_encoder_architecture",
    "read_state_dict",
    "resnet_features",
    "save_encoder",
    "ZeroPadShortcut",
    "make_scriptable",
]

ENCODER_BUILDER = "usseg.networks.encoders.build_resnet_encoder"
_CLASSIFIER_PREFIX = "fc."


def build_resnet_encoder(
    depth: int = 18,
    in_channels: int = 1,
    widths: Sequence[int] = (64, 128, 256, 512),
    spatial_dims: int = 2,
) -> ResNet:
    """A MONAI ``ResNet`` without classifier: ``forward`` returns globally pooled features of shape (B, C).

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200 (the depths MONAI defines; 10 is a cheap CPU variant).
        in_channels: image channels (1 for grayscale B-mode).
        widths: channels of the four stages; (64, 128, 256, 512) is the standard ResNet, smaller values make a
            CPU-sized network (e.g. (32, 64, 128, 256)).
        spatial_dims: 2 for images and frames.

    Returns:
        the encoder. Its architecture is kept in ``encoder.usseg_architecture`` for ``save_encoder``.

    Raises:
        ValueError: for an unknown depth, non-positive widths or channels.
    """
    name = f"resnet{depth}"
    if name not in resnet_params:
        raise ValueError(f"depth must be one of {sorted(int(k[6:]) for k in resnet_params)}, got {depth!r}.")
    widths = [int(width) for width in widths]
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"widths must be four positive channel counts, got {widths!r}.")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    block, layers, shortcut_type, bias_downsample, _ = resnet_params[name]
    encoder = ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=widths,
        spatial_dims=spatial_dims,
        n_input_channels=int(in_channels),
        conv1_t_size=7,
        conv1_t_stride=2,  # the ImageNet stem; MONAI's default stride 1 is meant for small 3D volumes
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
        feed_forward=False,
    )
    make_scriptable(encoder)  # TorchScript export (zoo ckpt_export) fails on MONAI's partial-function shortcuts
    encoder.usseg_architecture = {
        "builder": ENCODER_BUILDER,
        "args": {"depth": depth, "in_channels": int(in_channels), "widths": widths, "spatial_dims": spatial_dims},
    }
    return encoder


class ZeroPadShortcut(nn.Module):
    """MONAI ResNet's parameter-free "A" shortcut as a module: stride-``s`` subsampling, zero channels appended.

    MONAI builds it as a ``functools.partial`` of ``ResNet._downsample_basic_block``, which TorchScript cannot
    compile; this module computes the same values (including MONAI's ``.data``, i.e. no gradient through the
    shortcut) and holds no state, so swapping it in changes neither outputs nor ``state_dict`` keys.

    Args:
        planes: output channels.
        stride: spatial stride.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = int(planes), int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(x, kernel_size=1, stride=self.stride).detach()
        pads = torch.zeros(
            [out.shape[0], self.planes - out.shape[1], out.shape[2], out.shape[3]], dtype=out.dtype, device=out.device
        )
        return torch.cat([out, pads], dim=1)


def make_scriptable(encoder: nn.Module) -> nn.Module:
    """Replace the ``functools.partial`` shortcuts of a 2D MONAI ResNet by :class:`ZeroPadShortcut` (in place).

    Args:
        encoder: a MONAI ``ResNet`` (e.g. from ``build_resnet_encoder``); other modules are returned unchanged.

    Returns:
        ``encoder``.
    """
    for module in encoder.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, functools.partial) and shortcut.keywords.get("spatial_dims", 2) == 2:
            module.downsample = ZeroPadShortcut(shortcut.keywords["planes"], shortcut.keywords["stride"])
    return encoder


def encoder_feature_dim(encoder: ResNet) -> int:
    """Channels of the pooled feature vector that ``encoder(x)`` returns (the input size of a head)."""
    last_block = encoder.layer4[-1]
    for name in ("conv3", "conv2"):  # bottleneck blocks end in conv3, basic blocks in conv2
        conv = getattr(last_block, name, None)
        if conv is not None:
            return int(conv.out_channels)
    raise TypeError(f"cannot tell the feature width of {type(last_block).__name__}.")


def resnet_features(encoder: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Multi-scale feature maps of a MONAI ResNet, for decoders and attention modules.

    Args:
        encoder: any MONAI ``ResNet`` (including a ``FlexibleUNet`` resnet encoder).
        x: images (B, C, H, W).

    Returns:
        five maps: the stem output before max-pooling (H/2), then layer1 (H/4), layer2 (H/8), layer3 (H/16) and
        layer4 (H/32), for a stride-2 stem.
    """
    x = encoder.act(encoder.bn1(encoder.conv1(x)))
    features = [x]
    if not encoder.no_max_pool:
        x = encoder.maxpool(x)
    for stage in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        x = stage(x)
        features.append(x)
    return features


def encoder_architecture(encoder: nn.Module) -> dict[str, Any]:
    """The rebuild recipe recorded by ``build_resnet_encoder`` (empty for encoders built elsewhere)."""
    return dict(getattr(encoder, "usseg_architecture", {}))


def _encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().cpu().clone()
        for key, value in encoder.state_dict().items()
        if not key.startswith(_CLASSIFIER_PREFIX)
    }


def save_encoder(
    encoder: nn.Module, path: str | os.PathLike, architecture: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``encoder.pt`` (weights) and ``encoder.json`` (how to rebuild it) atomically.

    Args:
        encoder: the encoder module (a DDP wrapper is unwrapped).
        path: destination of the weights, e.g. ``models/encoder.pt``; the JSON goes next to it with suffix ``.json``.
        architecture: extra description merged over ``encoder.usseg_architecture`` (e.g. training data, epochs).

    Returns:
        the weights path and the JSON path.
    """
    module = encoder.module if hasattr(encoder, "module") else encoder
    weights = Path(path)
    description = {**encoder_architecture(module), **dict(architecture or {})}
    description["num_parameters"] = int(sum(p.numel() for p in module.parameters()))
    with atomic_write(weights, mode="wb", encoding=None) as handle:
        torch.save(_encoder_state(module), handle)
    recipe = atomic_write_json(weights.with_suffix(".json"), description)
    return weights, recipe


def read_encoder_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description saved next to an encoder file (empty if there is none).

    Raises:
        InputError: if the JSON exists but is not a JSON object.
    """
    recipe = Path(path).with_suffix(".json")
    if not recipe.is_file():
        return {}
    try:
        description = json.loads(recipe.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(recipe, f"is not a readable encoder description ({error}).") from error
    if not isinstance(description, dict):
        raise InputError(recipe, f"must hold a JSON object, found {type(description).__name__}.")
    return description


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a bare state dict, or the ``state_dict`` / ``model`` entry of a checkpoint,
    with DDP's ``module.`` prefix removed.

    Raises:
        InputError: the file cannot be read by ``torch.load(weights_only=True)`` or holds no state dict of tensors.
    """
    source = Path(path)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for corrupt or foreign files
        raise InputError(source, f"cannot be read as a torch state dict ({type(error).__name__}: {error}).") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(source, "does not hold a state dict of tensors.")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_encoder_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Initialise ``module`` (a ResNet encoder, or a network's encoder submodule) from an encoder file.

    Args:
        module: the target. Its classifier entries (``fc.*``) are ignored: heads are trained downstream.
        path: an ``encoder.pt`` written by ``save_encoder`` (a plain state dict also works).
        strict: require every encoder tensor to match by name and shape. With ``strict=False`` the matching tensors
            are loaded and the rest is reported, for partial transfer between widths or depths.

    Returns:
        ``{"path", "loaded", "missing", "unexpected", "mismatched"}``: counts and key lists.

    Raises:
        InputError: if the file is missing, unreadable, not a state dict, or (strict) does not fit the module; the
            message names the file and lists the offending keys.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(source, "encoder weights file not found.")
    state = {k: v for k, v in read_state_dict(source).items() if not k.startswith(_CLASSIFIER_PREFIX)}
    target = module.module if hasattr(module, "module") else module
    own = {k: v for k, v in target.state_dict().items() if not k.startswith(_CLASSIFIER_PREFIX)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs module {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if strict and (missing or unexpected or mismatched):
        problems = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")
                problems.append(f"{title}: {shown}")
        built = read_encoder_architecture(source).get("args")
        hint = f" The file was built with {built}." if built else ""
        raise InputError(source, "does not fit the target encoder; " + "; ".join(problems) + "." + hint)
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    target.load_state_dict(loadable, strict=False)
    return {
        "path": str(source),
        "loaded": len(loadable),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
    }
