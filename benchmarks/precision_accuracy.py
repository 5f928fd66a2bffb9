# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Does bf16 autocast keep the baseline's accuracy? Train the baseline bundle under each precision and compare.

For each data set (the phantom, and BUSI benign+malignant from the data root) and each precision setting, the
baseline bundle is trained with the same seed, split and iteration budget through `python -m monai.bundle run`
(train.yaml + evaluate.yaml), and the test-split report of the last and of the validation-selected checkpoint is
collected. The BUSI split is written to benchmarks/splits/ as file names (no data).

    python benchmarks/precision_accuracy.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from usseg.bundles import bundle_root

try:
    from results import REPO, default_data_root, write_results
except ImportError:
    from benchmarks.results import REPO, default_data_root, write_results

BUNDLE = "breast_us_supervised_segmentation"
VARIANTS = {"fp32": ("fp32", False), "bf16_channels_last": ("bf16", True)}
SPLITS_DIR = REPO / "benchmarks" / "splits"


def busi_datalist(data_root: Path, workdir: Path, seed: int) -> Path:
    """Build the BUSI benign+malignant datalist (70/30 train/test, 10% of train for validation) and record its split."""
    from usseg.data.datalist import build_datalist

    busi = data_root / "busi" / "Dataset_BUSI_with_GT"
    if not busi.is_dir():
        raise FileNotFoundError(f"{busi}: BUSI not found; pass --data or set USSEG_DATA.")
    output = workdir / "busi" / "datalist.json"
    build_datalist(busi, "busi", output, seed=seed, test_fraction=0.3, val_fraction=0.1, exclude_classes=["normal"])
    record_split(output, SPLITS_DIR / f"busi_benign_malignant_seed{seed}.json", busi)
    return output


def record_split(datalist_path: Path, destination: Path, data_root: Path) -> None:
    """Write the case ids of every split (file names only) so the split is reviewable and reproducible."""
    from usseg.data.io import atomic_write_json

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
            "exclude_classes=['normal'])",
            "seed": metadata.get("seed"),
            "dropped_duplicates": metadata.get("duplicates", metadata.get("dropped_duplicates")),
            "counts": {name: len(ids) for name, ids in splits.items()},
            "splits": splits,
        },
    )


def run_bundle(datalist: Path | None, output_dir: Path, precision: str, channels_last: bool, args) -> float:
    configs = Path(bundle_root(BUNDLE)) / "configs"
    files = f"['{configs / 'train.yaml'}','{configs / 'evaluate.yaml'}']"
    common = [
        "--output_dir",
        str(output_dir),
        "--precision",
        precision,
        "--channels_last",
        str(channels_last),  # True/False: monai.bundle keeps a lowercase 'false' as a string
        "--seed",
        str(args.seed),
        "--max_epochs",
        str(args.max_epochs),
        "--iterations_per_epoch",
        str(args.iterations_per_epoch),
    ]
    if datalist is not None:
        common += ["--datalist", str(datalist)]
    start = time.perf_counter()
    for config in (str(configs / "train.yaml"), files):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *common]
        log = output_dir.with_suffix(".log")
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root(), help="data root holding busi/")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/usseg_precision_accuracy"))
    parser.add_argument("--datasets", nargs="+", default=["phantom", "busi"], choices=["phantom", "busi"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--iterations-per-epoch", type=int, default=50)
    args = parser.parse_args()

    for dataset in args.datasets:
        results = []
        datalist = busi_datalist(args.data, args.workdir, args.seed) if dataset == "busi" else None
        for name in args.variants:
            precision, channels_last = VARIANTS[name]
            output_dir = args.workdir / dataset / name
            seconds = run_bundle(datalist, output_dir, precision, channels_last, args)
            used = json.loads(((output_dir if datalist is None else datalist.parent) / "datalist.json").read_text())
            for checkpoint in ("final", "best"):
                report = json.loads((output_dir / "eval" / f"{checkpoint}_metrics.json").read_text())["metrics"]
                row = {
                    "method": f"supervised_{name}",
                    "dataset": dataset,
                    "checkpoint": checkpoint,
                    "labeled": len(used["labeled"]),
                    "seed": args.seed,
                    "metrics": {
                        "dice_mean_per_image": report["dice_mean_per_image"],
                        "dice_pooled": report["dice_pooled"],
                        "iou_mean_per_image": report["iou_mean_per_image"],
                        "hd95_mean_px": report["hd95_mean"],
                        "test_images": report["n_images"],
                        "train_and_eval_wall_s": seconds,
                    },
                }
                print(row, flush=True)
                results.append(row)
        # one file per data set, written as soon as it is done: a later failure cannot lose it
        print(write_results(f"precision_accuracy_{dataset}", settings(args, dataset), results), flush=True)


def settings(args: argparse.Namespace, dataset: str) -> dict:
    data = {
        "phantom": "240 images (the bundle's default phantom), 20% test, 10% of the rest validation",
        "busi": "benign + malignant, exact duplicates removed, 70/30 train/test, 10% of train validation, all "
        "remaining train images labeled; split in benchmarks/splits/",
    }
    return {
        "bundle": BUNDLE,
        "dataset": dataset,
        "data": data[dataset],
        "input": "128x128 grayscale, resized directly (aspect not kept), intensities /255",
        "iterations": args.max_epochs * args.iterations_per_epoch,
        "batch_size": 16,
        "optimizer": "AdamW lr 1e-3, wd 1e-4, poly(0.9) per iteration",
        "dice": "lesion Dice, mean over test images (dice_mean_per_image) and pooled over the set",
        "checkpoints": "final = last iteration; best = highest validation Dice",
        "wall_time": "train_and_eval_wall_s was measured on a shared, busy machine: not a speed figure",
    }


if __name__ == "__main__":
    main()
