# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The per-modality U-Net of Semi-CML, with dropout that can be switched off, on, or on in eval mode (MC dropout).

Semi-CML trains one independent network per modality; they are coupled only through losses, so each segments from
its own modality at inference (methods.md, section 4.1). The released network is a plain U-Net: DoubleConv blocks
(conv3x3, BN, ReLU, dropout, conv3x3, BN, ReLU), five levels of 32 to 512 features, dropout rates
[0.05, 0.1, 0.2, 0.3, 0.5] in the encoder, ConvTranspose upsampling and a 1x1 output.

Why not a MONAI network: ``monai.networks.nets.BasicUNet`` has one dropout rate for every block (not one per level)
and ``monai.networks.nets.UNet`` uses strided convolutions instead of pooling; neither lets a teacher keep dropout
active while its batch norm is in eval mode, which is what MC-dropout pseudo-labels need. The class below is small,
TorchScript- and ONNX-exportable, and keeps MONAI's output convention: it returns **logits**. Apply a sigmoid (one
channel per foreground class) in the loss or the post-processing; the released network applies it inside, which
makes BCE numerically fragile under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwitchableDropout", "SemiCMLUNet", "set_dropout_mode", "DROPOUT_MODES"]

DROPOUT_MODES = ("off", "train", "always")
"""``off``: never drop; ``train``: drop in training mode only (``nn.Dropout``); ``always``: also in eval mode (MC)."""


class SwitchableDropout(nn.Module):
    """Dropout whose activity is an attribute rather than a side effect of ``train()`` / ``eval()``.

    The Semi-CML students train with dropout off; the teacher keeps dropout on while its batch norm is in eval mode
    (Monte-Carlo dropout). ``nn.Dropout`` ties both to one ``training`` flag, so the mode lives here instead.

    Args:
        p: drop probability in [0, 1).
        mode: one of :data:`DROPOUT_MODES`.

    Raises:
        ValueError: ``p`` outside [0, 1) or an unknown ``mode``.
    """

    def __init__(self, p: float, mode: str = "train") -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p!r}.")
        if mode not in DROPOUT_MODES:
            raise ValueError(f"dropout mode must be one of {DROPOUT_MODES}, got {mode!r}.")
        self.p = float(p)
        self.always = mode == "always"
        self.in_training = mode in ("train", "always")

    @property
    def mode(self) -> str:
        """The current mode, one of :data:`DROPOUT_MODES`."""
        return "always" if self.always else ("train" if self.in_training else "off")

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (one of :data:`DROPOUT_MODES`)."""
        if mode not in DROPOUT_MODES:
            raise ValueError(f"dropout mode must be one of {DROPOUT_MODES}, got {mode!r}.")
        self.always = mode == "always"
        self.in_training = mode in ("train", "always")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: any -> same."""
        if self.p > 0.0 and (self.always or (self.training and self.in_training)):
            return F.dropout(x, self.p, True)
        return x


def set_dropout_mode(module: nn.Module, mode: str) -> nn.Module:
    """Set every :class:`SwitchableDropout` inside ``module`` (a DDP wrapper is looked through) to ``mode``."""
    target = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
    for child in target.modules():
        if isinstance(child, SwitchableDropout):
            child.set_mode(mode)
    return module


class _DoubleConv(nn.Sequential):
    """conv3x3 -> BN -> ReLU -> dropout -> conv3x3 -> BN -> ReLU (the released block)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, dropout_mode: str) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            SwitchableDropout(dropout, dropout_mode),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _UpBlock(nn.Module):
    """ConvTranspose x2, concatenate the skip, DoubleConv (no dropout in the decoder, as released)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = _DoubleConv(2 * skip_channels, out_channels, 0.0, "off")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class SemiCMLUNet(nn.Module):
    """2D U-Net of one Semi-CML modality (methods.md, section 4.1), returning logits.

    The defaults are the released network: 1 input channel, 1 output channel (sigmoid foreground), 32 base features,
    5 levels (32, 64, 128, 256, 512), encoder dropout [0.05, 0.1, 0.2, 0.3, 0.5]. A CPU variant narrows ``features``
    (16) or ``depth``. Inputs need sides divisible by ``2 ** (depth - 1)`` (16 for the default).

    Args:
        in_channels: input channels (1 per modality).
        out_channels: one channel per foreground class (sigmoid outputs); 1 for a binary lesion mask.
        features: feature count of the first level; each further level doubles it.
        depth: number of resolution levels (>= 2).
        dropout: encoder dropout rate per level; ``len(dropout) == depth``.
        dropout_mode: initial :data:`DROPOUT_MODES` entry; ``"off"`` for the students, as released.
        background_logit: with ``out_channels=1``, prepend a constant 0 logit, so the output has 2 channels and its
            softmax is exactly ``[1 - sigmoid(l), sigmoid(l)]``. The weights are the same (no parameter is added):
            this is how a trained binary network meets the softmax convention of ``usseg infer`` and the zoo tools.

    Raises:
        ValueError: a non-positive size, a ``dropout`` list of the wrong length, or an unknown ``dropout_mode``.

    Examples:
        >>> net = SemiCMLUNet(features=16)
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: int = 32,
        depth: int = 5,
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        dropout_mode: str = "off",
        background_logit: bool = False,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("features", features, 1),
            ("depth", depth, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
        if background_logit and out_channels != 1:
            raise ValueError(f"background_logit needs out_channels=1 (one sigmoid channel), got {out_channels}.")
        dropout = [float(rate) for rate in dropout]
        if len(dropout) != depth:
            raise ValueError(f"dropout needs one rate per level ({depth}), got {dropout!r}.")
        widths = [features * 2**level for level in range(depth)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width, rate in zip(widths, dropout):
            self.encoders.append(_DoubleConv(channels, width, rate, dropout_mode))
            channels = width
        self.decoders = nn.ModuleList(
            _UpBlock(widths[level + 1], widths[level], widths[level]) for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self.background_logit = bool(background_logit)

    def set_dropout_mode(self, mode: str) -> SemiCMLUNet:
        """Set every dropout layer to ``mode`` (one of :data:`DROPOUT_MODES`); returns ``self``."""
        set_dropout_mode(self, mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(B, in_channels, H, W)`` -> logits ``(B, out_channels, H, W)`` (2 channels with
        ``background_logit``)."""
        skips: list[torch.Tensor] = []
        for index, encoder in enumerate(self.encoders):
            if index > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        for index, decoder in enumerate(self.decoders):
            x = decoder(x, skips[len(skips) - 2 - index])
        logits = self.head(x)
        if self.background_logit:
            return torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits
