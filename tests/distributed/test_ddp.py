# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Distributed training on a CPU: two gloo processes under ``torchrun``, run for a few iterations.

Two runs, each started once per module (or per teacher) by a fixture:

- the supervised bundle, exactly as a user launches it: ``torchrun -m monai.bundle run --config_file
  "['train.yaml','multi_gpu_train.yaml', <record.yaml>]"``. The third file, written here, only appends
  ``ddp_semi_script.RankRecorder`` to ``train#handlers`` with ``+`` and gives each rank its own ``output_dir``, so
  a file written by rank 1 would show up in rank 1's folder;
- ``ddp_semi_script.py``: a ``SemiSupervisedTrainer`` on a DDP network with labeled and unlabeled
  ``DistributedSampler``s, once with an EMA teacher and once with the network as its own teacher.

Both check that the ranks saw disjoint shards whose union is the whole split (in every epoch, or every pass of a
restarted loader), in the order ``DistributedSampler`` gives for the epoch set on it, and that the ranks finished
with identical weights.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from usseg.bundles import bundle_root
from usseg.data.datalist import load_datalist
from usseg.data.prepare import resolve_datalist

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

HERE = Path(__file__).resolve().parent
SEMI_SCRIPT = HERE / "ddp_semi_script.py"
CONFIGS = Path(bundle_root("breast_us_supervised_segmentation")) / "configs"
WORLD_SIZE = 2
SEED = 0
TIMEOUT_S = 240

# supervised bundle: 12 labeled images = 6 per rank = 3 batches of 2 = one epoch, so each epoch is one full pass;
# 3 validation images, split 2 + 1: uneven validation shards must neither hang nor be padded with duplicates
NUM_LABELED = 12
NUM_VALIDATION = 3
VAL_FRACTION = 0.15  # of the 19 phantom images left after the test split: 3
BATCH_SIZE = 2
ITERATIONS_PER_EPOCH = 3
EPOCHS = 2
BUNDLE_OVERRIDES = [
    "--seed", str(SEED),
    "--max_epochs", str(EPOCHS),
    "--iterations_per_epoch", str(ITERATIONS_PER_EPOCH),
    "--batch_size", str(BATCH_SIZE),
    "--spatial_size", "[32,32]",
    "--log_every", "1",
]  # fmt: skip
RECORD_YAML = """\
# test-only: per-rank output folders, and recorders appended to the bundle's training and validation handlers
output_dir: "$os.path.abspath(os.path.join('outputs', 'rank' + os.environ['RANK']))"
+train#handlers:
- _target_: ddp_semi_script.RankRecorder
  output_dir: "$os.path.abspath('records')"
  network: '@network'
  name: train
+validate#handlers:
- _target_: ddp_semi_script.RankRecorder
  output_dir: "$os.path.abspath('records')"
  name: validate
"""
# semi-supervised script (its constants): labeled 8 items = 2 batches per rank, unlabeled 16 = 4, 8 iterations/epoch
SEMI_SIZES = {"labeled": 8, "unlabeled": 16}
SEMI_EPOCHS, SEMI_EPOCH_LENGTH, SEMI_BATCH_SIZE = 2, 8, 2
DDP_ERRORS = ("unused parameters", "marked as ready", "finished reduction", "ready only once")


@dataclass
class DistributedRun:
    """A finished ``torchrun`` launch: its console output and the recorder's per-rank files."""

    workdir: Path
    records_dir: Path
    output: str

    def record(self, rank: int, name: str = "train") -> dict[str, Any]:
        return json.loads((self.records_dir / f"{name}_seen_rank{rank}.json").read_text())

    def weights(self, rank: int) -> dict[str, Any]:
        return torch.load(self.records_dir / f"train_weights_rank{rank}.pt", map_location="cpu", weights_only=True)


def _torchrun(arguments: list[str], cwd: Path) -> str:
    """Run ``torchrun --standalone --nproc_per_node 2 <arguments>`` in ``cwd``; return its output, fail on error.

    The launcher and its workers run in their own session, so a hung run is killed whole at the timeout.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    command += arguments
    python_path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": python_path}
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} hung for {TIMEOUT_S} s:\n{output[-6000:]}")
    assert process.returncode == 0, f"{' '.join(command)} exited with {process.returncode}:\n{output[-6000:]}"
    return output


def _sampler_order(size: int, rank: int, epoch: int) -> list[int]:
    """The indices ``rank`` draws from a shuffling ``DistributedSampler`` over ``size`` items at ``epoch``."""
    sampler = DistributedSampler(list(range(size)), num_replicas=WORLD_SIZE, rank=rank, shuffle=True, seed=SEED)
    sampler.set_epoch(epoch)
    return list(sampler)


def _passes(record: dict[str, Any], stream: str) -> list[tuple[tuple[int, int], list[Any]]]:
    """``((trainer epoch, sampler epoch), item ids in order)`` of each pass over ``stream``, in run order."""

    def pass_key(entry: dict[str, Any]) -> tuple[int, int]:
        return entry["epoch"], entry[f"{stream}_sampler_epoch"]

    grouped = groupby(record["iterations"], pass_key)
    return [(key, [item for entry in group for item in entry[stream]]) for key, group in grouped]


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], what: str) -> None:
    assert first.keys() == second.keys(), f"{what}: different keys"
    differing = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differing, f"{what}: {len(differing)} of {len(first)} tensors differ, e.g. {differing[:3]}"


# ================================================================================================ supervised bundle


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DistributedRun, dict[str, list[str]]]:
    """The supervised bundle trained by two gloo ranks; returns the run and the image files of the labeled and
    validation splits, in datalist order."""
    workdir = tmp_path_factory.mktemp("ddp_bundle")
    # built once before launching, as docs/distributed.md says: the ranks then share one datalist
    datalist = resolve_datalist(
        workdir / "prepared",
        seed=SEED,
        val_fraction=VAL_FRACTION,
        num_labeled=NUM_LABELED,
        phantom={"num_images": 24, "size": 64, "seed": SEED},
    )
    (workdir / "record.yaml").write_text(RECORD_YAML)
    config_files = [CONFIGS / "train.yaml", CONFIGS / "multi_gpu_train.yaml", workdir / "record.yaml"]
    config_arg = "[" + ",".join(f"'{path}'" for path in config_files) + "]"
    output = _torchrun(
        ["-m", "monai.bundle", "run", "--config_file", config_arg, "--datalist", datalist, *BUNDLE_OVERRIDES], workdir
    )
    splits = {name: [item["image"] for item in load_datalist(datalist, name)] for name in ("labeled", "validation")}
    assert (len(splits["labeled"]), len(splits["validation"])) == (NUM_LABELED, NUM_VALIDATION)
    return DistributedRun(workdir, workdir / "records", output), splits


def test_bundle_records_come_from_two_ranks(bundle_run):
    run, _ = bundle_run
    records = [run.record(rank) for rank in range(WORLD_SIZE)]
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, WORLD_SIZE), (1, WORLD_SIZE)]
    for record in records:
        assert [e["epoch"] for e in record["iterations"]] == [
            e for e in range(1, EPOCHS + 1) for _ in range(ITERATIONS_PER_EPOCH)
        ]
        assert all(len(entry["labeled"]) == BATCH_SIZE for entry in record["iterations"])


def test_bundle_ranks_see_disjoint_shards_covering_the_labeled_split_every_epoch(bundle_run):
    run, splits = bundle_run
    labeled = splits["labeled"]
    per_rank = [_passes(run.record(rank), "labeled") for rank in range(WORLD_SIZE)]
    assert [k for k, _ in per_rank[0]] == [k for k, _ in per_rank[1]], "the ranks' epochs or sampler epochs differ"
    assert len(per_rank[0]) == EPOCHS
    for (key, seen0), (_, seen1) in zip(*per_rank):
        assert len(seen0) == len(set(seen0)) == NUM_LABELED // WORLD_SIZE, f"rank 0 repeated images in {key}"
        assert len(seen1) == len(set(seen1)) == NUM_LABELED // WORLD_SIZE, f"rank 1 repeated images in {key}"
        assert not set(seen0) & set(seen1), f"both ranks trained on {set(seen0) & set(seen1)} in {key}"
        assert set(seen0) | set(seen1) == set(labeled), f"images missed in {key}"


def test_bundle_shards_follow_the_sampler_reshuffled_every_epoch(bundle_run):
    run, splits = bundle_run
    labeled = splits["labeled"]
    shards = {}
    for rank in range(WORLD_SIZE):
        for (epoch, sampler_epoch), seen in _passes(run.record(rank), "labeled"):
            assert sampler_epoch == epoch, "MONAI's Workflow sets the sampler's epoch to the trainer's"
            assert seen == [labeled[i] for i in _sampler_order(NUM_LABELED, rank, epoch)]
            shards[rank, epoch] = set(seen)
    assert shards[0, 1] != shards[0, 2], "the shards did not change between epochs: set_epoch had no effect"


def test_bundle_validation_sees_every_image_exactly_once_over_the_ranks(bundle_run):
    run, splits = bundle_run
    per_rank = [run.record(rank, "validate")["iterations"] for rank in range(WORLD_SIZE)]
    for epoch in range(1, EPOCHS + 1):
        seen = [
            [image for entry in entries if entry["epoch"] == epoch for image in entry["labeled"]]
            for entries in per_rank
        ]
        assert sorted(len(s) for s in seen) == [1, 2], f"epoch {epoch}: shard sizes {[len(s) for s in seen]}"
        assert sorted(seen[0] + seen[1]) == sorted(splits["validation"]), f"epoch {epoch}"


def test_bundle_ranks_finish_with_identical_weights_equal_to_the_saved_model(bundle_run):
    run, _ = bundle_run
    rank0, rank1 = run.weights(0)["network"], run.weights(1)["network"]
    _assert_same_weights(rank0, rank1, "final network")
    saved = torch.load(
        run.workdir / "outputs" / "rank0" / "models" / "model_final.pt", map_location="cpu", weights_only=True
    )
    _assert_same_weights(rank0, saved["model"], "rank 0 vs models/model_final.pt")


def test_bundle_only_rank0_writes_files_and_logs(bundle_run):
    run, _ = bundle_run
    rank0_dir, rank1_dir = run.workdir / "outputs" / "rank0", run.workdir / "outputs" / "rank1"
    rank1_files = sorted(str(p.relative_to(rank1_dir)) for p in rank1_dir.rglob("*") if p.is_file())
    assert rank1_files == [], f"rank 1 wrote {rank1_files}"
    expected = {
        "history.json",
        "training_curves.png",
        "models/model.pt",
        "models/model_final.pt",
        "checkpoints/checkpoint_epoch0001.pt",
        "checkpoints/checkpoint_epoch0002.pt",
        "models/resolved_config.json",
        "models/run_record.json",
    }
    written = {str(p.relative_to(rank0_dir)) for p in rank0_dir.rglob("*") if p.is_file()}
    event_files = {name for name in written if name.startswith("tensorboard/events.out.tfevents.")}
    assert len(event_files) == 1, written  # one TensorBoard event file, from rank 0 only
    assert written - event_files == expected
    record = json.loads((rank0_dir / "models" / "run_record.json").read_text())
    assert [run["world_size"] for run in record["runs"]] == [2]
    history = json.loads((rank0_dir / "history.json").read_text())
    assert history["epoch"]["epoch"] == list(range(1, EPOCHS + 1))
    # the validation StatsHandler logs once per epoch: rank 1's is disabled through `is_not_rank0`
    assert run.output.count("Metrics -- val_mean_dice") == EPOCHS, run.output[-4000:]


def test_bundle_ranks_draw_independent_augmentations(bundle_run):
    run, _ = bundle_run
    draws = [[entry["augmentations"] for entry in run.record(rank)["iterations"]] for rank in range(WORLD_SIZE)]
    assert all(d is not None for d in draws[0]), "the recorder found no random transforms in the image metadata"
    assert draws[0] != draws[1]


# ================================================================================================ SemiSupervisedTrainer


@pytest.fixture(scope="module", params=["ema", "self"], ids=["ema_teacher", "self_teacher"])
def semi_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[DistributedRun, str]:
    """``ddp_semi_script.py`` on two gloo ranks, with the teacher given by the parameter."""
    workdir = tmp_path_factory.mktemp(f"ddp_semi_{request.param}")
    output = _torchrun(
        [str(SEMI_SCRIPT), "--output", str(workdir), "--teacher", request.param, "--seed", str(SEED)], workdir
    )
    return DistributedRun(workdir, workdir, output), request.param


def test_semi_runs_without_ddp_errors(semi_run):
    run, _ = semi_run
    lowered = run.output.lower()
    assert not [error for error in DDP_ERRORS if error in lowered], run.output[-4000:]
    for rank in range(WORLD_SIZE):
        iterations = run.record(rank)["iterations"]
        assert len(iterations) == SEMI_EPOCHS * SEMI_EPOCH_LENGTH
        assert all(math.isfinite(v) for entry in iterations for v in entry["losses"].values())
        # the unlabeled branch took part in the DDP backward at least once
        assert any(entry["losses"]["unsup_loss"] > 0 for entry in iterations)


@pytest.mark.parametrize("stream", ["labeled", "unlabeled"])
def test_semi_ranks_see_disjoint_items_every_pass(semi_run, stream):
    run, _ = semi_run
    size = SEMI_SIZES[stream]
    per_rank = [_passes(run.record(rank), stream) for rank in range(WORLD_SIZE)]
    keys = [k for k, _ in per_rank[0]]
    assert keys == [k for k, _ in per_rank[1]], "the ranks' passes differ"
    passes_per_epoch = SEMI_EPOCH_LENGTH * SEMI_BATCH_SIZE * WORLD_SIZE // size
    assert len(keys) == len(set(keys)) == SEMI_EPOCHS * passes_per_epoch, f"{keys}: a pass without a new set_epoch"
    for rank, passes in enumerate(per_rank):
        for (_, sampler_epoch), seen in passes:
            assert seen == _sampler_order(size, rank, sampler_epoch), f"rank {rank}, sampler epoch {sampler_epoch}"
    for (key, seen0), (_, seen1) in zip(*per_rank):
        assert len(seen0) == len(seen1) == size // WORLD_SIZE, f"incomplete pass {key}"
        assert not set(seen0) & set(seen1), f"both ranks saw {set(seen0) & set(seen1)} in pass {key}"
        assert set(seen0) | set(seen1) == set(range(size)), f"items missed in pass {key}"
    first_shards = {frozenset(seen) for _, seen in per_rank[0]}
    assert len(first_shards) > 1, "rank 0 got the same shard in every pass: the samplers were never reshuffled"


def test_semi_ranks_finish_with_identical_weights(semi_run):
    run, teacher_kind = semi_run
    rank0, rank1 = run.weights(0), run.weights(1)
    # each rank started from its own random weights: only DDP's broadcast and gradient averaging make them agree
    assert any(not torch.equal(rank0["initial"][k], rank1["initial"][k]) for k in rank0["initial"])
    _assert_same_weights(rank0["network"], rank1["network"], "final network")
    assert any(not torch.equal(rank0["network"][k], rank0["initial"][k]) for k in rank0["network"]), "no training"
    if teacher_kind == "ema":
        _assert_same_weights(rank0["teacher"], rank1["teacher"], "EMA teacher")
        assert any(not torch.equal(rank0["teacher"][k], rank0["network"][k]) for k in rank0["network"])
    else:
        assert rank0["teacher"] is None and rank1["teacher"] is None
