# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Report handlers driven by bare ignite engines and by real MONAI engines on tiny random data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.transforms import AsDiscreted
from PIL import Image

from usseg.handlers.report import SegmentationReportHandler, TrainingHistoryHandler
from usseg.metrics.classification import classification_metrics
from usseg.metrics.report import to_json_compatible
from usseg.metrics.segmentation import segmentation_metrics


def _items(n: int, seed: int, num_classes: int = 2, size: int = 12) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = np.zeros((1, size, size), dtype=np.float32)
        label[0, 2 : 2 + i % 5 + 2, 3:8] = 1 + i % (num_classes - 1)
        pred = np.roll(label, i % 3, axis=2)
        if i == 1:
            pred[:] = 0  # an empty prediction: HD95 undefined for this image
        items.append(
            {
                "image": MetaTensor(
                    torch.tensor(rng.normal(size=(1, size, size)), dtype=torch.float32),
                    meta={"filename_or_obj": f"/data/case_{i:02d}.png"},
                ),
                "label": torch.as_tensor(label),
                "pred": torch.as_tensor(pred),
                "cls_prob": torch.tensor([0.3 + 0.1 * (i % 3), 0.7 - 0.1 * (i % 3)]),
                "cls_label": torch.tensor(i % 2),
            }
        )
    return items


def _batches(items: list[dict], sizes: list[int]) -> list[list[dict]]:
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def _expected(items: list[dict], **kwargs) -> dict:
    return segmentation_metrics([i["pred"] for i in items], [i["label"] for i in items], **kwargs)


def test_bare_engine_report_matches_a_direct_call(tmp_path):
    items = _items(10, seed=0)
    handler = SegmentationReportHandler(
        tmp_path, prefix="val_", cls_pred_key="cls_prob", cls_label_key="cls_label", extra={"run": "unit"}
    )
    engine = Engine(lambda engine, batch: batch)  # the "decollated output" is the batch itself
    handler.attach(engine)
    handler.attach(engine)  # idempotent: items must not be collected twice
    engine.run(_batches(items, [4, 4, 2]), max_epochs=1)

    report = json.loads((tmp_path / "val_metrics.json").read_text())
    expected = _expected(items)
    assert report["metrics"] == to_json_compatible(expected)
    assert report["metrics"]["n_images"] == 10 and report["metrics"]["hd95_n_empty"] >= 1
    assert [row["case"] for row in report["per_image"]] == [f"/data/case_{i:02d}.png" for i in range(10)]
    assert report["per_image"][1]["dice"] == {"class1": 0.0} and report["per_image"][1]["hd95"] == {"class1": None}
    assert report["run"] == "unit" and report["settings"]["hd95_unit"] == "pixel"
    expected_cls = classification_metrics(
        torch.stack([i["cls_prob"] for i in items]), torch.stack([i["cls_label"] for i in items])
    )
    assert report["classification"] == to_json_compatible(expected_cls)
    for key, value in expected.items():
        np.testing.assert_equal(engine.state.metrics[f"val_{key}"], value)
    assert engine.state.metrics["val_accuracy"] == expected_cls["accuracy"]
    with Image.open(tmp_path / "val_montage.png") as img:
        assert img.format == "PNG"


def test_state_resets_at_each_run_and_other_ranks_do_not_write(tmp_path):
    handler = SegmentationReportHandler(tmp_path, save_rank=1)  # this process is rank 0
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine)
    first, second = _items(6, seed=1), _items(3, seed=2)
    engine.run(_batches(first, [3, 3]), max_epochs=1)
    engine.run(_batches(second, [3]), max_epochs=1)
    assert engine.state.metrics["n_images"] == 3
    assert engine.state.metrics["dice_mean_per_image"] == _expected(second)["dice_mean_per_image"]
    assert list(tmp_path.iterdir()) == []


def test_collated_output_and_one_hot_predictions(tmp_path):
    items = _items(4, seed=3, num_classes=3)

    def one_hot(x):
        return torch.nn.functional.one_hot(x[0].long(), 3).permute(2, 0, 1).float()

    def step(engine, batch):  # a collated dictionary, as with decollate=False
        return {
            "pred": torch.stack([one_hot(i["pred"]) for i in batch]),
            "label": torch.stack([i["label"] for i in batch]),
            "image": torch.stack([i["image"] for i in batch]),
        }

    handler = SegmentationReportHandler(tmp_path, num_classes=3, class_names=["bg", "a", "b"], montage=False)
    engine = Engine(step)
    handler.attach(engine)
    engine.run(_batches(items, [2, 2]), max_epochs=1)
    report = json.loads((tmp_path / "metrics.json").read_text())
    expected = _expected(items, num_classes=3, class_names=["bg", "a", "b"])
    assert report["metrics"] == to_json_compatible(expected)
    assert "dice_pooled/b" in report["metrics"]
    assert not (tmp_path / "montage.png").exists()


def test_spacing_from_the_metadata_gives_hd95_in_mm(tmp_path):
    label = np.zeros((1, 30, 30), dtype=np.float32)
    label[0, 5:15, 5:15] = 1
    pred = np.roll(label, 3, axis=2)  # squares 3 columns apart: HD95 = 3 * column spacing
    affine = torch.diag(torch.tensor([0.5, 0.25, 1.0, 1.0], dtype=torch.float64))
    item = {"pred": torch.as_tensor(pred), "label": MetaTensor(torch.as_tensor(label), affine=affine)}
    engine = Engine(lambda engine, batch: [item])
    SegmentationReportHandler(tmp_path, spacing="meta", montage=False).attach(engine)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["hd95_mean"] == pytest.approx(0.75)
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["hd95_unit"] == "mm"


def test_missing_key_is_reported_with_the_available_keys(tmp_path):
    engine = Engine(lambda engine, batch: [{"prediction": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4)}])
    SegmentationReportHandler(tmp_path).attach(engine)
    with pytest.raises(KeyError, match="'pred'.*prediction"):
        engine.run([0], max_epochs=1)


BAD_ARGS = {
    "num_classes": ({"num_classes": 1}, "num_classes"),
    "montage_items": ({"montage_items": 0}, "montage_items"),
    "class_names": ({"class_names": ["only"]}, "class_names"),
    "cls_keys_alone": ({"cls_pred_key": "p"}, "go together"),
    "empty_policy": ({"empty": "zero"}, "'zero'"),
    "spacing_string": ({"spacing": "header"}, "'header'"),
    "reserved_extra": ({"extra": {"metrics": 1}}, "own keys"),
}


@pytest.mark.parametrize(("kwargs", "match"), BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_report_handler_validates_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmentationReportHandler(tmp_path, **kwargs)


def _dataset(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "image": MetaTensor(
                torch.tensor(rng.normal(size=(1, 16, 16)), dtype=torch.float32), meta={"filename_or_obj": f"img{i}.png"}
            ),
            "label": torch.tensor(rng.integers(0, 2, size=(1, 16, 16)), dtype=torch.float32),
        }
        for i in range(n)
    ]


def _evaluator(data: list[dict], network: torch.nn.Module, handlers: list) -> SupervisedEvaluator:
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=4),
        network=network,
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        val_handlers=handlers,
    )


def test_monai_supervised_evaluator_report_matches_a_direct_call(tmp_path):
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1)
    data = _dataset(6, seed=4)
    _evaluator(data, network, [SegmentationReportHandler(tmp_path, prefix="test_")]).run()

    with torch.no_grad():
        preds = network(torch.stack([d["image"].as_tensor() for d in data])).argmax(dim=1, keepdim=True)
    expected = segmentation_metrics(preds, torch.stack([d["label"] for d in data]))
    report = json.loads((tmp_path / "test_metrics.json").read_text())
    assert report["metrics"] == to_json_compatible(expected)
    assert [row["case"] for row in report["per_image"]] == [f"img{i}.png" for i in range(6)]
    assert (tmp_path / "test_montage.png").is_file()


# ---------------------------------------------------------------------------------------------- history


LOSSES = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2]  # two epochs of three iterations


def _trainer(with_optimizer: bool = True) -> Engine:
    def step(engine, batch):
        i = engine.state.iteration - 1
        return [
            {"loss": torch.tensor(LOSSES[i]), "sup_loss": LOSSES[i] / 2, "pred": torch.zeros(2), "name": "x"},
            {"loss": torch.tensor(LOSSES[i])},
        ]

    trainer = Engine(step)
    if with_optimizer:
        weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        trainer.optimizer = torch.optim.SGD([{"params": weights[:1], "lr": 0.1}, {"params": weights[1:], "lr": 0.01}])
    return trainer


@pytest.mark.parametrize("validation_first", [True, False], ids=["validation_attached_first", "history_first"])
def test_history_records_iterations_epochs_and_validation(tmp_path, validation_first):
    trainer, evaluator = _trainer(), Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def compute_metrics(engine):  # a metric that depends on the trainer epoch it validates
        engine.state.metrics["dice"] = 0.1 * trainer.state.epoch

    def validate(engine):
        evaluator.run([0], max_epochs=1)

    # one case draws the figure; drawing it in both adds seconds and nothing new
    handler = TrainingHistoryHandler(tmp_path, evaluator=evaluator, figure="curves.png" if validation_first else None)
    if validation_first:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
        handler.attach(trainer)
    else:
        handler.attach(trainer)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    handler.attach(trainer)  # idempotent
    trainer.run([0, 1, 2], max_epochs=2)

    history = json.loads((tmp_path / "history.json").read_text())
    assert history == handler.history
    rows = history["iteration"]
    assert rows["iteration"] == [1, 2, 3, 4, 5, 6] and rows["epoch"] == [1, 1, 1, 2, 2, 2]
    assert set(rows["values"]) == {"loss", "sup_loss", "lr/0", "lr/1"}  # no tensors with a shape, no strings
    np.testing.assert_allclose(rows["values"]["loss"], LOSSES, rtol=1e-6)
    assert rows["values"]["lr/1"] == [0.01] * 6
    epochs = history["epoch"]
    assert epochs["epoch"] == [1, 2] and epochs["iteration"] == [3, 6]
    np.testing.assert_allclose(epochs["values"]["loss"], [0.7, 0.3], rtol=1e-6)
    np.testing.assert_allclose(epochs["values"]["sup_loss"], [0.35, 0.15], rtol=1e-6)
    assert all(t >= 0 for t in epochs["wall_time_s"])
    validation = history["validation"]
    assert validation["epoch"] == [1, 2] and validation["iteration"] == [3, 6]
    np.testing.assert_allclose(validation["values"]["dice"], [0.1, 0.2])
    if validation_first:
        with Image.open(tmp_path / "curves.png") as img:
            assert img.format == "PNG"


def test_log_every_thins_rows_but_not_epoch_means(tmp_path):
    handler = TrainingHistoryHandler(tmp_path, log_every=2, output_keys=["loss"], figure=None)
    trainer = _trainer(with_optimizer=False)
    handler.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=2)
    assert handler.history["iteration"]["iteration"] == [2, 4, 6]
    assert set(handler.history["iteration"]["values"]) == {"loss"}
    np.testing.assert_allclose(handler.history["epoch"]["values"]["loss"], [0.7, 0.3], rtol=1e-6)
    assert not (tmp_path / "training_curves.png").exists()


def test_resume_keeps_the_history_up_to_the_restored_state(tmp_path):
    first = _trainer(with_optimizer=False)
    TrainingHistoryHandler(tmp_path, figure=None).attach(first)
    first.run([0, 1, 2], max_epochs=2)

    resumed = _trainer(with_optimizer=False)  # a new process: new engine, new handler, state from a checkpoint
    resumed.load_state_dict({"iteration": 3, "epoch_length": 3, "max_epochs": 1})
    handler = TrainingHistoryHandler(tmp_path, figure=None)
    handler.attach(resumed)
    resumed.run([0, 1, 2], max_epochs=2)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["iteration"]["iteration"] == [1, 2, 3, 4, 5, 6]  # epoch 2 of the first run replaced, not doubled
    assert history["epoch"]["epoch"] == [1, 2]
    np.testing.assert_allclose(history["iteration"]["values"]["loss"], LOSSES, rtol=1e-6)


def test_fresh_run_starts_an_empty_history(tmp_path):
    for _ in range(2):
        trainer = _trainer(with_optimizer=False)
        TrainingHistoryHandler(tmp_path, figure=None).attach(trainer)
        trainer.run([0, 1, 2], max_epochs=1)
    assert json.loads((tmp_path / "history.json").read_text())["iteration"]["iteration"] == [1, 2, 3]


def test_history_with_monai_trainer_validation_and_report(tmp_path):
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1)
    data = _dataset(4, seed=5)
    evaluator = _evaluator(data, network, [SegmentationReportHandler(tmp_path / "val", prefix="val_")])
    history = TrainingHistoryHandler(tmp_path, evaluator=evaluator)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(Dataset(data), batch_size=2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.05),
        loss_function=torch.nn.CrossEntropyLoss(),
        prepare_batch=lambda batch, device, non_blocking, **kwargs: (batch["image"], batch["label"][:, 0].long()),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1), history],
    )
    trainer.run()
    recorded = json.loads((tmp_path / "history.json").read_text())
    assert recorded["iteration"]["iteration"] == [1, 2, 3, 4]
    assert set(recorded["iteration"]["values"]) == {"loss", "lr"}
    assert recorded["validation"]["epoch"] == [1, 2]
    last = {k: v[-1] for k, v in recorded["validation"]["values"].items()}
    assert last["val_dice_mean_per_image"] == pytest.approx(evaluator.state.metrics["val_dice_mean_per_image"])
    report = json.loads((tmp_path / "val" / "val_metrics.json").read_text())
    assert report["metrics"]["dice_mean_per_image"] == pytest.approx(last["val_dice_mean_per_image"])
