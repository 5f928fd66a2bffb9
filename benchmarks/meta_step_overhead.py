# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Cost of a Meta-USCL (meta-weighted) training iteration relative to a plain contrastive iteration.

One process builds ``ContrastivePretrainer``s on the same network architecture and batch (ResNet-18, grayscale 64x64,
32 positive pairs, a 32-pair meta batch) and times their iteration (``_iteration``, the full step with events):

- ``plain``: NT-Xent, SGD (USCL / SimCLR; no CMW-Net);
- ``meta_full``: the bi-level step every iteration, virtual step over all parameters (as released);
- ``meta_last_stage``: the bi-level step every iteration, virtual step over ``encoder.layer4`` and the projection;
- ``meta_full_every2``: the full bi-level step every second iteration (pairs of iterations timed together, halved).

Variants are timed in alternation (plain, then each meta variant, repeated) after a warm-up, and the median ratio
to the plain iteration of the same round is reported. The reference implementation's meta iteration costs about 17x
its plain step (6.2 s of 6.58 s, RTX 3060, batch 32, 112x112; ``methods.md`` section 2.3).

    python benchmarks/meta_step_overhead.py --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from usseg.engines.contrastive import ContrastivePretrainer
from usseg.networks.contrastive import CMWNet, ContrastiveOutputs, build_contrastive_network

try:
    from results import write_results
except ImportError:  # run as a module: python -m benchmarks.meta_step_overhead
    from benchmarks.results import write_results

VARIANTS = {  # name -> (meta weighting, meta_parameters, meta_interval)
    "plain": (False, None, 1),
    "meta_full": (True, None, 1),
    "meta_last_stage": (True, ["encoder.layer4", "projection"], 1),
    "meta_full_every2": (True, None, 2),
}


def _batch(pairs: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"view_{k}": torch.randn(pairs, 1, size, size, generator=generator) for k in (1, 2)}


def build(variant: str, args: argparse.Namespace, precision: str, channels_last: bool) -> ContrastivePretrainer:
    meta, meta_parameters, interval = VARIANTS[variant]
    torch.manual_seed(0)
    network = build_contrastive_network("meta_uscl", depth=18, widths=args.widths)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    cmw = CMWNet(network.projection[0].in_features) if meta else None
    trainer = ContrastivePretrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=1,
        train_data_loader=[_batch(args.pairs, args.size, 1)],
        network=ContrastiveOutputs(network),
        optimizer=optimizer,
        meta_data_loader=[_batch(args.pairs, args.size, 2)] if meta else None,
        weight_network=cmw,
        weight_optimizer=torch.optim.Adam(cmw.parameters(), lr=6e-5) if meta else None,
        meta_interval=interval,
        meta_parameters=meta_parameters,
        precision=precision,
        channels_last=channels_last,
        decollate=False,
    )
    trainer.run()  # sets up the engine state (and is the first warm-up iteration)
    return trainer


def time_iterations(trainer: ContrastivePretrainer, batch: dict, count: int) -> float:
    """Seconds per iteration over ``count`` consecutive iterations (a meta step lands on every k-th one)."""
    start = time.perf_counter()
    for _ in range(count):
        trainer.state.iteration += 1
        trainer._iteration(trainer, batch)
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per setting (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument("--pairs", type=int, default=32, help="positive pairs per batch (and meta batch)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16_channels_last"])
    parser.add_argument(
        "--widths", type=int, nargs=4, default=[32, 64, 128, 256], help="ResNet-18 stage widths (bundle default)"
    )
    args = parser.parse_args()
    settings_map = {"fp32": ("fp32", False), "bf16_channels_last": ("bf16", True)}
    batch = _batch(args.pairs, args.size, 1)
    results = []
    for setting in args.settings:
        precision, channels_last = settings_map[setting]
        trainers = {name: build(name, args, precision, channels_last) for name in VARIANTS}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_index in range(args.warmup + args.rounds):
            for name, trainer in trainers.items():
                count = VARIANTS[name][2]  # every2: time a plain + meta pair, report the mean
                seconds = time_iterations(trainer, batch, count)
                if round_index >= args.warmup:
                    times[name].append(seconds)
            print(setting, round_index, {name: round(values[-1], 3) for name, values in times.items() if values})
        for name in VARIANTS:
            ratios = [meta / plain for meta, plain in zip(times[name], times["plain"])]
            results.append(
                {
                    "method": name,
                    "setting": setting,
                    "metrics": {
                        "seconds_per_iteration_median": statistics.median(times[name]),
                        "overhead_vs_plain_median": statistics.median(ratios),
                        "overhead_vs_plain_min": min(ratios),
                        "overhead_vs_plain_max": max(ratios),
                    },
                }
            )
            print(setting, name, results[-1]["metrics"])
    write_results(
        "meta_step_overhead",
        {
            "network": f"ResNet-18 (MONAI, 1 input channel, widths {args.widths}) + projection {args.widths[-1]}-"
            f"{args.widths[-1]}-128; CMW-Net {2 * args.widths[-1]}-10-1",
            "input": f"{args.size}x{args.size} grayscale, {args.pairs} pairs per batch, {args.pairs} meta pairs",
            "optimizer": "SGD lr 0.1 momentum 0.9 wd 1e-4; CMW-Net Adam 6e-5",
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "threads": torch.get_num_threads(),
            "protocol": "variants timed in alternation within each round; median of per-round ratios to plain",
            "target": "meta-weighted iteration <= 2.5x a plain contrastive iteration",
            "reference_implementation": "about 17x (6.2 s of 6.58 s per iteration, RTX 3060, batch 32, 112x112)",
        },
        results,
    )


if __name__ == "__main__":
    main()
