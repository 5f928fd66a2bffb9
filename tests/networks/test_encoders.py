# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The encoder contract: build, save, and load into the networks of the other bundles."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from usseg.errors import InputError
from usseg.networks.encoders import (
    build_resnet_encoder,
    encoder_feature_dim,
    load_encoder_weights,
    resnet_features,
    save_encoder,
)


@pytest.mark.parametrize(
    ("depth", "widths", "feature_dim"),
    [(10, (8, 16, 32, 64), 64), (18, (8, 16, 32, 64), 64), (50, (8, 16, 32, 64), 256)],
    ids=["resnet10", "resnet18", "resnet50-bottleneck"],
)
def test_pooled_features_and_feature_maps_have_the_documented_shapes(depth, widths, feature_dim):
    encoder = build_resnet_encoder(depth, in_channels=1, widths=widths)
    images = torch.randn(2, 1, 64, 64)
    assert encoder(images).shape == (2, feature_dim)
    assert encoder_feature_dim(encoder) == feature_dim
    maps = resnet_features(encoder, images)
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert maps[-1].shape[1] == feature_dim


def test_saved_encoder_round_trips_and_describes_how_to_rebuild_it(tmp_path):
    torch.manual_seed(0)
    source = build_resnet_encoder(18, in_channels=1, widths=(8, 16, 32, 64))
    weights, recipe = save_encoder(source, tmp_path / "encoder.pt", {"pretraining": "unit test"})
    description = json.loads(recipe.read_text())
    assert description["args"] == {"depth": 18, "in_channels": 1, "widths": [8, 16, 32, 64], "spatial_dims": 2}
    assert description["pretraining"] == "unit test"
    assert not any(key.startswith("fc.") for key in torch.load(weights, weights_only=True))

    torch.manual_seed(1)
    target = build_resnet_encoder(**description["args"])
    report = load_encoder_weights(target, weights)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    images = torch.randn(2, 1, 32, 32)
    source.eval(), target.eval()
    torch.testing.assert_close(target(images), source(images), rtol=0, atol=0)


def test_a_resnet18_encoder_loads_into_a_flexible_unet_backbone(tmp_path):
    source = build_resnet_encoder(18, in_channels=1)
    weights, _ = save_encoder(source, tmp_path / "encoder.pt")
    unet = FlexibleUNet(in_channels=1, out_channels=2, backbone="resnet18", pretrained=False, spatial_dims=2)
    report = load_encoder_weights(unet.encoder, weights)
    assert report["loaded"] == len([k for k in source.state_dict() if not k.startswith("fc.")])
    assert torch.equal(unet.encoder.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_a_mismatched_encoder_is_refused_naming_the_file_and_keys(tmp_path):
    weights, _ = save_encoder(build_resnet_encoder(18, widths=(8, 16, 32, 64)), tmp_path / "encoder.pt")
    target = build_resnet_encoder(18, widths=(16, 32, 64, 128))
    with pytest.raises(InputError, match=r"encoder\.pt.*mis-shaped: .*conv1\.weight.*built with"):
        load_encoder_weights(target, weights)
    before = target.conv1.weight.clone()
    report = load_encoder_weights(target, weights, strict=False)
    assert report["loaded"] < len(target.state_dict()) and report["mismatched"]
    assert torch.equal(target.conv1.weight, before)  # mis-shaped tensors are skipped, never broadcast


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "not found"), (b"not a checkpoint", "cannot be read"), ({"a": 1}, "state dict of tensors")],
    ids=["missing", "garbage", "not-tensors"],
)
def test_unusable_weight_files_raise_input_error(tmp_path, content, problem):
    path = tmp_path / "encoder.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(InputError, match=problem):
        load_encoder_weights(build_resnet_encoder(10, widths=(8, 8, 8, 8)), path)


@pytest.mark.parametrize(
    "kwargs", [{"depth": 12}, {"widths": (8, 8, 8)}, {"widths": (8, 0, 8, 8)}, {"in_channels": 0}], ids=str
)
def test_invalid_architectures_are_rejected(kwargs):
    with pytest.raises(ValueError, match="must be"):
        build_resnet_encoder(**kwargs)


def test_resnet18_encoder_compiles_with_torchscript_for_zoo_export():
    # MONAI's "A" shortcut is a functools.partial that TorchScript cannot compile; the builder swaps in a module
    encoder = build_resnet_encoder(18, widths=(8, 16, 16, 32)).eval()
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(torch.jit.script(encoder)(images), encoder(images))
