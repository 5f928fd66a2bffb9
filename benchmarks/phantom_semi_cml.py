# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Semi-CML on the phantom's co-registered B-mode + strain-elastography pairs: supervised-only vs. stage 1 vs. PReL.

No real co-registered multi-modal ultrasound data set is available, so this benchmark uses the usseg phantom in
multi-modal mode (``modalities=("bmode", "elastography")``; the strain image is simulated from the same tissue map,
so the pair is registered by construction). One fixed seed and split, 10 % of the training pool labeled. Per
modality it reports the test Dice of:

1. ``sup_only``: that modality's network trained on the labeled pairs alone (same network, labeled batch, iterations,
   schedule, input size and precision as Semi-CML);
2. ``semi_cml_stage1``: Semi-CML stage 1 (supervised + 3.5 ASC + ramped MSE) for all epochs;
3. ``semi_cml_prel``: stage 1, then PReL from the released switch epoch (51 of 81), supervised loss dropped in
   stage 2 (released);
4. ``semi_cml_prel_sup``: the same with the supervised loss kept in stage 2 (weight 1), to choose the default.

Runs 3 and 4 resume from run 2's checkpoint at the switch epoch (the runs are identical up to there; the resume is
bit-exact, ``tests/engines/test_mutual_learning.py``). Test Dice is the mean per-image Dice of the lesion (sigmoid >
0.5), for the last checkpoint and for the checkpoint selected on the validation split. Results are written after
every run to ``benchmarks/results/phantom_semi_cml.json``.

    python benchmarks/phantom_semi_cml.py [--output /tmp/phantom_semi_cml] [--dry-run 20]
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, Resized, ScaleIntensityRanged

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results import default_data_root, write_results  # noqa: E402
from usseg.data.datalist import build_datalist, load_datalist  # noqa: E402
from usseg.data.phantom import write_phantom_dataset  # noqa: E402
from usseg.engines import SupervisedTrainer  # noqa: E402
from usseg.engines.mutual_learning import MutualLearningTrainer, PrepareSingleModalityBatch  # noqa: E402
from usseg.handlers import EpochSeedHandler, RampUpHandler, TrainingCheckpointHandler  # noqa: E402
from usseg.handlers.bma import BMATeacherHandler, PhaseSwitchHandler  # noqa: E402
from usseg.losses.asc import ASCLoss, SoftDiceBCELoss  # noqa: E402
from usseg.networks.semi_cml import SemiCMLUNet  # noqa: E402
from usseg.transforms.multimodal import LoadMultiModald  # noqa: E402

NAME = "phantom_semi_cml"
MODALITIES = {1: "image_m1", 2: "image_m2"}
MODALITY_NAMES = {1: "bmode", 2: "elastography"}
logger = logging.getLogger(NAME)


# ----------------------------------------------------------------------------------------------------------- data


def load_split(datalist: Path, split: str, size: int) -> list[dict[str, torch.Tensor]]:
    """A split as in-memory plain tensors: both modalities scaled to [0, 1], resized to ``size``², and the mask."""
    keys = [*MODALITIES.values(), "label"]
    transform = Compose(
        [
            LoadMultiModald(),
            ScaleIntensityRanged(keys=list(MODALITIES.values()), a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
            Resized(keys=keys, spatial_size=(size, size), mode=["area", "area", "nearest"], allow_missing_keys=True),
        ]
    )
    items = []
    for item in load_datalist(datalist, split):
        loaded = transform(item)
        items.append({k: loaded[k].as_tensor().float() for k in keys if k in loaded})
    return items


def dice_per_image(network: torch.nn.Module, items: Sequence[dict], key: str, channels_last: bool) -> float:
    """Mean lesion Dice per image (sigmoid > 0.5); an image where both masks are empty scores 1."""
    network.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            images = torch.stack([item[key] for item in chunk])
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pred = (network(images).float() > 0).float().flatten(1)  # logit > 0 <=> sigmoid > 0.5
            label = (torch.stack([item["label"] for item in chunk]) > 0).float().flatten(1)
            overlap, total = (pred * label).sum(1), pred.sum(1) + label.sum(1)
            scores += torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total)).tolist()
    return float(np.mean(scores))


class Validator:
    """Validation Dice of one network every epoch, keeping the best epoch's weights (checkpointable).

    It has the evaluator surface :class:`~usseg.handlers.bma.BMATeacherHandler` reads: ``run(epoch)`` and
    ``state.metrics`` / ``state.epoch``.
    """

    class _State:
        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}
            self.epoch: int | None = None

    def __init__(self, network: torch.nn.Module, items: Sequence[dict], key: str, channels_last: bool) -> None:
        self.network, self.items, self.key, self.channels_last = network, items, key, channels_last
        self.state = self._State()
        self.best, self.best_epoch, self.best_weights = -1.0, 0, None
        self.history: list[float] = []

    def run(self, epoch: int) -> None:
        dice = dice_per_image(self.network, self.items, self.key, self.channels_last)
        self.state.metrics, self.state.epoch = {"val_dice": dice}, epoch
        self.history.append(dice)
        if dice > self.best:
            self.best, self.best_epoch = dice, epoch
            self.best_weights = {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.run(e.state.epoch))

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "weights": self.best_weights or {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.history = list(state["history"])
        self.best_weights = dict(state["weights"]) or None


# ------------------------------------------------------------------------------------------------------------ runs


def make_network(args: argparse.Namespace, mc: bool = False) -> SemiCMLUNet:
    return SemiCMLUNet(features=args.features, depth=5, dropout_mode="always" if mc else "off")


def lr_lambda(args: argparse.Namespace) -> Any:
    warmup = max(1, int(0.1 * args.epochs))
    milestones = [int(args.epochs * f) for f in (0.15, 0.35, 0.55, 0.7)]
    return lambda e: (e + 1) / warmup if e < warmup else 0.1 ** len([m for m in milestones if m <= e])


def loaders(args: argparse.Namespace, data: dict[str, list]) -> tuple[DataLoader, DataLoader]:
    labeled = DataLoader(Dataset(data["labeled"]), batch_size=args.batch_size, shuffle=True, drop_last=True)
    unlabeled = DataLoader(
        Dataset(data["unlabeled"]), batch_size=args.unlabeled_batch_size, shuffle=True, drop_last=True
    )
    return labeled, unlabeled


def test_scores(network: torch.nn.Module, validator: Validator, data: dict, key: str, args: argparse.Namespace) -> dict:
    last = dice_per_image(network, data["test"], key, args.channels_last)
    selected = copy.deepcopy(network)
    if validator.best_weights is not None:
        selected.load_state_dict(validator.best_weights)
    return {
        "test_dice_last": last,
        "test_dice_val_selected": dice_per_image(selected, data["test"], key, args.channels_last),
        "val_dice_best": validator.best,
        "val_selected_epoch": validator.best_epoch,
    }


def run_sup_only(args: argparse.Namespace, data: dict, modality: int) -> dict:
    """One modality's network on the labeled pairs only, with Semi-CML's labeled batch, schedule and budget."""
    torch.manual_seed(args.seed)
    key = MODALITIES[modality]
    network = make_network(args)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))
    labeled, _ = loaders(args, data)
    validator = Validator(network, data["validation"], key, args.channels_last)
    from monai.handlers import LrScheduleHandler

    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=args.epochs,
        epoch_length=args.iterations_per_epoch,
        train_data_loader=labeled,
        network=network,
        optimizer=optimizer,
        loss_function=SoftDiceBCELoss(),
        prepare_batch=PrepareSingleModalityBatch(key),
        precision=args.precision,
        channels_last=args.channels_last,
        decollate=False,
        train_handlers=[
            EpochSeedHandler(args.seed),
            LrScheduleHandler(scheduler, epoch_level=True, print_lr=False),
            validator,
        ],
    )
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    return {MODALITY_NAMES[modality]: test_scores(network, validator, data, key, args), "train_seconds": seconds}


def run_semi_cml(
    args: argparse.Namespace,
    data: dict,
    run_dir: Path,
    switch_epoch: int,
    stage2_supervised_weight: float = 0.0,
    resume_from: Path | None = None,
    snapshot_epoch: int | None = None,
) -> dict:
    """A Semi-CML run; stage 2 from ``switch_epoch`` (>= epochs: stage 1 only). With ``snapshot_epoch`` a resumable
    checkpoint is kept at that epoch; with ``resume_from`` the run continues from such a checkpoint."""
    torch.manual_seed(args.seed)
    nets = {1: make_network(args), 2: make_network(args), "teacher": make_network(args, mc=True)}
    optimizers = {m: torch.optim.Adam(nets[m].parameters(), lr=args.lr, weight_decay=args.weight_decay) for m in (1, 2)}
    schedulers = {m: torch.optim.lr_scheduler.LambdaLR(optimizers[m], lr_lambda(args)) for m in (1, 2)}
    validators = {m: Validator(nets[m], data["validation"], MODALITIES[m], args.channels_last) for m in (1, 2)}
    bma_stop = round(args.epochs * 51 / 81)  # the released pool window ends where stage 2 starts
    bma = BMATeacherHandler(
        nets["teacher"],
        nets[2],
        validators[2],
        "val_dice",
        start_epoch=round(args.epochs * 10 / 81),
        stop_epoch=bma_stop,
    )
    labeled, unlabeled = loaders(args, data)
    checkpoint_dir = run_dir / "checkpoints"
    if resume_from is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
        shutil.copy(resume_from, checkpoint_dir / resume_from.name)
    from monai.handlers import LrScheduleHandler

    handlers: list[Any] = [
        EpochSeedHandler(args.seed),
        LrScheduleHandler(schedulers[1], epoch_level=True, print_lr=False),
        LrScheduleHandler(schedulers[2], epoch_level=True, print_lr=False),
        RampUpHandler("consistency", 1.0, length=200 * args.iterations_per_epoch),
        PhaseSwitchHandler(switch_epoch=switch_epoch, wp2_schedule=3, teacher_handler=bma),
        validators[1],
        validators[2],
        bma,
    ]
    save_dict = {
        "model": nets[1],
        "model_m2": nets[2],
        "teacher": nets["teacher"],
        "optimizer": optimizers[1],
        "optimizer_m2": optimizers[2],
        "lr_scheduler": schedulers[1],
        "lr_scheduler_m2": schedulers[2],
        "bma_pool": bma,
        "validator_m1": validators[1],
        "validator_m2": validators[2],
    }
    if snapshot_epoch is not None or resume_from is not None:
        interval = snapshot_epoch if snapshot_epoch is not None else args.epochs
        handlers.append(
            TrainingCheckpointHandler(
                checkpoint_dir, save_dict, args.seed, resume=resume_from is not None, interval=interval
            )
        )
    trainer = MutualLearningTrainer(
        device="cpu",
        max_epochs=args.epochs,
        epoch_length=args.iterations_per_epoch,
        train_data_loader=labeled,
        unlabeled_data_loader=unlabeled,
        network=nets[1],
        network_m2=nets[2],
        optimizer=optimizers[1],
        optimizer_m2=optimizers[2],
        teacher=nets["teacher"],
        loss_function=SoftDiceBCELoss(),
        asc_loss=ASCLoss(),
        consistency_weight=0.0,
        stage2_supervised_weight=stage2_supervised_weight,
        precision=args.precision,
        channels_last=args.channels_last,
        decollate=False,
        train_handlers=handlers,
    )
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        MODALITY_NAMES[m]: test_scores(nets[m], validators[m], data, MODALITIES[m], args) for m in (1, 2)
    }
    result["train_seconds"] = seconds
    result["bma_pool"] = bma.state_dict()
    if resume_from is not None:
        result["resumed_from_epoch"] = int(resume_from.stem.removeprefix("checkpoint_epoch"))
    return result


# ------------------------------------------------------------------------------------------------------------ main


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root(), help="unused: the phantom is generated")
    parser.add_argument("--output", type=Path, default=Path("/tmp/phantom_semi_cml"), help="phantom and checkpoints")
    parser.add_argument("--num-images", type=int, default=300, help="phantom pairs (benign + malignant)")
    parser.add_argument("--phantom-size", type=int, default=128, help="side of the generated phantom images")
    parser.add_argument("--spatial-size", type=int, default=64, help="network input side")
    parser.add_argument("--features", type=int, default=16, help="U-Net width of level 1 (released 32)")
    parser.add_argument("--epochs", type=int, default=81, help="epochs (released 81)")
    parser.add_argument("--iterations-per-epoch", type=int, default=3, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, default=8, help="labeled pairs per iteration")
    parser.add_argument("--unlabeled-batch-size", type=int, default=4, help="unlabeled pairs per iteration")
    parser.add_argument("--lr", type=float, default=0.006, help="Adam learning rate (released)")
    parser.add_argument("--weight-decay", type=float, default=0.0004, help="Adam weight decay (released)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="autocast precision")
    parser.add_argument("--channels-last", action="store_true", help="channels-last layout (networks and inputs)")
    parser.add_argument("--seed", type=int, default=0, help="phantom, split and training seed")
    parser.add_argument("--dry-run", type=int, default=0, help="only time N iterations of each kind of run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(2)
    args.output.mkdir(parents=True, exist_ok=True)
    root = write_phantom_dataset(
        args.output / "phantom",
        num_images=args.num_images,
        size=args.phantom_size,
        seed=args.seed,
        modalities=("bmode", "elastography"),
    )
    datalist = args.output / "datalist.json"
    build_datalist(root, "generic", datalist, seed=args.seed, test_fraction=0.2, val_fraction=0.1, num_labeled=0.1)
    data = {
        split: load_split(datalist, split, args.spatial_size)
        for split in ("labeled", "unlabeled", "validation", "test")
    }
    counts = {split: len(items) for split, items in data.items()}
    logger.info("phantom pairs per split: %s", counts)
    switch = round(args.epochs * 51 / 81)
    if args.dry_run:
        args.epochs, args.iterations_per_epoch = 1, args.dry_run
        for label, run in (
            ("sup_only", lambda: run_sup_only(args, data, 1)),
            ("semi_cml_stage1", lambda: run_semi_cml(args, data, args.output / "dry1", switch_epoch=1)),
            ("semi_cml_prel", lambda: run_semi_cml(args, data, args.output / "dry2", switch_epoch=0)),
        ):
            seconds = run()["train_seconds"]
            logger.info("%s: %.3f s/iteration", label, seconds / args.dry_run)
        return 0
    settings = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("data", "output")},
        "modalities": {"modality_1": "bmode", "modality_2": "elastography (strain, simulated from the same tissue)"},
        "split": {"test_fraction": 0.2, "val_fraction": 0.1, "num_labeled": 0.1, "counts": counts},
        "stage2_epoch": switch,
        "bma": {"start_epoch": round(args.epochs * 10 / 81), "pool_size": 6, "teacher_modality": 2},
        "schedule": "Adam, warm-up 10 % of epochs then x0.1 at 15/35/55/70 %, per epoch (released warmupMultistep)",
        "losses": "sup 10 BCE + 7 soft Dice; stage 1 + 3.5 ASC + MSE ramped over 200 epochs; PReL alpha 0.1/0.1, "
        "T=4 MC-dropout passes, noise clamp(0.1 N, 0, 0.2), teacher BN eval, WP2 step at 80 % of stage 2",
        "augmentation": "none (released)",
        "dice": "mean per-image lesion Dice on the test split, sigmoid > 0.5",
        "threads": torch.get_num_threads(),
    }
    results: list[dict[str, Any]] = []

    def record(method: str, outcome: dict[str, Any]) -> None:
        for modality in MODALITY_NAMES.values():
            if modality in outcome:
                row = {"method": method, "modality": modality, "labeled": counts["labeled"], "seed": args.seed}
                extra = {k: v for k, v in outcome.items() if k not in MODALITY_NAMES.values()}
                results.append({**row, "metrics": outcome[modality], "run": extra})
        write_results(NAME, settings, results)
        logger.info("%s: %s", method, {m: outcome[m] for m in MODALITY_NAMES.values() if m in outcome})

    for modality in (1, 2):
        record("sup_only", run_sup_only(args, data, modality))
    stage1_dir = args.output / "stage1"
    record(
        "semi_cml_stage1",
        run_semi_cml(args, data, stage1_dir, switch_epoch=args.epochs, snapshot_epoch=switch),
    )
    snapshot = stage1_dir / "checkpoints" / f"checkpoint_epoch{switch:04d}.pt"
    record("semi_cml_prel", run_semi_cml(args, data, args.output / "prel", switch, 0.0, resume_from=snapshot))
    record("semi_cml_prel_sup", run_semi_cml(args, data, args.output / "prel_sup", switch, 1.0, resume_from=snapshot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
