# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""DualNetworkTrainer: the released ramp, the two-stream batches, the loss terms, selection and the helpers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset

from usseg.engines.dual_network import (
    DelayedModelSelection,
    DualNetworkTrainer,
    InferenceTimer,
    PrepareImageBatch,
    ReportGroup,
    StepwiseRampUpHandler,
)
from usseg.losses.cross_supervision import CrossSupervisionLoss, SupervisedDiceCELoss
from usseg.networks.dual import DualNetworkEnsemble, ProjectedSegmenter, build_segmenter

SIZE = 32
NUM_LABELED, NUM_UNLABELED = 6, 18
LABELED_BATCH, UNLABELED_BATCH = 2, 6


def _released_weight(iter_num: int) -> float:
    """``0.1 * sigmoid_rampup(iter_num // 150, 200)`` of the released script, written out."""
    current = min(max(iter_num // 150, 0), 200)
    return 0.1 * math.exp(-5.0 * (1.0 - current / 200) ** 2)


@pytest.mark.parametrize(
    "iteration, expected",
    [(1, 0.1 * math.exp(-5.0)), (44, 6.74e-4), (30_000, 0.09999), (30_001, 0.1), (60_000, 0.1)],
    ids=["first", "released_csv_step_43", "released_csv_step_30000", "end", "after_end"],
)
def test_stepwise_ramp_reproduces_the_released_consistency_weight(iteration: int, expected: float) -> None:
    ramp = StepwiseRampUpHandler("unsup", max_value=0.1, length=200, step=150)
    # ignite counts iterations from 1; the released iter_num from 0 (assets/consis_weights/weight.csv)
    assert ramp.value(iteration) == pytest.approx(_released_weight(iteration - 1), rel=1e-12)
    assert ramp.value(iteration) == pytest.approx(expected, rel=1e-3)


def test_stepwise_ramp_is_a_staircase_and_step_one_is_the_plain_ramp() -> None:
    ramp = StepwiseRampUpHandler("unsup", max_value=0.1, length=200, step=150)
    assert ramp.value(1) == ramp.value(150) < ramp.value(151) == ramp.value(300)
    plain = StepwiseRampUpHandler("unsup", max_value=2.0, length=50, step=1)
    assert [plain.value(i) for i in (1, 26, 51)] == pytest.approx([2.0 * math.exp(-5.0), 2.0 * math.exp(-1.25), 2.0])


def test_stepwise_ramp_refuses_a_step_below_one() -> None:
    with pytest.raises(ValueError, match="step"):
        StepwiseRampUpHandler("unsup", 0.1, 200, step=0)


def _items(count: int, labeled: bool, offset: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(offset)
    items = []
    for index in range(count):
        image = torch.rand(1, SIZE, SIZE, generator=generator)
        item: dict[str, Any] = {"image": image, "index": offset + index}
        if labeled:
            item["label"] = (image > 0.5).float() + (image > 0.8).float()  # labels 0, 1, 2
        items.append(item)
    return items


def _networks(seed: int = 0) -> tuple[ProjectedSegmenter, ProjectedSegmenter]:
    torch.manual_seed(seed)
    net1 = ProjectedSegmenter(build_segmenter("unet", 3, dropout=0.0), embedding_dim=8, hidden_channels=16)
    net2 = ProjectedSegmenter(build_segmenter("attention_unet", 3, dropout=0.0), embedding_dim=8, hidden_channels=16)
    return net1, net2


class _RecordingPrepare(PrepareImageBatch):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def __call__(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> torch.Tensor:
        self.seen.append([int(i) for i in batchdata["index"]])
        return super().__call__(batchdata, device, non_blocking, **kwargs)


def _trainer(epoch_length: int, max_epochs: int = 1, **kwargs: Any) -> tuple[DualNetworkTrainer, _RecordingPrepare]:
    net1, net2 = _networks()
    prepare = _RecordingPrepare()
    labeled = DataLoader(Dataset(_items(NUM_LABELED, True, 0)), batch_size=LABELED_BATCH, shuffle=True)
    unlabeled = DataLoader(Dataset(_items(NUM_UNLABELED, False, 100)), batch_size=UNLABELED_BATCH, shuffle=True)
    trainer = DualNetworkTrainer(
        device="cpu",
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled,
        network=net1,
        network2=net2,
        optimizer=torch.optim.SGD(net1.parameters(), lr=0.01, momentum=0.9),
        optimizer2=torch.optim.SGD(net2.parameters(), lr=0.01, momentum=0.9),
        prepare_unlabeled=prepare,
        decollate=False,
        **kwargs,
    )
    return trainer, prepare


def test_two_streams_give_the_configured_counts_without_duplicates_within_a_pass() -> None:
    # 6 labeled / 2 = 3 iterations per labeled pass; 18 unlabeled / 6 = 3 per unlabeled pass; 6 iterations = 2 passes
    trainer, prepare = _trainer(epoch_length=6)
    labeled_seen: list[list[int]] = []
    outputs: list[dict[str, float]] = []

    def record(engine: Engine) -> None:
        labeled_seen.append([int(i) for i in engine.state.batch["index"]])
        outputs.append({k: float(v) for k, v in engine.state.output.items() if torch.as_tensor(v).numel() == 1})

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert [len(b) for b in labeled_seen] == [LABELED_BATCH] * 6
    assert [len(b) for b in prepare.seen] == [UNLABELED_BATCH] * 6
    for stream, seen, size, per_pass in (
        ("labeled", labeled_seen, NUM_LABELED, 3),
        ("unlabeled", prepare.seen, NUM_UNLABELED, 3),
    ):
        for start in range(0, 6, per_pass):
            flat = [i for batch in seen[start : start + per_pass] for i in batch]
            assert len(flat) == len(set(flat)) == size, f"{stream} pass {start // per_pass}: {flat}"
    assert all(not set(b) & set(range(NUM_LABELED)) for b in prepare.seen)  # no labeled image in the unlabeled stream
    expected_keys = {
        "loss", "loss_net1", "loss_net2", "sup_loss_net1", "sup_loss_net2", "cross_loss_net1", "cross_loss_net2",
        "contrast_loss", "pseudo_agreement", "pseudo_foreground_net1", "pseudo_foreground_net2", "unsup_weight",
        "contrast_weight",
    }  # fmt: skip
    assert expected_keys <= set(outputs[-1])
    assert all(math.isfinite(v) for row in outputs for v in row.values())


def test_total_loss_is_the_sum_of_both_networks_terms() -> None:
    trainer, _ = _trainer(epoch_length=1, cross_weight=0.3, contrastive_weight=0.5)
    trainer.run()
    out = {k: float(v) for k, v in trainer.state.output.items() if torch.as_tensor(v).numel() == 1}
    assert out["unsup_weight"] == 0.3 and out["contrast_weight"] == 0.5
    for k in (1, 2):
        expected = out[f"sup_loss_net{k}"] + 0.3 * out[f"cross_loss_net{k}"] + 0.25 * out["contrast_loss"]
        assert out[f"loss_net{k}"] == pytest.approx(expected, rel=1e-5)
    assert out["loss"] == pytest.approx(out["loss_net1"] + out["loss_net2"], rel=1e-6)
    assert out["contrast_loss"] > 0.0


def test_compat_contrastive_inactive_sets_the_contrastive_weight_to_zero() -> None:
    trainer, _ = _trainer(epoch_length=1, contrastive_inactive=True, cross_weight=0.1)
    trainer.run()
    out = trainer.state.output
    assert float(out["contrast_weight"]) == 0.0 and float(out["contrast_loss"]) > 0.0  # computed, not counted
    expected = float(out["sup_loss_net1"]) + 0.1 * float(out["cross_loss_net1"])
    assert float(out["loss_net1"]) == pytest.approx(expected, rel=1e-6)


def test_both_networks_and_heads_are_updated_and_exposed_for_checkpoints() -> None:
    trainer, _ = _trainer(epoch_length=2, cross_weight=0.1)
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in trainer.networks]
    trainer.run()
    assert len(trainer.networks) == 2 and len(trainer.optimizers) == 2
    for net, start in zip(trainer.networks, before):
        for prefix in ("segmenter.", "head."):
            changed = [k for k, v in net.state_dict().items() if k.startswith(prefix) and not torch.equal(v, start[k])]
            assert changed, f"no {prefix} parameter of {type(net.segmenter).__name__} changed"


@pytest.mark.parametrize("mode", ["soft_dice", "hard_ce"])
def test_trainer_accepts_both_cross_supervision_forms(mode: str) -> None:
    trainer, _ = _trainer(epoch_length=1, cross_supervision_loss=CrossSupervisionLoss(mode), cross_weight=0.1)
    trainer.run()
    assert math.isfinite(float(trainer.state.output["cross_loss_net1"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"unlabeled_weight": 1.0}, "does not use"), ({"cross_weight": -1.0}, "weights must be >= 0")],
    ids=["fixmatch_argument", "negative_weight"],
)
def test_trainer_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _trainer(epoch_length=1, **kwargs)


def test_supervised_loss_default_is_the_released_one() -> None:
    trainer, _ = _trainer(epoch_length=1)
    assert isinstance(trainer.loss_function, SupervisedDiceCELoss)


def test_ensemble_averages_the_probabilities_of_both_networks() -> None:
    net1, net2 = _networks()
    images = torch.rand(2, 1, SIZE, SIZE)
    ensemble = DualNetworkEnsemble(net1.segmenter, net2.segmenter).eval()
    with torch.no_grad():
        expected = 0.5 * (net1.segmenter(images).softmax(1) + net2.segmenter(images).softmax(1))
        torch.testing.assert_close(ensemble(images).softmax(dim=1), expected, rtol=1e-5, atol=1e-6)
        ensemble.mode = "net2"
        torch.testing.assert_close(ensemble(images), net2.segmenter(images))
    assert {k.split(".")[0] for k in ensemble.state_dict()} == {"net1", "net2"}
    with pytest.raises(ValueError, match="mode"):
        DualNetworkEnsemble(net1.segmenter, net2.segmenter, mode="average")


@pytest.mark.parametrize(
    "epoch, expected", [(1, -1.0), (2, -1.0), (3, 0.7), (4, 0.7)], ids=["epoch1", "epoch2", "epoch3", "epoch4"]
)
def test_delayed_model_selection_publishes_the_metric_from_the_start_iteration(epoch: int, expected: float) -> None:
    evaluator = Engine(lambda engine, batch: None)
    selection = DelayedModelSelection("val_mean_dice", "val_selection", start_iteration=150, iterations_per_epoch=50)
    selection.attach(evaluator)
    evaluator.state.epoch, evaluator.state.metrics = epoch, {"val_mean_dice": 0.7}
    selection(evaluator)
    assert evaluator.state.metrics["val_selection"] == expected


def test_inference_timer_and_report_group() -> None:
    evaluator = Engine(lambda engine, batch: None)
    from monai.engines.utils import IterationEvents

    evaluator.register_events(*IterationEvents)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.fire_event(IterationEvents.FORWARD_COMPLETED))
    timer = InferenceTimer("spi")
    timer.attach(evaluator)
    evaluator.run([{"image": torch.zeros(3, 1, 4, 4)}, {"image": torch.zeros(1, 1, 4, 4)}], max_epochs=1)
    assert 0.0 <= evaluator.state.metrics["spi"] < 1.0

    class _Handler:
        prefix = ""

    group = ReportGroup({"net1": _Handler(), "ensemble": _Handler()})
    group.prefix = "best_"
    assert [h.prefix for h in group.handlers.values()] == ["best_net1_", "best_ensemble_"]
    with pytest.raises(ValueError, match="prefix"):
        ReportGroup({"net1": object()})


# ====================================================================================== kill and resume (subprocesses)

SCRIPT = Path(__file__).with_name("dual_training_script.py")
EPOCHS, KILL_AFTER_EPOCH, TIMEOUT_S = 4, 2, 180.0


def _start(output: Path, resume: bool = False) -> subprocess.Popen:
    output.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPT), "--output", str(output), "--epochs", str(EPOCHS), "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (output / "log.txt").open("a") as log:
        return subprocess.Popen([*command, *(["--resume"] if resume else [])], stdout=log, stderr=log, env=env)


def _finish(process: subprocess.Popen, output: Path) -> None:
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert code == 0, f"run in {output} exited with {code}:\n{(output / 'log.txt').read_text()[-4000:]}"


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run and a run SIGKILLed during epoch 3 then resumed, started together."""
    root = tmp_path_factory.mktemp("dual_resume")
    reference, killed = root / "reference", root / "killed"
    processes = {"reference": _start(reference), "killed": _start(killed)}
    try:
        checkpoint = killed / "checkpoints" / f"checkpoint_epoch{KILL_AFTER_EPOCH:04d}.pt"
        deadline = time.monotonic() + TIMEOUT_S
        while not (checkpoint.exists() and f"Epoch[{KILL_AFTER_EPOCH}] Complete" in (killed / "log.txt").read_text()):
            if processes["killed"].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"epoch {KILL_AFTER_EPOCH} was not saved:\n{(killed / 'log.txt').read_text()[-4000:]}")
            time.sleep(0.005)
        time.sleep(0.2)
        os.kill(processes["killed"].pid, signal.SIGKILL)
        processes["killed"].wait(timeout=TIMEOUT_S)
        killed_code = processes["killed"].returncode
        killed_left_final = (killed / "final_weights.pt").exists()
        processes["resumed"] = _start(killed, resume=True)
        _finish(processes["reference"], reference)
        _finish(processes["resumed"], killed)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def outputs(folder: Path) -> dict[str, Any]:
        return {
            "weights": torch.load(folder / "final_weights.pt", map_location="cpu", weights_only=True),
            "losses": json.loads((folder / "final_losses.json").read_text()),
            "info": json.loads((folder / "run_info.json").read_text()),
        }

    return {"reference": outputs(reference), "killed": outputs(killed), "code": killed_code, "left": killed_left_final}


def test_killed_run_resumes_and_ends_bitwise_equal_to_the_uninterrupted_run(resume_runs: dict[str, Any]) -> None:
    assert resume_runs["code"] == -signal.SIGKILL and not resume_runs["left"]
    info = resume_runs["killed"]["info"]
    resumed_epoch = int(info["resumed_from"].removeprefix("checkpoint_epoch").removesuffix(".pt"))
    assert KILL_AFTER_EPOCH <= resumed_epoch < EPOCHS
    assert info["epochs_run"] == list(range(resumed_epoch + 1, EPOCHS + 1))  # only the missing epochs were trained
    reference, resumed = resume_runs["reference"], resume_runs["killed"]
    for network in ("network1", "network2"):
        ref, res = reference["weights"][network], resumed["weights"][network]
        assert ref.keys() == res.keys()
        differing = [name for name in ref if not torch.equal(ref[name], res[name])]
        assert not differing, f"{network}: {differing[:3]} differ"
    assert resumed["losses"] == reference["losses"]
    # the comparison has power: the ramp still rises in the last epoch and the schedules stepped
    weights = reference["losses"]["losses"]["unsup_weight"]
    assert 0.0 < weights[0] < weights[-1] < 0.1
    assert reference["losses"]["learning_rates"] == pytest.approx([0.02 * 0.5 ** (EPOCHS // 2)] * 2)
