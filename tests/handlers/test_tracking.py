# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""loss_components, ScalarEventWriter / read_scalars (TensorBoard event files) and the MLflow settings.

The event files are checked three ways: the CRC against the published CRC-32C check value, the payloads against
protobuf's own parser (a descriptor with TensorBoard's field numbers, built here), and, when tensorboard is
installed, against TensorBoard's EventAccumulator.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.handlers import TensorBoardStatsHandler

from usseg.handlers import tracking
from usseg.handlers.tracking import ScalarEventWriter, loss_components, mlflow_settings, read_scalars


def _event_class() -> type:
    """``Event`` / ``Summary`` / ``Summary.Value`` with TensorBoard's field numbers, parsed by the protobuf runtime."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="usseg_test_event.proto", package="usseg_test")
    field = descriptor_pb2.FieldDescriptorProto
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=field.TYPE_FLOAT, label=field.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(
        name="value", number=1, type=field.TYPE_MESSAGE, type_name=".usseg_test.Value", label=field.LABEL_REPEATED
    )
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    event.field.add(
        name="summary", number=5, type=field.TYPE_MESSAGE, type_name=".usseg_test.Summary", label=field.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("usseg_test.Event"))


def _payloads(path: Path) -> list[bytes]:
    data, position, payloads = path.read_bytes(), 0, []
    while position < len(data):
        (length,) = struct.unpack("<Q", data[position : position + 8])
        payloads.append(data[position + 12 : position + 12 + length])
        position += 12 + length + 4
    assert position == len(data)
    return payloads


# -------------------------------------------------------------------------------------------------- loss_components


@pytest.mark.parametrize(
    "output, expected",
    [
        pytest.param(
            {"loss": torch.tensor(0.5), "loss_sup": torch.tensor([0.25]), "ratio": 0.75, "count": np.int64(3)},
            {"loss": 0.5, "loss_sup": 0.25, "ratio": 0.75, "count": 3.0},
            id="tensors_and_numbers",
        ),
        pytest.param(
            {"loss": torch.tensor(1.0), "pred": torch.zeros(2, 2), "image": torch.zeros(1), "name": "x"},
            {"loss": 1.0, "image": 0.0},
            id="non_scalars_skipped",
        ),
        pytest.param(torch.tensor(2.0), {"loss": 2.0}, id="bare_scalar"),
        pytest.param({"flag": True}, {"flag": 1.0}, id="bool"),
        pytest.param([torch.tensor(1.0)], {}, id="list_is_not_a_scalar"),
    ],
)
def test_loss_components_keeps_every_scalar(output, expected):
    assert loss_components(output) == expected


def test_loss_components_keeps_nan():
    assert math.isnan(loss_components({"loss": torch.tensor(float("nan"))})["loss"])


# ------------------------------------------------------------------------------------------------ event files


def test_crc32c_matches_the_published_check_value():
    # RFC 3720 (iSCSI), appendix B.4: CRC-32C of the ASCII digits "123456789"
    assert tracking._crc32c(b"123456789") == 0xE3069283


def test_records_parse_with_protobuf_and_carry_valid_crcs(tmp_path):
    event_class = _event_class()
    writer = ScalarEventWriter(tmp_path)
    writer.add_scalar("loss/sup", 0.5, 3, walltime=100.0)
    writer.add_scalar("π", torch.tensor(-2.25), -1, walltime=101.0)
    writer.close()
    payloads = _payloads(writer.path)
    events = [event_class.FromString(p) for p in payloads]
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, e.wall_time) for e in events[1:]] == [(3, 100.0), (-1, 101.0)]
    assert [(v.tag, v.simple_value) for e in events[1:] for v in e.summary.value] == [("loss/sup", 0.5), ("π", -2.25)]
    data = writer.path.read_bytes()
    header = data[:8]
    assert struct.unpack("<I", data[8:12])[0] == tracking._masked_crc(header)
    assert struct.unpack("<I", data[12 + len(payloads[0]) : 16 + len(payloads[0])])[0] == tracking._masked_crc(
        payloads[0]
    )


def test_read_scalars_round_trip_across_files(tmp_path):
    first = ScalarEventWriter(tmp_path / "run")
    for step in range(1, 4):
        first.add_scalar("loss", 1.0 / step, step)
    first.close()
    second = ScalarEventWriter(tmp_path / "run")  # a resumed run: a second file in the same folder
    second.add_scalar("loss", 0.125, 4)
    second.add_scalar("val_mean_dice", 0.5, 1)
    second.close()
    assert first.path != second.path
    float32_third = float(np.float32(1.0 / 3))  # event files store float32
    assert read_scalars(tmp_path / "run") == {
        "loss": [(1, 1.0), (2, 0.5), (3, float32_third), (4, 0.125)],
        "val_mean_dice": [(1, 0.5)],
    }


def test_a_torn_last_record_is_ignored(tmp_path):
    writer = ScalarEventWriter(tmp_path)
    writer.add_scalar("loss", 1.0, 1)
    writer.add_scalar("loss", 2.0, 2)
    writer.close()
    writer.path.write_bytes(writer.path.read_bytes()[:-3])  # killed in the middle of the last write
    assert read_scalars(writer.path) == {"loss": [(1, 1.0)]}


def test_no_file_until_the_first_scalar(tmp_path):
    writer = ScalarEventWriter(tmp_path / "tb")
    writer.flush()
    writer.close()
    assert not (tmp_path / "tb").exists() and writer.path is None


@pytest.mark.parametrize(
    "call, error",
    [
        pytest.param(lambda w: w.add_scalar(3, 1.0), "tag must be a string", id="tag"),
        pytest.param(lambda w: w.add_scalar("x", torch.zeros(2)), "must be a number", id="vector"),
        pytest.param(lambda w: w.add_scalar("x", "1.0"), "must be a number", id="string"),
    ],
)
def test_bad_scalars_are_refused(tmp_path, call, error):
    with pytest.raises(TypeError, match=error):
        call(ScalarEventWriter(tmp_path))


def test_bad_log_dir_is_refused():
    with pytest.raises(TypeError, match="log_dir must be a path, got 3"):
        ScalarEventWriter(3)


def test_read_scalars_names_a_folder_without_event_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
        read_scalars(tmp_path)


# ----------------------------------------------------------------- MONAI's TensorBoardStatsHandler on a trainer


def _outputs(iteration: int) -> dict[str, torch.Tensor | float]:
    return {
        "loss": torch.tensor(1.0 / iteration),
        "loss_sup": torch.tensor(0.5 / iteration),
        "loss_unsup": torch.tensor(0.25 * iteration),
        "pseudo_label_ratio": 0.1 * iteration,
        "pred": torch.zeros(2, 2, 4, 4),
    }


def test_tensorboard_handler_logs_one_series_per_loss_component(tmp_path):
    engine = Engine(lambda e, batch: _outputs(e.state.iteration))
    writer = ScalarEventWriter(tmp_path / "tensorboard")
    TensorBoardStatsHandler(summary_writer=writer, output_transform=loss_components, epoch_log=False).attach(engine)
    engine.run(range(3), max_epochs=2)
    series = read_scalars(tmp_path / "tensorboard")
    assert sorted(series) == ["loss", "loss_sup", "loss_unsup", "pseudo_label_ratio"]
    for name, values in series.items():
        assert [step for step, _ in values] == list(range(1, 7))
        expected = [float(torch.tensor(loss_components(_outputs(i))[name]).float()) for i in range(1, 7)]
        np.testing.assert_allclose([v for _, v in values], expected, rtol=1e-6)


def test_tensorboard_reads_our_event_files_when_installed(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = ScalarEventWriter(tmp_path)
    for step in (1, 2):
        writer.add_scalar("loss", 0.5 * step, step)
    writer.close()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(s.step, s.value) for s in accumulator.Scalars("loss")] == [(1, 0.5), (2, 1.0)]


# ---------------------------------------------------------------------------------------------------- MLflow


def test_mlflow_settings_log_every_component_and_leave_monai_defaults_alone(tmp_path):
    before = repr(DEFAULT_MLFLOW_SETTINGS)
    settings = mlflow_settings("my_bundle")
    assert repr(DEFAULT_MLFLOW_SETTINGS) == before
    configs = settings["configs"]
    assert configs["experiment_name"] == "my_bundle"
    assert configs["tracking_uri"] == DEFAULT_MLFLOW_SETTINGS["configs"]["tracking_uri"]  # local SQLite store
    assert mlflow_settings()["configs"]["experiment_name"] == "usseg"

    # patched into a config that never imported usseg, the trainer's output_transform is loss_components
    parser = ConfigParser({"output_dir": str(tmp_path), "train": {"trainer": {}, "handlers": []}})
    ConfigWorkflow.patch_bundle_tracking(parser, settings)
    assert len(list(tmp_path.glob("config_*.json"))) == 1  # MONAI saved the executed config for MLflow
    handler = parser["train"]["handlers"][0]
    assert handler["_target_"] == "MLFlowHandler" and handler["artifacts"] == "@save_execute_config"
    assert parser.get_parsed_content("train#handlers#0#output_transform") is loss_components


def test_mlflow_settings_refuse_a_bad_experiment_name():
    with pytest.raises(TypeError, match="experiment_name must be a string or None, got 3"):
        mlflow_settings(3)
