# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""SupervisedTrainer / SemiSupervisedTrainer: event order, precision, loss components and the two data streams."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader, Dataset

from usseg.engines import ConfidenceThreshold, SemiSupervisedTrainer, SupervisedTrainer
from usseg.errors import DatalistError
from usseg.handlers.schedules import RampUpHandler

SIZE = 16


class _Labeled(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(n)
        self.images = torch.rand(n, 1, SIZE, SIZE, generator=g)
        self.labels = (self.images > 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


class _Unlabeled(_Labeled):
    def __getitem__(self, i: int) -> dict:
        return {"image_weak": self.images[i], "image_strong": self.images[i].flip(-1), "index": i}


class _RecordingSampler(torch.utils.data.Sampler):
    """A sequential sampler that records every set_epoch call, as DistributedSampler receives them."""

    def __init__(self, n: int) -> None:
        self.n, self.epochs = n, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))


def _supervised(precision: str = "fp32", channels_last: bool = False, **kwargs) -> SupervisedTrainer:
    net = _net()
    return SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(_Labeled(8), batch_size=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        precision=precision,
        channels_last=channels_last,
        **kwargs,
    )


def _record_events(engine) -> list[str]:
    seen: list[str] = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        engine.add_event_handler(event, lambda _, e=event: seen.append(e.name))
    return seen


def test_events_fire_in_monai_order_and_decollate_runs():
    trainer = _supervised(decollate=True)
    seen = _record_events(trainer)
    trainer.run()
    order = ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]
    assert seen == order * 2  # two iterations of batch 4
    assert isinstance(trainer.state.output, list) and len(trainer.state.output) == 4  # decollated on MODEL_COMPLETED


@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_training_updates_weights_in_each_precision(precision, channels_last):
    trainer = _supervised(precision, channels_last, decollate=False)
    before = copy.deepcopy(trainer.network.state_dict())
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    changed = [not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items()]
    assert all(changed)
    if channels_last:
        assert trainer.network[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_forward_really_runs_in_bf16():
    trainer = _supervised("bf16", decollate=False)
    dtypes = []
    trainer.network[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer.run()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"precision": "fp16"}, "fp16"), ({"precision": "fp8"}, "precision"), ({"amp": True}, "precision")],
)
def test_invalid_precision_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _supervised(**kwargs)


def _semi(n_labeled: int = 4, n_unlabeled: int = 12, threshold: float = 0.0, **kwargs) -> SemiSupervisedTrainer:
    net = _net()
    return SemiSupervisedTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=DataLoader(_Labeled(n_labeled), batch_size=2, sampler=kwargs.pop("labeled_sampler", None)),
        unlabeled_data_loader=DataLoader(
            _Unlabeled(n_unlabeled), batch_size=2, sampler=kwargs.pop("unlabeled_sampler", None)
        ),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        pseudo_label=ConfidenceThreshold(threshold),
        decollate=False,
        **kwargs,
    )


def test_epoch_is_the_longer_stream_and_the_shorter_one_restarts():
    labeled_sampler, unlabeled_sampler = _RecordingSampler(4), _RecordingSampler(12)
    trainer = _semi(labeled_sampler=labeled_sampler, unlabeled_sampler=unlabeled_sampler, max_epochs=2)
    labeled_seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: labeled_seen.append(e.state.batch["index"].tolist())
    )
    trainer.run()
    assert trainer.state.epoch_length == 6  # 12 unlabeled / batch 2 beats 4 labeled / batch 2
    assert trainer.state.iteration == 12
    # 3 passes of the labeled loader per epoch, each in full, none cached from an earlier pass
    assert labeled_seen[:6] == [[0, 1], [2, 3]] * 3
    # every restart of either loader asked its sampler for a new, distinct epoch
    assert len(set(unlabeled_sampler.epochs)) == len(unlabeled_sampler.epochs) == 2
    assert len(set(labeled_sampler.epochs)) == len(labeled_sampler.epochs)
    assert len(labeled_sampler.epochs) >= 4


def test_loss_components_and_ramp_reach_the_output():
    trainer = _semi(train_handlers=[RampUpHandler("unsup", max_value=2.0, length=4, shape="linear")])
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.state.output["unsup_weight"]))
    trainer.run()
    out = trainer.state.output
    for key in ("loss", "sup_loss", "unsup_loss", "accept_rate", "unsup_weight"):
        assert key in out, key
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    expected = out["sup_loss"] + out["unsup_weight"] * out["unsup_loss"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)


def test_rejected_pseudo_labels_contribute_nothing():
    """With a threshold no prediction can reach, the unlabeled term is exactly zero: training equals supervised."""
    trainer = _semi(threshold=1.0)
    trainer.run()
    assert float(trainer.state.output["accept_rate"]) == 0.0
    assert float(trainer.state.output["unsup_loss"]) == 0.0


def test_empty_unlabeled_set_is_refused():
    with pytest.raises(DatalistError, match="unlabeled set is empty"):
        _semi(n_unlabeled=0)


def test_ignite_ema_model_serves_as_the_teacher():
    """The mean-teacher set-up the docs describe: ignite's EMAHandler, its ema_model passed as teacher."""
    from ignite.handlers import EMAHandler

    net = _net()
    ema = EMAHandler(net, momentum=0.5)
    teacher_calls = []
    ema.ema_model.register_forward_hook(lambda m, i, o: teacher_calls.append(m.training))
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(_Labeled(4), batch_size=2),
        unlabeled_data_loader=DataLoader(_Unlabeled(4), batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        teacher=ema.ema_model,
        train_handlers=[ema],
        decollate=False,
    )
    trainer.run()
    assert len(teacher_calls) == 2 and not any(teacher_calls)  # once per iteration, in eval mode
    teacher_weight, student_weight = ema.ema_model[0].weight, net[0].weight
    assert not torch.equal(teacher_weight, student_weight)  # the teacher lags the student
    assert teacher_weight.grad is None  # and is never trained directly


@pytest.mark.parametrize("flag", ["false", "False", 0, None], ids=["lowercase-string", "string", "int", "none"])
def test_switches_that_are_not_bools_are_refused_not_read_as_truthy(flag):
    # `python -m monai.bundle run --channels_last false` hands the trainer the string "false"
    network = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        SupervisedTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[],
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            loss_function=torch.nn.MSELoss(),
            channels_last=flag,
        )
