# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Semi-CML under DistributedDataParallel: two gloo processes, both students DDP-wrapped, stage 1 then stage 2.

This file is the test and the script: the test starts ``torchrun --standalone --nproc_per_node 2`` on this file,
whose ``main`` trains a :class:`~usseg.engines.MutualLearningTrainer` for two epochs (stage 1, then PReL with the
BMA teacher) with different initial weights on each rank. DDP raises at the next backward when a parameter got no
gradient, so a clean finish proves both networks are fully used in both stages; identical final weights on both
ranks (both students' parameters, and the whole teacher, which the BMA handler broadcasts) prove the averaging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

WORLD_SIZE = 2
SIZE = 16
TIMEOUT_S = 120


def _items(count: int, seed: int, labeled: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    items = []
    for _ in range(count):
        centre, radius = rng.uniform(5, SIZE - 5, 2), rng.uniform(3, 5)
        disc = (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.float32)
        item = {
            "image_m1": (0.2 + 0.6 * disc + rng.normal(0, 0.1, disc.shape)).astype(np.float32)[None],
            "image_m2": (0.8 - 0.5 * disc + rng.normal(0, 0.2, disc.shape)).astype(np.float32)[None],
        }
        if labeled:
            item["label"] = disc[None]
        items.append(item)
    return items


def _prepare_m2(batch: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
    return batch["image_m2"].to(device), batch["label"].to(device)


def main(output: Path) -> None:
    """One rank of the run: train, then save ``weights_rank<k>.pt`` into ``output``."""
    from monai.data import DataLoader, Dataset, DistributedSampler
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanDice, from_engine
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from usseg.engines.mutual_learning import MutualLearningTrainer
    from usseg.handlers import EpochSeedHandler
    from usseg.handlers.bma import BMATeacherHandler, PhaseSwitchHandler
    from usseg.networks.semi_cml import SemiCMLUNet

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        torch.manual_seed(100 + rank)  # different starts: DDP must broadcast rank 0's weights
        modules = [SemiCMLUNet(features=4, depth=3, dropout=(0.1, 0.2, 0.3)) for _ in range(3)]
        students = [torch.nn.parallel.DistributedDataParallel(m) for m in modules[:2]]
        teacher = modules[2]
        loaders = []
        for items in (_items(8, 1, True), _items(8, 2, False)):
            dataset = Dataset(items)
            sampler = DistributedSampler(dataset, shuffle=True, seed=0)
            loaders.append(DataLoader(dataset, batch_size=2, sampler=sampler, drop_last=True))
        validation = Dataset(_items(4, 3, True))
        evaluator = SupervisedEvaluator(
            device="cpu",
            val_data_loader=DataLoader(validation, batch_size=2, sampler=DistributedSampler(validation, shuffle=False)),
            network=students[1],
            prepare_batch=_prepare_m2,
            postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
            key_val_metric={"val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
        )
        bma = BMATeacherHandler(teacher, students[1], evaluator, pool_size=1, start_epoch=-1, stop_epoch=1)
        trainer = MutualLearningTrainer(
            device="cpu",
            max_epochs=2,
            epoch_length=3,
            train_data_loader=loaders[0],
            unlabeled_data_loader=loaders[1],
            network=students[0],
            network_m2=students[1],
            optimizer=torch.optim.Adam(students[0].parameters(), lr=1e-2),
            optimizer_m2=torch.optim.Adam(students[1].parameters(), lr=1e-2),
            teacher=teacher,
            teacher_passes=2,
            stage2_supervised_weight=0.5,
            train_handlers=[EpochSeedHandler(0), bma, PhaseSwitchHandler(1, 3, bma)],
            decollate=False,
        )
        trainer.run()
        state = {
            "phase": trainer.phase,
            "teacher_initialized": bma.initialized,
            "m1": {k: v.detach().clone() for k, v in modules[0].named_parameters()},
            "m2": {k: v.detach().clone() for k, v in modules[1].named_parameters()},
            "teacher": {k: v.clone() for k, v in teacher.state_dict().items()},
        }
        torch.save(state, output / f"weights_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_both_networks_through_both_stages_and_end_identical(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    command += [str(Path(__file__).resolve()), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT_S} s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-6000:]
    assert "unused parameters" not in output.lower()
    ranks = [torch.load(tmp_path / f"weights_rank{k}.pt", weights_only=True) for k in range(WORLD_SIZE)]
    assert all(r["phase"] == 2 and r["teacher_initialized"] for r in ranks)
    for network in ("m1", "m2", "teacher"):
        for key, value in ranks[0][network].items():
            assert torch.equal(value, ranks[1][network][key]), f"{network}.{key} differs between the ranks"
    torch.manual_seed(100)
    from usseg.networks.semi_cml import SemiCMLUNet

    initial = SemiCMLUNet(features=4, depth=3, dropout=(0.1, 0.2, 0.3)).head.weight
    assert not torch.equal(ranks[0]["m1"]["head.weight"], initial)  # rank 0's start, then trained


if __name__ == "__main__":
    main(Path(sys.argv[1]))
