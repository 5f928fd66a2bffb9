# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The Semi-CML U-Net: released shape, dropout modes (off / train / MC), TorchScript."""

from __future__ import annotations

import pytest
import torch

from usseg.networks.semi_cml import SemiCMLUNet, SwitchableDropout


def test_released_architecture_widths_and_dropout_rates():
    net = SemiCMLUNet()
    widths = [block[0].out_channels for block in net.encoders]
    rates = [block[3].p for block in net.encoders]
    assert widths == [32, 64, 128, 256, 512] and rates == [0.05, 0.1, 0.2, 0.3, 0.5]
    assert all(isinstance(d.up, torch.nn.ConvTranspose2d) for d in net.decoders)
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def _outputs_differ(net: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return not torch.equal(net(x), net(x))


@pytest.mark.parametrize(
    "mode, in_training, in_eval",
    [("off", False, False), ("train", True, False), ("always", True, True)],
    ids=["off", "train_only", "mc_dropout"],
)
def test_dropout_modes(mode, in_training, in_eval):
    torch.manual_seed(0)
    net = SemiCMLUNet(features=4, depth=3, dropout=(0.3, 0.3, 0.5)).set_dropout_mode(mode)
    x = torch.rand(2, 1, 16, 16)
    assert _outputs_differ(net.train(), x) is in_training
    assert _outputs_differ(net.eval(), x) is in_eval


def test_background_logit_turns_the_sigmoid_into_an_equal_two_class_softmax():
    torch.manual_seed(0)
    binary = SemiCMLUNet(features=4, depth=3, dropout=(0.0, 0.0, 0.0)).eval()
    two_class = SemiCMLUNet(features=4, depth=3, dropout=(0.0, 0.0, 0.0), background_logit=True).eval()
    two_class.load_state_dict(binary.state_dict())  # same weights, no extra parameter
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        probabilities = torch.softmax(two_class(x), dim=1)
        torch.testing.assert_close(probabilities[:, 1:], torch.sigmoid(binary(x)))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="out_channels=1"):
        SemiCMLUNet(out_channels=2, background_logit=True)


def test_torchscript_matches_eager():
    net = SemiCMLUNet(features=4, depth=3, dropout=(0.1, 0.1, 0.1), background_logit=True).eval()
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 1, "dropout": (0.1,)}, "depth"),
        ({"dropout": (0.1,)}, "one rate per level"),
        ({"features": 0}, "features"),
    ],
    ids=["depth", "dropout_length", "features"],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemiCMLUNet(**kwargs)


def test_switchable_dropout_refuses_bad_values():
    with pytest.raises(ValueError, match="1.0"):
        SwitchableDropout(1.0)
    with pytest.raises(ValueError, match="sometimes"):
        SwitchableDropout(0.1, "sometimes")
