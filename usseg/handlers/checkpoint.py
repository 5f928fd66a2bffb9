# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Training that survives faults: epoch-seeded randomness, atomic training checkpoints and resume.

Two handlers work together:

- :class:`EpochSeedHandler` re-derives every random number generator (Python, NumPy, torch, each MONAI transform's
  ``RandomState`` of the training data sets) from ``(seed, epoch)`` at the start of every epoch, and restarts the
  data iterators there. An epoch is then a pure function of the state at its start, so two runs with one seed agree,
  and a run resumed from an epoch boundary replays exactly what an uninterrupted run would have done. The checkpoint
  therefore stores the seed and the epoch instead of generator states: the states are derived from them.
- :class:`BestMetricState` exposes an evaluator's best validation metric as a ``state_dict``, so the checkpoint
  carries it and model selection continues correctly after a resume.
- :class:`TrainingCheckpointHandler` writes ``checkpoint_epoch<N>.pt`` at the end of every ``interval`` epochs, holding
  only tensors and plain values (the ``state_dict`` of every object in ``save_dict``: networks, optimisers,
  schedulers, EMA teachers, pseudo-label policies, ...; the trainer's epoch and iteration; the seed; optional extra
  state such as the best validation metric). Files are written to a temporary file, fsynced and renamed, and the
  ``n_saved`` newest are kept, so a crash during a write leaves the previous checkpoint intact. With ``resume=True``
  the run continues from the newest checkpoint that loads with ``torch.load(..., weights_only=True)``; a truncated
  or corrupt newest file is skipped with a warning that names it.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import set_determinism

from usseg.data.io import atomic_write, ensure_writable_dir
from usseg.errors import require_bool

__all__ = [
    "epoch_seed",
    "stream_seed",
    "EpochSeedHandler",
    "TrainingCheckpointHandler",
    "BestMetricState",
    "CHECKPOINT_PATTERN",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_epoch(\d+)\.pt$")
_FORMAT = "usseg.training_checkpoint/1"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch`` in a run seeded with ``seed`` (distinct per epoch, within NumPy's 32-bit range)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**32)


def _loaders(engine: Engine) -> list[Any]:
    candidates = (getattr(engine, "data_loader", None), getattr(engine, "unlabeled_data_loader", None))
    return [loader for loader in candidates if loader is not None]


def stream_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """The transform seed of data stream ``stream`` (0 labeled, 1 unlabeled, ...) in ``epoch`` on process ``rank``.

    Derived from all the numbers together, so no stream ever replays another stream's draws of another epoch, and
    under DDP every rank draws its own augmentations (rank 0 keeps the single-process seeds).
    """
    entropy = [int(seed) % 2**32, int(epoch), int(stream)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _rank_seed(seed: int, rank: int) -> int:
    # rank 0 keeps the single-process seed; other ranks get their own stream for dropout and other global draws
    return seed if not rank else int(np.random.SeedSequence([seed, int(rank)]).generate_state(1)[0])


class EpochSeedHandler:
    """At every ``EPOCH_STARTED``: seed all generators from ``(seed, epoch)`` and restart the data iterators.

    Seeds ``random``, NumPy, torch (``monai.utils.set_determinism``) and the ``transform`` of the data set behind
    each training loader (``engine.data_loader`` and, for semi-supervised trainers, ``engine.unlabeled_data_loader``)
    with ``set_random_state``. Restarting the iterators at the epoch start makes the batch order depend on the epoch
    alone, not on where the previous epoch stopped in the loader.

    Args:
        seed: the run's seed.
        datasets: extra data sets whose ``transform`` should be seeded too.
    """

    def __init__(self, seed: int, datasets: Iterable[Any] = ()) -> None:
        self.seed = int(seed)
        self.datasets = list(datasets)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        # stop the previous epoch's iterators FIRST: a ThreadDataLoader's prefetch thread would otherwise still be
        # running a transform, drawing from the generators while they are re-seeded below
        close = getattr(engine, "close_data_iterators", None)
        if callable(close):
            close()
        elif hasattr(getattr(engine, "_dataloader_iter", None), "close"):  # a plain ignite engine
            engine._dataloader_iter.close()
        rank = int(getattr(engine.state, "rank", 0) or 0)
        seed = _rank_seed(epoch_seed(self.seed, engine.state.epoch), rank)
        logger.info(
            "epoch %d: all generators seeded with %d (run seed %d, rank %d)", engine.state.epoch, seed, self.seed, rank
        )
        set_determinism(seed=seed)
        random.seed(seed)  # set_determinism seeds numpy and torch; Python's own generator is seeded here
        datasets = [getattr(loader, "dataset", None) for loader in _loaders(engine)] + self.datasets
        for stream, dataset in enumerate(datasets):
            transform = getattr(dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=stream_seed(self.seed, engine.state.epoch, stream, rank))
        if engine.state.dataloader is not None:
            engine.set_data(engine.state.dataloader)  # a fresh iterator, created after the seeding above


class BestMetricState:
    """An evaluator's model-selection state as a state dict, so a resumed run keeps selecting the same way.

    Holds the evaluator's ``best_metric`` / ``best_metric_epoch`` and, when given, the list of files a MONAI
    ``CheckpointSaver(save_key_metric=True)`` keeps (which MONAI can load but not export). Without it a resumed run
    would save its next epoch as "best" even when an earlier epoch was better.

    Args:
        evaluator: a MONAI evaluator (any ignite engine whose state has ``best_metric`` and ``best_metric_epoch``).
        checkpoint_saver: the ``CheckpointSaver`` that writes the validation-selected model, if any.
    """

    def __init__(self, evaluator: Engine, checkpoint_saver: Any | None = None) -> None:
        self.evaluator, self.checkpoint_saver = evaluator, checkpoint_saver

    def _key_metric_checkpoint(self) -> Any | None:
        return getattr(self.checkpoint_saver, "_key_metric_checkpoint", None)  # MONAI keeps ignite's Checkpoint here

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        saved = self._key_metric_checkpoint()
        return {
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
            "saved": [] if saved is None else [[float(p), str(f)] for p, f in saved.state_dict()["_saved"]],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])
        if self.checkpoint_saver is not None and state.get("saved"):
            self.checkpoint_saver.load_state_dict({"_saved": [tuple(item) for item in state["saved"]]})


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
        obj = obj.module
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: it has no state_dict().")


def _load_into(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
        obj = obj.module
    obj.load_state_dict(state)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class TrainingCheckpointHandler:
    """Save a resumable training checkpoint every ``interval`` epochs; optionally resume from the newest valid one.

    Args:
        save_dir: folder of the ``checkpoint_epoch<N>.pt`` files (created; checked for write access and free space
            when the handler is attached, i.e. before training starts).
        save_dict: ``{name: object with state_dict()/load_state_dict()}``: networks, optimisers, schedulers, EMA
            models, pseudo-label policies, other handlers with state.
        seed: the run's seed, stored so a resumed run can check it matches.
        resume: continue from the newest valid checkpoint in ``save_dir`` at ``STARTED`` (no checkpoint: start
            from scratch and say so).
        interval: save every ``interval`` epochs (and always at the last epoch).
        n_saved: how many checkpoints to keep (at least 2, so a corrupt newest one has a predecessor).

    Raises:
        PermissionError: ``save_dir`` is not writable.
        OSError: ``save_dir`` lacks space for ``n_saved`` + 1 checkpoints.
        RuntimeError: resume found checkpoints but none could be loaded, or the seed differs.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        seed: int,
        resume: bool = False,
        interval: int = 1,
        n_saved: int = 2,
    ) -> None:
        if interval < 1 or n_saved < 2:
            raise ValueError(f"interval must be >= 1 and n_saved >= 2, got interval={interval}, n_saved={n_saved}.")
        if not save_dict:
            raise ValueError("save_dict is empty: nothing to checkpoint.")
        for name, obj in save_dict.items():
            target = obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
            if not (
                callable(getattr(target, "state_dict", None)) and callable(getattr(target, "load_state_dict", None))
            ):
                raise TypeError(
                    f"save_dict[{name!r}] is a {type(obj).__name__}, which lacks state_dict()/load_state_dict(): "
                    "it could be saved but never resumed."
                )
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        require_bool(resume=resume)
        self.seed, self.resume, self.interval, self.n_saved = int(seed), resume, int(interval), int(n_saved)
        self.resumed_from: Path | None = None

    # -- before training: can we write at all? ------------------------------------------------------------------

    def check_destination(self) -> None:
        """Fail before training when checkpoints could not be written: no access, or too little free space."""
        ensure_writable_dir(self.save_dir)
        needed = (self.n_saved + 1) * sum(_tensor_bytes(_state_of(obj)) for obj in self.save_dict.values())
        free = shutil.disk_usage(self.save_dir).free
        if free < needed:
            raise OSError(
                f"{self.save_dir}: {free / 2**20:.0f} MiB free, but {self.n_saved + 1} training checkpoints need about "
                f"{needed / 2**20:.0f} MiB; free some space or choose another output folder."
            )

    def attach(self, engine: Engine) -> None:
        """Check the destination, then register: resume (or clear earlier checkpoints) at ``STARTED``, save at
        ``EPOCH_COMPLETED``. Attach it after the handlers whose state it saves (``LrScheduleHandler``,
        ``ValidationHandler``): ignite runs an event's handlers in the order they were attached."""
        self.check_destination()
        start = self.load_latest if self.resume else self.start_fresh
        if not engine.has_event_handler(start, Events.STARTED):
            engine.add_event_handler(Events.STARTED, start)
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # -- saving ---------------------------------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of the checkpoints in ``save_dir``, newest first."""
        if not self.save_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.save_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return sorted(found, reverse=True)

    def state(self, engine: Engine) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "seed": self.seed,
            "trainer": {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)},
            "objects": {name: _state_of(obj) for name, obj in self.save_dict.items()},
        }

    def save(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        if getattr(engine.state, "rank", 0) not in (0, None):
            return  # every rank holds the same weights under DDP: rank 0 writes
        path = self.save_dir / f"checkpoint_epoch{epoch:04d}.pt"
        with atomic_write(path, "wb") as handle:
            torch.save(self.state(engine), handle)
        for _, old in self.checkpoints()[self.n_saved :]:
            old.unlink(missing_ok=True)

    # -- starting -------------------------------------------------------------------------------------------------

    def _remove_stale_temporaries(self) -> None:
        for stale in self.save_dir.glob(".checkpoint_epoch*.tmp"):  # a write cut short by a kill
            stale.unlink(missing_ok=True)

    def start_fresh(self, engine: Engine) -> None:
        """A run that does not resume replaces the checkpoints of an earlier run in ``save_dir``.

        Otherwise the earlier run's later epochs would outlive this run's and a later resume would load them.
        """
        self._remove_stale_temporaries()
        earlier = self.checkpoints()
        if earlier:
            logger.warning(
                "%s holds %d checkpoints of an earlier run; this run does not resume (resume=false), so they are "
                "removed.",
                self.save_dir,
                len(earlier),
            )
            for _, path in earlier:
                path.unlink(missing_ok=True)

    # -- resuming -------------------------------------------------------------------------------------------------

    def load_latest(self, engine: Engine) -> Path | None:
        """Load the newest loadable checkpoint into ``save_dict`` and the trainer; return its path (None if none)."""
        self._remove_stale_temporaries()
        candidates = self.checkpoints()
        if not candidates:
            logger.info("resume: no checkpoint in %s; starting from scratch.", self.save_dir)
            return None
        problems = []
        for epoch, path in candidates:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != _FORMAT:
                    raise ValueError("not a usseg training checkpoint")
                missing = sorted(set(self.save_dict) - set(checkpoint["objects"]))
                if missing:
                    raise KeyError(f"it holds no state for {missing}")
            except Exception as err:  # a truncated or corrupt file: say which, fall back to the previous one
                problems.append(f"{path.name}: {err}")
                logger.warning("resume: skipping %s, which cannot be loaded (%s); trying the previous one.", path, err)
                continue
            if checkpoint["seed"] != self.seed:
                raise RuntimeError(
                    f"{path}: written by a run with seed {checkpoint['seed']}, but this run has seed {self.seed}; "
                    "resume with the same seed, or use another output folder."
                )
            for name, obj in self.save_dict.items():
                _load_into(obj, checkpoint["objects"][name])
            engine.state.epoch = checkpoint["trainer"]["epoch"]
            engine.state.iteration = checkpoint["trainer"]["iteration"]
            self.resumed_from = path
            logger.info("resume: continuing after epoch %d from %s.", epoch, path)
            return path
        raise RuntimeError(
            f"{self.save_dir}: none of the {len(candidates)} checkpoints can be loaded ({'; '.join(problems)}); "
            "delete them to start afresh."
        )
