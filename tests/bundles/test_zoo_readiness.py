# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Model-zoo readiness of every shipped bundle: metadata schema, network shapes, exports, README and zips.

Every bundle test is parametrised over ``usseg.bundles.list_bundles()``, so a new bundle is checked without new code.
Weights are random (seeded) and written into a temporary copy of each bundle; the repository's bundles are only read.
Nothing here touches the network: the metadata checks run with sockets disabled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.bundle import verify_metadata as monai_verify_metadata
from monai.bundle import verify_net_in_out as monai_verify_net_in_out
from monai.data import load_net_with_metadata
from PIL import Image

import usseg
from usseg import zoo
from usseg.bundles import list_bundles
from usseg.cli.main import main
from usseg.errors import InputError

BUNDLES = list_bundles()
NAMES = sorted(BUNDLES)

# fp32 exports run the same arithmetic in another order: agreement to 1e-4 absolute and relative is expected
ATOL = 1e-4
RTOL = 1e-4
DOCUMENTED_N = 3  # n in the metadata's spatial shape: "16*n+16" -> 64, the size the exports are compared at
SECOND_N = 5  # a second documented size (96 for "16*n+16"), with batch 2, for the ONNX export's dynamic axes
SEED = 0

# expected warnings of the export path, filtered here only (monai-notes section 10): TorchScript is deprecated in torch
# 2.13 but still the zoo's check; MONAI passes dynamic_axes to the dynamo exporter, which works (tested below)
EXPORT_WARNINGS = [
    pytest.mark.filterwarnings("ignore:`torch\\.jit\\.\\w+` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'dynamic_axes' is not recommended when dynamo=True:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"),
]
# MONAI warns that a schema given by --filepath has no hash to check; the schema is the package's own file
NO_SCHEMA_HASH = pytest.mark.filterwarnings("ignore:No hash value provided for .*meta_schema.json:UserWarning")
# headings of the zoo README template (docs/readme_template.md) a usseg README must have, in this order
README_SECTIONS = (
    "Model Description",
    "Data",
    "Performance",
    "Additional Usage Steps",
    "Limitations",
    "Citation",
)


def _meta(name: str) -> dict[str, Any]:
    return json.loads((Path(BUNDLES[name]["path"]) / "configs" / "metadata.json").read_text())


def _inference_config(bundle_dir: Path) -> Path:
    candidates = [bundle_dir / "configs" / f"inference.{suffix}" for suffix in ("json", "yaml", "yml")]
    return next(path for path in candidates if path.is_file())


def _copy_bundle(name: str, destination: Path) -> Path:
    """A copy of the shipped bundle without run products or weights, named like the bundle."""
    target = destination / name
    shutil.copytree(
        BUNDLES[name]["path"], target, ignore=shutil.ignore_patterns("outputs", "eval", "models", "__pycache__")
    )
    return target


def _network(bundle_dir: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(_inference_config(bundle_dir)))
    parser["bundle_root"] = str(bundle_dir)
    return parser.get_parsed_content("network_def")


def _random_weights(bundle_dir: Path, path: Path, seed: int) -> Path:
    """Seeded random initial weights of the bundle's network_def, saved as a bare state dict (like training)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = _network(bundle_dir).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _eager(bundle_dir: Path, weights: Path) -> torch.nn.Module:
    network = _network(bundle_dir)
    network.load_state_dict(torch.load(weights, weights_only=True))
    return network.eval()


def _unzip(archive: Path, destination: Path) -> Path:
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(destination)
    return destination


def _zip_names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as handle:
        return handle.namelist()


@dataclass
class Staged:
    name: str
    root: Path
    weights: Path


@pytest.fixture(scope="module", params=NAMES)
def staged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """A temporary copy of one bundle with random weights at models/model.pt."""
    root = _copy_bundle(request.param, tmp_path_factory.mktemp("staged"))
    return Staged(request.param, root, _random_weights(root, root / "models" / "model.pt", SEED))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(f"network access attempted in an offline test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write_meta(tmp_path: Path, meta: dict[str, Any]) -> Path:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    return path


# --------------------------------------------------------------------------------------------------- schema


def test_schema_ships_in_the_package_and_is_a_valid_json_schema() -> None:
    assert zoo.SCHEMA_PATH.is_file()
    assert zoo.SCHEMA_PATH.parent.parent == Path(usseg.__file__).parent
    jsonschema.Draft202012Validator.check_schema(json.loads(zoo.SCHEMA_PATH.read_text()))


@NO_SCHEMA_HASH
@pytest.mark.parametrize("name", NAMES)
def test_metadata_passes_monai_verify_metadata_offline(name: str, offline: None) -> None:
    meta_file = Path(BUNDLES[name]["path"]) / "configs" / "metadata.json"
    schema_before = zoo.SCHEMA_PATH.read_bytes()
    monai_verify_metadata(meta_file=str(meta_file), filepath=str(zoo.SCHEMA_PATH))
    zoo.verify_metadata(meta_file)
    assert zoo.SCHEMA_PATH.read_bytes() == schema_before  # MONAI used the shipped file; it did not fetch another


def _first(mapping: dict[str, Any]) -> str:
    return next(iter(mapping))


def _set_pin(value: str) -> Callable[[dict], None]:
    def mutate(meta: dict) -> None:
        meta["required_packages_version"][_first(meta["required_packages_version"])] = value

    return mutate


def _set_input(key: str, value: Any) -> Callable[[dict], None]:
    def mutate(meta: dict) -> None:
        meta["network_data_format"]["inputs"][_first(meta["network_data_format"]["inputs"])][key] = value

    return mutate


def _set_output(key: str, value: Any) -> Callable[[dict], None]:
    def mutate(meta: dict) -> None:
        meta["network_data_format"]["outputs"][_first(meta["network_data_format"]["outputs"])][key] = value

    return mutate


def _delete(key: str) -> Callable[[dict], None]:
    return lambda meta: meta.pop(key)


def _drop_input_modality(meta: dict) -> None:
    meta["network_data_format"]["inputs"][_first(meta["network_data_format"]["inputs"])].pop("modality")


# each mutation breaks one rule; (mutation, a fragment of MONAI's message naming the offending value)
BAD_METADATA: dict[str, tuple[Callable[[dict], None], str]] = {
    "range_pin": (_set_pin(">=0.5"), "'>=0.5'"),
    "compatible_release_pin": (_set_pin("~=0.5.5"), "'~=0.5.5'"),
    "wildcard_pin": (_set_pin("0.5.*"), "'0.5.*'"),
    "torch_local_label": (lambda meta: meta.update(pytorch_version="2.13.0+cpu"), "'2.13.0+cpu'"),
    "monai_range": (lambda meta: meta.update(monai_version=">=1.6"), "'>=1.6'"),
    "missing_changelog": (_delete("changelog"), "'changelog' is a required property"),
    "empty_changelog": (lambda meta: meta.update(changelog={}), "{}"),
    "missing_required_packages": (_delete("required_packages_version"), "'required_packages_version'"),
    "missing_network_data_format": (_delete("network_data_format"), "'network_data_format'"),
    "version_not_semver": (lambda meta: meta.update(version="1.0"), "'1.0'"),
    "input_without_modality": (_drop_input_modality, "'modality' is a required property"),
    "value_range_one_number": (_set_input("value_range", [0]), "[0]"),
    "unknown_dtype": (_set_input("dtype", "float"), "'float'"),
    "shape_variable_monai_cannot_evaluate": (_set_input("spatial_shape", ["16*m", "16*m"]), "'16*m'"),
    "four_spatial_dims": (_set_input("spatial_shape", [16, 16, 16, 16]), "[16, 16, 16, 16]"),
    "segmentation_format_with_two_channels": (_set_output("format", "segmentation"), "1 was expected"),
    "unknown_tensor_type": (_set_output("type", "mask"), "'mask'"),
    "patch_flag_not_boolean": (_set_output("is_patch_data", "false"), "'false'"),
}


@NO_SCHEMA_HASH
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(BAD_METADATA), ids=list(BAD_METADATA))
def test_schema_rejects_metadata_that_breaks_a_rule(name: str, case: str, tmp_path: Path, offline: None) -> None:
    mutate, fragment = BAD_METADATA[case]
    meta = copy.deepcopy(_meta(name))
    mutate(meta)
    meta_file = _write_meta(tmp_path, meta)
    with pytest.raises(ValueError) as raised:
        monai_verify_metadata(meta_file=str(meta_file), filepath=str(zoo.SCHEMA_PATH))
    assert fragment in str(raised.value)
    with pytest.raises(InputError, match="does not match the metadata schema") as raised:
        zoo.verify_metadata(meta_file)
    assert str(meta_file) in str(raised.value) and fragment in str(raised.value)


@pytest.mark.parametrize("name", NAMES)
def test_verify_metadata_names_where_the_rule_is_broken(name: str, tmp_path: Path) -> None:
    meta = copy.deepcopy(_meta(name))
    package = _first(meta["required_packages_version"])
    meta["required_packages_version"][package] = ">=0.1"
    meta.pop("changelog")
    with pytest.raises(InputError) as raised:
        zoo.verify_metadata(_write_meta(tmp_path, meta))
    assert f"required_packages_version#{package}: '>=0.1' does not match" in str(raised.value)
    assert "(top level): 'changelog' is a required property" in str(raised.value)


# documented forms of the specification that the schema must keep accepting
GOOD_VARIANTS: dict[str, Callable[[dict], None]] = {
    "unknown_value_range": _set_input("value_range", []),
    "power_of_two_shape": _set_input("spatial_shape", ["2**p*n", "2**p*n"]),
    "any_size_and_fixed_size": _set_input("spatial_shape", ["*", 64]),
    "authors_as_list": lambda meta: meta.update(authors=["A. Author", "B. Author"]),
    "pre_release_pins": lambda meta: meta.update(monai_version="1.6.0rc1", numpy_version="2.1.0.post1"),
    "one_channel_segmentation": lambda meta: meta["network_data_format"]["outputs"].update(
        mask={
            "type": "image",
            "format": "segmentation",
            "num_channels": 1,
            "spatial_shape": ["16*n", "16*n"],
            "dtype": "uint8",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {"0": "background", "1": "lesion"},
        }
    ),
}


@pytest.mark.parametrize("case", list(GOOD_VARIANTS), ids=list(GOOD_VARIANTS))
def test_schema_accepts_documented_variants(case: str, tmp_path: Path, offline: None) -> None:
    meta = copy.deepcopy(_meta(NAMES[0]))
    GOOD_VARIANTS[case](meta)
    zoo.verify_metadata(_write_meta(tmp_path, meta))


@NO_SCHEMA_HASH
@pytest.mark.parametrize("name", NAMES)
def test_changelog_without_the_current_version_fails_the_zoo_check(name: str, tmp_path: Path, offline: None) -> None:
    meta = copy.deepcopy(_meta(name))
    meta["changelog"] = {"0.0.1": "an older release"}
    meta_file = _write_meta(tmp_path, meta)
    # JSON Schema cannot compare two values, so the schema alone accepts this; the zoo CI checks it separately
    monai_verify_metadata(meta_file=str(meta_file), filepath=str(zoo.SCHEMA_PATH))
    with pytest.raises(InputError, match=f"version '{meta['version']}' is not a key of 'changelog'") as raised:
        zoo.verify_metadata(meta_file)
    assert str(meta_file) in str(raised.value)


@pytest.mark.parametrize(
    "channel_def, problem",
    [({"0": "background", "1": "lesion"}, None), ({"0": "background"}, "channel_def names channels ['0']")],
    ids=["matches", "one_name_for_two_channels"],
)
def test_metadata_problems_compares_channel_def_with_num_channels(channel_def: dict, problem: str | None) -> None:
    meta = copy.deepcopy(_meta(NAMES[0]))
    meta["network_data_format"]["outputs"][_first(meta["network_data_format"]["outputs"])].update(
        num_channels=2, format="labels", channel_def=channel_def
    )
    problems = zoo.metadata_problems(meta)
    assert problems == [] if problem is None else (len(problems) == 1 and problem in problems[0])


def test_metadata_problems_flags_a_reversed_value_range() -> None:
    meta = copy.deepcopy(_meta(NAMES[0]))
    _set_input("value_range", [1, 0])(meta)
    assert len(problems := zoo.metadata_problems(meta)) == 1 and "min > max" in problems[0]


@pytest.mark.parametrize("name", NAMES)
def test_bundle_requires_the_usseg_version_it_ships_with(name: str) -> None:
    assert _meta(name)["required_packages_version"]["usseg"] == usseg.__version__


# ---------------------------------------------------------------------------------- shapes and the US input


@pytest.mark.parametrize(
    "spatial_shape, kwargs, expected",
    [
        (["16*n", "16*n"], {"n": 4}, (1, 1, 64, 64)),
        (["2**p*n"], {"n": 3, "p": 4}, (1, 1, 48)),
        (["*", 32], {"any_size": 7, "batch": 2}, (2, 1, 7, 32)),
        ([128, "8*n+16", "n"], {"n": 2}, (1, 1, 128, 32, 2)),
    ],
    ids=["multiple_of_16", "power_of_two", "any_and_fixed", "mixed_3d"],
)
def test_example_input_shape_evaluates_the_documented_shape(
    spatial_shape: list, kwargs: dict, expected: tuple[int, ...]
) -> None:
    meta = {"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": spatial_shape}}}}
    assert zoo.example_input_shape(meta, **kwargs) == expected


@pytest.mark.parametrize(
    "spatial_shape, shape, expected",
    [
        (["16*n", "16*n"], (128, 128), True),
        (["16*n", "16*n"], (128, 96), False),  # one n for every dimension, as the specification says
        (["16*n", "16*n"], (100, 100), False),
        (["*", 32], (5, 32), True),
        (["*", 32], (5, 31), False),
        (["2**p"], (64,), True),
        (["2**p"], (48,), False),
        (["16*n"], (16, 16), False),
    ],
    ids=["square_multiple", "non_square", "not_a_multiple", "any", "fixed_mismatch", "power", "not_power", "ndim"],
)
def test_shape_matches(spatial_shape: list, shape: tuple[int, ...], expected: bool) -> None:
    assert zoo.shape_matches(spatial_shape, shape) is expected


@pytest.mark.parametrize("expression", ["16*m", "__import__('os')", "n.real", "16*", "2**10**10"])
def test_spatial_shape_expressions_outside_the_grammar_are_refused(expression: str) -> None:
    meta = {"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [expression]}}}}
    with pytest.raises(ValueError, match="spatial shape"):
        zoo.example_input_shape(meta)


@pytest.mark.parametrize("name", NAMES)
def test_network_data_format_describes_what_inference_feeds_the_network(name: str, tmp_path: Path) -> None:
    """The documented input is what the inference preprocessing really produces from an ultrasound image."""
    spec = _meta(name)["network_data_format"]["inputs"]["image"]
    assert spec["modality"] == "US"
    if spec["type"] != "image":
        pytest.skip(f"input type {spec['type']!r}: the image check does not apply")
    bundle_dir = Path(BUNDLES[name]["path"])
    parser = ConfigParser()
    parser.read_config(str(_inference_config(bundle_dir)))
    preprocessing = parser.get_parsed_content("preprocessing")
    pixels = np.tile(np.linspace(0, 255, 150), (90, 1)).astype(np.uint8)  # 90x150 B-mode-like ramp, full 8-bit range
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    image = preprocessing({"image": str(tmp_path / "scan.png")})["image"]
    assert image.shape[0] == spec["num_channels"]
    assert str(image.dtype).removeprefix("torch.") == spec["dtype"]
    assert zoo.shape_matches(spec["spatial_shape"], tuple(image.shape[1:])), image.shape
    low, high = spec["value_range"]
    assert low <= float(image.min()) and float(image.max()) <= high
    assert float(image.min()) == pytest.approx(low, abs=0.02) and float(image.max()) == pytest.approx(high, abs=0.02)


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out_passes(name: str) -> None:
    bundle_dir = Path(BUNDLES[name]["path"])
    arguments = {  # as the zoo CI calls it: n, p and any left at 1, the smallest documented input
        "net_id": "network_def",
        "meta_file": str(bundle_dir / "configs" / "metadata.json"),
        "config_file": str(_inference_config(bundle_dir)),
        "device": "cuda:0" if torch.cuda.is_available() else "cpu",
        "bundle_root": str(bundle_dir),
    }
    monai_verify_net_in_out(**arguments)
    monai_verify_net_in_out(**arguments, n=DOCUMENTED_N)
    zoo.verify_net_in_out(bundle_dir)
    # the check is real: a wrong channel count in the metadata makes it fail
    output = _first(_meta(name)["network_data_format"]["outputs"])
    wrong = _meta(name)["network_data_format"]["outputs"][output]["num_channels"] + 1
    with pytest.raises(ValueError, match="output channel number"):
        monai_verify_net_in_out(**arguments, **{f"_meta_#network_data_format#outputs#{output}#num_channels": wrong})


# ------------------------------------------------------------------------------------------------- exports


def ignore_export_warnings(test: Callable) -> Callable:
    """Apply :data:`EXPORT_WARNINGS`; on the first test using a module fixture they also cover the fixture's setup."""
    for mark in EXPORT_WARNINGS:
        test = mark(test)
    return test


@dataclass
class Exports:
    staged: Staged
    torchscript: Path
    onnx: Path
    differences: dict[str, float]


@pytest.fixture(scope="module")
def exports(staged: Staged) -> Exports:
    """TorchScript and ONNX exports of one bundle's random weights, made by usseg.zoo with MONAI's exporters."""
    differences = zoo.check_exports(staged.root, staged.weights, staged.root / "models")
    return Exports(staged, staged.root / "models" / "model.ts", staged.root / "models" / "model.onnx", differences)


def _documented_input(meta: dict[str, Any], n: int, batch: int, seed: int) -> torch.Tensor:
    shape = zoo.example_input_shape(meta, n=n, batch=batch)
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@ignore_export_warnings
def test_check_exports_writes_both_files_and_reports_differences_within_tolerance(exports: Exports) -> None:
    assert exports.torchscript.is_file() and exports.onnx.is_file()
    assert not list(exports.torchscript.parent.glob(".*.tmp"))  # the atomic writes left no temporary file
    assert set(exports.differences) == {"torchscript", "onnx"}
    assert all(0.0 <= value <= ATOL for value in exports.differences.values()), exports.differences
    assert (zoo.EXPORT_ATOL, zoo.EXPORT_RTOL) == (ATOL, RTOL)


@ignore_export_warnings
def test_torchscript_export_matches_eager_and_carries_the_bundle(exports: Exports) -> None:
    meta = _meta(exports.staged.name)
    eager = _eager(exports.staged.root, exports.staged.weights)
    inference_name = _inference_config(exports.staged.root).stem + ".json"
    scripted, stored_meta, extra = load_net_with_metadata(str(exports.torchscript), more_extra_files=[inference_name])
    inputs = _documented_input(meta, DOCUMENTED_N, batch=1, seed=SEED + 1)
    with torch.no_grad():
        expected, actual = eager(inputs).numpy(), scripted(inputs).numpy()
    print(f"{exports.staged.name}: TorchScript max |difference| {np.abs(actual - expected).max():.3g}")
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)
    assert stored_meta["version"] == meta["version"]
    assert stored_meta["network_data_format"] == meta["network_data_format"]
    expected_config = ConfigParser.load_config_file(str(_inference_config(exports.staged.root)))
    assert json.loads(extra[inference_name]) == expected_config


@ignore_export_warnings
def test_onnx_export_matches_eager_at_two_documented_sizes(exports: Exports) -> None:
    import onnxruntime

    meta = _meta(exports.staged.name)
    eager = _eager(exports.staged.root, exports.staged.weights)
    session = onnxruntime.InferenceSession(str(exports.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(meta["network_data_format"]["inputs"])
    assert [o.name for o in session.get_outputs()] == list(meta["network_data_format"]["outputs"])
    # the second size and batch differ from the traced example: the dynamic axes must hold
    for n, batch in ((DOCUMENTED_N, 1), (SECOND_N, 2)):
        inputs = _documented_input(meta, n, batch=batch, seed=SEED + n)
        with torch.no_grad():
            expected = eager(inputs).numpy()
        actual = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
        print(
            f"{exports.staged.name}: ONNX {tuple(inputs.shape)} max |difference| {np.abs(actual - expected).max():.3g}"
        )
        np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)


@ignore_export_warnings
def test_compare_exports_detects_weights_that_differ(exports: Exports, tmp_path: Path) -> None:
    other = _random_weights(exports.staged.root, tmp_path / "other.pt", SEED + 100)
    with pytest.raises(ValueError, match="differs from eager"):
        zoo.compare_exports(exports.staged.root, other, torchscript_file=exports.torchscript)


# ----------------------------------------------------------------------------------------------- bundle zips


def _expected_files(bundle_dir: Path) -> dict[str, bytes]:
    """Every file a published copy of the shipped bundle must carry, with its bytes."""
    skip = {"outputs", "eval", "models", "__pycache__"}
    return {
        path.relative_to(bundle_dir).as_posix(): path.read_bytes()
        for path in bundle_dir.rglob("*")
        if path.is_file() and not skip & set(path.relative_to(bundle_dir).parts)
    }


def test_bundle_zip_cli_writes_a_zoo_zip_that_passes_the_directory_checks(
    staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./outputs here: --weights is the only source
    output_dir = tmp_path / "zips"
    assert main(["bundle-zip", staged.name, "-o", str(output_dir), "--weights", str(staged.weights)]) == 0
    version = _meta(staged.name)["version"]
    archive = output_dir / f"{staged.name}_v{version}.zip"
    assert f"bundle zip written to {archive}" in capsys.readouterr().out
    assert [p.name for p in output_dir.iterdir()] == [archive.name]  # nothing else, no temporary file
    names = _zip_names(archive)
    assert all(name.startswith(f"{staged.name}/") for name in names)
    unpacked = _unzip(archive, tmp_path / "unpacked") / staged.name
    assert zoo.check_bundle_dir(unpacked) == []
    zoo.verify_metadata(unpacked / "configs" / "metadata.json")
    shipped = _expected_files(Path(BUNDLES[staged.name]["path"]))
    packed = {p.relative_to(unpacked).as_posix(): p.read_bytes() for p in unpacked.rglob("*") if p.is_file()}
    assert packed == {**shipped, "models/model.pt": staged.weights.read_bytes()}
    assert {"LICENSE", "configs/metadata.json", "docs/README.md"} <= set(packed)


def test_bundle_zip_is_reproducible_and_replaces_an_older_zip(staged: Staged, tmp_path: Path) -> None:
    first = zoo.zip_bundle(staged.root, tmp_path, weights=staged.weights).path
    content = first.read_bytes()
    first.write_bytes(b"an older, different archive")
    second = zoo.zip_bundle(staged.root, tmp_path, weights=staged.weights).path
    assert second == first and second.read_bytes() == content


def test_bundle_zip_leaves_out_run_products_caches_and_stale_exports(staged: Staged, tmp_path: Path) -> None:
    bundle_dir = _copy_bundle(staged.name, tmp_path / "polluted")
    clutter = [
        "outputs/run/history.json",
        "eval/schema.json",
        "configs/__pycache__/x.cpython-311.pyc",
        ".ipynb_checkpoints/notes.ipynb",
        "docs/.DS_Store",
        "models/model.ts",
        "models/model.onnx",
        "runs/events.out",
        "mlruns/0/meta.yaml",
        "configs/.inference.yaml.abc.tmp",
    ]
    for relative in clutter:
        (bundle_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (bundle_dir / relative).write_text("not for publication")
    archive = zoo.zip_bundle(bundle_dir, tmp_path / "zips", weights=staged.weights).path
    packed = {name.split("/", 1)[1] for name in _zip_names(archive)}
    assert packed == {*_expected_files(Path(BUNDLES[staged.name]["path"])), "models/model.pt"}


def test_bundle_zip_takes_weights_from_option_then_outputs_then_the_bundle(
    staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_dir = _copy_bundle(staged.name, tmp_path / "bundles")
    own = _random_weights(bundle_dir, bundle_dir / "models" / "model.pt", SEED + 1)
    monkeypatch.chdir(tmp_path)
    trained = _random_weights(bundle_dir, tmp_path / "outputs" / staged.name / "models" / "model.pt", SEED + 2)
    explicit = _random_weights(bundle_dir, tmp_path / "chosen.pt", SEED + 3)

    def packed_weights(*weights: Path) -> bytes:
        archive = zoo.zip_bundle(bundle_dir, tmp_path / "zips", weights=weights[0] if weights else None)
        with zipfile.ZipFile(archive.path) as handle:
            return handle.read(f"{staged.name}/models/model.pt")

    assert packed_weights(explicit) == explicit.read_bytes()
    assert packed_weights() == trained.read_bytes()
    shutil.rmtree(tmp_path / "outputs")
    assert packed_weights() == own.read_bytes()


def test_weights_over_the_limit_go_to_large_files_yml_with_their_sha256(staged: Staged, tmp_path: Path) -> None:
    limit = staged.weights.stat().st_size - 1  # the real 25 MB limit would need a 25 MB network; same code path
    url = "https://example.invalid/usseg/model.pt"
    archive = zoo.zip_bundle(
        staged.root, tmp_path / "zips", weights=staged.weights, weights_url=url, max_file_bytes=limit
    )
    assert not archive.weights_in_zip
    unpacked = _unzip(archive.path, tmp_path / "unpacked") / staged.name
    assert not (unpacked / "models" / "model.pt").exists()
    listed = yaml.safe_load((unpacked / "large_files.yml").read_text())
    expected_hash = hashlib.sha256(staged.weights.read_bytes()).hexdigest()
    assert listed == {
        "large_files": [{"path": "models/model.pt", "url": url, "hash_val": expected_hash, "hash_type": "sha256"}]
    }
    assert zoo.check_bundle_dir(unpacked, max_file_bytes=limit) == []  # listed weights count as present


def test_weights_over_the_limit_without_a_url_fail_clearly_and_write_nothing(staged: Staged, tmp_path: Path) -> None:
    limit = staged.weights.stat().st_size - 1
    with pytest.raises(InputError, match="--weights-url") as raised:
        zoo.zip_bundle(staged.root, tmp_path / "zips", weights=staged.weights, max_file_bytes=limit)
    assert str(staged.weights) in str(raised.value) and str(staged.weights.stat().st_size) in str(raised.value)
    assert not (tmp_path / "zips").exists() or not list((tmp_path / "zips").iterdir())


def test_bundle_zip_without_weights_needs_no_weights_flag(
    staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle_dir = _copy_bundle(staged.name, tmp_path / "bundles")  # no models/ in the copy
    monkeypatch.chdir(tmp_path)  # and no ./outputs
    with pytest.raises(SystemExit) as raised:
        main(["bundle-zip", str(bundle_dir), "-o", str(tmp_path / "zips")])
    assert raised.value.code == 2 and "no trained weights found" in capsys.readouterr().err
    assert main(["bundle-zip", str(bundle_dir), "-o", str(tmp_path / "zips"), "--no-weights"]) == 0
    archive = next((tmp_path / "zips").glob("*.zip"))
    unpacked = _unzip(archive, tmp_path / "unpacked") / staged.name
    assert zoo.check_bundle_dir(unpacked, require_weights=False) == []
    assert zoo.check_bundle_dir(unpacked) == ["models/model.pt is missing and not listed in large_files.yml"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"weights_url": "ftp://example.invalid/model.pt"}, "http"),
        ({"include_weights": False, "weights": "w.pt"}, "contradicts"),
        ({"max_file_bytes": 0}, "max_file_bytes"),
    ],
    ids=["non_http_url", "weights_and_no_weights", "zero_limit"],
)
def test_zip_bundle_refuses_contradictory_arguments(staged: Staged, tmp_path: Path, arguments: dict, message: str):
    with pytest.raises(ValueError, match=message):
        zoo.zip_bundle(staged.root, tmp_path, **arguments)


def test_weights_that_do_not_fit_the_network_are_refused(staged: Staged, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    with pytest.raises(InputError, match="does not fit network_def") as raised:
        zoo.zip_bundle(staged.root, tmp_path / "zips", weights=wrong)
    assert str(wrong) in str(raised.value)


def _remove_inference_config(bundle_dir: Path) -> None:
    _inference_config(bundle_dir).unlink()


def _drop_changelog_version(bundle_dir: Path) -> None:
    meta_file = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["changelog"] = {"0.0.1": "older"}
    meta_file.write_text(json.dumps(meta))


def _list_escaping_large_file(bundle_dir: Path) -> None:
    entry = {"path": "../elsewhere.pt", "url": "https://example.invalid/x", "hash_type": "sha256"}
    (bundle_dir / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))


def _add_oversized_file(bundle_dir: Path) -> None:
    weights_size = (bundle_dir / "models" / "model.pt").stat().st_size
    (bundle_dir / "docs" / "figure.bin").write_bytes(b"\0" * (weights_size + 1))  # one byte over the test's limit


DIRECTORY_PROBLEMS: dict[str, tuple[Callable[[Path], None], str]] = {
    "no_license": (lambda d: (d / "LICENSE").unlink(), "LICENSE is missing"),
    "no_metadata": (lambda d: (d / "configs" / "metadata.json").unlink(), "configs/metadata.json is missing"),
    "no_inference_config": (_remove_inference_config, "no inference config"),
    "no_weights": (lambda d: (d / "models" / "model.pt").unlink(), "models/model.pt is missing"),
    "version_not_in_changelog": (_drop_changelog_version, "is not a key of 'changelog'"),
    "large_file_outside_bundle": (_list_escaping_large_file, "leaves the bundle folder"),
    "oversized_file": (_add_oversized_file, "docs/figure.bin is"),
}


@pytest.mark.parametrize("case", list(DIRECTORY_PROBLEMS), ids=list(DIRECTORY_PROBLEMS))
def test_check_bundle_dir_reports_each_zoo_rule(staged: Staged, tmp_path: Path, case: str) -> None:
    bundle_dir = tmp_path / staged.name
    shutil.copytree(staged.root, bundle_dir, ignore=shutil.ignore_patterns("model.ts", "model.onnx"))
    limit = staged.weights.stat().st_size  # the largest file of the bundle, the weights, just fits
    assert zoo.check_bundle_dir(bundle_dir, max_file_bytes=limit) == []
    breaking, message = DIRECTORY_PROBLEMS[case]
    breaking(bundle_dir)
    problems = zoo.check_bundle_dir(bundle_dir, max_file_bytes=limit)
    assert len(problems) == 1 and message in problems[0], problems


def test_check_bundle_dir_on_a_missing_folder(tmp_path: Path) -> None:
    assert zoo.check_bundle_dir(tmp_path / "absent") == [f"{tmp_path / 'absent'}: not a folder"]


# ----------------------------------------------------------------------------------------------------- README


@pytest.mark.parametrize("name", NAMES)
def test_readme_follows_the_zoo_template(name: str) -> None:
    text = (Path(BUNDLES[name]["path"]) / "docs" / "README.md").read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    positions = [headings.index(section) for section in README_SECTIONS if section in headings]
    assert len(positions) == len(README_SECTIONS), f"missing: {set(README_SECTIONS) - set(headings)}"
    assert positions == sorted(positions), headings
    limitations = text.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    assert "research use only" in limitations.lower()
    performance = text.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert "benchmarks/results" in performance
