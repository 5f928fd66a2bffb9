# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""RunRecordHandler: the resolved config and a run record next to the checkpoints, found from the config itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import monai
import pytest
import torch
import yaml
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.bundle import run as monai_run

import usseg
from usseg.handlers.run_record import CONFIG_NAME, RECORD_FORMAT, RECORD_NAME, RunRecordHandler, find_config_parser

CONFIG = {
    "imports": ["$import ignite", "$import usseg.handlers"],
    "save_dir": "$@output_dir + '/models'",
    "output_dir": "out",
    "learning_rate": 0.01,
    "spatial_size": [32, 32],
    "device": "$torch.device('cpu')",
    "engine": "$ignite.engine.Engine(lambda engine, batch: @device)",  # uses device: it is resolved
    "record": {"_target_": "usseg.handlers.RunRecordHandler", "save_dir": "@save_dir"},
    "run": ["$@record.attach(@engine)", "$@engine.run([0, 1], max_epochs=1)"],
}


def _write_config(folder: Path) -> Path:
    path = folder / "configs" / "train.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_monai_run_records_the_executed_config_and_the_overrides(tmp_path):
    config_file = _write_config(tmp_path)
    out = tmp_path / "out dir"
    monai_run(config_file=str(config_file), output_dir=str(out), learning_rate=0.5)

    saved = json.loads((out / "models" / CONFIG_NAME).read_text())
    expected = {**CONFIG, "output_dir": str(out), "learning_rate": 0.5}
    assert {key: saved[key] for key in expected} == expected

    record = json.loads((out / "models" / RECORD_NAME).read_text())
    assert record["format"] == RECORD_FORMAT and len(record["runs"]) == 1
    run = record["runs"][0]
    assert run["invocation"]["config_file"] == str(config_file)
    assert run["invocation"]["overrides"] == {"output_dir": str(out), "learning_rate": 0.5}
    assert run["resolved_values"]["save_dir"] == str(out) + "/models"
    assert run["resolved_values"]["device"] == "cpu"
    assert run["versions"]["usseg"] == usseg.__version__ and run["versions"]["monai"] == monai.__version__
    assert run["start_epoch"] == 0 and run["world_size"] == 1
    assert set(run["git"]) == {"commit", "dirty"}

    # a second run (a resume, say) appends its own entry and rewrites the config it executed
    monai_run(config_file=str(config_file), output_dir=str(out), learning_rate=0.25)
    runs = json.loads((out / "models" / RECORD_NAME).read_text())["runs"]
    assert [r["invocation"]["overrides"]["learning_rate"] for r in runs] == [0.5, 0.25]
    assert json.loads((out / "models" / CONFIG_NAME).read_text())["learning_rate"] == 0.25
    assert runs[0]["config_sha256"] != runs[1]["config_sha256"]


def test_the_saved_config_runs_again(tmp_path):
    config_file = _write_config(tmp_path)
    first = tmp_path / "first"
    monai_run(config_file=str(config_file), output_dir=str(first))
    saved = first / "models" / CONFIG_NAME
    monai_run(config_file=str(saved), output_dir=str(tmp_path / "second"))
    again = json.loads((tmp_path / "second" / "models" / CONFIG_NAME).read_text())
    assert again == {**json.loads(saved.read_text()), "output_dir": str(tmp_path / "second")}


def test_a_bare_config_parser_is_found(tmp_path):
    parser = ConfigParser({**CONFIG, "output_dir": str(tmp_path)})
    handler = parser.get_parsed_content("record")
    assert handler.parser is parser and handler.invocation is None
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    handler.attach(engine)  # attaching twice writes once per run
    engine.run([0], max_epochs=1)
    assert len(json.loads((tmp_path / "models" / RECORD_NAME).read_text())["runs"]) == 1


def test_an_explicit_config_outside_a_parser(tmp_path):
    handler = RunRecordHandler(tmp_path, config={"seed": 3, "path": tmp_path, "device": torch.device("cpu")})
    handler.write(start_epoch=4)
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == {"seed": 3, "path": str(tmp_path), "device": "cpu"}
    run = json.loads((tmp_path / RECORD_NAME).read_text())["runs"][0]
    assert run["start_epoch"] == 4 and run["resolved_values"] == {}


def test_only_the_save_rank_writes(tmp_path):
    handler = RunRecordHandler(tmp_path / "models", config={"a": 1}, save_rank=1)  # this process is rank 0
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert not (tmp_path / "models").exists()


def test_a_damaged_record_is_replaced_with_a_warning(tmp_path, caplog):
    (tmp_path / RECORD_NAME).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="usseg.handlers.run_record"):
        RunRecordHandler(tmp_path, config={"a": 1}).write()
    assert "unreadable" in caplog.text
    assert len(json.loads((tmp_path / RECORD_NAME).read_text())["runs"]) == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({}, ValueError, "not being built by a MONAI ConfigParser", id="no_config_no_parser"),
        pytest.param({"config": [1]}, TypeError, "config must be a mapping", id="config_list"),
        pytest.param({"config": {}, "save_rank": -1}, ValueError, "save_rank must be .* got -1", id="rank"),
        pytest.param({"config": {}, "save_rank": True}, ValueError, "got True", id="rank_bool"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        RunRecordHandler(tmp_path, **kwargs)


def test_bad_save_dir_is_refused():
    with pytest.raises(TypeError, match="save_dir must be a path, got 5"):
        RunRecordHandler(5, config={})


def test_find_config_parser_outside_a_parser_is_none():
    assert find_config_parser() is None
