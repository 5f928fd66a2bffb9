# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Projection heads, CMW-Net and the encoder + head network of USCL / Meta-USCL."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import ResNet

from usseg.networks.contrastive import (
    CMWNet,
    ContrastiveNetwork,
    ContrastiveOutputs,
    ProjectionHead,
    build_contrastive_network,
)
from usseg.networks.encoders import ZeroPadShortcut, build_resnet_encoder, make_scriptable


@pytest.mark.parametrize(
    "preset, widths, expected",
    [
        ("meta_uscl", (64, 128, 256, 512), [(512, 512), (512, 128)]),
        ("uscl", (64, 128, 256, 512), [(512, 512), (512, 256)]),
        ("meta_uscl", (8, 16, 32, 64), [(64, 64), (64, 128)]),
    ],
    ids=["meta_uscl_resnet18", "uscl_resnet18", "small_widths"],
)
def test_preset_heads_have_the_released_widths(preset: str, widths: tuple, expected: list) -> None:
    network = build_contrastive_network(preset, widths=widths)
    linears = [m for m in network.projection if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == expected
    assert isinstance(network.projection[1], torch.nn.ReLU)
    z = network.eval()(torch.rand(2, 1, 64, 64))
    assert z.shape == (2, expected[-1][1])


@pytest.mark.parametrize("classifier_input, width", [("z", 128), ("h", 64)], ids=["on_z_released", "on_h_paper"])
def test_classifier_reads_z_or_h(classifier_input: str, width: int) -> None:
    network = build_contrastive_network(widths=(8, 16, 32, 64), num_classes=3, classifier_input=classifier_input)
    assert network.classifier.in_features == width
    out = ContrastiveOutputs(network).eval()(torch.rand(4, 1, 32, 32))
    assert out["h"].shape == (4, 64) and out["z"].shape == (4, 128) and out["logits"].shape == (4, 3)
    source = out[classifier_input]
    assert torch.allclose(out["logits"], network.classifier(source), atol=1e-6)
    assert torch.allclose(out["z"], network.projection(out["h"]), atol=1e-6)


def test_cmw_net_maps_the_concatenated_representations_to_a_sigmoid_weight() -> None:
    torch.manual_seed(0)
    cmw = CMWNet(feature_dim=6)
    first, second = cmw.layers[0], cmw.layers[2]
    assert (first.in_features, first.out_features, second.out_features) == (12, 10, 1)
    h_i, h_j = torch.randn(5, 6), torch.randn(5, 6)
    expected = torch.sigmoid(second(torch.relu(first(torch.cat([h_i, h_j], 1))))).squeeze(1)
    weights = cmw(h_i, h_j)
    assert weights.shape == (5,) and torch.allclose(weights, expected) and bool(((weights > 0) & (weights < 1)).all())


def test_exported_encoder_keys_are_the_resnet_keys() -> None:
    network = build_contrastive_network(widths=(8, 16, 32, 64))
    reference = build_resnet_encoder(widths=(8, 16, 32, 64))
    assert set(network.encoder.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ProjectionHead(512, 0, 128), "hidden_features must be a positive integer, got 0"),
        (lambda: CMWNet(feature_dim=True), "feature_dim must be a positive integer, got True"),
        (lambda: build_contrastive_network("simclr"), "preset must be one of .* got 'simclr'"),
        (
            lambda: ContrastiveNetwork(torch.nn.Identity(), torch.nn.Identity(), classifier_input="x"),
            "classifier_input must be one of .* got 'x'",
        ),
        (lambda: ContrastiveNetwork(torch.nn.Identity(), torch.nn.Identity(), num_classes=2), "classifier_in_features"),
    ],
    ids=["zero_width", "bool_width", "unknown_preset", "unknown_classifier_input", "classifier_without_width"],
)
def test_bad_arguments_raise(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_outputs_wrapper_needs_forward_all() -> None:
    with pytest.raises(TypeError, match="forward_all"):
        ContrastiveOutputs(torch.nn.Linear(2, 2))


def test_scriptable_shortcut_computes_what_monai_computes_values_and_gradients() -> None:
    torch.manual_seed(0)
    # MONAI's own ResNet-18 as the reference: build_resnet_encoder already swaps the shortcuts in
    reference = ResNet(
        block="basic",
        layers=[2, 2, 2, 2],
        block_inplanes=[8, 16, 16, 32],
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_stride=2,
        shortcut_type="A",
        feed_forward=False,
    )
    assert not any(isinstance(m, ZeroPadShortcut) for m in reference.modules())
    swapped = copy.deepcopy(reference)
    make_scriptable(swapped)
    assert any(isinstance(m, ZeroPadShortcut) for m in swapped.modules())
    assert set(swapped.state_dict()) == set(reference.state_dict())
    x = torch.rand(3, 1, 32, 32)
    out_reference, out_swapped = reference(x), swapped(x)
    assert torch.equal(out_reference, out_swapped)
    out_reference.sum().backward()
    out_swapped.sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), swapped.named_parameters()):
        assert torch.equal(a.grad, b.grad), name
    scripted = torch.jit.script(build_contrastive_network(widths=(8, 16, 16, 32)).eval())
    assert scripted(x).shape == (3, 128)
