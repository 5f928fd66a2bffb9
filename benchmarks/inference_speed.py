# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Frames per second of the deployed segmentation network, and whether each fast variant keeps its Dice.

For the baseline bundle's network at 224x224, batch 1, on 2 CPU threads, in one run: eager fp32, eager bf16 autocast
with channels-last, TorchScript (MONAI ``ckpt_export``) and ONNX Runtime (``onnx_export``, CPU provider). Variants
are timed in interleaved rounds (A B C D A B C D ...) after a warm-up, and the median latency gives frames/s. Each
variant also segments the test split of a datalist at the same 224x224 input, and its lesion Dice (mean per image)
is compared with eager fp32's.

    python benchmarks/inference_speed.py --weights outputs/breast_us_supervised_segmentation/models/model.pt \
        --datalist outputs/breast_us_supervised_segmentation/datalist.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usseg.bundles import bundle_root
from usseg.data.datalist import load_datalist
from usseg.data.readers import read_image_array, read_mask
from usseg.metrics.segmentation import mean_dice_per_image
from usseg.zoo import export_onnx, export_torchscript, load_network, onnx_runner

try:
    from results import write_results
except ImportError:
    from benchmarks.results import write_results

BUNDLE = "breast_us_supervised_segmentation"


def load_test_set(datalist: Path, size: int, limit: int) -> tuple[torch.Tensor, np.ndarray]:
    """Test images as (N, 1, size, size) floats in [0, 1] and their masks as (N, size, size) labels."""
    images, masks = [], []
    for item in load_datalist(datalist, "test")[:limit]:
        image = torch.from_numpy(read_image_array(item["image"]).astype(np.float32) / 255.0)[None, None]
        mask = torch.from_numpy(read_mask(item["label"]).astype(np.float32))[None, None]
        images.append(F.interpolate(image, size=(size, size), mode="area"))
        masks.append(F.interpolate(mask, size=(size, size), mode="nearest")[0, 0].numpy().astype(np.uint8))
    return torch.cat(images), np.stack(masks)


def build_variants(bundle_dir: Path, weights: Path, workdir: Path, size: int) -> dict:
    eager = load_network(bundle_dir, weights)
    fast = load_network(bundle_dir, weights).to(memory_format=torch.channels_last)

    def eager_fp32(x: torch.Tensor) -> torch.Tensor:
        return eager(x)

    def eager_bf16_channels_last(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fast(x.contiguous(memory_format=torch.channels_last)).float()

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the zoo still requires it
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(export_torchscript(bundle_dir, weights, workdir / "model.ts")))
        onnx_run = onnx_runner(export_onnx(bundle_dir, weights, workdir / "model.onnx", [1, 1, size, size]))
    return {
        "eager_fp32": eager_fp32,
        "eager_bf16_channels_last": eager_bf16_channels_last,
        "torchscript": lambda x: scripted(x),
        "onnxruntime": lambda x: torch.from_numpy(onnx_run(x)),
    }


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="trained model.pt (a state dict)")
    parser.add_argument("--datalist", type=Path, required=True, help="datalist whose test split is segmented")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--frames-per-round", type=int, default=20)
    parser.add_argument("--test-images", type=int, default=60, help="test images used for the Dice check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundle_dir = Path(bundle_root(BUNDLE))
    images, masks = load_test_set(args.datalist, args.size, args.test_images)

    with tempfile.TemporaryDirectory() as workdir:
        variants = build_variants(bundle_dir, args.weights, Path(workdir), args.size)
        frame = images[:1].contiguous()
        for run in variants.values():  # warm-up: oneDNN primitive caches, ONNX Runtime session
            for _ in range(10):
                run(frame)
        latencies: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                for _ in range(args.frames_per_round):
                    run(frame)
                latencies[name].append((time.perf_counter() - start) / args.frames_per_round)
        predictions = {
            name: np.stack([run(image[None]).argmax(1)[0].numpy() for image in images])
            for name, run in variants.items()
        }

    reference_dice = mean_dice_per_image(predictions["eager_fp32"], masks)
    results = []
    for name in variants:
        latency = statistics.median(latencies[name])
        dice = mean_dice_per_image(predictions[name], masks)
        row = {
            "method": f"{BUNDLE}_{name}",
            "metrics": {
                "frames_per_s": 1.0 / latency,
                "latency_ms_median": 1000.0 * latency,
                "latency_ms_min_round": 1000.0 * min(latencies[name]),
                "dice_mean_per_image": dice,
                "dice_change_vs_eager_fp32_points": 100.0 * (dice - reference_dice),
                "mask_agreement_dice_vs_eager_fp32": mean_dice_per_image(predictions[name], predictions["eager_fp32"]),
                "meets_30_fps": 1.0 / latency >= 30.0,
            },
        }
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row["metrics"].items()}, flush=True)
        results.append(row)
    settings = {
        "network": "the baseline bundle's MONAI UNet (16,32,64,128,256), 2 residual units, instance norm",
        "input": [1, 1, args.size, args.size],
        "threads": args.threads,
        "rounds": args.rounds,
        "frames_per_round": args.frames_per_round,
        "warmup_frames": 10,
        "weights": str(args.weights),
        "dice_data": f"test split of {args.datalist} ({len(images)} images) resized to {args.size}x{args.size}",
        "dice": "lesion Dice, mean over images, of the argmax mask against the ground truth at the same size",
        "target": ">= 30 frames/s, Dice within 0.5 points of eager fp32",
    }
    print(write_results("inference_speed", settings, results))


if __name__ == "__main__":
    main()
