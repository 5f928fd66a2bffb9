# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Kill a semi-supervised training run with SIGKILL mid-epoch, resume it, and get the uninterrupted run bit for bit.

The runs are subprocesses of ``semi_training_script.py`` (a ``SemiSupervisedTrainer`` with an EMA teacher, a ramped
unlabeled weight, SGD with momentum, a step LR schedule, ``ThreadDataLoader`` streams with random transforms,
``EpochSeedHandler`` and ``TrainingCheckpointHandler``). They are started together so their imports overlap; the
module fixture runs them once for all tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("semi_training_script.py")
EPOCHS = 8
KILL_AFTER_EPOCH = 3
KILL_DELAY_S = 0.05  # after epoch 3 is saved; an epoch takes 0.15-0.5 s, so the kill lands inside epoch 4
TIMEOUT_S = 120.0


def _start(output: Path, seed: int, resume: bool = False) -> subprocess.Popen:
    """Start one training run; its console output goes to ``output / "log.txt"``."""
    output.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPT), "--output", str(output), "--epochs", str(EPOCHS), "--seed", str(seed)]
    if resume:
        command.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (output / "log.txt").open("a")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()  # the child holds its own descriptor


def _finish(process: subprocess.Popen, output: Path) -> None:
    """Wait for a run and fail with its log when it did not exit cleanly."""
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert code == 0, f"training run in {output} exited with {code}:\n{(output / 'log.txt').read_text()}"


def _kill_during_the_epoch_after(process: subprocess.Popen, output: Path, epoch: int) -> str:
    """SIGKILL ``process`` a little after ``epoch`` is saved and logged complete, i.e. inside epoch ``epoch + 1``.

    Returns:
        The run's console output up to the kill.
    """
    checkpoint = output / "checkpoints" / f"checkpoint_epoch{epoch:04d}.pt"
    log = output / "log.txt"
    deadline = time.monotonic() + TIMEOUT_S
    while not (checkpoint.exists() and f"Epoch[{epoch}] Complete" in log.read_text()):
        if process.poll() is not None:
            pytest.fail(f"the run ended (code {process.returncode}) before epoch {epoch} was saved:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"epoch {epoch} was not saved within {TIMEOUT_S} s")
        time.sleep(0.005)
    time.sleep(KILL_DELAY_S)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=TIMEOUT_S)
    return log.read_text()


def _outputs(output: Path) -> dict:
    return {
        "weights": torch.load(output / "final_weights.pt", map_location="cpu", weights_only=True),
        "losses": json.loads((output / "final_losses.json").read_text()),
        "info": json.loads((output / "run_info.json").read_text()),
        "log": (output / "log.txt").read_text(),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Outputs of: an uninterrupted run (seed 0), a second one (seed 0), one with seed 1, and a killed-and-resumed
    run (seed 0, under ``"killed"``), plus the killed process's exit code and its console output up to the kill."""
    root = tmp_path_factory.mktemp("semi_resume")
    folders = {name: root / name for name in ("reference", "twin", "other_seed", "killed")}
    processes = {
        "killed": _start(folders["killed"], seed=0),
        "reference": _start(folders["reference"], seed=0),
        "twin": _start(folders["twin"], seed=0),
        "other_seed": _start(folders["other_seed"], seed=1),
    }
    try:
        killed_log = _kill_during_the_epoch_after(processes["killed"], folders["killed"], KILL_AFTER_EPOCH)
        killed_code = processes["killed"].returncode
        killed_left_final_outputs = (folders["killed"] / "final_weights.pt").exists()
        processes["resumed"] = _start(folders["killed"], seed=0, resume=True)
        for name in ("reference", "twin", "other_seed"):
            _finish(processes[name], folders[name])
        _finish(processes["resumed"], folders["killed"])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    results = {name: _outputs(folder) for name, folder in folders.items()}
    results["killed_code"] = killed_code
    results["killed_log"] = killed_log
    results["killed_left_final_outputs"] = killed_left_final_outputs
    return results


def _assert_same_weights(first: dict, second: dict) -> None:
    for model in ("network", "ema"):
        assert first[model].keys() == second[model].keys()
        for name, tensor in first[model].items():
            assert torch.equal(tensor, second[model][name]), f"{model}.{name} differs"


def _completed_epochs(log: str) -> list[int]:
    return [int(epoch) for epoch in re.findall(r"Epoch\[(\d+)\] Complete", log)]


def _resumed_epoch(log: str) -> int:
    match = re.search(r"resume: continuing after epoch (\d+) from \S*checkpoint_epoch(\d+)\.pt", log)
    assert match, log
    assert match.group(1) == str(int(match.group(2)))
    return int(match.group(1))


def test_the_run_was_killed_mid_training(runs: dict) -> None:
    assert runs["killed_code"] == -signal.SIGKILL
    assert not runs["killed_left_final_outputs"]
    completed = _completed_epochs(runs["killed_log"])
    assert completed[0] == 1 and KILL_AFTER_EPOCH <= completed[-1] < EPOCHS, completed


def test_resumed_run_continued_from_the_last_saved_epoch(runs: dict) -> None:
    epoch = _resumed_epoch(runs["killed"]["log"])
    last_logged = _completed_epochs(runs["killed_log"])[-1]
    # the newest checkpoint; one epoch past the last log line if the kill fell between the save and the log line
    assert epoch in (last_logged, last_logged + 1)
    info = runs["killed"]["info"]
    assert info["resumed_from"] == f"checkpoint_epoch{epoch:04d}.pt"
    assert info["epochs_run"] == list(range(epoch + 1, EPOCHS + 1))  # only the missing epochs were trained
    assert runs["reference"]["info"] == {"epochs_run": list(range(1, EPOCHS + 1)), "resumed_from": None}
    assert "resume:" not in runs["reference"]["log"]


def test_resumed_run_equals_the_uninterrupted_run_bitwise(runs: dict) -> None:
    _assert_same_weights(runs["killed"]["weights"], runs["reference"]["weights"])
    assert runs["killed"]["losses"] == runs["reference"]["losses"]


def test_runs_with_one_seed_are_bitwise_identical(runs: dict) -> None:
    _assert_same_weights(runs["twin"]["weights"], runs["reference"]["weights"])
    assert runs["twin"]["losses"] == runs["reference"]["losses"]


def test_another_seed_trains_differently(runs: dict) -> None:
    reference, other = runs["reference"], runs["other_seed"]
    for model in ("network", "ema"):
        assert all(
            not torch.equal(tensor, other["weights"][model][name])
            for name, tensor in reference["weights"][model].items()
        )
    assert other["losses"]["losses"]["loss"] != reference["losses"]["losses"]["loss"]


def test_the_last_epoch_exercised_every_piece_of_state(runs: dict) -> None:
    """Guards the comparison's power: each restored piece of state visibly shapes the last epoch."""
    losses = runs["reference"]["losses"]
    weights = losses["losses"]["unsup_weight"]
    assert 0.0 < weights[0] < weights[-1] < 1.0  # the ramp is still rising, so it depends on the restored iteration
    # StepLR(step_size=3, gamma=0.5) stepped after every epoch, the resumed ones included
    assert losses["learning_rate"] == pytest.approx(0.05 * 0.5 ** (EPOCHS // 3))
    assert any(0.0 < rate < 1.0 for rate in losses["losses"]["accept_rate"])  # the teacher's confidence matters
    reference = runs["reference"]["weights"]
    assert not torch.equal(reference["network"]["0.weight"], reference["ema"]["0.weight"])  # the teacher lags
