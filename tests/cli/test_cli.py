# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The ``usseg`` command: override parsing, config resolution, and each subcommand on a tiny phantom."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import pytest

import usseg.bundles
from usseg.cli.main import build_parser, bundle_config_files, main, parse_overrides
from usseg.data.phantom import write_phantom_dataset
from usseg.errors import InputError

SHIPPED = "breast_us_supervised_segmentation"
SHIPPED_ROOT = Path(usseg.bundles.__file__).resolve().parent.parent / "bundles" / SHIPPED
SPLITS = ("labeled", "unlabeled", "validation", "test")


@pytest.fixture(autouse=True)
def _no_bundles_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USSEG_BUNDLES", raising=False)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_images=8, size=64)


def _config(name: str) -> str:
    return str((SHIPPED_ROOT / "configs" / name).resolve())


# ------------------------------------------------------------------------------------------- parse_overrides


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param([], {}, id="nothing"),
        pytest.param(["--max_epochs", "2"], {"max_epochs": 2}, id="int"),
        pytest.param(["--lr", "0.5"], {"lr": 0.5}, id="float"),
        pytest.param(["--lr", "1.0e-4"], {"lr": 1.0e-4}, id="float-with-dot-and-exponent"),
        pytest.param(["--shift", "-1"], {"shift": -1}, id="negative-value"),
        pytest.param(["--roi", "[64,64]"], {"roi": [64, 64]}, id="list"),
        pytest.param(["--amp", "true"], {"amp": True}, id="bool"),
        pytest.param(["--ckpt", "null"], {"ckpt": None}, id="null"),
        pytest.param(["--device", "cpu"], {"device": "cpu"}, id="string"),
        pytest.param(["--output_dir", "/tmp/run 1"], {"output_dir": "/tmp/run 1"}, id="path-with-space"),
        pytest.param(["--train#dataloader#num_workers=0"], {"train#dataloader#num_workers": 0}, id="equals-form"),
        pytest.param(["--expr=$a==b"], {"expr": "$a==b"}, id="equals-in-value"),
        pytest.param(["--name", "'2'"], {"name": "2"}, id="quoted-number-stays-string"),
        pytest.param(
            ["--max_epochs", "2", "--val_interval=1", "--roi", "{a: 1}"],
            {"max_epochs": 2, "val_interval": 1, "roi": {"a": 1}},
            id="several",
        ),
        pytest.param(["--seed", "1", "--seed", "2"], {"seed": 2}, id="last-wins"),
    ],
)
def test_parse_overrides_types_values_as_yaml(tokens: list[str], expected: dict) -> None:
    assert parse_overrides(tokens) == expected
    assert type(parse_overrides(tokens).get("max_epochs", 0)) is int


def test_parse_overrides_reads_exponent_notation_as_a_number() -> None:
    # YAML 1.1 alone would leave '1e-4' a string and hand the optimizer a str learning rate
    assert parse_overrides(["--lr", "1e-4", "--n", "3"]) == {"lr": 1e-4, "n": 3}
    assert type(parse_overrides(["--lr", "1e-4"])["lr"]) is float


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        pytest.param(["max_epochs", "2"], "got 'max_epochs'", id="no-dashes"),
        pytest.param(["-e", "2"], "got '-e'", id="single-dash"),
        pytest.param(["--"], "got '--'", id="bare-dashes"),
        pytest.param(["--max_epochs"], "--max_epochs needs a value", id="missing-value"),
        pytest.param(["--a", "1", "--b"], "--b needs a value", id="last-missing-value"),
        pytest.param(["--a", "1", "2"], "got '2'", id="stray-value"),
    ],
)
def test_parse_overrides_errors_exit_with_a_message(tokens: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        parse_overrides(tokens)
    assert message in str(info.value.code)


# --------------------------------------------------------------------------------------- bundle_config_files


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        pytest.param([], ["train.yaml"], id="default-train"),
        pytest.param(["train"], ["train.yaml"], id="train"),
        pytest.param(["evaluate"], ["train.yaml", "evaluate.yaml"], id="evaluate-on-train"),
        pytest.param(["multi_gpu_train"], ["train.yaml", "multi_gpu_train.yaml"], id="multi-gpu-on-train"),
        pytest.param(["inference"], ["inference.yaml"], id="inference-alone"),
        pytest.param(["train", "evaluate"], ["train.yaml", "evaluate.yaml"], id="explicit-train-not-doubled"),
    ],
)
def test_bundle_config_files_by_name(
    configs: list[str], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a stray file named like a config in the working directory must not interfere
    root, files = bundle_config_files(SHIPPED, configs)
    assert root == SHIPPED_ROOT
    assert files == [_config(name) for name in expected]


def test_unknown_config_exits_listing_the_available_ones() -> None:
    with pytest.raises(SystemExit) as info:
        bundle_config_files(SHIPPED, ["evaluat"])
    message = str(info.value.code)
    assert "'evaluat'" in message and SHIPPED in message
    available = sorted(p.stem for p in (SHIPPED_ROOT / "configs").glob("*.yaml"))
    assert str(available) in message


def test_config_given_as_a_file_path(tmp_path: Path) -> None:
    custom = tmp_path / "my_train.yaml"
    custom.write_text("max_epochs: 1\n")
    root, files = bundle_config_files(SHIPPED, [str(custom)])
    assert root == SHIPPED_ROOT
    assert files == [str(custom.resolve())]


def test_override_config_given_as_a_file_path_still_gets_train_first(tmp_path: Path) -> None:
    evaluate = tmp_path / "evaluate.yaml"
    shutil.copy(SHIPPED_ROOT / "configs" / "evaluate.yaml", evaluate)
    _, files = bundle_config_files(SHIPPED, [str(evaluate)])
    assert files == [_config("train.yaml"), str(evaluate.resolve())]


def test_bundle_given_as_a_folder(tmp_path: Path) -> None:
    bundle = tmp_path / "my_bundle"
    (bundle / "configs").mkdir(parents=True)
    for name in ("train.yaml", "evaluate.yml", "infer.json"):
        (bundle / "configs" / name).write_text("{}\n")
    with pytest.raises(InputError, match="is not a bundle folder"):  # MONAI's runner needs its metadata.json
        bundle_config_files(str(bundle), ["evaluate", "infer"])
    (bundle / "configs" / "metadata.json").write_text("{}\n")
    root, files = bundle_config_files(str(bundle), ["evaluate", "infer"])
    assert root == bundle
    assert files == [str((bundle / "configs" / n).resolve()) for n in ("train.yaml", "evaluate.yml", "infer.json")]


def test_unknown_bundle_raises_file_not_found_listing_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match=SHIPPED):
        bundle_config_files("no_such_bundle", ["train"])


# --------------------------------------------------------------------------------------------- subcommands


def test_bundles_subcommand_lists_name_version_task_path_and_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    meta = json.loads((SHIPPED_ROOT / "configs" / "metadata.json").read_text())
    configs = sorted(
        p.name for p in (SHIPPED_ROOT / "configs").iterdir() if p.suffix in (".yaml", ".json") and p.stem != "metadata"
    )
    start = lines.index(f"{SHIPPED}  v{meta['version']}  {meta['task']}")
    assert lines[start + 1].strip() == str(SHIPPED_ROOT)
    assert lines[start + 2].strip() == f"configs: {', '.join(configs)}"


def test_phantom_subcommand_writes_generic_layout_and_datalist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "phantom"
    assert main(["phantom", str(output), "--num-images", "8", "--size", "64"]) == 0
    assert {p.name for p in output.iterdir()} >= {"images", "masks", "classes.csv", "dataset.json", "datalist.json"}
    names = [f"case_{i:04d}.png" for i in range(8)]
    assert sorted(p.name for p in (output / "images").iterdir()) == names
    assert sorted(p.name for p in (output / "masks").iterdir()) == names
    generator = json.loads((output / "dataset.json").read_text())["generator"]
    assert generator["num_images"] == 8 and generator["size"] == [64, 64]
    datalist = json.loads((output / "datalist.json").read_text())
    assert sum(len(datalist[split]) for split in SPLITS) == 8
    assert f"phantom written to {output}" in capsys.readouterr().out


def test_phantom_subcommand_without_datalist(tmp_path: Path) -> None:
    output = tmp_path / "phantom"
    main(["phantom", str(output), "--num-images", "2", "--size", "32", "--no-datalist", "--seed", "5"])
    assert (output / "images").is_dir()
    assert not (output / "datalist.json").exists()
    assert json.loads((output / "dataset.json").read_text())["generator"]["seed"] == 5


@pytest.mark.parametrize(
    ("extra", "expected_labeled"),
    [
        pytest.param(["--num-labeled", "2"], 2, id="count"),
        pytest.param(["--num-labeled", "3", "--seed", "4"], 3, id="count-and-seed"),
    ],
)
def test_prepare_subcommand_writes_a_datalist_with_the_label_budget(
    phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected_labeled: int
) -> None:
    output = tmp_path / "lists" / "datalist.json"
    assert main(["prepare", "generic", str(phantom_dir), "-o", str(output), *extra]) == 0
    data = json.loads(output.read_text())
    assert len(data["labeled"]) == expected_labeled
    assert all(item["label"] for item in data["labeled"])
    assert all("label" not in item for item in data["unlabeled"])
    assert sum(len(data[split]) for split in SPLITS) == 8
    assert f"datalist written to {output}" in capsys.readouterr().out


def test_prepare_subcommand_with_class_filter(phantom_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "datalist.json"
    argv = ["prepare", "generic", str(phantom_dir), "-o", str(output), "--include-classes", "benign"]
    main([*argv, "--val-fraction", "0.4"])  # 4 benign images: 1 test, then 0.4 of 3 -> 1 validation
    data = json.loads(output.read_text())
    assert {item["class_name"] for split in SPLITS for item in data[split]} == {"benign"}


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--test-fraction", "1.5"], id="fraction-above-1"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--test-fraction", "1"], id="fraction-of-1"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--val-fraction", "-0.1"], id="negative-fraction"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--val-fraction", "half"], id="fraction-not-number"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--num-labeled", "some"], id="budget-not-number"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--num-labeled", "true"], id="budget-bool"),
        pytest.param(["prepare", "generic", "d", "-o", "o.json", "--class-from", "{bad"], id="class-from-not-json"),
        pytest.param(["prepare", "nifti", "d", "-o", "o.json"], id="unknown-layout"),
        pytest.param(["prepare", "generic", "d"], id="missing-output"),
        pytest.param(["phantom", "out", "--geometry", "phased"], id="unknown-geometry"),
        pytest.param(["phantom", "out", "--num-images", "eight"], id="count-not-int"),
        pytest.param(["run"], id="run-without-bundle"),
        pytest.param([], id="no-command"),
        pytest.param(["train"], id="unknown-command"),
    ],
)
def test_bad_arguments_exit_with_usage_error(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: usseg" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written before the arguments were checked


def test_fraction_error_message_quotes_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["prepare", "generic", "d", "-o", "o.json", "--test-fraction", "1.5"])
    assert "expected a fraction in [0, 1), got '1.5'" in capsys.readouterr().err


def test_number_arguments_keep_their_type() -> None:
    parser = build_parser()
    assert parser.parse_args(["prepare", "generic", "d", "-o", "o", "--num-labeled", "72"]).num_labeled == 72
    assert parser.parse_args(["prepare", "generic", "d", "-o", "o", "--num-labeled", "0.125"]).num_labeled == 0.125
    args = parser.parse_args(["prepare", "generic", "d", "-o", "o", "--class-from", '{"covid": "^Cov"}'])
    assert args.class_from == {"covid": "^Cov"}
    assert args.num_labeled is None and args.test_fraction == 0.2 and args.val_fraction == 0.1


def test_run_hands_configs_and_overrides_to_monai(monkeypatch: pytest.MonkeyPatch) -> None:
    received: dict = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: received.update(kwargs))
    argv = ["run", SHIPPED, "evaluate", "--max_epochs", "2", "--device=cpu", "--spatial_size", "[64,64]"]
    assert main(argv) == 0
    assert received == {
        "config_file": [_config("train.yaml"), _config("evaluate.yaml")],
        "meta_file": str(SHIPPED_ROOT / "configs" / "metadata.json"),
        "logging_file": str(SHIPPED_ROOT / "configs" / "logging.conf"),
        "max_epochs": 2,
        "device": "cpu",
        "spatial_size": [64, 64],
    }


def test_run_defaults_to_train(monkeypatch: pytest.MonkeyPatch) -> None:
    received: dict = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: received.update(kwargs))
    main(["run", SHIPPED])
    assert received["config_file"] == [_config("train.yaml")]
    assert set(received) == {"config_file", "meta_file", "logging_file"}


def test_run_with_unknown_config_exits_before_monai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: pytest.fail("MONAI must not be called"))
    with pytest.raises(SystemExit, match="no config 'trian'"):
        main(["run", SHIPPED, "trian", "--max_epochs", "1"])


# --------------------------------------------------------------------------------------- installed script


def _console_script() -> str:
    # prefer the script installed next to this interpreter; a pyenv shim on PATH works too
    beside = Path(sys.executable).with_name("usseg")
    script = str(beside) if beside.is_file() else shutil.which("usseg")
    assert script, "the `usseg` console script is not installed; run `pip install -e .`"
    return script


def test_installed_console_script_help_and_bundles(tmp_path: Path) -> None:
    script = _console_script()
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("prepare", "phantom", "bundles", "run"):
        assert command in helped.stdout
    listed = subprocess.run([script, "bundles"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert SHIPPED in listed.stdout and "train.yaml" in listed.stdout
    failed = subprocess.run([script, "prepare"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert failed.returncode == 2 and "usage: usseg prepare" in failed.stderr


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param(["--resume"], {"resume": True}, id="alone"),
        pytest.param(["--resume", "--max_epochs", "3"], {"resume": True, "max_epochs": 3}, id="before-another-key"),
        pytest.param(["--resume", "false"], {"resume": False}, id="explicit-value"),
    ],
)
def test_resume_is_a_flag(tokens: list[str], expected: dict) -> None:
    assert parse_overrides(tokens) == expected


# ------------------------------------------------------------------------------------------- --tracking mlflow


def test_tracking_mlflow_without_mlflow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from usseg.handlers import tracking

    monkeypatch.setattr(tracking, "mlflow_available", lambda: False)  # as in an install without the extra
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: pytest.fail("MONAI must not be called"))
    with pytest.raises(SystemExit) as info:
        main(["run", SHIPPED, "--tracking", "mlflow", "--max_epochs", "1"])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "--tracking mlflow needs MLflow" in error and "pip install 'usseg[tracking]'" in error


def test_tracking_mlflow_passes_usseg_settings_and_accepts_tracking_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from usseg.handlers import tracking

    received: dict = {}
    monkeypatch.setattr(tracking, "mlflow_available", lambda: True)
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: received.update(kwargs))
    argv = ["run", SHIPPED, "--tracking", "mlflow", "--experiment_name", "study", "--run_name", "seed0"]
    assert main(argv) == 0
    settings = received["tracking"]
    assert settings == tracking.mlflow_settings(experiment_name=SHIPPED)
    assert received["experiment_name"] == "study" and received["run_name"] == "seed0"


def test_tracking_keys_without_tracking_are_still_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: pytest.fail("MONAI must not be called"))
    with pytest.raises(SystemExit) as info:
        main(["run", SHIPPED, "--experiment_name", "study"])
    assert info.value.code == 2


def test_tracking_settings_file_is_passed_through(tmp_path: Path) -> None:
    from usseg.cli.main import tracking_settings

    settings_file = tmp_path / "tracking.json"
    assert tracking_settings(str(settings_file), SHIPPED) == str(settings_file)


def test_tracking_mlflow_trains_offline_with_every_loss_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    argv = ["run", SHIPPED, "--tracking", "mlflow", "--max_epochs", "1", "--iterations_per_epoch", "2"]
    argv += ["--batch_size", "2", "--num_phantom_images", "16", "--phantom_size", "64", "--spatial_size", "[32,32]"]
    assert main(argv) == 0
    output_dir = tmp_path / "outputs" / SHIPPED
    assert (output_dir / "mlruns.db").is_file()  # a local store: no server, no network
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(SHIPPED)
    runs = client.search_runs([experiment.experiment_id])
    metrics = {key for run in runs for key in run.data.metrics}
    assert {"loss", "val_mean_dice"} <= metrics
