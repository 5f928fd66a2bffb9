# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""HermesTrainer under DistributedDataParallel: two gloo processes on the CPU, both networks wrapped.

One ``torchrun`` launch runs this file as a worker (``--worker``) for three variants in turn: Hermes with
``itc_gradient="both"`` (every parameter gets a gradient, so DDP runs without ``find_unused_parameters``),
``itc_gradient="seg_only"`` and SupOnly (both leave heads without gradient, which DDP accepts only with
``find_unused_parameters=True``, as ``multi_gpu_train.yaml`` sets). Each rank trains on its own data for three
iterations (a parameter left out of the reduction would fail on the second) and saves its parameters; the test
checks that the ranks end with identical parameters in both networks and that training changed them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
]

WORLD_SIZE = 2
TIMEOUT_S = 240
VARIANTS = {
    "both": {"itc_gradient": "both", "supervised_only": False},
    "seg_only": {"itc_gradient": "seg_only", "supervised_only": False},
    "suponly": {"itc_gradient": "both", "supervised_only": True},
}


def worker(output: Path) -> None:
    """One rank: train each variant for 3 iterations on rank-specific data, save the parameters."""
    from torch.nn.parallel import DistributedDataParallel

    from usseg.engines.hermes import HermesTrainer
    from usseg.losses.pixel_contrast import PixelContrastLoss
    from usseg.networks.hermes import HermesClassificationNet, HermesSegmentationNet

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    small = {"depth": 10, "widths": (8, 16, 16, 32)}
    for name, variant in VARIANTS.items():
        torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway; the same seed keeps the check honest
        seg = HermesSegmentationNet(embedding_dim=16, consistency_dim=12, **small)
        cls = HermesClassificationNet(
            embedding_dim=8, consistency_dim=12, ias=True, seg_channels=seg.ias_channels, **small
        )
        initial = {f"seg.{k}": v.detach().clone() for k, v in seg.named_parameters()}
        unused = variant["supervised_only"] or variant["itc_gradient"] == "seg_only"
        seg_ddp = DistributedDataParallel(seg, find_unused_parameters=unused)
        cls_ddp = DistributedDataParallel(cls, find_unused_parameters=unused)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        labeled = [
            {
                "image": torch.rand(2, 1, 32, 32, generator=generator),
                "label": (torch.rand(2, 1, 32, 32, generator=generator) > 0.6).float(),
                "class": torch.tensor([0, 1]),
            }
            for _ in range(3)
        ]
        unlabeled = [
            {"image_weak": torch.rand(2, 1, 32, 32, generator=generator), "image_strong": torch.rand(2, 1, 32, 32)}
            for _ in range(3)
        ]
        trainer = HermesTrainer(
            "cpu",
            1,
            labeled,
            unlabeled,
            seg_ddp,
            torch.optim.Adam(seg.parameters(), lr=1e-3),
            cls_ddp,
            torch.optim.SGD(cls.parameters(), lr=1e-2, momentum=0.9),
            epoch_length=3,
            contrast_start_iteration=0,
            itc_rampup_length=0,
            pixel_contrast_loss=PixelContrastLoss(min_anchor_pixels=0),
            decollate=False,
            **variant,
        )
        trainer.run()
        parameters = {f"seg.{k}": v.detach() for k, v in seg.named_parameters()}
        parameters.update({f"cls.{k}": v.detach() for k, v in cls.named_parameters()})
        changed = any(not torch.equal(initial[k], parameters[k]) for k in initial)
        torch.save({"parameters": parameters, "changed": changed}, output / f"{name}_rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("ddp_hermes")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD_SIZE),
        str(Path(__file__).resolve()),
        "--worker",
        str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT_S} s:\n{log[-6000:]}")
    assert process.returncode == 0, f"torchrun exited with {process.returncode}:\n{log[-6000:]}"
    return output


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_ranks_end_with_identical_parameters_in_both_networks(launched: Path, variant: str) -> None:
    ranks = [torch.load(launched / f"{variant}_rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert all(rank["changed"] for rank in ranks)
    first, second = ranks[0]["parameters"], ranks[1]["parameters"]
    assert first.keys() == second.keys()
    assert any(k.startswith("cls.") for k in first) and any(k.startswith("seg.") for k in first)
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} parameters differ between ranks, e.g. {differ[:3]}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    worker(parser.parse_args().worker)
