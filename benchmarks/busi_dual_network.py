# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""BUSI benchmark of the dual-network bundle: SupOnly, cross supervision alone, cross supervision + contrastive.

Protocol (the BUSI protocol shared with the Hermes benchmark, ``docs/protocols.md``):

- data: BUSI benign + malignant, exact duplicates removed, ``build_datalist(seed=0, test_fraction=0.3,
  val_fraction=0.1, exclude_classes=["normal"])``: 406 train / 45 validation / 194 test; ``num_labeled`` of the 406
  train images are labeled (51 = 1/8, 102 = 1/4), the rest unlabeled. The case ids go to
  ``benchmarks/splits/busi_dual_labeled<N>_seed<S>.json``;
- input: 128² (images resized directly, aspect ratio not kept), intensities scaled to [0, 1];
- every method trains for the same number of iterations with the same labeled batches (2 per iteration, the same
  data pipeline, seeds and augmentations), SGD momentum 0.9, weight decay 1e-4, poly(0.9) learning-rate decay,
  bf16 autocast + channels-last (the same for every method);
- methods: ``suponly`` (network 1, the U-Net, on the labeled stream only), ``cps`` (both networks, soft-Dice cross
  supervision, contrastive weight 0 = ``compat.contrastive_inactive``: the released behaviour) and
  ``cps_contrast`` (plus the cross-network contrastive term, weight 0.5);
- the trainer, networks, losses and data pipeline are the bundle's own (``train.yaml`` parsed with overrides);
  validation and test scoring are done here, identically for every method: every ``--val-every`` iterations the
  validation split is scored and the best weights kept (ensemble Dice for the dual methods);
- report: the last and the validation-selected weights on the 194 test images: per-image mean Dice of the lesion,
  HD95 and HD (pixels at 128²), for network 1, network 2 and the ensemble; forward time per image (batch 1).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/busi_dual_network.py --data /work/shared/data [--iterations 1000]
    python benchmarks/busi_dual_network.py --dry-run 20   # seconds per iteration of each method, nothing written
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.handlers import LrScheduleHandler
from monai.metrics import compute_hausdorff_distance

from usseg.bundles import bundle_root
from usseg.data.datalist import build_datalist
from usseg.data.io import atomic_write_json
from usseg.engines import SupervisedTrainer
from usseg.handlers import EpochSeedHandler
from usseg.metrics.segmentation import evaluate_segmentation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.results import RESULTS_DIR, default_data_root, write_results  # noqa: E402

BUNDLE = "us_dual_network_semisupervised_segmentation"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
METHODS = ("suponly", "cps", "cps_contrast")
PAPER_TABLE1 = {
    "source": "13204942/SSL_Cervical_Segmentation README Table 1 (U-Net + Swin-UNet, FUGC external validation)",
    "dsc": 0.86,
    "hd": 46.44,
    "note": "FUGC (cervical ultrasound, 3 classes, 224²) is not available here; not comparable with BUSI numbers.",
}
logger = logging.getLogger("busi_dual_network")


def record_split(datalist_path: Path, destination: Path) -> dict[str, int]:
    """Write the case ids of every split (file names only); return the split sizes."""
    datalist = json.loads(datalist_path.read_text())
    splits = {
        name: sorted(item["case_id"] for item in datalist[name])
        for name in ("labeled", "unlabeled", "validation", "test")
    }
    metadata = datalist.get("metadata", {})
    atomic_write_json(
        destination,
        {
            "dataset": "BUSI (Dataset_BUSI_with_GT), benign + malignant",
            "builder": "usseg.data.datalist.build_datalist(layout='busi', test_fraction=0.3, val_fraction=0.1, "
            f"exclude_classes=['normal'], num_labeled={len(splits['labeled'])})",
            "seed": metadata.get("seed"),
            "counts": {name: len(ids) for name, ids in splits.items()},
            "splits": splits,
        },
    )
    return {name: len(ids) for name, ids in splits.items()}


def bundle_parser(datalist: Path, output_dir: Path, args: argparse.Namespace, method: str, seed: int) -> ConfigParser:
    """The bundle's train.yaml with the benchmark's overrides; validation and savers are replaced by this script."""
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root(BUNDLE)) / "configs" / "train.yaml"))
    epochs = args.iterations // args.val_every
    ramp = dict(parser.get("train#handlers#0"))  # the bundle's cross-supervision ramp, kept as configured
    if not str(ramp.get("_target_", "")).endswith("StepwiseRampUpHandler"):
        raise KeyError(f"train#handlers#0 of {BUNDLE} is not the ramp handler: {ramp}")
    parser.update(
        {
            "datalist": str(datalist),
            "output_dir": str(output_dir),
            "mask_mode": "binary",
            "num_classes": 2,
            "seed": seed,
            "spatial_size": [args.size, args.size],
            "max_epochs": epochs,
            "iterations_per_epoch": args.val_every,
            "learning_rate": args.lr,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compat#contrastive_inactive": method != "cps_contrast",
            "contrastive_pairing": args.pairing,
            # no console logging, savers or validation of the bundle: this script scores every method alike
            "train#handlers": [
                ramp,
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler1", "epoch_level": False},
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler2", "epoch_level": False},
                {"_target_": "usseg.handlers.EpochSeedHandler", "seed": "@seed"},
            ],
        }
    )
    return parser


def predict(networks: dict[str, torch.nn.Module], loader: Any, device: torch.device) -> dict[str, Any]:
    """Label maps of every network (and their ensemble when there are two) on a loader, with the ground truth."""
    preds: dict[str, list[np.ndarray]] = {name: [] for name in networks}
    if len(networks) == 2:
        preds["ensemble"] = []
    labels: list[np.ndarray] = []
    for net in networks.values():
        net.eval()
    with torch.no_grad():
        for batch in loader:
            images = batch["image"].as_tensor().to(device) if hasattr(batch["image"], "as_tensor") else batch["image"]
            probs = {name: net(images).float().softmax(dim=1) for name, net in networks.items()}
            if len(networks) == 2:
                probs["ensemble"] = 0.5 * sum(probs.values())
            for name, p in probs.items():
                preds[name].extend(p.argmax(dim=1).cpu().numpy().astype(np.uint8))
            labels.extend(np.asarray(batch["label"])[:, 0].astype(np.uint8))
    return {"preds": preds, "labels": labels}


def _one_hot(maps: list[np.ndarray]) -> torch.Tensor:
    """``N`` binary ``(H, W)`` label maps -> ``(N, 2, H, W)`` one-hot."""
    return torch.nn.functional.one_hot(torch.as_tensor(np.stack(maps)).long(), 2).permute(0, 3, 1, 2)


def score(predictions: dict[str, Any], with_hd: bool = False) -> dict[str, dict[str, float]]:
    """Per-image lesion Dice (mean), HD95 (pixels) and optionally HD (pixels), per network."""
    labels = predictions["labels"]
    scores = {}
    for name, preds in predictions["preds"].items():
        summary = evaluate_segmentation(preds, labels, num_classes=2).summary
        row = {
            "dice_mean_per_image": float(summary["dice_mean_per_image"]),
            "dice_pooled": float(summary["dice_pooled"]),
            "hd95_mean_px": float(summary["hd95_mean"]),
            "hd95_n_empty": int(summary["hd95_n_empty"]),
        }
        if with_hd:
            hd = compute_hausdorff_distance(_one_hot(preds), _one_hot(labels), include_background=False)
            finite = hd[torch.isfinite(hd)]
            row["hd_mean_px"] = float(finite.mean()) if finite.numel() else float("nan")
        scores[name] = row
    return scores


def time_per_image(networks: dict[str, torch.nn.Module], size: int, repeats: int = 20) -> dict[str, float]:
    """Median seconds of one forward pass of one image (batch 1, fp32, eval mode), per network and the ensemble."""
    image = torch.rand(1, 1, size, size)
    timings = {}
    members = dict(networks)
    if len(networks) == 2:
        members["ensemble"] = None
    with torch.no_grad():
        for name, net in members.items():
            runs = []
            for _ in range(repeats + 3):
                start = time.perf_counter()
                if net is None:
                    _ = sum(n(image).softmax(dim=1) for n in networks.values())
                else:
                    net(image)
                runs.append(time.perf_counter() - start)
            timings[name] = float(np.median(runs[3:]))
    return timings


def run_method(method: str, datalist: Path, work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train one method, validate it every ``val_every`` iterations, score last and best weights on test."""
    parser = bundle_parser(datalist, work / method, args, method, seed)
    device = torch.device("cpu")
    parser["device"] = "$torch.device('cpu')"
    val_loader = parser.get_parsed_content("validate#dataloader")
    test_parser = bundle_parser(datalist, work / method, args, method, seed)  # a second parser: only data objects
    test_parser["validate#dataset#data"] = "$usseg.data.datalist.load_datalist(@datalist_file, 'test')"
    test_loader = test_parser.get_parsed_content("validate#dataloader")
    if method == "suponly":
        net1 = parser.get_parsed_content("network1_def").to(device)
        optimizer = torch.optim.SGD(net1.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=args.iterations, power=0.9)
        trainer = SupervisedTrainer(
            device=device,
            max_epochs=args.iterations // args.val_every,
            epoch_length=args.val_every,
            train_data_loader=parser.get_parsed_content("train#dataloader"),
            network=net1,
            optimizer=optimizer,
            loss_function=parser.get_parsed_content("sup_loss"),
            precision=args.precision,
            channels_last=args.channels_last,
            decollate=False,
            train_handlers=[LrScheduleHandler(scheduler, epoch_level=False), EpochSeedHandler(seed)],
        )
        networks = {"net1": net1}
    else:
        trainer = parser.get_parsed_content("train#trainer")
        networks = {
            "net1": parser.get_parsed_content("network1_def"),
            "net2": parser.get_parsed_content("network2_def"),
        }
    select = "net1" if method == "suponly" else "ensemble"
    state: dict[str, Any] = {"best": -1.0, "best_iteration": 0, "weights": None, "curve": [], "losses": []}

    def validate(engine: Any) -> None:
        scores = score(predict(networks, val_loader, device))
        value = scores[select]["dice_mean_per_image"]
        state["curve"].append(
            {"iteration": engine.state.iteration, **{k: v["dice_mean_per_image"] for k, v in scores.items()}}
        )
        if value > state["best"]:
            state.update(best=value, best_iteration=engine.state.iteration)
            state["weights"] = {name: copy.deepcopy(net.state_dict()) for name, net in networks.items()}
        logger.info("%s iteration %d: validation %s", method, engine.state.iteration, state["curve"][-1])

    def keep_losses(engine: Any) -> None:
        output = engine.state.output
        state["losses"].append(
            {
                k: float(v)
                for k, v in output.items()
                if isinstance(v, (float, int)) or (torch.is_tensor(v) and v.numel() == 1)
            }
        )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=25), keep_losses)
    start = time.perf_counter()
    trainer.run()
    train_seconds = time.perf_counter() - start

    last = score(predict(networks, test_loader, device), with_hd=True)
    last_weights = {name: copy.deepcopy(net.state_dict()) for name, net in networks.items()}
    for name, net in networks.items():
        net.load_state_dict(state["weights"][name])
    best = score(predict(networks, test_loader, device), with_hd=True)
    for name, net in networks.items():
        net.load_state_dict(last_weights[name])
    return {
        "train_seconds": round(train_seconds, 1),
        "seconds_per_iteration": round(train_seconds / args.iterations, 4),
        "test_last": last,
        "test_best": best,
        "best_iteration": state["best_iteration"],
        "validation_best_dice": state["best"],
        "validation_curve": state["curve"],
        "loss_samples": state["losses"][-4:],
        "seconds_per_image": time_per_image(networks, args.size),
    }


def dry_run(datalist: Path, work: Path, args: argparse.Namespace) -> None:
    """Print the seconds per training iteration of each method (``--dry-run`` iterations, first 3 skipped)."""
    for method in args.methods:
        parser = bundle_parser(datalist, work / f"dry_{method}", args, method, 0)
        parser["max_epochs"], parser["iterations_per_epoch"] = 1, args.dry_run
        if method == "suponly":
            net = parser.get_parsed_content("network1_def")
            optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
            trainer = SupervisedTrainer(
                device="cpu", max_epochs=1, epoch_length=args.dry_run, network=net, optimizer=optimizer,
                train_data_loader=parser.get_parsed_content("train#dataloader"),
                loss_function=parser.get_parsed_content("sup_loss"), precision=args.precision,
                channels_last=args.channels_last, decollate=False,
            )  # fmt: skip
        else:
            trainer = parser.get_parsed_content("train#trainer")
        stamps: list[float] = []

        def stamp(_: Any, stamps: list[float] = stamps) -> None:
            stamps.append(time.perf_counter())

        trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
        trainer.run()
        steps = np.diff(stamps[2:])
        print(f"{method}: {np.median(steps):.3f} s/iteration (median of {len(steps)})", flush=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root(), help="folder holding busi/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/usseg_busi_dual"), help="datalists and run outputs")
    parser.add_argument("--budgets", type=int, nargs="+", default=[51], help="labeled images (51 = 1/8 of 406)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations of every method")
    parser.add_argument("--val-every", type=int, default=100, help="validation interval in iterations")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--pairing", choices=("cross_network", "prototype"), default="cross_network")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--dry-run", type=int, default=0, help="only time this many iterations per method")
    parser.add_argument("--name", default="busi_dual_network", help="results file name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("ignite", "monai", "usseg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.iterations % args.val_every:
        raise SystemExit(f"--iterations ({args.iterations}) must be a multiple of --val-every ({args.val_every}).")
    busi_root = args.data / "busi" / "Dataset_BUSI_with_GT"
    if not busi_root.is_dir():
        raise SystemExit(f"{busi_root}: BUSI not found (pass --data).")
    settings = {
        "data": "BUSI benign + malignant, duplicates removed; seed-0 split 406 train / 45 validation / 194 test",
        "input": f"{args.size}x{args.size}, resized directly (aspect not kept), intensities in [0, 1]",
        "iterations": args.iterations,
        "batch": "2 labeled (+ 6 unlabeled for the dual methods) per iteration",
        "optimizer": f"SGD lr {args.lr}, momentum 0.9, weight decay 1e-4, poly(0.9) per iteration",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "networks": "net1 MONAI UNet (16-256, BN, LeakyReLU, 2 residual units, dropout 0.1); net2 MONAI AttentionUnet",
        "cross_supervision": "soft Dice vs the other network's detached probabilities, lambda = 0.1 sigmoid ramp over "
        "the run in 200 steps",
        "contrastive": f"{args.pairing}, weight 0.5, tau 0.07 (cps_contrast only; cps: weight 0 = released behaviour)",
        "validation": f"every {args.val_every} iterations on the 45 validation images; best = highest per-image "
        "Dice (ensemble for the dual methods, net1 for suponly)",
        "metrics": "per-image lesion Dice (mean over test images; empty prediction and mask = 1), HD95 and HD in "
        "pixels at the network resolution (images with an empty mask or prediction left out of HD95/HD)",
        "hardware": "2 CPU cores (AMD EPYC, shared), torch threads 2",
        "paper_table1": PAPER_TABLE1,
    }
    args.work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for budget in args.budgets:
        for seed in args.seeds:
            datalist = args.work / f"busi_labeled{budget}_seed{seed}" / "datalist.json"
            if not datalist.is_file():
                build_datalist(
                    busi_root, "busi", datalist, seed=seed, test_fraction=0.3, val_fraction=0.1,
                    num_labeled=budget, exclude_classes=["normal"],
                )  # fmt: skip
            counts = record_split(datalist, SPLITS_DIR / f"busi_dual_labeled{budget}_seed{seed}.json")
            if args.dry_run:
                dry_run(datalist, args.work, args)
                continue
            for method in args.methods:
                logger.info("budget %d seed %d: %s", budget, seed, method)
                outcome = run_method(method, datalist, args.work / f"busi_labeled{budget}_seed{seed}", args, seed)
                results.append(
                    {"method": method, "labeled": budget, "seed": seed, "counts": counts, "metrics": outcome}
                )
                write_results(args.name, settings, results)  # after every run: nothing is lost
                logger.info("%s: last %s best %s", method, outcome["test_last"], outcome["test_best"])
    if not args.dry_run:
        print(f"results written to {RESULTS_DIR / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
