# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end smoke run of the supervised baseline bundle: train (quick), evaluate on test, infer, as a user would.

The runs go through `python -m monai.bundle run` in a subprocess whose working directory is a temporary folder,
which also proves the bundle works from any working directory. The phantom is generated on the fly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle
from monai.bundle import ConfigWorkflow
from PIL import Image

from usseg.bundles import bundle_root

pytestmark = pytest.mark.slow

BUNDLE = Path(bundle_root("breast_us_supervised_segmentation"))
CONFIGS = BUNDLE / "configs"
QUICK = [
    "--max_epochs",
    "2",
    "--iterations_per_epoch",
    "4",
    "--batch_size",
    "4",
    "--num_phantom_images",
    "24",
    "--phantom_size",
    "64",
    "--spatial_size",
    "[32,32]",
    "--log_every",
    "2",
]


def _run(cwd: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS, cwd, configs, *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("bundle_run")
    _run(workdir, ["train.yaml"], *QUICK)
    return workdir / "outputs" / "breast_us_supervised_segmentation"


def test_train_writes_checkpoints_history_and_a_split_without_leakage(trained):
    # model.pt is the zoo's bundle model: a bare state dict, loadable with weights_only=True
    best = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in best.values())
    final = torch.load(trained / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert set(final) == {"model", "optimizer", "lr_scheduler"}

    history = json.loads((trained / "history.json").read_text())
    assert Image.open(trained / "training_curves.png").size[0] > 100
    assert history["epoch"]["epoch"] == [1, 2]
    assert len(history["validation"]["values"]["val_mean_dice"]) == 2

    datalist = json.loads((trained / "datalist.json").read_text())
    splits = {name: {item["image"] for item in datalist[name]} for name in ("labeled", "validation", "test")}
    assert all(splits.values())
    assert not splits["labeled"] & splits["test"] and not splits["validation"] & splits["test"]
    assert not splits["labeled"] & splits["validation"]


def test_evaluate_reports_the_test_split_for_both_checkpoints(trained):
    _run(trained.parent.parent, ["train.yaml", "evaluate.yaml"], *QUICK)
    datalist = json.loads((trained / "datalist.json").read_text())
    for name in ("final", "best"):
        report = json.loads((trained / "eval" / f"{name}_metrics.json").read_text())
        assert report["metrics"]["n_images"] == len(datalist["test"])
        assert 0.0 <= report["metrics"]["dice_mean_per_image"] <= 1.0
        assert (trained / "eval" / f"{name}_montage.png").is_file()


def test_inference_writes_masks_and_overlays_at_the_input_size(trained, tmp_path):
    inputs = tmp_path / "in put ü"  # spaces and non-ASCII in the path
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a", (50, 70)), ("b", (64, 64))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(inputs / f"{name}.png")
    out = tmp_path / "preds"
    _run(
        trained.parent.parent,
        ["inference.yaml"],
        "--spatial_size",
        "[32,32]",
        "--input_dir",
        str(inputs),
        "--predictions_dir",
        str(out),
    )
    for name, shape in (("a", (50, 70)), ("b", (64, 64))):
        png = np.asarray(Image.open(out / f"{name}_seg.png"))
        assert png.shape == shape and set(np.unique(png)) <= {0, 255}
        nifti = nib.load(out / f"{name}_seg.nii.gz")
        assert nifti.shape == (shape[1], shape[0], 1)
        np.testing.assert_array_equal(np.asarray(nifti.dataobj)[:, :, 0].T * 255, png)
        assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (*shape, 3)


@pytest.mark.parametrize(
    "configs, workflow_type",
    [(["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")],
    ids=["train", "evaluate", "inference"],
)
def test_configs_have_the_monai_workflow_properties(configs, workflow_type, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything the check resolves is written under the temporary folder
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    extra = {"input_dir": str(tmp_path)} if workflow_type == "infer" else {"num_phantom_images": 8, "phantom_size": 64}
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **extra,
    )
    workflow.initialize()
    assert workflow.check_properties() in ([], None)
