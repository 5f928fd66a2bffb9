# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Hermes data-pipeline switches: the released ``itertools.cycle`` replay of labeled batches
(``compat_cycle_cached_labeled``), and the input normalisation that the bundle configs hand to the networks, whose
checkpoints then carry it to the zoo loader."""

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
from torch.utils.data import DataLoader

from usseg.bundles import bundle_root
from usseg.engines.hermes import CycleCachedLoader, HermesTrainer
from usseg.errors import DatalistError
from usseg.handlers import EpochSeedHandler
from usseg.networks.hermes import HermesClassificationNet, HermesSegmentationNet, input_normalization_stats

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
# The normalisation is the networks' first step, with its statistics in the state dict; these tests use the bundle
# configs (the wiring) and the zoo loader (the defect: a checkpoint loaded without the setting predicted on [0, 1]).

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


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


def test_the_engines_module_no_longer_carries_the_normalisation() -> None:
    import usseg.engines.hermes as engines_hermes

    stale = {"input_normalization_stats", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS"}
    assert not stale & set(engines_hermes.__all__) and not any(hasattr(engines_hermes, name) for name in stale)


def _tiny_training(tmp_path: Path, normalization: str) -> tuple[ConfigParser, dict[str, list[torch.Tensor]]]:
    """One iteration of train.yaml on a 16-image phantom, in this process (about 2 s); returns the parser and the
    batches the networks received: ``train`` (labeled images, weak and strong views) and ``validation``."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    overrides = {
        "output_dir": str(tmp_path / "outputs"),
        "normalization": normalization,
        "max_epochs": 1,
        "iterations_per_epoch": 1,
        "batch_size": 2,
        "num_phantom_images": 16,
        "phantom_size": 64,
        "spatial_size": [SIZE, SIZE],
        "device": "$torch.device('cpu')",
    }
    for key, value in overrides.items():
        parser[key] = value
    trainer = parser.get_parsed_content("train#trainer")
    received: dict[str, list[torch.Tensor]] = {"train": [], "validation": []}
    network = parser.get_parsed_content("network")
    # the trainer calls the segmentation network, the evaluator the inference model that holds it
    network.segmentation.register_forward_pre_hook(lambda m, args: received["train"].append(args[0].detach().clone()))
    network.register_forward_pre_hook(lambda m, args: received["validation"].append(args[0].detach().clone()))
    trainer.run()
    return parser, received


def test_a_checkpoint_normalises_as_trained_whatever_the_loading_config_says(tmp_path: Path) -> None:
    """The defect's regression test: train with imagenet, load through the zoo with the shipped inference.yaml
    (which has no normalisation setting) and get exactly the trained model's outputs."""
    from usseg import zoo

    parser, received = _tiny_training(tmp_path, "imagenet")
    # the data pipelines no longer normalise: every network input, training and validation, is in [0, 1]
    assert received["train"] and received["validation"]
    for batch in received["train"] + received["validation"]:
        assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    assert received["train"][0].shape[0] == 3 * 2  # labeled, weak and strong views all went through
    trained = parser.get_parsed_content("network").eval()
    mean, std = IMAGENET_MEAN.mean(), IMAGENET_STD.mean()  # 1 channel: the mean of the three statistics
    for net in (trained.segmentation, trained.classification):  # train.yaml passes the setting to both networks
        np.testing.assert_allclose(net.input_normalization.mean.flatten().numpy(), [mean], rtol=1e-6)
        np.testing.assert_allclose(net.input_normalization.std.flatten().numpy(), [std], rtol=1e-6)

    inference = ConfigParser()
    inference.read_config(str(CONFIGS / "inference.yaml"))
    assert "normalization" not in inference.config  # nothing to repeat by hand any more
    loaded = zoo.load_network(
        bundle_root("breast_us_hermes_classification_segmentation"), tmp_path / "outputs" / "models" / "model.pt"
    )
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = trained(x), trained.classify(x)
        assert torch.equal(loaded(x), reference[0]) and torch.equal(loaded.classify(x), reference[1])
        # the buffers are what makes it right: the same weights with identity statistics predict otherwise
        for net in (loaded.segmentation, loaded.classification):
            net.input_normalization.mean.zero_()
            net.input_normalization.std.fill_(1.0)
        assert not torch.allclose(loaded(x), reference[0])
