# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The dual-network bundle end to end (train, evaluate, infer through ``monai.bundle``) and its label resizing.

The runs go through ``python -m monai.bundle run`` in a subprocess whose working directory is a temporary folder; the
phantom (multi-structure mode: labels 0, 1, 2) is generated on the fly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from usseg.bundles import bundle_root

pytestmark = pytest.mark.slow

BUNDLE = Path(bundle_root("us_dual_network_semisupervised_segmentation"))
CONFIGS = BUNDLE / "configs"
QUICK = [
    "--max_epochs", "2",
    "--iterations_per_epoch", "3",
    "--num_phantom_images", "24",
    "--phantom_size", "64",
    "--spatial_size", "[32,32]",
    "--num_labeled", "4",
    "--log_every", "1",
]  # fmt: skip


def _run(cwd: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS, cwd, configs, *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("dual_bundle")
    train = _run(workdir, ["train.yaml"], *QUICK)
    evaluate = _run(workdir, ["train.yaml", "evaluate.yaml"], *QUICK)
    logs = train.stdout + train.stderr + evaluate.stdout + evaluate.stderr
    return workdir / "outputs" / "us_dual_network_semisupervised_segmentation", logs


def test_train_logs_both_networks_and_saves_both_in_the_bundle_model(trained: tuple[Path, str]) -> None:
    output_dir, log = trained
    for term in ("sup_loss_net1", "sup_loss_net2", "cross_loss_net1", "cross_loss_net2", "contrast_loss"):
        assert term in log
    assert "val_mean_dice_net1" in log and "val_mean_dice_net2" in log
    for selected in ("model.pt", "model_net1.pt", "model_net2.pt"):  # ensemble's, network 1's, network 2's best
        best = torch.load(output_dir / "models" / selected, map_location="cpu", weights_only=True)
        assert {key.split(".")[0] for key in best} == {"net1", "net2"}
    final = torch.load(output_dir / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert {"model", "head1", "head2", "optimizer1", "optimizer2", "lr_scheduler1", "lr_scheduler2"} <= set(final)
    settings = json.loads((output_dir / "run_settings.json").read_text())
    assert settings["compat"] == {"contrastive_inactive": False, "bilinear_labels": False}
    assert settings["contrastive_term"] == "active"
    history = json.loads((output_dir / "history.json").read_text())
    assert history["epoch"]["epoch"] == [1, 2]
    datalist = json.loads((output_dir / "datalist.json").read_text())
    assert len(datalist["labeled"]) == 4 and datalist["unlabeled"]
    labeled = {item["image"] for item in datalist["labeled"]}
    assert not labeled & {item["image"] for item in datalist["unlabeled"]}


def test_evaluate_reports_each_network_and_the_ensemble_for_every_checkpoint(trained: tuple[Path, str]) -> None:
    output_dir, log = trained
    datalist = json.loads((output_dir / "datalist.json").read_text())
    for checkpoint in ("final", "best", "net1_best", "net2_best"):
        for member in ("net1", "net2", "ensemble"):
            report = json.loads((output_dir / "eval" / f"{checkpoint}_{member}_metrics.json").read_text())
            metrics = report["metrics"]
            assert metrics["n_images"] == len(datalist["test"])
            assert 0.0 <= metrics["dice_mean_per_image"] <= 1.0
            assert {"dice_mean_per_image/class1", "dice_mean_per_image/class2", "hd95_mean"} <= set(metrics)
    for metric in ("test_hd_ensemble", "test_hd95_ensemble", "seconds_per_image_ensemble"):
        assert metric in log


def test_inference_with_network_1_writes_three_class_masks_at_the_input_size(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    output_dir, _ = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)).save(inputs / "scan.png")
    predictions = tmp_path / "predictions"
    _run(
        output_dir.parent.parent,
        ["inference.yaml"],
        "--spatial_size", "[32,32]",
        "--input_dir", str(inputs),
        "--predictions_dir", str(predictions),
        "--inference_network", "net1",  # the ensemble is inference.yaml's default, checked by the zoo tests
        "--progress", "false",
    )  # fmt: skip
    mask = np.asarray(Image.open(predictions / "scan_seg.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 1, 2}


def _label_after_preprocessing(tmp_path: Path, bilinear: bool) -> np.ndarray:
    """The bundle's labeled preprocessing applied to a 3-class mask whose label 2 touches the background."""
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 5:30] = 1
    mask[20:40, 30:55] = 2  # label 2 borders label 1 on one side and background on three
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray((mask * 100).astype(np.uint8)).save(tmp_path / "image.png")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"spatial_size": [23, 23], "compat#bilinear_labels": bilinear})
    transforms = parser.get_parsed_content("validate#preprocessing")
    item = transforms({"image": str(tmp_path / "image.png"), "label": str(tmp_path / "mask.png")})
    return np.asarray(item["label"])[0]


def test_nearest_label_resizing_keeps_the_label_set_and_the_released_bilinear_does_not(tmp_path: Path) -> None:
    nearest = _label_after_preprocessing(tmp_path, bilinear=False)
    assert nearest.shape == (23, 23)
    assert set(np.unique(nearest)) == {0.0, 1.0, 2.0}
    released = _label_after_preprocessing(tmp_path, bilinear=True)
    assert set(np.unique(released)) <= {0.0, 1.0, 2.0}  # truncated to integers, as the released `.long()`
    # interpolated boundary values (e.g. 1.6 between labels 2 and 1) are truncated down: structure 2 erodes
    assert (released == 2).sum() < (nearest == 2).sum()
    assert (released != nearest).any()


@pytest.mark.parametrize(
    "configs, workflow_type", [(["train.yaml"], "train"), (["inference.yaml"], "infer")], ids=["train", "inference"]
)
def test_configs_have_the_monai_workflow_properties(
    configs: list[str], workflow_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anything the check resolves is written under the temporary folder
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    extra = (
        {"input_dir": str(tmp_path)}
        if workflow_type == "infer"
        else {"num_phantom_images": 24, "phantom_size": 64, "num_labeled": 4}
    )
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **extra,
    )
    workflow.initialize()
    assert workflow.check_properties() in ([], None)
