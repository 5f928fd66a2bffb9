# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes data-pipeline switches: the released ``itertools.cycle`` replay of labeled batches
(``compat_cycle_cached_labeled``) and the input normalisation / channel count of the bundle configs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import Dataset, ThreadDataLoader
from monai.transforms import RandGaussianNoised
from PIL import Image
from torch.utils.data import DataLoader

from usseg.bundles import bundle_root
from usseg.engines.hermes import CycleCachedLoader, HermesTrainer, input_normalization_stats
from usseg.errors import DatalistError
from usseg.handlers import EpochSeedHandler
from usseg.networks.hermes import HermesClassificationNet, HermesSegmentationNet

CONFIGS = Path(bundle_root("breast_us_hermes_classification_segmentation")) / "configs"
SIZE = 32
BATCH = 2


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and it avoids OpenMP spinning against other jobs on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ the wrapper on its own


def test_cycle_cached_loader_replays_like_itertools_cycle_and_restarts_every_period() -> None:
    draws = []

    class Counting:  # every pass draws new values, as a shuffled, augmented loader would
        def __len__(self) -> int:
            return 2

        def __iter__(self):
            draws.append(len(draws))
            return iter([f"pass{draws[-1]}-a", f"pass{draws[-1]}-b"])

    cycle = CycleCachedLoader(Counting(), period=5)
    passes = []
    cycle.on_new_pass = lambda: passes.append(len(passes))
    iterator = iter(cycle)
    assert iterator is cycle  # its own iterator: the trainer restarts the one ignite holds
    served = [next(iterator) for _ in range(11)]
    # period 5 = one unlabeled pass: a b | a b (replayed) | a, then a fresh pass for the next unlabeled pass
    assert served == [
        *["pass0-a", "pass0-b", "pass0-a", "pass0-b", "pass0-a"],
        *["pass1-a", "pass1-b", "pass1-a", "pass1-b", "pass1-a"],
        "pass2-a",
    ]
    assert passes == [0, 1, 2] and len(cycle) == 2
    cycle.restart()  # an explicit new cycle (the trainer's epoch start) draws afresh
    assert next(cycle) == "pass3-a"


def test_cycle_cached_loader_without_period_truncates_nothing_and_empty_loader_fails() -> None:
    cycle = iter(CycleCachedLoader([1, 2, 3]))
    assert [next(cycle) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert cycle.replaying
    with pytest.raises(DatalistError, match="yielded no batch"):
        next(iter(CycleCachedLoader([])))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"loader": 3}, TypeError, "int"),
        ({"loader": [1], "period": 0}, ValueError, "0"),
        ({"loader": [1], "period": 2.5}, ValueError, "2.5"),
        ({"loader": [1], "on_new_pass": "x"}, TypeError, "str"),
    ],
    ids=["not_iterable", "zero_period", "fractional_period", "callback"],
)
def test_cycle_cached_loader_refuses_bad_arguments(kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        CycleCachedLoader(**kwargs)


# ------------------------------------------------------------------------------------ inside the trainer


def _labeled_loader(threaded: bool) -> DataLoader:
    """4 labeled images, batches of 2, shuffled, with a random augmentation: every fresh pass differs."""
    generator = torch.Generator().manual_seed(1)
    items = [
        {
            "image": torch.rand(1, SIZE, SIZE, generator=generator),
            "label": (torch.rand(1, SIZE, SIZE, generator=generator) > 0.6).float(),
            "class": i % 2,
        }
        for i in range(4)
    ]
    dataset = Dataset(items, transform=RandGaussianNoised(keys="image", prob=1.0, std=0.1))
    if threaded:  # as the bundle: a prefetch thread the cycle must stop at each restart
        return ThreadDataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, buffer_size=1)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)


def _unlabeled(num_batches: int) -> list[dict]:
    generator = torch.Generator().manual_seed(2)
    return [
        {
            "image_weak": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator),
            "image_strong": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator),
        }
        for _ in range(num_batches)
    ]


def _labeled_batches_seen(
    compat: bool, unlabeled_batches: int, epoch_length: int, max_epochs: int = 1, threaded: bool = False
) -> list[torch.Tensor]:
    torch.manual_seed(0)
    small = {"depth": 10, "widths": (8, 8, 16, 16)}
    seg = HermesSegmentationNet(embedding_dim=8, consistency_dim=8, **small)
    cls = HermesClassificationNet(embedding_dim=8, consistency_dim=8, ias=False, **small)
    trainer = HermesTrainer(
        "cpu",
        max_epochs,
        _labeled_loader(threaded),
        _unlabeled(unlabeled_batches),
        seg,
        torch.optim.SGD(seg.parameters(), lr=0.0),
        cls,
        torch.optim.SGD(cls.parameters(), lr=0.0),
        epoch_length=epoch_length,
        compat_cycle_cached_labeled=compat,
        decollate=False,
        train_handlers=[EpochSeedHandler(seed=3)] if threaded else None,
    )
    seen: list[torch.Tensor] = []
    # what the networks received: the labeled part of the forward, recorded per iteration
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["image"].clone()))
    trainer.run()
    return seen


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b))


def test_compat_replays_the_first_labeled_pass_within_an_unlabeled_pass() -> None:
    # 2 labeled batches per pass, 5 unlabeled batches per pass = the epoch
    seen = _labeled_batches_seen(compat=True, unlabeled_batches=5, epoch_length=5, max_epochs=2)
    first = seen[:2]
    assert _same(seen[2], first[0]) and _same(seen[3], first[1]) and _same(seen[4], first[0])  # exact replay
    assert not _same(first[0], first[1])
    # the next epoch (a new unlabeled pass) starts a fresh labeled pass, then replays that one
    assert not any(_same(seen[5], old) for old in first)
    assert _same(seen[7], seen[5]) and _same(seen[8], seen[6])


def test_without_compat_every_labeled_pass_is_redrawn() -> None:
    seen = _labeled_batches_seen(compat=False, unlabeled_batches=5, epoch_length=5)
    assert not _same(seen[2], seen[0]) and not _same(seen[3], seen[1])
    assert not any(_same(seen[k], seen[j]) for k in range(2, 5) for j in range(2))


def test_compat_starts_a_fresh_labeled_pass_with_each_unlabeled_pass_inside_an_epoch() -> None:
    # 3 unlabeled batches per pass, an epoch of 7 iterations: passes at iterations 0-2, 3-5 and 6, as zip(cycle)
    seen = _labeled_batches_seen(compat=True, unlabeled_batches=3, epoch_length=7, threaded=True)
    assert _same(seen[2], seen[0])  # replay inside the first unlabeled pass
    assert not any(_same(seen[3], old) for old in seen[:3])  # second unlabeled pass: fresh draws
    assert _same(seen[5], seen[3])
    assert not any(_same(seen[6], old) for old in seen[:6])


def test_compat_restarts_the_labeled_cycle_when_an_epoch_cuts_the_unlabeled_pass() -> None:
    # 5 unlabeled batches per pass but epochs of 3: every epoch starts a new unlabeled pass (base class), and so a
    # new labeled cycle, even though the wrapper's own period (5) has not run out
    seen = _labeled_batches_seen(compat=True, unlabeled_batches=5, epoch_length=3, max_epochs=2)
    assert _same(seen[2], seen[0])
    assert not any(_same(seen[3], old) for old in seen[:3]) and not any(_same(seen[4], old) for old in seen[:3])
    assert _same(seen[5], seen[3])


def test_compat_needs_loaders_with_a_length() -> None:
    seg = HermesSegmentationNet(depth=10, widths=(8, 8, 16, 16))
    cls = HermesClassificationNet(depth=10, widths=(8, 8, 16, 16), ias=False)
    unsized = (batch for batch in _unlabeled(2))
    with pytest.raises(ValueError, match="unlabeled loader with a length"):
        HermesTrainer(
            "cpu",
            1,
            _labeled_loader(False),
            unsized,
            seg,
            torch.optim.SGD(seg.parameters(), lr=0.0),
            cls,
            torch.optim.SGD(cls.parameters(), lr=0.0),
            epoch_length=2,
            compat_cycle_cached_labeled=True,
        )
    with pytest.raises(TypeError, match="compat_cycle_cached_labeled"):
        HermesTrainer(
            "cpu",
            1,
            _labeled_loader(False),
            _unlabeled(2),
            seg,
            torch.optim.SGD(seg.parameters(), lr=0.0),
            cls,
            torch.optim.SGD(cls.parameters(), lr=0.0),
            compat_cycle_cached_labeled="true",
        )


def test_the_bundle_wires_the_compat_switch_to_the_trainer() -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    assert parser["compat"]["cycle_cached_labeled"] is False  # fixed behaviour by default
    assert parser["train"]["trainer"]["compat_cycle_cached_labeled"] == "@compat#cycle_cached_labeled"


# ------------------------------------------------------------------------------------ input normalisation


def test_normalization_statistics() -> None:
    assert input_normalization_stats("none", 1) is None and input_normalization_stats("none", 3) is None
    mean, std = input_normalization_stats("imagenet", 3)
    assert mean == pytest.approx([0.485, 0.456, 0.406]) and std == pytest.approx([0.229, 0.224, 0.225])
    mean, std = input_normalization_stats("imagenet", 1)
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    with pytest.raises(ValueError, match="'imagnet'"):
        input_normalization_stats("imagnet", 1)
    with pytest.raises(ValueError, match="2"):
        input_normalization_stats("imagenet", 2)


def _png(path: Path, seed: int, mask: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = (rng.random((SIZE, SIZE)) > 0.7).astype(np.uint8) * 255 if mask else rng.integers(0, 256, (SIZE, SIZE))
    Image.fromarray(array.astype(np.uint8)).save(path)
    return array.astype(np.float64)


def _expected(raw: np.ndarray, channels: int) -> np.ndarray:
    """The normalised input computed independently from the file's pixels (no resize: the size already matches)."""
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    return (raw[None] / 255.0 - mean[:, None, None]) / std[:, None, None]


@pytest.mark.parametrize("channels", [1, 3])
def test_inference_feeds_the_network_the_imagenet_normalised_image(tmp_path: Path, channels: int) -> None:
    raw = _png(tmp_path / "scan.png", seed=0)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    overrides = {
        "normalization": "imagenet",
        "in_channels": channels,
        "spatial_size": [SIZE, SIZE],
        "encoder_widths": [8, 8, 16, 16],
        "input_dir": str(tmp_path),
        "predictions_dir": str(tmp_path / "predictions"),
        "output_dir": str(tmp_path / "outputs"),
        "device": "$torch.device('cpu')",
        "handlers#0#_disabled_": True,  # no trained checkpoint: random weights suffice to see the input
    }
    for key, value in overrides.items():
        parser[key] = value
    received: list[torch.Tensor] = []
    network = parser.get_parsed_content("network")
    network.segmentation.register_forward_pre_hook(lambda module, args: received.append(args[0].detach().clone()))
    parser.get_parsed_content("evaluator").run()
    assert received, "the network was never called"
    image = received[0]
    assert image.shape == (1, channels, SIZE, SIZE)
    np.testing.assert_allclose(image[0].numpy(), _expected(raw, channels), atol=1e-5)
    assert (tmp_path / "predictions" / "class_probabilities.csv").is_file()


def test_training_and_validation_inputs_are_normalised_after_augmentation(tmp_path: Path) -> None:
    item = {"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}
    raw = _png(tmp_path / "a.png", seed=1)
    _png(tmp_path / "a_mask.png", seed=2, mask=True)
    outputs = {}
    for mode in ("none", "imagenet"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.yaml"))
        parser["normalization"] = mode
        parser["spatial_size"] = [SIZE, SIZE]
        labeled = parser.get_parsed_content("train#preprocessing").set_random_state(seed=7)
        unlabeled = parser.get_parsed_content("train#unlabeled_dataset#transform").set_random_state(seed=7)
        validation = parser.get_parsed_content("validate#preprocessing")
        outputs[mode] = (labeled(dict(item)), unlabeled({"image": item["image"]}), validation(dict(item)))
    mean, std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3
    (plain_l, plain_u, _), (norm_l, norm_u, norm_v) = outputs["none"], outputs["imagenet"]
    # the same augmentation draw with and without normalisation: normalised = (plain - mean) / std, pixel by pixel
    torch.testing.assert_close(norm_l["image"].as_tensor(), (plain_l["image"].as_tensor() - mean) / std)
    torch.testing.assert_close(norm_l["label"].as_tensor(), plain_l["label"].as_tensor())  # masks untouched
    for view in ("image_weak", "image_strong"):
        torch.testing.assert_close(norm_u[view].as_tensor(), (plain_u[view].as_tensor() - mean) / std)
    np.testing.assert_allclose(norm_v["image"].numpy(), _expected(raw, 1), atol=1e-5)
    assert float(plain_l["image"].min()) >= 0.0 and float(plain_l["image"].max()) <= 1.0  # released: [0, 1] only
