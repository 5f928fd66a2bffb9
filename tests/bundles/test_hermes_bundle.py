# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end smoke run of the Hermes bundle on the phantom: train (quick), evaluate on test, infer, as a user would.

The runs go through `python -m monai.bundle run` in a subprocess whose working directory is a temporary folder. The
phantom (with a class per image) is generated on the fly.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import run_bundle
from monai.bundle import ConfigWorkflow
from PIL import Image

from usseg.bundles import bundle_root

pytestmark = pytest.mark.slow

NAME = "breast_us_hermes_classification_segmentation"
CONFIGS = Path(bundle_root(NAME)) / "configs"
QUICK = [
    "--max_epochs",
    "2",
    "--iterations_per_epoch",
    "2",
    "--batch_size",
    "2",
    "--num_phantom_images",
    "24",
    "--phantom_size",
    "64",
    "--spatial_size",
    "[32,32]",
    "--encoder_widths",
    "[8,16,16,32]",
    "--contrast_warmup_passes",
    "0",
    "--log_every",
    "1",
]


def _run(cwd: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle(CONFIGS, cwd, configs, *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("hermes_bundle")
    result = _run(workdir, ["train.yaml"], *QUICK)
    return workdir / "outputs" / NAME, result.stdout + result.stderr


def test_train_logs_every_loss_and_threshold_and_saves_both_networks(trained: tuple[Path, str]) -> None:
    output, log = trained
    for name in ("cls_unsup_loss", "seg_contrast_loss", "itc_loss", "cls_accept_rate", "seg_threshold_c1"):
        assert f"{name}:" in log
    best = torch.load(output / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in best} == {"segmentation", "classification"}
    final = torch.load(output / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert set(final) == {"model", "optimizer", "cls_optimizer", "lr_scheduler", "cls_lr_scheduler"}
    history = json.loads((output / "history.json").read_text())
    assert {"val_mean_dice", "val_accuracy"} <= set(history["validation"]["values"])
    assert "itc_loss" in history["epoch"]["values"]
    checkpoint = torch.load(output / "checkpoints" / "checkpoint_epoch0002.pt", map_location="cpu", weights_only=True)
    assert "ema_ratio" in json.dumps(_keys(checkpoint))  # the pseudo-label policies are checkpointed


def _keys(state: object) -> object:
    return {str(k): _keys(v) for k, v in state.items()} if isinstance(state, dict) else None


def test_evaluate_reports_segmentation_and_classification_for_both_checkpoints(trained: tuple[Path, str]) -> None:
    output, _ = trained
    _run(output.parent.parent, ["train.yaml", "evaluate.yaml"], *QUICK)
    datalist = json.loads((output / "datalist.json").read_text())
    for name in ("final", "best"):
        report = json.loads((output / "eval" / f"{name}_metrics.json").read_text())
        metrics = report["metrics"]
        assert metrics["n_images"] == len(datalist["test"])
        for key in ("dice_mean_per_image", "dice_per_batch8", "iou_mean_per_image"):
            assert 0.0 <= metrics[key] <= 1.0
        assert "hd95_mean" in metrics
        assert report["classification"]["n_samples"] == len(datalist["test"])
        assert 0.0 <= report["classification"]["accuracy"] <= 1.0
        assert report["variant"]["ias"] == {
            "enabled": True,
            "views": "all",
            "at_eval": True,
            "detach_seg_features": True,
        }


def test_inference_writes_a_mask_and_class_probabilities_per_image(trained: tuple[Path, str], tmp_path: Path) -> None:
    output, _ = trained
    inputs = tmp_path / "in put"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a", (50, 70)), ("b", (64, 64))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(inputs / f"{name}.png")
    predictions = tmp_path / "predictions"
    _run(
        output.parent.parent,
        ["inference.yaml"],
        "--spatial_size",
        "[32,32]",
        "--encoder_widths",
        "[8,16,16,32]",
        "--input_dir",
        str(inputs),
        "--predictions_dir",
        str(predictions),
    )
    for name, shape in (("a", (50, 70)), ("b", (64, 64))):
        mask = np.asarray(Image.open(predictions / f"{name}_seg.png"))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
    with (predictions / "class_probabilities.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert sorted(Path(row[0]).name for row in rows) == ["a.png", "b.png"]
    for row in rows:
        probabilities = [float(v) for v in row[1:]]
        assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "configs, workflow_type",
    [(["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")],
    ids=["train", "evaluate", "inference"],
)
def test_configs_have_the_monai_workflow_properties(
    configs: list[str], workflow_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "x.png")
    # the semi-supervised trainer needs a non-empty labeled and unlabeled batch at construction
    quick = {"num_phantom_images": 24, "phantom_size": 64, "batch_size": 2}
    extra = {"input_dir": str(tmp_path)} if workflow_type == "infer" else quick
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **extra,
    )
    workflow.initialize()
    assert workflow.check_properties() in ([], None)


def test_switching_ias_off_alone_builds_the_networks_without_it() -> None:
    # IAS at evaluation follows `ias#enabled` unless set: one switch reproduces the released seg_train.py networks
    from monai.bundle import ConfigParser

    for config, enabled_key, network_key in (
        ("train.yaml", "ias#enabled", "network_def"),
        ("inference.yaml", "ias_enabled", "network_def"),
    ):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser[enabled_key] = False
        parser["encoder_widths"] = [8, 16, 16, 32]
        parser["num_image_classes"] = 2  # train.yaml: not read from a datalist, so nothing is generated
        model = parser.get_parsed_content(network_key)
        assert not model.ias_at_eval and not model.classification.ias_enabled, config
