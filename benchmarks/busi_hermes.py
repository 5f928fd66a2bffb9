# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes vs SupOnly on BUSI (benign + malignant) under one CPU protocol: segmentation and classification.

For each label budget (72 then 144 by default) and seed, the Hermes bundle is trained twice on the same datalist,
network, input size, precision, labeled batches and iteration budget: once with ``supervised_only=true`` (SupOnly:
labeled losses only) and once as Hermes. Each run is then evaluated on the test split for the last checkpoint and
the validation-selected one (``evaluate.yaml``). Reported per run: per-image Dice, Hermes' per-batch Dice (batches
of 8), pooled Dice, IoU, HD95 (pixels at 128x128), accuracy, balanced accuracy, AUC, and the training time per
iteration (epoch wall times from ``history.json``, validation excluded), so the Hermes/SupOnly step-time ratio is
measured in the same run. Results are rewritten after every finished run (``benchmarks/results/busi_hermes.json``).

    OMP_NUM_THREADS=2 python benchmarks/busi_hermes.py --data /work/shared/data --time-budget-minutes 42
    python benchmarks/busi_hermes.py --dry-run 20     # time 20 iterations of each method, train nothing else

With ``--time-budget-minutes`` the script first times a 20-iteration dry run of each method (smallest budget), then
sets the iteration count (a multiple of ``--iterations-per-epoch``) so that every run fits the budget, and records
the dry-run figures in the results' settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from usseg.bundles import bundle_root
from usseg.data.datalist import build_datalist
from usseg.data.io import atomic_write_json

try:
    from results import default_data_root, write_results
except ImportError:
    from benchmarks.results import default_data_root, write_results

BUNDLE = "breast_us_hermes_classification_segmentation"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
# capitalised: the bundle CLI (python-fire) turns "True"/"False" into booleans but keeps "false" a (truthy) string
METHODS = {"SupOnly": ["--supervised_only", "True"], "Hermes": ["--supervised_only", "False"]}


def method_arguments(method: str, args: argparse.Namespace) -> list[str]:
    """Bundle arguments of one method: SupOnly or Hermes, plus the ``--hermes-set`` settings of an ablation."""
    arguments = list(METHODS[method])
    if method == "Hermes":
        for setting in args.hermes_set:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise SystemExit(f"--hermes-set expects KEY=VALUE, got {setting!r}.")
            arguments += [f"--{key}", value]
    return arguments


def method_name(method: str, args: argparse.Namespace) -> str:
    return args.variant if method == "Hermes" else method


def busi_datalist(data_root: Path, workdir: Path, seed: int, num_labeled: int) -> Path:
    """The shared BUSI protocol: 70/30 stratified split, 10% validation, nested labeled subsets, normal excluded."""
    out = workdir / f"datalist_seed{seed}_labeled{num_labeled}" / "datalist.json"
    if not out.is_file():
        build_datalist(
            data_root / "busi" / "Dataset_BUSI_with_GT",
            "busi",
            out,
            seed=seed,
            test_fraction=0.3,
            val_fraction=0.1,
            num_labeled=num_labeled,
            exclude_classes=["normal"],
        )
    return out


def record_split(datalist_path: Path, destination: Path) -> None:
    """Commit-ready split file: case ids of every split (file names only, no data)."""
    datalist = json.loads(datalist_path.read_text())
    splits = {
        name: sorted(item["case_id"] for item in datalist[name])
        for name in ("labeled", "unlabeled", "validation", "test")
    }
    atomic_write_json(
        destination,
        {
            "dataset": "BUSI (Dataset_BUSI_with_GT), benign + malignant",
            "builder": "usseg.data.datalist.build_datalist(layout='busi', test_fraction=0.3, val_fraction=0.1, "
            f"num_labeled={len(splits['labeled'])}, exclude_classes=['normal'])",
            "seed": datalist.get("metadata", {}).get("seed"),
            "class_names": datalist.get("class_names"),
            "counts": {name: len(ids) for name, ids in splits.items()},
            "splits": splits,
        },
    )


def protocol_overrides(args: argparse.Namespace, iterations_per_epoch: int, max_epochs: int) -> list[str]:
    """Everything the two methods share: the protocol of this benchmark."""
    size = f"[{args.spatial_size},{args.spatial_size}]"
    return [
        "--spatial_size",
        size,
        "--batch_size",
        str(args.batch_size),
        "--max_epochs",
        str(max_epochs),
        "--iterations_per_epoch",
        str(iterations_per_epoch),
        "--precision",
        args.precision,
        "--channels_last",
        str(bool(args.channels_last)),
        "--learning_rate",
        str(args.learning_rate),
        "--cls_learning_rate",
        str(args.cls_learning_rate),
        "--encoder_depth",
        str(args.encoder_depth),
        "--encoder_widths",
        "[" + ",".join(str(w) for w in args.encoder_widths) + "]",
        "--contrast_warmup_passes",
        str(args.contrast_warmup_passes),
        "--log_every",
        "50",
    ]


def run(configs: list[str], overrides: list[str], log: Path) -> None:
    files = [str(Path(bundle_root(BUNDLE)) / "configs" / name) for name in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT)


def seconds_per_iteration(output_dir: Path, iterations_per_epoch: int, skip_first: bool) -> float:
    """Mean training time per iteration from the epoch wall times (validation runs after the epoch clock stops)."""
    epochs = json.loads((output_dir / "history.json").read_text())["epoch"]
    times = [t for t in epochs["wall_time_s"] if t is not None]
    if skip_first and len(times) > 1:
        times = times[1:]  # the first epoch pays allocator and oneDNN set-up
    return sum(times) / (len(times) * iterations_per_epoch)


def report_row(output_dir: Path, checkpoint: str) -> dict[str, Any]:
    report = json.loads((output_dir / "eval" / f"{checkpoint}_metrics.json").read_text())
    seg, cls = report["metrics"], report.get("classification", {})
    return {
        "dice_mean_per_image": seg["dice_mean_per_image"],
        "dice_per_batch8_hermes": seg["dice_per_batch8"],
        "dice_pooled": seg["dice_pooled"],
        "iou_mean_per_image": seg["iou_mean_per_image"],
        "iou_pooled": seg.get("iou_pooled"),  # .get: reports written before the metric existed lack it
        "hd95_mean_px": seg["hd95_mean"],
        "hd95_n_empty": seg["hd95_n_empty"],
        "accuracy": cls.get("accuracy"),
        "accuracy_per_batch8_hermes": cls.get("accuracy_per_batch8"),
        "balanced_accuracy": cls.get("balanced_accuracy"),
        "auc": cls.get("auc"),
        "f1_malignant": cls.get("f1"),
        "test_images": seg["n_images"],
    }


def settings(args: argparse.Namespace, iterations: int) -> dict[str, Any]:
    grid = args.spatial_size // 8  # the pixel embeddings' grid
    return {
        "dataset": "BUSI benign + malignant, exact duplicates removed, 70/30 stratified split, 10% of train for "
        "validation (benchmarks/splits/busi_hermes_seed<seed>_labeled<N>.json)",
        "bundle": BUNDLE,
        "input": f"{args.spatial_size}x{args.spatial_size} grayscale, resized directly (aspect not kept), [0, 1]",
        "networks": f"segmentation: ResNet-{args.encoder_depth} encoder (widths {args.encoder_widths}) + U-Net "
        f"decoder; classification: ResNet-{args.encoder_depth} (same widths); random initialisation (no ImageNet)",
        "iterations": iterations,
        "batch": f"{args.batch_size} labeled (Hermes: + {args.batch_size} weak + {args.batch_size} strong unlabeled)",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "optimizers": f"segmentation Adam lr {args.learning_rate}, classification SGD lr {args.cls_learning_rate} "
        "momentum 0.9 wd 1e-4, poly(0.9) per iteration (released: both lr 1e-4, with ImageNet weights)",
        "hermes_variant": "defaults of the bundle: IAS on every view and at evaluation (usseg default; released: "
        "labeled images only, not at evaluation), seg features detached; itc_gradient both; dual thresholds "
        f"0.5/0.95, h0 0.75, batch ratios; pixel contrast anchor classes above 100/784 of the {grid}x{grid} grid "
        "(the released 100 pixels at 224x224); no memory bank; "
        "ITC ramp to 1 at 75% of training",
        "contrast_warmup_passes": f"{args.contrast_warmup_passes} passes over the unlabeled set (released: epoch > 10, "
        "about 15% of its 3000 iterations; scaled to this budget)",
        "supervised_baseline": "the same bundle with supervised_only=true: same networks, labeled batches, "
        "losses 1.1 CE + 0.5 (0.25 CE + 0.25 Dice loss), iterations and precision",
        "model_selection": "final = last checkpoint; best = highest validation per-image Dice (validation split)",
        "threads": "OMP_NUM_THREADS as set by the caller (2 on the benchmark machine)",
    }


def dry_run_step_times(args: argparse.Namespace, seed: int, budget: int, iterations: int) -> dict[str, float]:
    """Seconds per training iteration of each method over ``iterations`` iterations (second epoch timed)."""
    datalist = busi_datalist(args.data, args.workdir, seed, budget)
    times = {}
    for method in args.methods:
        output_dir = args.workdir / "dry_run" / f"seed{seed}_labeled{budget}" / method
        overrides = [
            "--datalist",
            str(datalist),
            "--output_dir",
            str(output_dir),
            "--seed",
            str(seed),
            *protocol_overrides(args, iterations, 2),
            *method_arguments(method, args),
        ]
        run(["train.yaml"], overrides, output_dir.with_suffix(".log"))
        times[method] = seconds_per_iteration(output_dir, iterations, skip_first=True)
        print(f"dry run {method}: {times[method]:.3f} s/iteration", flush=True)
    return times


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Time a 20-iteration dry run of each method and size the iteration budget to fit the time budget."""
    start = time.perf_counter()
    times = dry_run_step_times(args, args.seeds[0], min(args.budgets), 20)
    spent = time.perf_counter() - start
    runs = len(args.seeds) * len(args.budgets)
    available = args.time_budget_minutes * 60 - spent - runs * len(args.methods) * args.run_overhead_s
    per_iteration = runs * sum(times.values())
    iterations = int(available / per_iteration) // args.iterations_per_epoch * args.iterations_per_epoch
    if iterations < args.iterations_per_epoch:
        raise SystemExit(f"the time budget leaves {available:.0f} s: too little for one epoch ({times}).")
    print(f"calibrated: {iterations} iterations per run ({times}, dry run took {spent:.0f} s)", flush=True)
    return {
        "iterations": iterations,
        "dry_run_seconds_per_iteration": times,
        "dry_run_step_time_ratio_hermes_vs_suponly": times.get("Hermes", 0.0) / times["SupOnly"]
        if "SupOnly" in times
        else None,
        "time_budget_minutes": args.time_budget_minutes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root(), help="data root holding busi/")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/usseg_busi_hermes"))
    parser.add_argument("--budgets", type=int, nargs="+", default=[72, 144])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations per run")
    parser.add_argument("--iterations-per-epoch", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--spatial-size", type=int, default=128)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--cls-learning-rate", type=float, default=1e-2)
    parser.add_argument("--encoder-depth", type=int, default=10)
    parser.add_argument("--encoder-widths", type=int, nargs=4, default=[32, 64, 128, 256])
    parser.add_argument(
        "--contrast-warmup-passes",
        type=int,
        default=3,
        help="passes over the unlabeled set before the contrast terms (released: 11 of ~73 passes, i.e. 15%%)",
    )
    parser.add_argument("--variant", default="Hermes", help="method name of the Hermes runs, e.g. Hermes-noITC")
    parser.add_argument(
        "--hermes-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="bundle settings for the Hermes runs only (an ablation), e.g. itc_weight=0 ias#enabled=False",
    )
    parser.add_argument("--dry-run", type=int, default=0, help="only time this many iterations of each method")
    parser.add_argument("--name", default="busi_hermes", help="results file name")
    parser.add_argument(
        "--keep-existing", type=Path, default=None, help="a results file whose runs are kept, not rerun"
    )
    parser.add_argument("--time-budget-minutes", type=float, default=0.0, help="size --iterations to fit this")
    parser.add_argument("--run-overhead-s", type=float, default=100.0, help="per-run start-up, validation, evaluation")
    args = parser.parse_args()
    if args.iterations % args.iterations_per_epoch:
        parser.error(f"--iterations {args.iterations} must be a multiple of --iterations-per-epoch")
    calibration: dict[str, Any] = {}
    if args.time_budget_minutes > 0 and not args.dry_run:
        calibration = calibrate(args)
        args.iterations = calibration["iterations"]

    results: list[dict[str, Any]] = []
    if args.keep_existing is not None:
        results = json.loads(args.keep_existing.read_text())["results"]
    for seed in args.seeds:
        for budget in args.budgets:
            datalist = busi_datalist(args.data, args.workdir, seed, budget)
            record_split(datalist, SPLITS_DIR / f"busi_hermes_seed{seed}_labeled{budget}.json")
            step_times: dict[str, float] = {
                row["method"]: row["metrics"]["train_seconds_per_iteration"]
                for row in results
                if row["labeled"] == budget and row["seed"] == seed
            }
            for method in args.methods:
                name = method_name(method, args)
                if name in step_times and not args.dry_run:
                    print(f"{name} labeled={budget} seed={seed}: kept from {args.keep_existing}", flush=True)
                    continue
                output_dir = args.workdir / f"seed{seed}_labeled{budget}" / name
                if args.dry_run:
                    epoch_iterations, epochs = args.dry_run, 2
                else:
                    epoch_iterations, epochs = args.iterations_per_epoch, args.iterations // args.iterations_per_epoch
                overrides = [
                    "--datalist",
                    str(datalist),
                    "--output_dir",
                    str(output_dir),
                    "--seed",
                    str(seed),
                    *protocol_overrides(args, epoch_iterations, epochs),
                    *method_arguments(method, args),
                ]
                start = time.perf_counter()
                run(["train.yaml"], overrides, output_dir.with_suffix(".log"))
                train_seconds = time.perf_counter() - start
                step_times[name] = seconds_per_iteration(output_dir, epoch_iterations, skip_first=True)
                print(f"{name} labeled={budget} seed={seed}: {step_times[name]:.3f} s/iteration", flush=True)
                if args.dry_run:
                    continue
                run(["train.yaml", "evaluate.yaml"], overrides, output_dir.with_suffix(".log"))
                for checkpoint in ("final", "best"):
                    metrics = report_row(output_dir, checkpoint)
                    metrics["train_seconds_per_iteration"] = step_times[name]
                    metrics["train_wall_s"] = train_seconds
                    if method == "Hermes" and "SupOnly" in step_times:
                        metrics["step_time_vs_suponly"] = step_times[name] / step_times["SupOnly"]
                    row = {"method": name, "checkpoint": checkpoint, "labeled": budget, "seed": seed}
                    if method == "Hermes" and args.hermes_set:
                        row["bundle_settings"] = list(args.hermes_set)
                    results.append({**row, "metrics": metrics})
                    print(results[-1], flush=True)
                # rewritten after every run: a later failure or the time limit cannot lose finished runs
                print(write_results(args.name, {**settings(args, args.iterations), **calibration}, results), flush=True)
            if args.dry_run and len(step_times) == 2:
                hermes = step_times[method_name("Hermes", args)]
                print(f"dry run: Hermes/SupOnly step time {hermes / step_times['SupOnly']:.2f}x")


if __name__ == "__main__":
    main()
