# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The baseline bundle survives a SIGKILL: resumed training ends bitwise equal to an uninterrupted run.

Also: the same seed gives the same weights, and a corrupt newest checkpoint is skipped, with a warning naming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from usseg.bundles import bundle_root

pytestmark = pytest.mark.slow

CONFIG = str(Path(bundle_root("breast_us_supervised_segmentation")) / "configs" / "train.yaml")
QUICK = [
    "--max_epochs",
    "6",
    "--iterations_per_epoch",
    "6",
    "--batch_size",
    "4",
    "--num_phantom_images",
    "24",
    "--phantom_size",
    "64",
    "--spatial_size",
    "[32,32]",
]
OUT = Path("outputs") / "breast_us_supervised_segmentation"


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG, *QUICK, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2"}


def _train(workdir: Path, *extra: str) -> str:
    result = subprocess.run(_command(*extra), cwd=workdir, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _final_weights(workdir: Path) -> dict[str, torch.Tensor]:
    return torch.load(workdir / OUT / "models" / "model_final.pt", map_location="cpu", weights_only=True)["model"]


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"{len(unequal)} tensors differ, e.g. {unequal[:3]}"


def _validation_curve(workdir: Path) -> list[float]:
    return json.loads((workdir / OUT / "history.json").read_text())["validation"]["values"]["val_mean_dice"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _train(workdir)
    return workdir


def _kill_after_checkpoint(workdir: Path, epoch: int) -> None:
    """Start a run in ``workdir`` and SIGKILL it as soon as the checkpoint of ``epoch`` exists."""
    process = subprocess.Popen(
        _command(), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    marker = workdir / OUT / "checkpoints" / f"checkpoint_epoch{epoch:04d}.pt"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # somewhere in the next epoch (or while writing its checkpoint)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (workdir / OUT / "models" / "model_final.pt").exists()


def test_sigkill_mid_run_then_resume_ends_bitwise_equal(uninterrupted, tmp_path):
    _kill_after_checkpoint(tmp_path, epoch=2)
    log = _train(tmp_path, "--resume", "True")
    assert "resume: continuing after epoch" in log
    _assert_bitwise_equal(_final_weights(uninterrupted), _final_weights(tmp_path))
    assert _validation_curve(tmp_path) == _validation_curve(uninterrupted)


def test_same_seed_same_weights_and_another_seed_differs(uninterrupted, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir(), other.mkdir()
    _train(again)
    _assert_bitwise_equal(_final_weights(uninterrupted), _final_weights(again))
    _train(other, "--seed", "1")
    first, second = _final_weights(uninterrupted), _final_weights(other)
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    _kill_after_checkpoint(tmp_path, epoch=3)
    checkpoints = sorted((tmp_path / OUT / "checkpoints").glob("checkpoint_epoch*.pt"))
    newest = checkpoints[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short
    log = _train(tmp_path, "--resume", "True")
    assert f"{newest.name}, which cannot be loaded" in log
    assert f"resume: continuing after epoch {int(checkpoints[-2].stem[-4:])}" in log
    _assert_bitwise_equal(_final_weights(uninterrupted), _final_weights(tmp_path))
