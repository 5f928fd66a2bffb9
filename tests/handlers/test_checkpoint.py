# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""epoch_seed, EpochSeedHandler, TrainingCheckpointHandler and BestMetricState: reproducible epochs, atomic
checkpoints, resume with fallback past corrupt files, and model selection that survives a resume."""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import DataLoader, Dataset, ThreadDataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, Randomizable, Transform
from monai.utils import set_determinism

from usseg.engines import SupervisedTrainer
from usseg.handlers.checkpoint import (
    BestMetricState,
    EpochSeedHandler,
    TrainingCheckpointHandler,
    epoch_seed,
    stream_seed,
)

SEED = 7
CHECKPOINT_LOGGER = "usseg.handlers.checkpoint"

# -- epoch_seed ---------------------------------------------------------------------------------------------------


def test_epoch_seed_is_distinct_per_seed_and_epoch_and_fits_numpy() -> None:
    seeds = [epoch_seed(seed, epoch) for seed in range(50) for epoch in range(1, 501)]
    assert len(set(seeds)) == len(seeds)
    extremes = [epoch_seed(seed, epoch) for seed in (-1, -(2**40), 2**31 - 1, 2**40) for epoch in (0, 1, 10_000)]
    assert all(0 <= value < 2**32 for value in seeds + extremes)
    np.random.RandomState(max(extremes))  # accepted by NumPy's legacy generator, which MONAI transforms use


# -- EpochSeedHandler ---------------------------------------------------------------------------------------------

ITEMS = 8
BATCH = 2


def _augmented_dataset() -> Dataset:
    """Eight distinguishable 4x4 images, randomly flipped and noised."""
    items = [{"image": np.arange(16, dtype=np.float32).reshape(1, 4, 4) + 100 * i, "index": i} for i in range(ITEMS)]
    transform = Compose(
        [RandFlipd(keys="image", prob=0.5, spatial_axis=0), RandGaussianNoised(keys="image", prob=0.5, std=0.5)]
    )
    return Dataset(items, transform=transform)


LOADERS: dict[str, Callable[[Dataset], DataLoader]] = {
    "DataLoader": lambda dataset: DataLoader(dataset, batch_size=BATCH, shuffle=True),
    "ThreadDataLoader": lambda dataset: ThreadDataLoader(dataset, batch_size=BATCH, shuffle=True),
}

Batch = tuple[list[int], torch.Tensor]


def _batches_per_epoch(
    make_loader: Callable[[Dataset], DataLoader], seed: int, max_epochs: int = 3, epoch_length: int | None = None
) -> dict[int, list[Batch]]:
    """Run a bare engine with an EpochSeedHandler; return ``{epoch: [(indices, images (B, 1, 4, 4)), ...]}``."""
    seen: dict[int, list[Batch]] = {}

    def record(engine: Engine, batch: dict) -> None:
        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        seen.setdefault(engine.state.epoch, []).append((batch["index"].tolist(), image.clone()))

    engine = Engine(record)
    engine.data_loader = make_loader(_augmented_dataset())  # where EpochSeedHandler finds the loader of a trainer
    EpochSeedHandler(seed).attach(engine)
    engine.run(engine.data_loader, max_epochs=max_epochs, epoch_length=epoch_length)
    return seen


def _same_batches(first: list[Batch], second: list[Batch]) -> bool:
    return len(first) == len(second) and all(
        a_index == b_index and torch.equal(a_image, b_image)
        for (a_index, a_image), (b_index, b_image) in zip(first, second)
    )


@pytest.mark.parametrize("loader_kind", LOADERS)
def test_one_seed_gives_the_same_batches_every_run(loader_kind: str) -> None:
    first = _batches_per_epoch(LOADERS[loader_kind], SEED)
    second = _batches_per_epoch(LOADERS[loader_kind], SEED)
    other_seed = _batches_per_epoch(LOADERS[loader_kind], SEED + 1)
    assert sorted(first) == [1, 2, 3]
    for epoch in first:
        assert len(first[epoch]) == ITEMS // BATCH
        assert _same_batches(first[epoch], second[epoch]), f"epoch {epoch} differs between two runs"
        assert not _same_batches(first[epoch], other_seed[epoch]), f"epoch {epoch} ignores the seed"
    assert not _same_batches(first[1], first[2])  # each epoch has its own seed, not one seed replayed


def test_an_epoch_does_not_depend_on_how_far_the_previous_one_read() -> None:
    """Epoch 2 starts a fresh shuffle whether epoch 1 read all four batches or only two."""
    make_loader = LOADERS["DataLoader"]
    full = _batches_per_epoch(make_loader, SEED, max_epochs=2)
    partial = _batches_per_epoch(make_loader, SEED, max_epochs=2, epoch_length=2)
    assert _same_batches(partial[1], full[1][:2])
    assert _same_batches(partial[2], full[2][:2])
    assert not _same_batches(partial[2], full[1][2:])  # not the continuation of epoch 1's iterator

    # and it is what seeding everything with epoch_seed(SEED, 2) and starting a new loader gives
    dataset = _augmented_dataset()
    loader = make_loader(dataset)
    set_determinism(seed=epoch_seed(SEED, 2))
    dataset.transform.set_random_state(seed=stream_seed(SEED, 2, 0))
    expected = []
    for batch in loader:
        expected.append((batch["index"].tolist(), batch["image"].as_tensor().clone()))
    assert _same_batches(full[2], expected)


class _SlowTwoDraws(Randomizable, Transform):
    """Draw one number, wait, draw another: long enough for the next epoch to start in between."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: dict) -> dict:
        first = self.R.random_sample()
        time.sleep(self.pause_s)
        return {"draws": torch.tensor([first, self.R.random_sample()], dtype=torch.float64)}


def test_a_prefetch_thread_of_the_previous_epoch_does_not_draw_from_the_new_seeds() -> None:
    dataset = Dataset([{"index": i} for i in range(4)], transform=_SlowTwoDraws(pause_s=0.25))
    loader = ThreadDataLoader(dataset, batch_size=1, shuffle=False)
    draws: dict[int, torch.Tensor] = {}
    engine = Engine(lambda e, batch: draws.setdefault(e.state.epoch, batch["draws"][0].clone()))
    engine.data_loader = loader
    EpochSeedHandler(SEED).attach(engine)
    # one of four batches per epoch: when epoch 2 starts, the thread is inside the transform for the next item
    engine.run(loader, max_epochs=2, epoch_length=1)
    for epoch in (1, 2):
        # what the first item gives when the transform is seeded for the epoch and nothing else draws from it
        expected = Compose([_SlowTwoDraws(pause_s=0.0)]).set_random_state(seed=stream_seed(SEED, epoch, 0))(
            {"index": 0}
        )
        torch.testing.assert_close(draws[epoch], expected["draws"], rtol=0, atol=0, msg=f"epoch {epoch}")


class _SeedSpy(Randomizable):
    """Records every seed given to ``set_random_state``."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def randomize(self, data: Any = None) -> None:
        pass

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _SeedSpy:
        self.seeds.append(seed)
        return super().set_random_state(seed, state)


class _LoaderStub:
    """Just what EpochSeedHandler reads: ``loader.dataset.transform``."""

    def __init__(self) -> None:
        self.dataset = SimpleNamespace(transform=_SeedSpy())


def test_no_two_streams_or_epochs_share_an_augmentation_seed() -> None:
    engine = Engine(lambda e, batch: None)
    engine.data_loader, engine.unlabeled_data_loader = _LoaderStub(), _LoaderStub()
    EpochSeedHandler(SEED).attach(engine)
    engine.run([0], max_epochs=3)
    labeled = engine.data_loader.dataset.transform.seeds
    unlabeled = engine.unlabeled_data_loader.dataset.transform.seeds
    assert len(labeled) == len(unlabeled) == 3
    assert len(set(labeled + unlabeled)) == 6, f"labeled {labeled}, unlabeled {unlabeled}"


# -- TrainingCheckpointHandler: saving ----------------------------------------------------------------------------

ITERATIONS_PER_EPOCH = 3
PLAIN_TYPES = (bool, int, float, str, type(None))


def _toy(init_seed: int = 0) -> dict[str, Any]:
    """A linear model, SGD with momentum (tensor state) and a step LR schedule."""
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def _toy_engine(toy: dict[str, Any]) -> Engine:
    """An engine training ``toy`` for three iterations per epoch, stepping the schedule after each epoch."""
    model, optimizer = toy["model"], toy["optimizer"]

    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = model(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: toy["scheduler"].step())
    return engine


TOY_DATA = [torch.full((4, 3), 0.1 * (i + 1)) for i in range(ITERATIONS_PER_EPOCH)]


def _train(
    folder: Path, max_epochs: int, **handler_kwargs: Any
) -> tuple[TrainingCheckpointHandler, dict[int, dict[str, Any]]]:
    """Train the toy with a checkpoint handler; return it and deep copies of the state after every epoch."""
    toy = _toy()
    engine = _toy_engine(toy)
    handler = TrainingCheckpointHandler(folder, save_dict=toy, seed=handler_kwargs.pop("seed", SEED), **handler_kwargs)
    handler.attach(engine)
    snapshots: dict[int, dict[str, Any]] = {}
    engine.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: snapshots.__setitem__(e.state.epoch, {k: copy.deepcopy(v.state_dict()) for k, v in toy.items()}),
    )
    engine.run(TOY_DATA, max_epochs=max_epochs)
    return handler, snapshots


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _assert_same_state(actual: Any, expected: Any, where: str = "state") -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_state(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, b) in enumerate(zip(actual, expected)):
            _assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert actual == expected, where


def _assert_plain(value: Any, where: str = "checkpoint") -> None:
    """Every leaf is a tensor or a plain Python value; every container a dict, list or tuple."""
    if isinstance(value, (torch.Tensor, *PLAIN_TYPES)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{where} has a {type(key).__name__} key"
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _assert_plain(item, f"{where}[{i}]")
    else:
        pytest.fail(f"{where} holds a {type(value).__name__}")


def test_a_checkpoint_per_epoch_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    _train(tmp_path, max_epochs=5, n_saved=3)
    assert _names(tmp_path) == [f"checkpoint_epoch000{epoch}.pt" for epoch in (3, 4, 5)]  # nothing else, no *.tmp


def test_checkpoints_load_with_weights_only_and_hold_the_full_training_state(tmp_path: Path) -> None:
    _, snapshots = _train(tmp_path, max_epochs=3)
    for epoch in (2, 3):
        checkpoint = torch.load(tmp_path / f"checkpoint_epoch000{epoch}.pt", map_location="cpu", weights_only=True)
        _assert_plain(checkpoint)
        assert checkpoint["seed"] == SEED
        assert checkpoint["trainer"] == {"epoch": epoch, "iteration": epoch * ITERATIONS_PER_EPOCH}
        assert sorted(checkpoint["objects"]) == ["model", "optimizer", "scheduler"]
        _assert_same_state(checkpoint["objects"], snapshots[epoch], f"epoch {epoch}")
        assert checkpoint["objects"]["scheduler"]["last_epoch"] == epoch  # saved after the epoch's schedule step
        assert checkpoint["objects"]["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)


@pytest.mark.parametrize(
    "interval, max_epochs, expected_epochs",
    [
        pytest.param(2, 5, [2, 4, 5], id="every_2_plus_last"),
        pytest.param(3, 6, [3, 6], id="every_3_last_on_interval"),
        pytest.param(1, 3, [1, 2, 3], id="every_epoch"),
    ],
)
def test_interval_saves_every_nth_epoch_and_the_last(
    tmp_path: Path, interval: int, max_epochs: int, expected_epochs: list[int]
) -> None:
    _train(tmp_path, max_epochs=max_epochs, interval=interval, n_saved=10)
    assert _names(tmp_path) == [f"checkpoint_epoch{epoch:04d}.pt" for epoch in expected_epochs]


def test_a_crash_while_writing_leaves_the_previous_checkpoints_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _train(tmp_path, max_epochs=2)
    before = {name: (tmp_path / name).read_bytes() for name in _names(tmp_path)}

    def write_half_then_fail(obj: Any, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("No space left on device")

    toy = _toy()
    engine = _toy_engine(toy)
    handler = TrainingCheckpointHandler(tmp_path, save_dict=toy, seed=SEED, resume=True)
    handler.attach(engine)
    monkeypatch.setattr("usseg.handlers.checkpoint.torch.save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        engine.run(TOY_DATA, max_epochs=3)
    assert _names(tmp_path) == sorted(before)  # no checkpoint_epoch0003.pt, no temporary file
    assert all((tmp_path / name).read_bytes() == content for name, content in before.items())


def test_a_fresh_run_in_a_used_folder_keeps_its_own_checkpoints(tmp_path: Path) -> None:
    _train(tmp_path, max_epochs=5)  # an earlier run leaves epochs 4 and 5
    toy = _toy()
    engine = _toy_engine(toy)
    handler = TrainingCheckpointHandler(tmp_path, save_dict=toy, seed=SEED)
    try:
        handler.attach(engine)
    except (FileExistsError, RuntimeError, ValueError) as err:  # refusing to mix two runs in one folder is fine too
        assert str(tmp_path) in str(err)
        return
    engine.run(TOY_DATA, max_epochs=2)
    assert (tmp_path / "checkpoint_epoch0002.pt").exists()
    _, resumed_engine, resumed = _fresh(tmp_path)
    assert resumed.load_latest(resumed_engine) == tmp_path / "checkpoint_epoch0002.pt"


# -- TrainingCheckpointHandler: resuming --------------------------------------------------------------------------


def _fresh(folder: Path, seed: int = SEED) -> tuple[dict[str, Any], Engine, TrainingCheckpointHandler]:
    """New objects initialised differently from the trained ones, a new engine, and a handler over ``folder``."""
    toy = _toy(init_seed=99)
    return toy, _toy_engine(toy), TrainingCheckpointHandler(folder, save_dict=toy, seed=seed)


def _current_state(toy: dict[str, Any]) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in toy.items()}


def test_load_latest_restores_objects_and_the_engine_counters(tmp_path: Path) -> None:
    _, snapshots = _train(tmp_path, max_epochs=3)
    toy, engine, handler = _fresh(tmp_path)
    path = handler.load_latest(engine)
    assert path == tmp_path / "checkpoint_epoch0003.pt" == handler.resumed_from
    assert (engine.state.epoch, engine.state.iteration) == (3, 3 * ITERATIONS_PER_EPOCH)
    _assert_same_state(_current_state(toy), snapshots[3])
    assert toy["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # the schedule's position


def _truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, path)  # loads fine, but is not a training checkpoint


CORRUPTIONS = {"truncated": _truncate, "garbage": _garbage, "foreign": _foreign}


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt: str
) -> None:
    _, snapshots = _train(tmp_path, max_epochs=3)
    newest = tmp_path / "checkpoint_epoch0003.pt"
    CORRUPTIONS[corrupt](newest)
    toy, engine, handler = _fresh(tmp_path)
    with caplog.at_level(logging.INFO, logger=CHECKPOINT_LOGGER):
        path = handler.load_latest(engine)
    assert path == tmp_path / "checkpoint_epoch0002.pt"
    assert (engine.state.epoch, engine.state.iteration) == (2, 2 * ITERATIONS_PER_EPOCH)
    _assert_same_state(_current_state(toy), snapshots[2])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(newest) in warnings[0], warnings


def test_all_checkpoints_corrupt_raises_listing_them(tmp_path: Path) -> None:
    _train(tmp_path, max_epochs=3)
    _truncate(tmp_path / "checkpoint_epoch0003.pt")
    _garbage(tmp_path / "checkpoint_epoch0002.pt")
    toy, engine, handler = _fresh(tmp_path)
    before = copy.deepcopy(_current_state(toy))
    with pytest.raises(RuntimeError, match="none of the 2 checkpoints") as raised:
        handler.load_latest(engine)
    assert "checkpoint_epoch0003.pt" in str(raised.value) and "checkpoint_epoch0002.pt" in str(raised.value)
    _assert_same_state(_current_state(toy), before)  # nothing half-loaded
    assert engine.state.epoch == 0


def test_a_checkpoint_of_another_seed_is_refused(tmp_path: Path) -> None:
    _train(tmp_path, max_epochs=2, seed=SEED)
    _, engine, handler = _fresh(tmp_path, seed=SEED + 1)
    with pytest.raises(RuntimeError) as raised:
        handler.load_latest(engine)
    message = str(raised.value)
    assert re.search(rf"\bseed {SEED}\b", message) and re.search(rf"\bseed {SEED + 1}\b", message), message
    assert "checkpoint_epoch0002.pt" in message


def test_resume_without_checkpoints_starts_from_scratch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, engine, handler = _fresh(tmp_path / "empty")
    with caplog.at_level(logging.INFO, logger=CHECKPOINT_LOGGER):
        assert handler.load_latest(engine) is None
    assert any(
        r.levelno == logging.INFO and "no checkpoint" in r.getMessage() and str(tmp_path / "empty") in r.getMessage()
        for r in caplog.records
    )
    assert handler.resumed_from is None

    toy = _toy()
    engine = _toy_engine(toy)
    TrainingCheckpointHandler(tmp_path / "empty", save_dict=toy, seed=SEED, resume=True).attach(engine)
    epochs: list[int] = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    engine.run(TOY_DATA, max_epochs=2)
    assert epochs == [1, 2]


def _segmentation_trainer(max_epochs: int, handlers: list[Any], init_seed: int = 0) -> SupervisedTrainer:
    torch.manual_seed(init_seed)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 8, 8, generator=generator)
    items = [{"image": image, "label": (image > 0.5).float()} for image in images]
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    return SupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=torch.utils.data.DataLoader(items, batch_size=4),
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["label"][:, 0].long()),
        decollate=False,
        train_handlers=[handler(network, optimizer) for handler in handlers],
    )


def test_resume_through_attach_continues_a_trainer_where_it_stopped(tmp_path: Path) -> None:
    def checkpoint(resume: bool) -> Callable[[torch.nn.Module, torch.optim.Optimizer], TrainingCheckpointHandler]:
        return lambda network, optimizer: TrainingCheckpointHandler(
            tmp_path, {"network": network, "optimizer": optimizer}, seed=SEED, resume=resume
        )

    _segmentation_trainer(max_epochs=2, handlers=[checkpoint(resume=False)]).run()
    resumed = _segmentation_trainer(max_epochs=4, handlers=[checkpoint(resume=True)], init_seed=1)
    epochs: list[int] = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    resumed.run()
    assert epochs == [3, 4]
    assert resumed.state.iteration == 4 * 2

    uninterrupted = _segmentation_trainer(max_epochs=4, handlers=[])
    uninterrupted.run()
    for name, tensor in uninterrupted.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[name], tensor), name


# -- TrainingCheckpointHandler: checks before training ------------------------------------------------------------


def test_an_unwritable_folder_is_refused_when_attaching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    toy = _toy()
    engine = _toy_engine(toy)
    handler = TrainingCheckpointHandler(folder, save_dict=toy, seed=SEED)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # CI runs as root, who may write anywhere
    with pytest.raises(PermissionError, match=re.escape(str(folder))):
        handler.attach(engine)
    assert not engine.has_event_handler(handler.save, Events.EPOCH_COMPLETED)


def test_too_little_free_space_is_refused_with_the_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(512, 512)  # (512 * 512 + 512) float32 = 1.002 MiB
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    handler = TrainingCheckpointHandler(tmp_path, save_dict={"model": model}, seed=SEED, n_saved=2)
    with pytest.raises(OSError, match=r"1 MiB free, but 3 training checkpoints need about 3 MiB"):
        handler.attach(Engine(lambda e, b: None))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 4 * 2**20, 4 * 2**20))
    handler.attach(Engine(lambda e, b: None))  # 4 MiB are enough


class _StateOnly:
    """Has a state_dict but cannot load one back."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": torch.tensor(3)}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"interval": 0}, ValueError, "interval=0", id="interval_0"),
        pytest.param({"n_saved": 1}, ValueError, "n_saved=1", id="n_saved_1"),
        pytest.param({"save_dict": {}}, ValueError, "save_dict is empty", id="empty_save_dict"),
        pytest.param({"save_dict": {"thing": object()}}, TypeError, "lacks state_dict", id="no_state_dict"),
    ],
)
def test_invalid_arguments_are_refused_before_training(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"save_dir": tmp_path, "save_dict": {"model": torch.nn.Linear(2, 2)}, "seed": SEED, **kwargs}
    with pytest.raises(error, match=match):
        TrainingCheckpointHandler(**arguments).attach(Engine(lambda e, b: None))


@pytest.mark.parametrize("thing", [object(), _StateOnly()], ids=["no_state_dict", "no_load_state_dict"])
def test_objects_that_cannot_round_trip_are_refused_by_the_constructor(tmp_path: Path, thing: object) -> None:
    with pytest.raises(TypeError, match=type(thing).__name__):
        TrainingCheckpointHandler(tmp_path, save_dict={"thing": thing}, seed=SEED)


# -- BestMetricState ----------------------------------------------------------------------------------------------


class _ScriptedScore(Metric):
    """A validation metric whose value the test sets before each evaluation."""

    def __init__(self) -> None:
        self.value = 0.0
        super().__init__(output_transform=lambda output: None)  # the evaluator's output plays no part

    def reset(self) -> None:
        pass

    def update(self, output: Any) -> None:
        pass

    def compute(self) -> float:
        return self.value


def _evaluator(save_dir: Path) -> tuple[SupervisedEvaluator, torch.nn.Module, _ScriptedScore, CheckpointSaver]:
    """A MONAI evaluator with a scripted key metric and a saver of the best model as ``model.pt``."""
    network = torch.nn.Conv2d(1, 1, 1)
    score = _ScriptedScore()
    saver = CheckpointSaver(str(save_dir), {"net": network}, save_key_metric=True, key_metric_filename="model.pt")
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=[{"image": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}],
        network=network,
        key_val_metric={"score": score},
        val_handlers=[saver],
        decollate=False,
    )
    return evaluator, network, score, saver


def _validate(
    evaluator: SupervisedEvaluator, network: torch.nn.Module, score: _ScriptedScore, epoch: int, value: float
) -> None:
    """Validate after training epoch ``epoch``: the weights become ``epoch``, the metric ``value``."""
    with torch.no_grad():
        network.weight.fill_(float(epoch))
    score.value = value
    evaluator.run(global_epoch=epoch)


def _weight_in(path: Path) -> float:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return float(saved["weight"].flatten()[0])


def _round_trip(state: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Through a file, as a training checkpoint carries it."""
    torch.save(state, folder / "state.pt")
    return torch.load(folder / "state.pt", weights_only=True)


def test_best_metric_state_round_trips(tmp_path: Path) -> None:
    evaluator, network, score, saver = _evaluator(tmp_path / "run1")
    _validate(evaluator, network, score, epoch=1, value=0.5)
    _validate(evaluator, network, score, epoch=2, value=0.8)
    _validate(evaluator, network, score, epoch=3, value=0.7)
    state = _round_trip(BestMetricState(evaluator, saver).state_dict(), tmp_path)
    _assert_plain(state)
    assert state["best_metric"] == pytest.approx(0.8) and state["best_metric_epoch"] == 2
    assert len(state["saved"]) == 1 and state["saved"][0][0] == pytest.approx(0.8)

    restored_evaluator, _, _, restored_saver = _evaluator(tmp_path / "run2")
    BestMetricState(restored_evaluator, restored_saver).load_state_dict(state)
    assert restored_evaluator.state.best_metric == pytest.approx(0.8)
    assert restored_evaluator.state.best_metric_epoch == 2
    assert BestMetricState(restored_evaluator, restored_saver).state_dict() == state


def test_a_resumed_run_does_not_replace_the_best_model_with_a_worse_one(tmp_path: Path) -> None:
    evaluator, network, score, saver = _evaluator(tmp_path)
    _validate(evaluator, network, score, epoch=1, value=0.5)
    _validate(evaluator, network, score, epoch=2, value=0.8)
    assert _weight_in(tmp_path / "model.pt") == 2.0
    state = _round_trip(BestMetricState(evaluator, saver).state_dict(), tmp_path)

    # control: a resumed run that does not restore the state overwrites the best model with epoch 3's worse one
    forgetful, forgetful_network, forgetful_score, _ = _evaluator(tmp_path / "forgetful")
    _validate(forgetful, forgetful_network, forgetful_score, epoch=3, value=0.6)
    assert _weight_in(tmp_path / "forgetful" / "model.pt") == 3.0

    resumed, resumed_network, resumed_score, resumed_saver = _evaluator(tmp_path)
    BestMetricState(resumed, resumed_saver).load_state_dict(state)
    _validate(resumed, resumed_network, resumed_score, epoch=3, value=0.6)
    assert _weight_in(tmp_path / "model.pt") == 2.0
    assert (resumed.state.best_metric, resumed.state.best_metric_epoch) == (pytest.approx(0.8), 2)
    _validate(resumed, resumed_network, resumed_score, epoch=4, value=0.9)  # a better epoch still wins
    assert _weight_in(tmp_path / "model.pt") == 4.0
    assert (resumed.state.best_metric, resumed.state.best_metric_epoch) == (pytest.approx(0.9), 4)
