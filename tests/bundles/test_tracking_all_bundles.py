# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Every bundle's train.yaml logs each loss component to TensorBoard and records its run next to its checkpoints.

The checks read the raw configs (nothing is trained), so they run over every bundle folder; a failure says exactly
which entries to add. One quick run of the baseline bundle then checks what those entries produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from monai.bundle import ConfigParser
from monai.bundle import run as monai_run

from usseg.bundles import bundle_root, list_bundles
from usseg.handlers.run_record import CONFIG_NAME, RECORD_NAME
from usseg.handlers.tracking import read_scalars

BUNDLES = list_bundles()
NAMES = sorted(BUNDLES)
BASELINE = "breast_us_supervised_segmentation"

TENSORBOARD_SNIPPET = """
# top level, next to ckpt_dir:
tensorboard_dir: "$os.path.join(@output_dir, 'tensorboard')"
tensorboard_writer:             # TensorBoard event files without the tensorboard package (not in CI)
  _target_: usseg.handlers.ScalarEventWriter
  log_dir: '@tensorboard_dir'
# in train#handlers:
  - _target_: TensorBoardStatsHandler  # every loss component and pseudo-label statistic, every iteration
    _disabled_: '@is_not_rank0'
    summary_writer: '@tensorboard_writer'
    tag_name: train_loss
    output_transform: '$usseg.handlers.tracking.loss_components'
# in validate#handlers (validation metrics per epoch):
  - _target_: TensorBoardStatsHandler
    _disabled_: '@is_not_rank0'
    summary_writer: '@tensorboard_writer'
    iteration_log: false"""

RUN_RECORD_SNIPPET = """
# in train#handlers, after usseg.handlers.TrainingCheckpointHandler (built on every rank; rank 0 writes):
  - _target_: usseg.handlers.RunRecordHandler  # models/resolved_config.json + run_record.json, at start
    save_dir: '@ckpt_dir'"""


def _train_config(name: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(Path(BUNDLES[name]["path"]) / "configs" / "train.yaml"))
    return parser


def _handlers(parser: ConfigParser, config_id: str, target: str) -> list[dict[str, Any]]:
    handlers = parser.get(config_id) or []
    return [h for h in handlers if isinstance(h, dict) and str(h.get("_target_", "")).split(".")[-1] == target]


def _writer_target(parser: ConfigParser, writer: Any) -> str:
    """The ``_target_`` a ``summary_writer`` entry builds: inline, or through one ``@id`` reference."""
    if isinstance(writer, str) and writer.startswith("@"):
        writer = parser.get(writer[1:].replace("::", "#"))
    return str(writer.get("_target_", "")) if isinstance(writer, dict) else ""


@pytest.mark.parametrize("name", NAMES)
def test_train_yaml_logs_every_loss_component_to_tensorboard(name: str) -> None:
    parser = _train_config(name)
    found = _handlers(parser, "train#handlers", "TensorBoardStatsHandler")
    problems = []
    if not found:
        problems.append("train#handlers has no TensorBoardStatsHandler")
    for handler in found:
        if "loss_components" not in str(handler.get("output_transform", "")):
            problems.append("its output_transform is not usseg.handlers.tracking.loss_components")
        if handler.get("_disabled_") != "@is_not_rank0":
            problems.append("it is not disabled on ranks > 0 (_disabled_: '@is_not_rank0')")
        if not _writer_target(parser, handler.get("summary_writer")).endswith("ScalarEventWriter"):
            problems.append(
                "it has no summary_writer built by usseg.handlers.ScalarEventWriter (MONAI's own writer needs the "
                "tensorboard package, which the base install and CI lack)"
            )
    if not _handlers(parser, "validate#handlers", "TensorBoardStatsHandler"):
        problems.append("validate#handlers has no TensorBoardStatsHandler (validation metrics per epoch)")
    assert not problems, f"{name}/configs/train.yaml: {'; '.join(problems)}. Add:{TENSORBOARD_SNIPPET}"


@pytest.mark.parametrize("name", NAMES)
def test_train_yaml_records_the_run_next_to_the_checkpoints(name: str) -> None:
    parser = _train_config(name)
    found = _handlers(parser, "train#handlers", "RunRecordHandler")
    problems = []
    if len(found) != 1:
        problems.append(f"train#handlers has {len(found)} usseg.handlers.RunRecordHandler, expected 1")
    elif found[0].get("save_dir") != "@ckpt_dir":
        problems.append(f"its save_dir is {found[0].get('save_dir')!r}, expected '@ckpt_dir' (next to the weights)")
    elif "_disabled_" in found[0]:
        problems.append("it must not be disabled on any rank (it writes on rank 0 only, by itself)")
    assert not problems, f"{name}/configs/train.yaml: {'; '.join(problems)}. Add:{RUN_RECORD_SNIPPET}"


def test_baseline_run_writes_one_series_per_component_and_its_record(tmp_path: Path) -> None:
    configs = Path(bundle_root(BASELINE)) / "configs"
    output_dir = tmp_path / "run"
    overrides = {
        "output_dir": str(output_dir),
        "max_epochs": 2,
        "iterations_per_epoch": 2,
        "batch_size": 2,
        "num_phantom_images": 16,
        "phantom_size": 64,
        "spatial_size": [32, 32],
        "network_def#channels": [4, 8, 16, 32, 64],
        "network_def#num_res_units": 0,
    }
    monai_run(
        config_file=str(configs / "train.yaml"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )
    series = read_scalars(output_dir / "tensorboard")
    # the supervised trainer's output holds one scalar, the loss; the validator adds its key metric per epoch
    assert [step for step, _ in series.pop("loss")] == [1, 2, 3, 4]
    assert [step for step, _ in series.pop("val_mean_dice")] == [1, 2]
    assert not series
    history = json.loads((output_dir / "history.json").read_text())
    assert len(history["epoch"]["epoch"]) == 2

    saved = json.loads((output_dir / "models" / CONFIG_NAME).read_text())
    assert saved["max_epochs"] == 2 and saved["network_def"]["channels"] == [4, 8, 16, 32, 64]
    run = json.loads((output_dir / "models" / RECORD_NAME).read_text())["runs"][-1]
    assert run["invocation"]["overrides"] == overrides
    assert run["resolved_values"]["output_dir"] == str(output_dir)
    assert run["resolved_values"]["datalist_file"] == str(output_dir / "datalist.json")
