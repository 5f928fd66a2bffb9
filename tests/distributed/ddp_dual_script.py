# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A dual-network run on two gloo ranks that ``test_ddp_dual_network.py`` launches with ``torchrun``.

Each rank builds both networks (a U-Net and an Attention U-Net, each with its projection head) from its OWN seed,
wraps each in ``DistributedDataParallel`` (no ``find_unused_parameters``: every parameter must take part in every
backward), shards both streams with ``DistributedSampler`` and trains a few iterations. Each rank writes
``<output>/dual_rank<k>.pt``: the initial and final parameters of both networks, and the loss terms it saw.

Usage::

    torchrun --standalone --nproc_per_node 2 ddp_dual_script.py --output OUT [--contrastive-inactive]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import Dataset, DistributedSampler, ThreadDataLoader

from usseg.data.io import atomic_write
from usseg.engines.dual_network import DualNetworkTrainer
from usseg.handlers import EpochSeedHandler
from usseg.networks.dual import ProjectedSegmenter, build_segmenter

IMAGE_SIZE = 32
NUM_LABELED, NUM_UNLABELED = 8, 24  # per rank: 2 labeled batches of 2, 2 unlabeled batches of 6
EPOCH_LENGTH, MAX_EPOCHS = 3, 2
LOSS_KEYS = ("loss", "sup_loss_net1", "sup_loss_net2", "cross_loss_net1", "cross_loss_net2", "contrast_loss")


def _items(count: int, rng: np.random.Generator, labeled: bool) -> list[dict[str, np.ndarray]]:
    items = []
    for _ in range(count):
        image = rng.random((1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        label = (image > 0.5).astype(np.float32) + (image > 0.8).astype(np.float32)
        items.append({"image": image, "label": label} if labeled else {"image": image})
    return items


def _parameters(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    return {name: value.detach().cpu().clone() for name, value in module.named_parameters()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--contrastive-inactive", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo")
    try:
        rank = dist.get_rank()
        torch.manual_seed(100 + rank)  # a different start per rank: DDP must broadcast rank 0's weights
        nets = [
            ProjectedSegmenter(build_segmenter(name, 3, dropout=0.0), embedding_dim=8, hidden_channels=16)
            for name in ("unet", "attention_unet")
        ]
        initial = [_parameters(n) for n in nets]
        wrapped = [torch.nn.parallel.DistributedDataParallel(n) for n in nets]
        rng = np.random.default_rng(1234)
        loaders = []
        for items, batch in ((_items(NUM_LABELED, rng, True), 2), (_items(NUM_UNLABELED, rng, False), 6)):
            dataset = Dataset(items)
            sampler = DistributedSampler(dataset, shuffle=True, seed=0)
            loaders.append(ThreadDataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True))
        losses: list[dict[str, float]] = []
        trainer = DualNetworkTrainer(
            device="cpu",
            max_epochs=MAX_EPOCHS,
            epoch_length=EPOCH_LENGTH,
            train_data_loader=loaders[0],
            unlabeled_data_loader=loaders[1],
            network=wrapped[0],
            network2=wrapped[1],
            optimizer=torch.optim.SGD(wrapped[0].parameters(), lr=0.05, momentum=0.9),
            optimizer2=torch.optim.SGD(wrapped[1].parameters(), lr=0.05, momentum=0.9),
            cross_weight=0.1,
            contrastive_inactive=args.contrastive_inactive,
            decollate=False,
            train_handlers=[EpochSeedHandler(0)],
        )
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda engine: losses.append({k: float(engine.state.output[k].detach()) for k in LOSS_KEYS}),
        )
        trainer.run()
        record = {"initial": initial, "final": [_parameters(n) for n in wrapped], "losses": losses}
        with atomic_write(f"{args.output}/dual_rank{rank}.pt", "wb") as handle:
            torch.save(record, handle)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
