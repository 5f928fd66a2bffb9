# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Smoke run of the Semi-CML bundle through ``monai.bundle.run``: train (both stages) on the phantom's co-registered
B-mode + elastography pairs, evaluate both networks on the test split, infer with either network alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run as bundle_run
from PIL import Image

from usseg.bundles import bundle_root

pytestmark = pytest.mark.slow

NAME = "multimodal_us_semi_cml_segmentation"
CONFIGS = Path(bundle_root(NAME)) / "configs"
QUICK = {
    "max_epochs": 3,  # stage 2 from epoch round(3 * 51 / 81) = 2: both stages run
    "iterations_per_epoch": 2,
    "batch_size": 2,
    "unlabeled_batch_size": 2,
    "num_phantom_images": 30,
    "phantom_size": 64,
    "spatial_size": [32, 32],
    "log_every": 1,
}


def _run(configs: list[str], output_dir: Path, **overrides: object) -> None:
    files = [str(CONFIGS / name) for name in configs]
    bundle_run(config_file=files if len(files) > 1 else files[0], output_dir=str(output_dir), **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("semi_cml") / "outputs"
    _run(["train.yaml"], output_dir, **QUICK)
    return output_dir


def test_training_runs_both_stages_and_saves_both_networks_and_the_teacher(trained):
    for name in ("model.pt", "model_m2.pt"):  # validation-selected, bare state dicts
        state = torch.load(trained / "models" / name, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    final = torch.load(trained / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert {"model", "model_m2", "teacher", "optimizer", "optimizer_m2"} <= set(final)
    assert not torch.equal(final["model"]["head.weight"], final["model_m2"]["head.weight"])
    checkpoint = torch.load(sorted((trained / "checkpoints").glob("*.pt"))[-1], map_location="cpu", weights_only=True)
    assert checkpoint["objects"]["phase"]["phase"] == 2 and checkpoint["objects"]["bma_pool"]["initialized"]
    history = json.loads((trained / "history.json").read_text())
    assert history["epoch"]["epoch"] == [1, 2, 3]
    datalist = json.loads((trained / "datalist.json").read_text())
    assert all("image_m2" in item for split in ("labeled", "unlabeled", "test") for item in datalist[split])
    # the resolved config records the compat switches of the run
    resolved = json.loads((trained / "models" / "resolved_config.json").read_text())
    assert resolved["compat"] == {"bma_train_mode_bn": False, "bma_parameters_only": False}


def test_evaluate_reports_each_network_on_its_own_modality(trained):
    _run(["train.yaml", "evaluate.yaml"], trained, **QUICK)
    datalist = json.loads((trained / "datalist.json").read_text())
    for name in ("final_m1", "best_m1", "final_m2", "best_m2"):
        report = json.loads((trained / "eval" / f"{name}_metrics.json").read_text())
        assert report["metrics"]["n_images"] == len(datalist["test"])
        assert 0.0 <= report["metrics"]["dice_mean_per_image"] <= 1.0
    cases = [
        Path(e["case"]).name for e in json.loads((trained / "eval" / "best_m2_metrics.json").read_text())["per_image"]
    ]
    assert len(cases) == len(datalist["test"])


@pytest.mark.parametrize("modality", [1, 2], ids=["bmode_network", "elastography_network"])
def test_inference_uses_one_modality_and_its_own_network(trained, tmp_path, modality):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(modality)
    Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(inputs / "scan.png")
    out = tmp_path / "predictions"
    _run(
        ["inference.yaml"],
        trained,
        modality=modality,
        input_dir=str(inputs),
        predictions_dir=str(out),
        spatial_size=[32, 32],
        progress=False,
    )
    mask = np.asarray(Image.open(out / "scan_seg.png"))
    assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 255}
    record = json.loads((out / "scan_inference.json").read_text())
    assert Path(record["weights"]).name == ("model.pt" if modality == 1 else "model_m2.pt")
