# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Smoke run of the Meta-USCL pre-training bundle as a user runs it: pre-train (tiny) on the default data (phantom cine
loops + pydicom's ultrasound cine), evaluate, embed images, cross-validate the exported encoder, and load that encoder
into another network with ``load_encoder_weights``.

Runs go through ``monai.bundle.run`` in this process, with the working directory set to a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run
from PIL import Image

from usseg.bundles import bundle_root
from usseg.errors import InputError
from usseg.networks.encoders import build_resnet_encoder, load_encoder_weights

pytestmark = pytest.mark.slow

CONFIGS = Path(bundle_root("ultrasound_video_meta_uscl_pretraining")) / "configs"
WIDTHS = [8, 16, 16, 32]
QUICK = {
    "max_epochs": 2,
    "spatial_size": 32,
    "encoder_widths": WIDTHS,
    "val_interval": 1,
    "num_phantom_videos": 8,
    "phantom_size": 64,
    "log_every": 1,
}


def _config(*names: str) -> str | list[str]:
    files = [str(CONFIGS / name) for name in names]
    return files[0] if len(files) == 1 else files


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("meta_uscl_bundle")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        run(config_file=_config("train.yaml"), **QUICK)
    return workdir


def test_training_exports_an_encoder_that_loads_into_another_network(trained: Path, tmp_path: Path) -> None:
    models = trained / "outputs" / "ultrasound_video_meta_uscl_pretraining" / "models"
    recipe = json.loads((models / "encoder.json").read_text())
    assert recipe["args"]["widths"] == WIDTHS and recipe["method"] == "meta_uscl"
    target = build_resnet_encoder(widths=WIDTHS)
    report = load_encoder_weights(target, models / "encoder.pt")
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    selected = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    for key, value in target.state_dict().items():  # the validation-selected encoder, bit for bit
        assert torch.equal(value, selected[f"encoder.{key}"]), key
    with pytest.raises(InputError, match="mis-shaped"):
        load_encoder_weights(build_resnet_encoder(widths=[8, 16, 16, 64]), models / "encoder.pt")


def test_training_keeps_cmw_net_the_split_and_the_logged_statistics(trained: Path) -> None:
    out = trained / "outputs" / "ultrasound_video_meta_uscl_pretraining"
    final = torch.load(out / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "weight_network", "weight_optimizer"} <= set(final)
    datalist = json.loads((out / "pretraining_datalist.json").read_text())
    videos = {split: {item["case_id"] for item in datalist[split]} for split in ("train", "validation", "meta")}
    assert all(videos.values()) and not (videos["meta"] & (videos["train"] | videos["validation"]))
    assert any(item["video"].endswith("examples_ybr_color.dcm") for split in videos for item in datalist[split])
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"]["epoch"] == [1, 2]
    assert len(history["validation"]["values"]["val_ntxent"]) == 2
    assert list((out / "tensorboard").iterdir())


def test_evaluate_inference_and_cross_validation_run_on_the_outputs(trained: Path) -> None:
    out = trained / "outputs" / "ultrasound_video_meta_uscl_pretraining"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        run(config_file=_config("train.yaml", "evaluate.yaml"), **QUICK)
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        assert set(metrics) == {"final", "best"} and all(np.isfinite(m["val_ntxent"]) for m in metrics.values())

        images = trained / "frames"
        images.mkdir()
        for index in range(3):
            Image.fromarray(np.full((40, 50), 60 * index, np.uint8)).save(images / f"frame{index}.png")
        run(config_file=_config("inference.yaml"), input_dir=str(images), spatial_size=32, encoder_widths=WIDTHS)
        stored = np.load(out / "embeddings" / "embeddings.npz")
        assert stored["embeddings"].shape == (3, 128) and len(stored["files"]) == 3

        quick_cv = {"encoder_widths": WIDTHS, "spatial_size": 32, "epochs": 2, "frame_step": 4}
        run(config_file=_config("finetune_classification.yaml"), **quick_cv)
        run(config_file=_config("finetune_classification.yaml", "linear_probe.yaml"), **quick_cv)
    for mode in ("finetune", "linear"):
        result = json.loads((out / "eval" / f"{mode}_cv.json").read_text())
        assert len(result["folds"]) == 5 and result["settings"]["mode"] == mode
        assert sum(f["test_videos"] for f in result["folds"]) == result["num_videos"] == 8
        assert 0.0 <= result["accuracy_selected"]["mean"] <= 1.0
