# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Training-step throughput of the baseline trainer against a plain PyTorch loop, and the data-loading share.

Both sides use the same network (the baseline bundle's U-Net, built from its config), the same batch, the same
data pipeline (the bundle's CacheDataset, random transforms and ThreadDataLoader on the phantom) and the same optimiser.
"Trainer" is ``usseg.engines.SupervisedTrainer`` run through ignite with the bundle's per-iteration handlers
(learning-rate schedule and loss logging), as one long run paused between rounds with ignite's ``interrupt()``;
epoch-level work (validation, checkpoints, history figures) is left out of both sides. Rounds alternate trainer /
plain loop (A B A B ...) after a warm-up, and the median ratio of images per second is reported for each
precision/layout setting.

    python benchmarks/train_throughput.py --rounds 6 --iterations 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import LrScheduleHandler, StatsHandler, from_engine

from usseg.bundles import bundle_root
from usseg.engines import SupervisedTrainer, autocast
from usseg.engines.utils import to_channels_last

try:
    from results import write_results
except ImportError:  # run as a module: python -m benchmarks.train_throughput
    from benchmarks.results import write_results

BUNDLE = "breast_us_supervised_segmentation"
VARIANTS = {  # name -> (precision, channels_last)
    "fp32": ("fp32", False),
    "fp32_channels_last": ("fp32", True),
    "bf16_channels_last": ("bf16", True),
}


def build_workflow(workdir: Path, args: argparse.Namespace) -> ConfigWorkflow:
    configs = Path(bundle_root(BUNDLE)) / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.yaml"),
        workflow_type="train",
        output_dir=str(workdir),
        batch_size=args.batch_size,
        spatial_size=[args.size, args.size],
        num_phantom_images=args.images,
        num_workers=args.num_workers,
    )
    workflow.initialize()
    return workflow


class Timer:
    """Accumulates wall time between a start and a stop callback (used around the trainer's batch fetch)."""

    def __init__(self) -> None:
        self.total, self._start = 0.0, 0.0

    def start(self, *_: object) -> None:
        self._start = time.perf_counter()

    def stop(self, *_: object) -> None:
        self.total += time.perf_counter() - self._start


def make_trainer(workflow: ConfigWorkflow, precision: str, channels_last: bool, iterations: int):
    network = copy.deepcopy(workflow.parser.get_parsed_content("network_def")).to("cpu")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10**6, power=0.9)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=10**6,  # one long run, paused after every round with ignite's interrupt()
        epoch_length=50,  # the bundle's epoch: epoch-level events cost what they cost in real training
        train_data_loader=workflow.parser.get_parsed_content("train#dataloader"),
        network=network,
        optimizer=optimizer,
        loss_function=workflow.parser.get_parsed_content("loss"),
        precision=precision,
        channels_last=channels_last,
        decollate=False,
        train_handlers=[
            LrScheduleHandler(scheduler, epoch_level=False, print_lr=False),
            StatsHandler(
                tag_name="train_loss", iteration_log=False, output_transform=from_engine(["loss"], first=True)
            ),
        ],
    )
    fetch = Timer()
    trainer.add_event_handler(Events.GET_BATCH_STARTED, fetch.start)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, fetch.stop)
    # pause after each round; run() then resumes the same run, data iterator included (no start-up cost per round)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=iterations), lambda engine: engine.interrupt())
    return trainer, fetch


def trainer_round(trainer: SupervisedTrainer) -> float:
    start = time.perf_counter()
    trainer.run()  # returns at the next interrupt, after `iterations` iterations
    return time.perf_counter() - start


class PlainLoop:
    """The loop a researcher writes by hand: fetch, move, forward, loss, backward, step."""

    def __init__(self, workflow: ConfigWorkflow, precision: str, channels_last: bool) -> None:
        self.network = copy.deepcopy(workflow.parser.get_parsed_content("network_def")).to("cpu")
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=10**6, power=0.9)
        self.loss = workflow.parser.get_parsed_content("loss")
        self.loader = workflow.parser.get_parsed_content("train#dataloader")
        self.precision, self.channels_last = precision, channels_last
        self.iterator = iter(self.loader)
        self.fetch_time = 0.0

    def _next(self):
        start = time.perf_counter()
        batch = next(self.iterator, None)
        if batch is None:
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        self.fetch_time += time.perf_counter() - start
        return batch

    def round(self, iterations: int) -> float:
        start = time.perf_counter()
        self.network.train()
        for _ in range(iterations):
            batch = self._next()
            images, labels = batch["image"].as_tensor(), batch["label"].as_tensor()
            if self.channels_last:
                images = to_channels_last(images)
            self.optimizer.zero_grad()
            with autocast(torch.device("cpu"), self.precision):
                pred = self.network(images)
            loss = self.loss(pred.float(), labels)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        return time.perf_counter() - start


def measure(workflow: ConfigWorkflow, name: str, args: argparse.Namespace) -> dict:
    precision, channels_last = VARIANTS[name]
    trainer, fetch = make_trainer(workflow, precision, channels_last, args.iterations)
    plain = PlainLoop(workflow, precision, channels_last)
    trainer_round(trainer)  # warm-up: allocator, oneDNN primitive caches, loader iterators
    plain.round(args.iterations)
    fetch.total, plain.fetch_time = 0.0, 0.0
    trainer_times, plain_times = [], []
    for _ in range(args.rounds):
        trainer_times.append(trainer_round(trainer))
        plain_times.append(plain.round(args.iterations))
    trainer.terminate()  # end the paused run properly, so no handler fires during interpreter shutdown
    trainer.run()
    images = args.iterations * args.batch_size
    ratios = [p / t for t, p in zip(trainer_times, plain_times)]  # (images/s trainer) / (images/s plain)
    return {
        "method": f"supervised_trainer_{name}",
        "metrics": {
            "trainer_images_per_s": images / statistics.median(trainer_times),
            "plain_loop_images_per_s": images / statistics.median(plain_times),
            "speed_ratio_vs_plain": statistics.median(ratios),
            "speed_ratio_vs_plain_min": min(ratios),
            "trainer_data_loading_fraction": fetch.total / sum(trainer_times),
            "plain_data_loading_fraction": plain.fetch_time / sum(plain_times),
            "trainer_s_per_step": statistics.median(trainer_times) / args.iterations,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per side (after one warm-up round)")
    parser.add_argument("--iterations", type=int, default=20, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square input side")
    parser.add_argument("--images", type=int, default=120, help="phantom images generated for the data set")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (the bundle default is 0)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        workflow = build_workflow(Path(workdir), args)
        results = []
        for name in args.variants:
            row = measure(workflow, name, args)
            print(name, {k: round(v, 3) for k, v in row["metrics"].items()}, flush=True)
            results.append(row)
    settings = {
        "network": "MONAI UNet (16,32,64,128,256), 2 residual units, instance norm (the baseline bundle's)",
        "data": "usseg phantom through the bundle's CacheDataset + random transforms + DataLoader",
        "batch_size": args.batch_size,
        "input": [1, args.size, args.size],
        "iterations_per_round": args.iterations,
        "rounds": args.rounds,
        "warmup_rounds": 1,
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "trainer_handlers": ["LrScheduleHandler (per iteration)", "StatsHandler"],
        "trainer_run": "one ignite run (epochs of 50 iterations) paused after each round with Engine.interrupt()",
        "ratio": "median over rounds of plain-loop time / trainer time (>= 1 means the trainer is not slower)",
        "data_loading_fraction": "time waiting for the next batch / total step time",
    }
    print(write_results("train_throughput", settings, results))


if __name__ == "__main__":
    main()
