# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A Meta-USCL ``ContrastivePretrainer`` under DDP (2 gloo processes), for ``test_ddp_meta_uscl.py``.

Every rank builds the network and CMW-Net from its OWN seed (so identical final weights prove the broadcasts and the
gradient averaging), trains on its shard of random "videos" with ``DistributedSampler``s for the pair and meta
loaders, runs the meta step every iteration, and writes ``<output>/weights_rank<k>.pt`` and ``losses_rank<k>.json``.

Usage::

    torchrun --standalone --nproc_per_node 2 ddp_meta_uscl_script.py --output OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import DataLoader, Dataset, DistributedSampler

from usseg.engines.contrastive import ContrastivePretrainer
from usseg.handlers import EpochSeedHandler
from usseg.networks.contrastive import CMWNet, ContrastiveOutputs, build_contrastive_network
from usseg.transforms import VideoFramePaird
from usseg.transforms.video.augment import contrastive_augmentation

WIDTHS = (4, 8, 8, 16)
SIZE = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)  # different initial weights on each rank
    network = build_contrastive_network("meta_uscl", depth=10, widths=WIDTHS)
    cmw = CMWNet(WIDTHS[-1])
    ddp = torch.nn.parallel.DistributedDataParallel(ContrastiveOutputs(network))
    rng = np.random.default_rng(0)  # the same data on every rank; the samplers shard it
    videos = [{"video": rng.integers(0, 256, (6, 40, 40), dtype=np.uint8)} for _ in range(12)]
    train = Dataset(videos[:8], VideoFramePaird("video", "meta_uscl", contrastive_augmentation("meta_uscl", SIZE)))
    meta_pair = VideoFramePaird("video", "meta_uscl", contrastive_augmentation("meta_uscl", SIZE), samples=1)
    meta = Dataset(videos[8:], meta_pair)
    loader = DataLoader(train, batch_size=2, sampler=DistributedSampler(train, shuffle=True, seed=0))
    meta_loader = DataLoader(meta, batch_size=2, sampler=DistributedSampler(meta, shuffle=True, seed=0))
    trainer = ContrastivePretrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=loader,
        network=ddp,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        meta_data_loader=meta_loader,
        weight_network=cmw,
        weight_optimizer=torch.optim.Adam(cmw.parameters(), lr=0.01),
        decollate=False,
    )
    trainer.state.rank = rank
    EpochSeedHandler(seed=0).attach(trainer)
    losses: list[dict[str, float]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: losses.append({k: float(e.state.output[k]) for k in ("loss", "meta_loss", "weight_std")}),
    )
    trainer.run()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.save({"network": network.state_dict(), "cmw": cmw.state_dict()}, args.output / f"weights_rank{rank}.pt")
    (args.output / f"losses_rank{rank}.json").write_text(json.dumps(losses))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
