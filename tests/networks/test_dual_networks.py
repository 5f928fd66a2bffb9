# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The dual-network method's networks: the factory, the bottleneck hook, encoder initialisation, the ensemble export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usseg.errors import InputError
from usseg.networks.dual import (
    DualNetworkEnsemble,
    ProjectedSegmenter,
    bottleneck_module_name,
    build_segmenter,
    load_segmenter_encoder,
)
from usseg.networks.encoders import build_resnet_encoder, save_encoder


@pytest.mark.parametrize(
    "name, bottleneck_channels, bottleneck_size",
    [("unet", 256, 4), ("attention_unet", 256, 4), ("resnet18_unet", 512, 2), ("efficientnet_b3_unet", 384, 2)],
    ids=["unet", "attention_unet", "resnet18_unet", "efficientnet_b3_unet"],
)
def test_segmenters_predict_every_class_at_the_input_size_and_expose_their_bottleneck(
    name: str, bottleneck_channels: int, bottleneck_size: int
) -> None:
    torch.manual_seed(0)
    projected = ProjectedSegmenter(build_segmenter(name, 3), embedding_dim=16).eval()
    with torch.no_grad():
        logits, embedding = projected(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    # the head maps the deepest features (64 / 16 or / 32) to the common embedding dimension
    assert embedding.shape == (2, 16, bottleneck_size, bottleneck_size)
    assert projected.head.layers[0].in_channels == bottleneck_channels


def test_the_probe_leaves_the_segmenter_unchanged() -> None:
    torch.manual_seed(0)
    segmenter = build_segmenter("unet", 2)
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    ProjectedSegmenter(segmenter)
    assert segmenter.training
    assert all(torch.equal(before[k], v) for k, v in segmenter.state_dict().items())  # batch-norm statistics too


def test_bottleneck_is_the_most_deeply_nested_unet_level() -> None:
    assert bottleneck_module_name(build_segmenter("unet", 2)).count("submodule") == 4
    with pytest.raises(ValueError, match="feature_module"):
        bottleneck_module_name(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="not a module"):
        ProjectedSegmenter(build_segmenter("unet", 2), feature_module="decoder.7")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "swin_unet", "num_classes": 2}, "name"),
        ({"name": "unet", "num_classes": 1}, "num_classes"),
        ({"name": "unet", "num_classes": 2, "dropout": 1.0}, "dropout"),
        ({"name": "unet", "num_classes": 2, "encoder_weights": "encoder.pt"}, "ResNet encoder"),
    ],
    ids=["unknown_name", "one_class", "dropout_one", "encoder_without_resnet"],
)
def test_build_segmenter_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_segmenter(**kwargs)


def test_a_meta_uscl_encoder_file_initialises_the_resnet18_unet_encoder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoder = build_resnet_encoder(depth=18, in_channels=1)
    weights, _ = save_encoder(encoder, tmp_path / "encoder.pt")
    network = build_segmenter("resnet18_unet", 3, encoder_weights=weights)
    for key, value in encoder.state_dict().items():
        assert torch.equal(network.encoder.state_dict()[key], value), key
    with pytest.raises(ValueError, match="ResNet encoder"):
        load_segmenter_encoder(build_segmenter("attention_unet", 3), weights)


def test_an_encoder_of_another_width_is_refused_naming_the_file(tmp_path: Path) -> None:
    weights, _ = save_encoder(build_resnet_encoder(depth=18, widths=(32, 64, 128, 256)), tmp_path / "encoder.pt")
    with pytest.raises(InputError, match="encoder.pt"):
        build_segmenter("resnet18_unet", 2, encoder_weights=weights)


def test_the_ensemble_scripts_and_matches_eager_in_every_mode() -> None:
    torch.manual_seed(2)
    ensemble = DualNetworkEnsemble(build_segmenter("unet", 3), build_segmenter("attention_unet", 3)).eval()
    scripted = torch.jit.script(ensemble)
    images = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        for mode in ("ensemble", "net1", "net2"):
            ensemble.mode = scripted.mode = mode
            torch.testing.assert_close(scripted(images), ensemble(images), rtol=1e-4, atol=1e-4)
