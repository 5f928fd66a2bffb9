# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""A ``SemiSupervisedTrainer`` run under DistributedDataParallel, and the recorder both DDP tests attach.

``test_ddp.py`` starts this file with ``torchrun --standalone --nproc_per_node 2`` (gloo on a CPU). Every rank trains
a small segmenter wrapped in ``DistributedDataParallel`` on synthetic images, with:

- a labeled and an unlabeled ``ThreadDataLoader``, each with its own ``monai.data.DistributedSampler``;
- an epoch longer than both loaders (``EPOCH_LENGTH``), so within an epoch the labeled loader restarts four times
  and the unlabeled one twice; every restart is a new sampler epoch (``SemiSupervisedTrainer`` calls ``set_epoch``);
- the teacher chosen by ``--teacher``: ``ema`` (ignite's ``EMAHandler`` on the DDP network's module) or ``self``
  (the DDP network itself, called under ``no_grad``);
- ``EpochSeedHandler``, as in the bundles;
- different initial weights on each rank, so that equal final weights prove DDP's broadcast and gradient averaging.

:class:`RankRecorder` writes, per rank, ``<name>_seen_rank<k>.json`` (what every iteration saw: item ids of both
streams, the samplers' epochs, the random augmentations applied, the losses) and ``<name>_weights_rank<k>.pt`` (final
state dicts). The supervised bundle test adds it to the bundle's training and validation handlers, with this folder on
``PYTHONPATH``.

Usage::

    torchrun --standalone --nproc_per_node 2 ddp_semi_script.py --output OUT [--teacher ema|self] [--seed 0]

writes ``OUT/train_seen_rank<k>.json`` and ``OUT/train_weights_rank<k>.pt`` for k = 0, 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.data import Dataset, DistributedSampler, ThreadDataLoader
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandRotate90d
from monai.utils import ensure_tuple

from usseg.data.io import atomic_write, atomic_write_json
from usseg.engines import ConfidenceThreshold, PrepareWeakStrongBatch, SemiSupervisedTrainer, resolve_device
from usseg.handlers import EpochSeedHandler
from usseg.transforms import WeakStrongViewsd

IMAGE_SIZE = 32
NUM_LABELED = 8  # 4 per rank: 2 batches, so the labeled loader restarts within an epoch
NUM_UNLABELED = 16  # 8 per rank: 4 batches
BATCH_SIZE = 2
EPOCH_LENGTH = 8  # iterations: 4 labeled passes and 2 unlabeled passes per epoch
MAX_EPOCHS = 2
DATA_SEED = 1234  # the images are the same whatever the run seed
ID_KEY = "index"  # every item carries its position in its split
LOSS_KEYS = ("loss", "sup_loss", "unsup_loss")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def _cpu_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in _unwrap(network).state_dict().items()}


def _sampler_epoch(loader: Any) -> int | None:
    epoch = getattr(getattr(loader, "sampler", None), "epoch", None)
    return None if epoch is None else int(epoch)


def _item_ids(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], id_key: str | None) -> list[Any]:
    """The ids of a batch's items: ``batch[id_key]``, or the image files' names when ``id_key`` is None.

    ``batch`` is collated (a dictionary of batched values) or, after MONAI's decollation, a list of item dictionaries.
    """
    if isinstance(batch, Mapping):
        values = batch[id_key] if id_key is not None else batch["image"].meta["filename_or_obj"]
        values = values.tolist() if isinstance(values, torch.Tensor) else ensure_tuple(values)
    else:
        values = [item[id_key] if id_key is not None else item["image"].meta["filename_or_obj"] for item in batch]
    return [int(value) if id_key is not None else str(value) for value in values]


def _draw(operation: Mapping[str, Any]) -> list[Any]:
    """One applied random transform of one item: its class, whether it fired, and its affine matrix if any."""
    draw: list[Any] = [str(operation["class"]), bool(operation.get("do_transforms", False))]
    info = operation.get("extra_info") or {}
    while isinstance(info, Mapping) and "affine" not in info and "extra_info" in info:
        info = info["extra_info"] or {}  # a dictionary transform nests its array transform's record
    if isinstance(info, Mapping) and "affine" in info:
        draw.append(np.round(np.asarray(info["affine"], dtype=np.float64), 6).tolist())
    return draw


def _augmentations(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[list[list[Any]]] | None:
    """Per item, the invertible random transforms MONAI recorded on the image (None when nothing is tracked)."""
    if not isinstance(batch, Mapping):  # decollated: one dictionary per item
        per_item = [getattr(item.get("image"), "applied_operations", None) for item in batch]
        operations = None if any(ops is None for ops in per_item) else per_item
    else:
        operations = getattr(batch.get("image"), "applied_operations", None)
    if not operations:
        return None
    return [[_draw(op) for op in item_ops if str(op["class"]).startswith("Rand")] for item_ops in operations]


class RecordingWeakStrongBatch(PrepareWeakStrongBatch):
    """:class:`~usseg.engines.PrepareWeakStrongBatch` that keeps the ids of the last unlabeled batch it prepared.

    Args:
        id_key: batch key of the item ids.
    """

    def __init__(self, id_key: str = ID_KEY) -> None:
        super().__init__()
        self.id_key = id_key
        self.last_ids: list[Any] = []

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_ids = _item_ids(batchdata, self.id_key)
        return super().__call__(batchdata, device, non_blocking, **kwargs)


class RankRecorder:
    """Record what every iteration of this rank's engine saw; save this rank's final weights.

    At ``ITERATION_COMPLETED`` it appends ``{"epoch", "iteration", "labeled", "labeled_sampler_epoch",
    "augmentations", "losses"}``, plus ``"unlabeled"`` and ``"unlabeled_sampler_epoch"`` when ``unlabeled_batches``
    is given. ``labeled`` holds the ids of the engine's own batch (the labeled stream of a trainer, the validation
    images of an evaluator); an evaluator's entries have no ``losses``.

    At ``COMPLETED`` it writes all records so far to ``<output_dir>/<name>_seen_rank<k>.json`` and, when ``network``
    is given, ``<output_dir>/<name>_weights_rank<k>.pt`` (``{"network": state dict, "teacher": state dict or None,
    **extra_weights}``), ``k`` being the process-group rank. An evaluator completes once per validation: its JSON
    file is rewritten each time, with every validation so far.

    Args:
        output_dir: folder of the two files.
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped); ``None`` saves no weights.
        teacher: an extra network whose final weights are saved too.
        id_key: batch key of the labeled items' ids; ``None`` reads the image files' names from the image metadata.
        unlabeled_batches: the trainer's ``prepare_unlabeled``, a :class:`RecordingWeakStrongBatch`.
        extra_weights: more state dicts to save, e.g. the weights before DDP's initial broadcast.
        name: prefix of the two files, e.g. ``"train"`` or ``"validate"``.

    Raises:
        TypeError: ``unlabeled_batches`` keeps no ``last_ids``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        network: torch.nn.Module | None = None,
        teacher: torch.nn.Module | None = None,
        id_key: str | None = None,
        unlabeled_batches: RecordingWeakStrongBatch | None = None,
        extra_weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        name: str = "train",
    ) -> None:
        if unlabeled_batches is not None and not hasattr(unlabeled_batches, "last_ids"):
            raise TypeError(f"unlabeled_batches must keep last_ids, got a {type(unlabeled_batches).__name__}.")
        self.output_dir = Path(output_dir)
        self.network, self.teacher = network, teacher
        self.id_key, self.unlabeled_batches = id_key, unlabeled_batches
        self.extra_weights = dict(extra_weights or {})
        self.name = name
        self.iterations: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.record, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        if not engine.has_event_handler(self.save, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.save)

    def record(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        entry: dict[str, Any] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "labeled": _item_ids(batch, self.id_key),
            "labeled_sampler_epoch": _sampler_epoch(getattr(engine, "data_loader", None)),
            "augmentations": _augmentations(batch),
        }
        if isinstance(output, Mapping):  # an evaluator's decollated output is a list and holds no losses
            entry["losses"] = {key: float(torch.as_tensor(output[key]).detach()) for key in LOSS_KEYS if key in output}
        if self.unlabeled_batches is not None:
            entry["unlabeled"] = list(self.unlabeled_batches.last_ids)
            entry["unlabeled_sampler_epoch"] = _sampler_epoch(getattr(engine, "unlabeled_data_loader", None))
        self.iterations.append(entry)

    def save(self, engine: Engine) -> None:
        rank = _rank()
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if self.network is not None:
            weights = {
                "network": _cpu_state(self.network),
                "teacher": None if self.teacher is None else _cpu_state(self.teacher),
                **self.extra_weights,
            }
            with atomic_write(self.output_dir / f"{self.name}_weights_rank{rank}.pt", "wb") as handle:
                torch.save(weights, handle)
        record = {"rank": rank, "world_size": world_size, "iterations": self.iterations}
        atomic_write_json(self.output_dir / f"{self.name}_seen_rank{rank}.json", record)


# ============================================================================================ the semi-supervised run


def synthetic_items(count: int, rng: np.random.Generator, labeled: bool) -> list[dict[str, Any]]:
    """Bright discs on a noisy background; the disc is the foreground class.

    Args:
        count: number of items.
        rng: generator of the disc positions, radii and noise.
        labeled: add a ``"label"`` mask.

    Returns:
        Items ``{"index": i, "image": (1, H, W) float32 in [0, 1], "label": (1, H, W) float32 in {0, 1}}`` (no
        label when unlabeled), ``H = W = IMAGE_SIZE``.
    """
    rows, cols = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    items = []
    for index in range(count):
        centre = rng.uniform(8, IMAGE_SIZE - 8, size=2)
        radius = rng.uniform(4, 9)
        disc = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.float32)
        image = np.clip(0.25 + 0.5 * disc + rng.normal(0.0, 0.1, disc.shape), 0.0, 1.0).astype(np.float32)
        item: dict[str, Any] = {ID_KEY: index, "image": image[None]}
        if labeled:
            item["label"] = disc[None]
        items.append(item)
    return items


def make_loaders(seed: int) -> tuple[ThreadDataLoader, ThreadDataLoader]:
    """The labeled and unlabeled loaders, each sharded over the ranks by a shuffling ``DistributedSampler``."""
    rng = np.random.default_rng(DATA_SEED)
    labeled_transform = Compose(
        [
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandRotate90d(keys=("image", "label"), prob=0.5),
            RandGaussianNoised(keys="image", prob=0.5, std=0.05),
        ]
    )
    labeled = Dataset(synthetic_items(NUM_LABELED, rng, labeled=True), transform=labeled_transform)
    unlabeled = Dataset(synthetic_items(NUM_UNLABELED, rng, labeled=False), transform=WeakStrongViewsd(keys="image"))
    loaders = []
    for dataset in (labeled, unlabeled):
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        loaders.append(ThreadDataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, drop_last=True))
    return loaders[0], loaders[1]


def make_network() -> torch.nn.Module:
    """A three-layer convolutional segmenter with two output classes (no batch norm: no rank-local buffers)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 2, 1),
    )


def build_run(output: Path, teacher_kind: str, seed: int) -> SemiSupervisedTrainer:
    """Assemble the DDP network, the EMA teacher if asked for, and the trainer with its handlers.

    Args:
        output: folder of the recorder's files.
        teacher_kind: ``"ema"`` or ``"self"``.
        seed: the run's seed (samplers, augmentations).

    Returns:
        The trainer, ready to ``run()``.

    Raises:
        ValueError: an unknown ``teacher_kind``.
    """
    if teacher_kind not in ("ema", "self"):
        raise ValueError(f"teacher must be 'ema' or 'self', got {teacher_kind!r}.")
    device = resolve_device("auto")
    torch.manual_seed(seed + 1000 * _rank())  # a different start per rank: DDP must broadcast rank 0's weights
    module = make_network().to(device)
    initial = _cpu_state(module)
    network = torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )
    ema = EMAHandler(network.module, momentum=0.2) if teacher_kind == "ema" else None
    labeled_loader, unlabeled_loader = make_loaders(seed)
    unlabeled_batches = RecordingWeakStrongBatch()
    recorder = RankRecorder(
        output,
        network,
        teacher=None if ema is None else ema.ema_model,
        id_key=ID_KEY,
        unlabeled_batches=unlabeled_batches,
        extra_weights={"initial": initial},
    )
    handlers: list[Any] = [EpochSeedHandler(seed), *([] if ema is None else [ema]), recorder]
    return SemiSupervisedTrainer(
        device=device,
        max_epochs=MAX_EPOCHS,
        epoch_length=EPOCH_LENGTH,
        train_data_loader=labeled_loader,
        unlabeled_data_loader=unlabeled_loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        pseudo_label=ConfidenceThreshold(0.6),
        teacher=None if ema is None else ema.ema_model,
        prepare_unlabeled=unlabeled_batches,
        decollate=False,
        train_handlers=handlers,
    )


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """``--output DIR [--teacher ema|self] [--seed S]``; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder of the recorder's files")
    parser.add_argument("--teacher", choices=("ema", "self"), default="ema", help="EMA teacher or the network itself")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Join the process group (nccl with CUDA, else gloo), train, leave the group; return 0."""
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(1)  # two processes share two cores
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        build_run(args.output, args.teacher, args.seed).run()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
