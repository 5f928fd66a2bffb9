# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""ResNetUNet: shapes, loading encoder files, refusing mismatched ones, exports, and the supervised bundle's builder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from usseg.errors import InputError
from usseg.networks import ResNetUNet
from usseg.networks.dual import ProjectedSegmenter, build_segmenter
from usseg.networks.encoders import build_resnet_encoder, resnet_features, save_encoder
from usseg.networks.resnet_unet import checkpoint_architecture, encoder_file_architecture, unet_or_resnet_unet

TINY = (8, 16, 32, 64)  # CPU-cheap widths
UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16, 32, 64],
    "strides": [2, 2, 2, 2],
    "num_res_units": 1,
}


def _encoder_file(folder: Path, depth: int = 18, widths=TINY, in_channels: int = 1, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    encoder = build_resnet_encoder(depth, in_channels=in_channels, widths=widths)
    weights, _ = save_encoder(encoder, folder / "encoder.pt")
    return weights


@pytest.mark.parametrize(
    ("depth", "size"),
    [(18, (64, 64)), (10, (50, 70)), (50, (32, 48))],
    ids=["resnet18-64x64", "resnet10-50x70", "resnet50-32x48"],
)
def test_logits_have_the_input_size_and_the_encoder_maps_are_resnet_features(depth, size):
    torch.manual_seed(0)
    network = ResNetUNet(3, in_channels=1, depth=depth, widths=TINY).eval()
    images = torch.rand(2, 1, *size)
    with torch.no_grad():
        assert network(images).shape == (2, 3, *size)
        expected = resnet_features(network.encoder, images)
        maps = network.encode(images)
    assert len(maps) == 5
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # stride-2 stages round up: every map is ceil(size / 2**k)
    assert [tuple(m.shape[-2:]) for m in maps] == [tuple(-(-s // 2**k) for s in size) for k in range(1, 6)]


def test_an_encoder_file_loads_and_its_tensors_are_the_networks_encoder(tmp_path):
    weights = _encoder_file(tmp_path, depth=18, widths=TINY)
    network = ResNetUNet.from_encoder_file(weights, num_classes=2)
    assert network.architecture == {"depth": 18, "in_channels": 1, "widths": list(TINY)}
    saved = torch.load(weights, weights_only=True)
    own = network.encoder.state_dict()
    assert set(saved) == {k for k in own if not k.startswith("fc.")}
    for key, value in saved.items():
        assert torch.equal(own[key], value), key
    # the constructor loads the same file when given the file's architecture
    direct = ResNetUNet(2, depth=18, widths=TINY, encoder_weights=weights)
    for key, value in saved.items():
        assert torch.equal(direct.encoder.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("depth", "widths", "in_channels"),
    [(10, (8, 16, 32, 64), 1), (18, (4, 8, 16, 32), 3), (50, (8, 16, 32, 64), 1)],
    ids=["resnet10", "resnet18-rgb", "resnet50"],
)
def test_the_architecture_of_a_file_without_json_is_read_from_its_tensors(tmp_path, depth, widths, in_channels):
    torch.manual_seed(0)
    encoder = build_resnet_encoder(depth, in_channels=in_channels, widths=widths)
    plain = tmp_path / "plain.pt"
    torch.save(encoder.state_dict(), plain)
    assert not plain.with_suffix(".json").exists()
    expected = {"depth": depth, "in_channels": in_channels, "widths": list(widths)}
    assert encoder_file_architecture(plain) == expected
    network = ResNetUNet.from_encoder_file(plain, num_classes=2)
    assert network.architecture == expected
    assert torch.equal(network.encoder.conv1.weight, encoder.conv1.weight)


@pytest.mark.parametrize(
    "kwargs",
    [{"widths": (16, 32, 64, 128)}, {"depth": 10}, {"in_channels": 3}],
    ids=["widths", "depth", "in_channels"],
)
def test_an_architecture_that_differs_from_the_file_is_refused_naming_the_file(tmp_path, kwargs):
    weights = _encoder_file(tmp_path, depth=18, widths=TINY)
    name = next(iter(kwargs))
    with pytest.raises(InputError, match=name) as raised:
        ResNetUNet.from_encoder_file(weights, num_classes=2, **kwargs)
    assert str(weights) in str(raised.value)
    explicit = {"depth": 18, "widths": TINY, "in_channels": 1, **kwargs}
    with pytest.raises(InputError, match=name) as raised:
        ResNetUNet(2, encoder_weights=weights, **explicit)
    assert str(weights) in str(raised.value)


def test_bad_arguments_and_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        ResNetUNet(1)
    with pytest.raises(TypeError, match="depth"):
        ResNetUNet(2, depth="18")
    with pytest.raises(InputError, match="not found"):
        ResNetUNet.from_encoder_file(tmp_path / "missing.pt", 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        ResNetUNet.from_encoder_file(junk, 2)
    network = ResNetUNet(2, widths=TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\[1, 3, 32, 32\]"):
        network(torch.rand(1, 3, 32, 32))


def test_torchscript_and_onnx_match_eager(tmp_path):
    torch.manual_seed(0)
    network = ResNetUNet(2, depth=10, widths=TINY).eval()
    small, other = torch.rand(1, 1, 64, 64), torch.rand(2, 1, 50, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.jit; the zoo still requires it
        scripted = torch.jit.script(network)
    with torch.no_grad():
        for images in (small, other):
            torch.testing.assert_close(scripted(images), network(images), rtol=1e-4, atol=1e-4)
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_file = tmp_path / "net.onnx"
    axes = {"image": {0: "batch", 2: "h", 3: "w"}, "pred": {0: "batch", 2: "ph", 3: "pw"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network, (small,), str(onnx_file), input_names=["image"], output_names=["pred"], dynamic_axes=axes
        )
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for images in (small, other):  # the second size and batch go through the dynamic axes
        with torch.no_grad():
            expected = network(images).numpy()
        np.testing.assert_allclose(session.run(None, {"image": images.numpy()})[0], expected, rtol=1e-4, atol=1e-4)


def test_the_bundle_builder_is_the_plain_unet_without_an_encoder(tmp_path):
    torch.manual_seed(3)
    reference = UNet(**UNET_ARGS)
    torch.manual_seed(3)
    built = unet_or_resnet_unet(**UNET_ARGS)
    missing = unet_or_resnet_unet(checkpoint=tmp_path / "none.pt", **UNET_ARGS)
    assert type(built) is UNet and type(missing) is UNet
    assert list(built.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key
    # a U-Net checkpoint keeps the U-Net
    unet_file = tmp_path / "unet.pt"
    torch.save(reference.state_dict(), unet_file)
    assert checkpoint_architecture(unet_file) is None
    assert type(unet_or_resnet_unet(checkpoint=unet_file, **UNET_ARGS)) is UNet


def test_the_bundle_builder_follows_the_encoder_file_then_the_checkpoint(tmp_path):
    weights = _encoder_file(tmp_path, depth=10, widths=TINY)
    trained = unet_or_resnet_unet(encoder_weights=weights, **UNET_ARGS)
    assert isinstance(trained, ResNetUNet) and trained.architecture["depth"] == 10
    assert torch.equal(trained.encoder.conv1.weight, torch.load(weights, weights_only=True)["conv1.weight"])
    # the checkpoint of that run rebuilds the same architecture, bare or inside a training checkpoint
    bare, final = tmp_path / "model.pt", tmp_path / "model_final.pt"
    torch.save(trained.state_dict(), bare)
    torch.save({"model": trained.state_dict(), "optimizer": {}}, final)
    for checkpoint in (bare, final):
        assert checkpoint_architecture(checkpoint) == {"depth": 10, "in_channels": 1, "widths": list(TINY)}
        rebuilt = unet_or_resnet_unet(checkpoint=checkpoint, **UNET_ARGS)
        rebuilt.load_state_dict(torch.load(bare, weights_only=True), strict=True)
    with pytest.raises(InputError, match="in_channels 3"):
        unet_or_resnet_unet(encoder_weights=weights, **{**UNET_ARGS, "in_channels": 3})
    with pytest.raises(TypeError, match="encoder_weights"):
        unet_or_resnet_unet(encoder_weights=5, **UNET_ARGS)


def test_the_dual_network_factory_builds_it_from_the_file_and_hooks_its_bottleneck(tmp_path):
    weights = _encoder_file(tmp_path, depth=18, widths=TINY)
    network = build_segmenter("resnet_unet", 3, encoder_weights=weights)
    assert isinstance(network, ResNetUNet) and network.architecture["widths"] == list(TINY)
    for key, value in torch.load(weights, weights_only=True).items():
        assert torch.equal(network.encoder.state_dict()[key], value), key
    default = build_segmenter("resnet_unet", 3)
    assert default.architecture == {"depth": 18, "in_channels": 1, "widths": [32, 64, 128, 256]}
    projected = ProjectedSegmenter(network, embedding_dim=16).eval()
    with torch.no_grad():
        logits, embedding = projected(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    assert embedding.shape == (2, 16, 2, 2)  # layer4: H/32
    assert projected.head.layers[0].in_channels == TINY[-1]
    with pytest.raises(ValueError, match="ResNet encoder"):
        build_segmenter("unet", 2, encoder_weights=weights)
