# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A small dual-network training program that ``test_dual_network_trainer.py`` runs, kills and resumes.

It trains a :class:`usseg.engines.dual_network.DualNetworkTrainer` (a U-Net and an Attention U-Net with projection
heads, batch norm and dropout) on synthetic 3-class images with every piece of state a real run has: random
transforms on both streams, ``ThreadDataLoader`` prefetch threads, the step-wise ramp of the cross-supervision
weight, two SGD optimisers with momentum and two LR schedules, all checkpointed by
:class:`usseg.handlers.TrainingCheckpointHandler` and re-seeded per epoch by :class:`usseg.handlers.EpochSeedHandler`.

Outputs in ``--output``: ``checkpoints/checkpoint_epoch<N>.pt`` while training, then ``final_weights.pt`` (state dicts
of both networks), ``final_losses.json`` (every loss term of every iteration of the last epoch, the final learning
rates) and ``run_info.json`` (the epochs this process ran and the checkpoint it resumed from).

Usage::

    python dual_training_script.py --output OUT --epochs 5 --seed 0 [--resume]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, ThreadDataLoader
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

from usseg.data.io import atomic_write, atomic_write_json
from usseg.engines.dual_network import DualNetworkTrainer, StepwiseRampUpHandler
from usseg.handlers import EpochSeedHandler, TrainingCheckpointHandler
from usseg.networks.dual import ProjectedSegmenter, build_segmenter

IMAGE_SIZE = 32
NUM_LABELED, NUM_UNLABELED = 8, 24  # 4 labeled and 4 unlabeled batches: both streams end with the epoch
LABELED_BATCH, UNLABELED_BATCH = 2, 6
DATA_SEED = 1234
LOSS_KEYS = ("loss", "sup_loss_net1", "sup_loss_net2", "cross_loss_net1", "contrast_loss", "unsup_weight")


def synthetic_items(count: int, rng: np.random.Generator, labeled: bool) -> list[dict[str, np.ndarray]]:
    """Two concentric bright discs (labels 1 and 2) on a noisy background.

    Returns:
        Items ``{"image": (1, H, W) float32, "label": (1, H, W) float32 in {0, 1, 2}}`` (no label when unlabeled).
    """
    rows, cols = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    items = []
    for _ in range(count):
        centre = rng.uniform(10, IMAGE_SIZE - 10, size=2)
        distance = np.sqrt((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2)
        outer, inner = rng.uniform(6, 9), rng.uniform(2, 4)
        label = ((distance <= outer).astype(np.float32) + (distance <= inner).astype(np.float32))[None]
        image = np.clip(0.2 + 0.3 * label + rng.normal(0.0, 0.1, label.shape), 0.0, 1.0).astype(np.float32)
        items.append({"image": image, "label": label} if labeled else {"image": image})
    return items


def make_loaders() -> tuple[ThreadDataLoader, ThreadDataLoader]:
    rng = np.random.default_rng(DATA_SEED)
    labeled = Dataset(
        synthetic_items(NUM_LABELED, rng, labeled=True),
        transform=Compose(
            [
                RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
                RandGaussianNoised(keys="image", prob=0.5, std=0.05),
            ]
        ),
    )
    unlabeled = Dataset(
        synthetic_items(NUM_UNLABELED, rng, labeled=False),
        transform=Compose(
            [RandFlipd(keys="image", prob=0.5, spatial_axis=1), RandGaussianNoised(keys="image", prob=0.5, std=0.05)]
        ),
    )
    return (
        ThreadDataLoader(labeled, batch_size=LABELED_BATCH, shuffle=True),
        ThreadDataLoader(unlabeled, batch_size=UNLABELED_BATCH, shuffle=True),
    )


class LastEpochRecorder:
    """Keep every loss term of every iteration of the current epoch, and the epochs this process ran."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {key: [] for key in LOSS_KEYS}
        self.epochs_run: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)

    def start_epoch(self, engine: Engine) -> None:
        self.epochs_run.append(int(engine.state.epoch))
        for values in self.losses.values():
            values.clear()

    def record(self, engine: Engine) -> None:
        for key in LOSS_KEYS:
            value = engine.state.output[key]
            self.losses[key].append(float(value.detach() if isinstance(value, torch.Tensor) else value))


def build_run(output: Path, epochs: int, seed: int, resume: bool) -> dict[str, Any]:
    """Assemble the trainer and its handlers; returns ``{"trainer", "networks", "optimizers", "checkpoint",
    "recorder"}``."""
    labeled_loader, unlabeled_loader = make_loaders()
    torch.manual_seed(seed)
    net1 = ProjectedSegmenter(build_segmenter("unet", 3, dropout=0.1), embedding_dim=8, hidden_channels=16)
    net2 = ProjectedSegmenter(build_segmenter("attention_unet", 3, dropout=0.1), embedding_dim=8, hidden_channels=16)
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4) for n in (net1, net2)]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in optimizers]
    checkpoint = TrainingCheckpointHandler(
        output / "checkpoints",
        save_dict={
            "network1": net1,
            "network2": net2,
            "optimizer1": optimizers[0],
            "optimizer2": optimizers[1],
            "lr_scheduler1": schedulers[0],
            "lr_scheduler2": schedulers[1],
        },
        seed=seed,
        resume=resume,
        n_saved=2,
    )
    recorder = LastEpochRecorder()
    trainer = DualNetworkTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=labeled_loader,
        unlabeled_data_loader=unlabeled_loader,
        network=net1,
        network2=net2,
        optimizer=optimizers[0],
        optimizer2=optimizers[1],
        decollate=False,
        train_handlers=[
            EpochSeedHandler(seed),
            # the ramp is still rising at the end, so every weight depends on the restored iteration
            StepwiseRampUpHandler("unsup", max_value=0.1, length=10, step=3),
            LrScheduleHandler(schedulers[0], print_lr=False),
            LrScheduleHandler(schedulers[1], print_lr=False),
            recorder,
            checkpoint,
        ],
    )
    return {"trainer": trainer, "networks": (net1, net2), "optimizers": optimizers, "checkpoint": checkpoint,
            "recorder": recorder}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Train, then write the final weights, the last epoch's losses and the run's record; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder of checkpoints and final outputs")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the whole run")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(1)  # one thread: CPU kernels reduce in a fixed order, so runs agree bitwise
    run = build_run(args.output, args.epochs, args.seed, args.resume)
    run["trainer"].run()
    net1, net2 = run["networks"]
    with atomic_write(args.output / "final_weights.pt", "wb") as handle:
        torch.save({"network1": net1.state_dict(), "network2": net2.state_dict()}, handle)
    rates = [o.param_groups[0]["lr"] for o in run["optimizers"]]
    atomic_write_json(args.output / "final_losses.json", {"losses": run["recorder"].losses, "learning_rates": rates})
    resumed_from = run["checkpoint"].resumed_from
    atomic_write_json(
        args.output / "run_info.json",
        {"epochs_run": run["recorder"].epochs_run, "resumed_from": None if resumed_from is None else resumed_from.name},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
