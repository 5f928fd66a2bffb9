# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""POCUS: does ultrasound-video contrastive pre-training help frame classification? Random init vs USCL vs Meta-USCL.

Data: the convex-probe POCUS videos of the classes COVID-19, bacterial pneumonia and healthy (119 videos,
``<data>/pocus``; viral pneumonia has 2 videos and is left out). Every video is decoded once, converted to gray and
resized to ``--size`` (the pre-training input side), and kept in memory.

1. Pre-training (unlabeled: no class is used). Videos are split by patient into train / validation / meta lists
   (``build_video_pretraining_datalist``, seed 0; committed in ``benchmarks/splits/pocus_pretraining_seed0.json``).
   Two runs with the same iteration budget, batch, input size, precision and encoder (ResNet-18, 1 channel):

   - ``uscl``: USCL pairs (3 frames, shared lambda ~ Beta(0.5, 0.5), augment then mix), USCL augmentation, head
     512-512-256, Adam 3e-4 / wd 1e-4, cosine after a 10-epoch constant phase; the semi-supervised cross-entropy is
     off (it would use the labels of the evaluation folds);
   - ``meta_uscl``: Meta-USCL pairs (ordered frames, alpha, beta ~ Beta(3, 5), mix then augment), its augmentation,
     head 512-512-128, SGD 0.1 / 0.9 / 1e-4 with the released warm-up + cosine LambdaLR, CMW-Net (Adam 6e-5) with
     the bi-level step on the held-out meta videos (``--meta-interval``, ``--meta-parameters``).

   An epoch is one positive pair per training video, as in USCL. The last weights are exported as ``encoder.pt``.
   The training videos include videos of every evaluation fold (pre-training is transductive on unlabeled videos).

2. Fine-tuning, the same for every initialisation (``cross_validate_encoder``): video-level 5-fold cross-validation
   (folds stratified by class and grouped by patient, ``benchmarks/splits/pocus_folds_seed0.json``), every 5th frame
   capped at 16 per video; ``finetune`` trains the last residual block + a new classifier, ``linear`` the classifier
   only; Adam 0.01 / wd 1e-4, cosine, 30 epochs, batch 128; the epoch is chosen on 20% of the training videos.

Partial results are written after every finished run.

    python benchmarks/pocus_pretraining.py --data /work/shared/data --iterations 600
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset

from usseg.data.datalist import assign_video_folds, build_video_pretraining_datalist
from usseg.data.io import atomic_write_json
from usseg.data.readers import read_video
from usseg.engines.contrastive import ContrastivePretrainer, cross_validate_encoder, load_video_frames
from usseg.networks.contrastive import CMWNet, ContrastiveOutputs, build_contrastive_network
from usseg.networks.encoders import save_encoder
from usseg.transforms import VideoFramePaird
from usseg.transforms.video.augment import AUGMENT_PRESETS, contrastive_augmentation

try:
    from results import RESULTS_DIR, default_data_root, write_results
except ImportError:  # run as a module: python -m benchmarks.pocus_pretraining
    from benchmarks.results import RESULTS_DIR, default_data_root, write_results

CLASSES = ("covid", "pneumonia", "regular")
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
LAST_STAGE = ["encoder.layer4", "projection"]  # the virtual step of the cheap Meta-USCL variant
ANCHORS = {
    "imagenet_pretrained_resnet18": {"accuracy": 0.84, "source": "USCL abstract (arXiv:2011.13066): about 84%"},
    "uscl_resnet18_224": {"accuracy": 0.9419, "source": "983632847/USCL README, US-4 pre-training, 300 epochs"},
    "meta_uscl_resnet18_224": {"accuracy": 0.946, "source": "Schuture/Meta-USCL README"},
    "meta_uscl_resnet18_64": {"accuracy": 0.909, "source": "Schuture/Meta-USCL README"},
    "caveats": "published numbers: pre-trained on US-4 (1051 videos, 4 sources), evaluated on the authors' own "
    "5-fold frame pickles of a larger POCUS release (web and Butterfly videos), best test epoch kept per fold",
}


class ArraySource:
    """Decoded, resized videos in memory, served through the ``FrameSource`` methods."""

    def __init__(self, videos: dict[str, np.ndarray]) -> None:
        self.videos = videos

    def num_frames(self, path: str) -> int:
        return int(self.videos[str(path)].shape[0])

    def get_frames(self, path: str, indices: list[int]) -> np.ndarray:
        return self.videos[str(path)][list(indices)]


def pocus_videos(data: Path) -> list[dict[str, Any]]:
    root = data / "pocus"
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = [
            row
            for row in csv.DictReader(handle)
            if row["type"] == "video" and row["probe"] == "convex" and row["cls"] in CLASSES
        ]
    return [
        {
            "video": str(root / row["path"]),
            "case_id": Path(row["path"]).stem,
            "class_name": row["cls"],
            "class": CLASSES.index(row["cls"]),
            "patient_id": row["patient_id"],
            "num_frames": int(row["frames"]),
        }
        for row in rows
    ]


def decode_all(videos: list[dict[str, Any]], size: int) -> dict[str, np.ndarray]:
    decoded = {}
    for index, item in enumerate(videos):
        frames = read_video(item["video"], color="gray")
        chunks = []
        for start in range(0, frames.shape[0], 32):  # float copies of a few frames at a time: 1080p videos are large
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + 32])).float()[:, None]
            chunks.append(F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)[:, 0])
        decoded[item["video"]] = torch.cat(chunks).round().clamp(0, 255).to(torch.uint8).numpy()
        del frames
        if index % 20 == 0:
            print(f"decoded {index + 1}/{len(videos)} videos", flush=True)
    return decoded


def record_splits(videos: list[dict[str, Any]], pretraining: dict[str, Any], data: Path) -> None:
    """Commit-ready split files: file names relative to the POCUS folder, classes, patients, folds."""
    root = data / "pocus"

    def name(path: str) -> str:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()

    folds = [
        {"video": name(v["video"]), "class": v["class_name"], "patient_id": v["patient_id"], "fold": v["fold"]}
        for v in videos
    ]
    atomic_write_json(
        SPLITS_DIR / "pocus_folds_seed0.json",
        {"dataset": "POCUS convex videos (covid, pneumonia, regular)", "num_folds": 5, "seed": 0, "videos": folds},
    )
    lists = {
        split: [name(str((SPLITS_DIR / item["video"]).resolve())) for item in pretraining[split]]
        for split in ("train", "validation", "meta")
    }
    atomic_write_json(
        SPLITS_DIR / "pocus_pretraining_seed0.json",
        {"dataset": "POCUS convex videos", "split_by": "patient", "seed": 0, **lists},
    )


def pretrain(
    method: str,
    train_videos: list[str],
    meta_videos: list[str],
    decoded: dict[str, np.ndarray],
    args: argparse.Namespace,
    encoder_path: Path,
) -> dict[str, Any]:
    """One pre-training run; returns timing and loss statistics, writes the encoder."""
    torch.manual_seed(args.seed)
    preset = "uscl" if method == "uscl" else "meta_uscl"
    network = build_contrastive_network(preset, depth=18, widths=args.widths)
    augment = contrastive_augmentation(preset, args.size)
    pair = VideoFramePaird(preset=preset, augment=augment, info_key=None)
    train_set = Dataset([{"video": decoded[v]} for v in train_videos], pair)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0)
    per_epoch = len(loader)
    epochs = max(1, math.ceil(args.iterations / per_epoch))
    warm = min(10, epochs // 3)
    meta = method.startswith("meta_uscl")
    if meta:
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def factor(epoch: int) -> float:  # the released LambdaLR, scaled to this run's epochs
            if epoch < warm:
                return 0.1 + 0.9 * math.exp(-5 * (1 - epoch / warm) ** 2)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, epochs - warm)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        meta_pair = VideoFramePaird(preset="meta_uscl", samples=1, augment=contrastive_augmentation(preset, args.size))
        meta_set = Dataset([{"video": decoded[v]} for v in meta_videos], meta_pair)
        meta_loader = DataLoader(meta_set, batch_size=min(args.batch, len(meta_videos)), shuffle=True, num_workers=0)
        cmw = CMWNet(network.projection[0].in_features)
        extra = {
            "meta_data_loader": meta_loader,
            "weight_network": cmw,
            "weight_optimizer": torch.optim.Adam(cmw.parameters(), lr=6e-5),
            "meta_interval": 2 if method.endswith("every2") else args.meta_interval,
            "meta_parameters": LAST_STAGE if method.endswith("last_stage") else args.meta_parameters,
            "meta_lr": 0.1,
        }
    else:
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-4, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda epoch: (
                1.0 if epoch < warm else 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, epochs - warm)))
            ),
        )
        extra = {}
    trainer = ContrastivePretrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=loader,
        network=ContrastiveOutputs(network),
        optimizer=optimizer,
        precision=args.precision,
        channels_last=args.channels_last,
        decollate=False,
        **extra,
    )
    from ignite.engine import Events

    from usseg.handlers import EpochSeedHandler

    EpochSeedHandler(seed=args.seed).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: schedule.step())
    log: dict[str, list[float]] = {}

    def keep(engine: ContrastivePretrainer) -> None:
        for key in ("loss", "meta_loss", "weight_std", "weight_entropy", "embedding_std", "collapse_rank_score"):
            if key in engine.state.output:
                log.setdefault(key, []).append(float(torch.as_tensor(engine.state.output[key]).detach()))
        if engine.state.iteration % 50 == 0:
            print(method, engine.state.iteration, {k: round(v[-1], 4) for k, v in log.items()}, flush=True)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, keep)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.iterations), lambda engine: engine.terminate())
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    save_encoder(network.encoder, encoder_path, {"method": method, "iterations": trainer.state.iteration})

    def tail_mean(key: str) -> float | None:
        values = log.get(key)
        return float(np.mean(values[-20:])) if values else None

    return {
        "iterations": int(trainer.state.iteration),
        "epochs": int(trainer.state.epoch),
        "iterations_per_epoch": per_epoch,
        "seconds": round(seconds, 1),
        "seconds_per_iteration": round(seconds / max(1, trainer.state.iteration), 3),
        "final_loss_mean_last20": tail_mean("loss"),
        "final_meta_loss_mean_last20": tail_mean("meta_loss"),
        "final_weight_std_mean_last20": tail_mean("weight_std"),
        "final_embedding_std_mean_last20": tail_mean("embedding_std"),
        "final_collapse_rank_score_mean_last20": tail_mean("collapse_rank_score"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--iterations", type=int, default=600, help="pre-training iterations per method")
    parser.add_argument("--batch", type=int, default=32, help="positive pairs per batch")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--widths", type=int, nargs=4, default=[64, 128, 256, 512], help="ResNet-18 stage widths (32 64 128 256: half)"
    )
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--meta-interval", type=int, default=1)
    parser.add_argument("--meta-parameters", nargs="*", default=None)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["random", "uscl", "meta_uscl"],
        help="also: meta_uscl_every2, meta_uscl_last_stage",
    )
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/usseg_pocus_pretraining"))
    parser.add_argument("--name", default="pocus_pretraining")
    parser.add_argument("--limit-videos", type=int, default=None, help="smoke test: the N smallest videos only")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    videos = pocus_videos(args.data)
    if args.limit_videos:
        videos = sorted(videos, key=lambda v: v["num_frames"])[: args.limit_videos]
    videos = assign_video_folds(videos, num_folds=5, seed=0)
    patients = {Path(v["video"]).name: v["patient_id"] for v in videos}
    pretraining = build_video_pretraining_datalist(
        [v["video"] for v in videos],
        SPLITS_DIR / ".pocus_pretraining_full.json",
        seed=0,
        val_fraction=0.15,
        meta_fraction=0.1,
        patient_of=patients,
        class_from={"covid": "^Cov", "pneumonia": "^[Pp]neu", "regular": "^Reg"},
    )
    (SPLITS_DIR / ".pocus_pretraining_full.json").unlink()  # absolute-ish paths; the committed file is below
    if not args.limit_videos:
        record_splits(videos, pretraining, args.data)
    resolve = {Path(v["video"]).name: v["video"] for v in videos}
    lists = {split: [resolve[Path(item["video"]).name] for item in pretraining[split]] for split in ("train", "meta")}

    start = time.perf_counter()
    decoded = decode_all(videos, args.size)
    decode_seconds = time.perf_counter() - start
    source = ArraySource(decoded)
    frames = {
        preset: load_video_frames(videos, args.size, 5, 16, (values["mean"], values["std"]), source)
        for preset, values in AUGMENT_PRESETS.items()
    }
    settings = {
        "data": "POCUS convex videos, classes covid / pneumonia / regular (119 videos, 17,620 frames)",
        "pretraining": {
            "iterations": args.iterations,
            "pairs_per_batch": args.batch,
            "input": f"{args.size}x{args.size} grayscale",
            "precision": args.precision,
            "channels_last": args.channels_last,
            "encoder": f"ResNet-18 (MONAI, usseg.networks.encoders.build_resnet_encoder), widths {args.widths}",
            "split": {k: len(pretraining[k]) for k in ("train", "validation", "meta")},
            "meta_interval": f"{args.meta_interval} (2 for meta_uscl_every2)",
            "meta_parameters": f"{args.meta_parameters} ({LAST_STAGE} for meta_uscl_last_stage)",
            "uscl_classification_loss": "off (labels are the evaluation target)",
            "checkpoint": "last",
        },
        "finetuning": "video-level 5-fold CV; every 5th frame, <= 16 per video; Adam 0.01 wd 1e-4 cosine, "
        f"{args.finetune_epochs} epochs, batch 128; epoch chosen on 20% of the training videos; no augmentation; "
        "inputs normalised as in pre-training (USCL 0.5/0.25, Meta-USCL and random 0.18/0.24)",
        "decode_seconds": round(decode_seconds, 1),
        "published_anchors": ANCHORS,
    }
    results: list[dict[str, Any]] = []
    for method in args.methods:
        encoder_path = None
        run_info: dict[str, Any] = {}
        preset = "uscl" if method == "uscl" else "meta_uscl"  # the input normalisation the encoder was trained with
        if method != "random":
            encoder_path = args.workdir / method / "encoder.pt"
            run_info = pretrain(method, lists["train"], lists["meta"], decoded, args, encoder_path)
            print(method, run_info, flush=True)
        for mode in ("finetune", "linear"):
            cv = cross_validate_encoder(
                videos,
                CLASSES,
                output_file=args.workdir / f"{method}_{mode}_cv.json",
                encoder_weights=encoder_path,
                mode=mode,
                widths=args.widths,
                epochs=args.finetune_epochs,
                normalize=(AUGMENT_PRESETS[preset]["mean"], AUGMENT_PRESETS[preset]["std"]),
                frames=frames[preset],
                seed=args.seed,
            )
            row = {
                "method": method,
                "mode": mode,
                "seed": args.seed,
                "metrics": {
                    "accuracy_selected_mean": cv["accuracy_selected"]["mean"],
                    "accuracy_selected_std": cv["accuracy_selected"]["std"],
                    "accuracy_last_mean": cv["accuracy_last"]["mean"],
                    "accuracy_paper_protocol_best_test_epoch_mean": cv["accuracy_paper_protocol_best_test_epoch"][
                        "mean"
                    ],
                    "pooled_accuracy_selected": cv["pooled_selected"]["accuracy"],
                    "per_fold_accuracy_selected": [f["accuracy_selected"] for f in cv["folds"]],
                    "per_class_selected": cv["pooled_selected"]["per_class"],
                    "confusion_matrix_selected": cv["pooled_selected"]["confusion_matrix"],
                },
                "pretraining": run_info,
            }
            results.append(row)
            print(method, mode, {k: v for k, v in row["metrics"].items() if "mean" in k}, flush=True)
            write_results(args.name, settings, results)
    print("written", RESULTS_DIR / f"{args.name}.json")


if __name__ == "__main__":
    main()
