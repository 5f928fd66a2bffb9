# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The supervised baseline starts from a pretrained encoder with one override, and evaluates and infers with none.

A tiny run (one epoch of two iterations at 64², a 16-image phantom) with ``--encoder_weights`` and a learning rate of
zero, so the trained encoder's parameters must still be the file's: proof that the bundle loaded them. Inference then
runs from the same working directory with no encoder setting and must rebuild the same network from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle
from monai.bundle import ConfigParser
from monai.bundle import run as monai_run
from PIL import Image

from usseg.bundles import bundle_root
from usseg.networks import ResNetUNet
from usseg.networks.encoders import build_resnet_encoder, save_encoder

NAME = "breast_us_supervised_segmentation"
CONFIGS = Path(bundle_root(NAME)) / "configs"
TINY = [
    "--max_epochs",
    "1",
    "--iterations_per_epoch",
    "2",
    "--batch_size",
    "2",
    "--num_phantom_images",
    "16",
    "--phantom_size",
    "64",
    "--spatial_size",
    "[64,64]",
]


def test_encoder_weights_start_training_and_inference_rebuilds_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(123)  # not the bundle's seed 0: an ignored file would then leave different weights
    encoder = build_resnet_encoder(18, in_channels=1, widths=(8, 16, 32, 64))
    weights, _ = save_encoder(encoder, tmp_path / "pretrained" / "encoder.pt")
    run_bundle(CONFIGS, tmp_path, ["train.yaml"], *TINY, "--learning_rate", "0.0", "--encoder_weights", str(weights))

    models = tmp_path / "outputs" / NAME / "models"
    final = torch.load(models / "model_final.pt", map_location="cpu", weights_only=True)["model"]
    assert any(key.startswith("decoder.") for key in final) and "head.weight" in final
    for name, parameter in encoder.named_parameters():  # parameters only: batch-norm statistics did move
        assert torch.equal(final[f"encoder.{name}"], parameter.detach()), name

    # evaluate.yaml merged on train.yaml, without --encoder_weights, builds the network its checkpoint holds
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
    parser["output_dir"] = str(tmp_path / "outputs" / NAME)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ResNetUNet) and network.architecture["widths"] == [8, 16, 32, 64]
    network.load_state_dict(final, strict=True)

    inputs = tmp_path / "scans"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80), dtype=np.uint8)).save(inputs / "a.png")
    predictions = tmp_path / "predictions"
    monkeypatch.chdir(tmp_path)  # where training ran: inference finds outputs/<bundle>/models/model.pt by itself
    monai_run(  # in this process: a second interpreter start would double the test's time
        config_file=str(CONFIGS / "inference.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        spatial_size=[64, 64],
        input_dir=str(inputs),
        predictions_dir=str(predictions),
        progress=False,
    )
    mask = np.asarray(Image.open(predictions / "a_seg.png"))
    assert mask.shape == (48, 80) and set(np.unique(mask)) <= {0, 255}

    # usseg infer --weights / the zoo exports build the network the given file holds, wherever it is
    from usseg.zoo import load_network

    elsewhere = tmp_path / "shared" / "weights.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((models / "model.pt").read_bytes())
    monkeypatch.chdir(elsewhere.parent)
    loaded = load_network(bundle_root(NAME), elsewhere)
    assert isinstance(loaded, ResNetUNet) and loaded.architecture["widths"] == [8, 16, 32, 64]
