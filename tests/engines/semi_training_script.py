# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A small semi-supervised training program that ``test_semi_resume.py`` runs, kills and resumes in a subprocess.

It trains a :class:`usseg.engines.SemiSupervisedTrainer` on synthetic 2D images with every piece of state a real run
has: random MONAI transforms on both streams (``WeakStrongViewsd`` for the unlabeled one), ``ThreadDataLoader``
prefetch threads, an ignite ``EMAHandler`` teacher, a ``RampUpHandler`` on the unlabeled weight, SGD with momentum
and a step LR schedule, all checkpointed by :class:`usseg.handlers.TrainingCheckpointHandler` and re-seeded per epoch
by :class:`usseg.handlers.EpochSeedHandler`.

Outputs in ``--output``: ``checkpoints/checkpoint_epoch<N>.pt`` while training, then ``final_weights.pt`` (state dicts
of the network and the EMA teacher), ``final_losses.json`` (every loss term of every iteration of the last epoch, and
the final learning rate) and ``run_info.json`` (the epochs this process ran and the checkpoint it resumed from).

Usage::

    python semi_training_script.py --output OUT --epochs 8 --seed 0 [--resume]
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
from ignite.handlers import EMAHandler
from monai.data import Dataset, ThreadDataLoader
from monai.handlers import LrScheduleHandler
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandRotate90d

from usseg.data.io import atomic_write, atomic_write_json
from usseg.engines import ConfidenceThreshold, SemiSupervisedTrainer
from usseg.handlers import EpochSeedHandler, RampUpHandler, TrainingCheckpointHandler
from usseg.transforms import WeakStrongViewsd

IMAGE_SIZE = 32
ITEMS_PER_STREAM = 16  # labeled and unlabeled alike: both loaders end with the epoch (see make_loaders)
BATCH_SIZE = 4
DATA_SEED = 1234  # the synthetic images are the same for every run seed; the run seed drives the training
LOSS_KEYS = ("loss", "sup_loss", "unsup_loss", "accept_rate", "unsup_weight")


def synthetic_items(count: int, rng: np.random.Generator, labeled: bool) -> list[dict[str, np.ndarray]]:
    """Bright discs on a noisy background, the disc being the foreground class.

    Args:
        count: number of items.
        rng: generator of the disc positions, radii and noise.
        labeled: add a ``"label"`` mask.

    Returns:
        Items ``{"image": (1, H, W) float32 in [0, 1], "label": (1, H, W) float32 in {0, 1}}`` (no label when
        unlabeled), with ``H = W = IMAGE_SIZE``.
    """
    rows, cols = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    items = []
    for _ in range(count):
        centre = rng.uniform(8, IMAGE_SIZE - 8, size=2)
        radius = rng.uniform(4, 9)
        disc = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.float32)
        image = np.clip(0.25 + 0.5 * disc + rng.normal(0.0, 0.1, disc.shape), 0.0, 1.0).astype(np.float32)
        item = {"image": image[None]}
        if labeled:
            item["label"] = disc[None]
        items.append(item)
    return items


def make_loaders() -> tuple[ThreadDataLoader, ThreadDataLoader]:
    """The labeled and unlabeled loaders: shuffled, random transforms, prefetched in a thread.

    Both streams have the same number of batches, so each loader is exhausted exactly at the end of an epoch and no
    prefetch thread is still drawing augmentations when the next epoch re-seeds them.
    """
    rng = np.random.default_rng(DATA_SEED)
    labeled_transform = Compose(
        [
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandRotate90d(keys=("image", "label"), prob=0.5),
            RandGaussianNoised(keys="image", prob=0.5, std=0.05),
        ]
    )
    unlabeled_transform = Compose([WeakStrongViewsd(keys="image")])
    labeled = Dataset(synthetic_items(ITEMS_PER_STREAM, rng, labeled=True), transform=labeled_transform)
    unlabeled = Dataset(synthetic_items(ITEMS_PER_STREAM, rng, labeled=False), transform=unlabeled_transform)
    return (
        ThreadDataLoader(labeled, batch_size=BATCH_SIZE, shuffle=True),
        ThreadDataLoader(unlabeled, batch_size=BATCH_SIZE, shuffle=True),
    )


def make_network(seed: int) -> torch.nn.Module:
    """A three-layer convolutional segmenter with two output classes, initialised from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 2, 1),
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
    """Assemble the trainer and its handlers.

    Args:
        output: folder of the checkpoints and final outputs.
        epochs: number of epochs of the whole run (a resumed run stops at the same epoch).
        seed: the run's seed (network initialisation, shuffles, augmentations).
        resume: continue from the newest valid checkpoint in ``output / "checkpoints"``.

    Returns:
        ``{"trainer", "network", "ema", "optimizer", "checkpoint", "recorder"}``.
    """
    labeled_loader, unlabeled_loader = make_loaders()
    network = make_network(seed)
    ema = EMAHandler(network, momentum=0.2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    checkpoint = TrainingCheckpointHandler(
        output / "checkpoints",
        save_dict={"network": network, "ema": ema.ema_model, "optimizer": optimizer, "lr_scheduler": scheduler},
        seed=seed,
        resume=resume,
        n_saved=2,
    )
    recorder = LastEpochRecorder()
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=labeled_loader,
        unlabeled_data_loader=unlabeled_loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        pseudo_label=ConfidenceThreshold(0.9),
        teacher=ema.ema_model,
        decollate=False,
        # the checkpoint comes last among the EPOCH_COMPLETED handlers, so it holds the stepped LR schedule
        train_handlers=[
            EpochSeedHandler(seed),
            # longer than an 8-epoch run (32 iterations): every unlabeled weight depends on the restored iteration
            RampUpHandler("unsup", max_value=1.0, length=40, shape="sigmoid"),
            ema,
            LrScheduleHandler(scheduler, print_lr=False),
            recorder,
            checkpoint,
        ],
    )
    return {
        "trainer": trainer,
        "network": network,
        "ema": ema,
        "optimizer": optimizer,
        "checkpoint": checkpoint,
        "recorder": recorder,
    }


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """``--output DIR --epochs N --seed S [--resume]``; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder of checkpoints and final outputs")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the whole run")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, then write the final weights, the last epoch's losses and the run's record; return 0."""
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(1)  # one thread: CPU kernels then reduce in a fixed order, so runs agree bitwise
    run = build_run(args.output, args.epochs, args.seed, args.resume)
    run["trainer"].run()

    with atomic_write(args.output / "final_weights.pt", "wb") as handle:
        torch.save({"network": run["network"].state_dict(), "ema": run["ema"].ema_model.state_dict()}, handle)
    recorder: LastEpochRecorder = run["recorder"]
    learning_rate = run["optimizer"].param_groups[0]["lr"]
    atomic_write_json(args.output / "final_losses.json", {"losses": recorder.losses, "learning_rate": learning_rate})
    resumed_from = run["checkpoint"].resumed_from
    atomic_write_json(
        args.output / "run_info.json",
        {"epochs_run": recorder.epochs_run, "resumed_from": None if resumed_from is None else resumed_from.name},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
