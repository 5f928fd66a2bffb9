# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``usseg``: prepare datalists, generate the phantom, list and run bundles.

Each subcommand parses its arguments and calls one API function; the work lives in the library. ``usseg run`` only
resolves a bundle's config files and hands over to MONAI's own bundle runner.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from usseg.errors import InputError

__all__ = [
    "main",
    "build_parser",
    "parse_overrides",
    "bundle_config_files",
    "check_override_keys",
    "tracking_settings",
    "RUNNER_OPTIONS",
    "TRACKING_KEYS",
]

LAYOUTS = ("busi", "generic", "dicom", "video")
FLAGS = frozenset({"resume"})  # boolean config keys that `usseg run` accepts without a value
# configs merged on top of train.yaml rather than run alone
OVERRIDE_CONFIGS = ("evaluate", "multi_gpu_train", "multi_gpu_evaluate")
RUNNER_OPTIONS: frozenset[str] = frozenset(
    {"run_id", "init_id", "final_id", "tracking", "args_file", "workflow_name", "workflow_type", "properties_path"}
)
"""Keys ``usseg run`` forwards to ``monai.bundle.run`` as runner arguments, not as config overrides."""
TRACKING_KEYS: frozenset[str] = frozenset({"tracking_uri", "experiment_name", "run_name", "save_execute_config"})
"""Config keys that ``--tracking`` settings add, so ``usseg run`` accepts them as overrides when tracking is on."""
# usseg run sets these itself from the bundle; passing them again would reach MONAI twice
_SET_BY_USSEG = ("config_file", "meta_file", "logging_file")
# MONAI's component keys: any dict with a _target_ accepts them even when the config file does not spell them out
_COMPONENT_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_MAX_SUGGESTIONS = 3


def _scalar(text: str) -> Any:
    """Parse a command-line value: numbers as numbers (``1e-4`` too, which YAML 1.1 would leave a string),
    everything else as YAML (``[64,64]``, ``true``, ``null``)."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _number(text: str) -> int | float:
    value = _scalar(text)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = sub.add_parser("prepare", help="build a datalist JSON (with seeded, deduplicated splits) from a folder")
    prepare.add_argument("layout", choices=LAYOUTS, help="[REQUIRED] folder layout")
    prepare.add_argument("root", type=Path, help="[REQUIRED] dataset folder")
    prepare.add_argument("-o", "--output", type=Path, required=True, help="[REQUIRED] datalist JSON to write")
    prepare.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    prepare.add_argument("--test-fraction", type=_fraction, default=0.2, help="held-out test share (default 0.2)")
    prepare.add_argument("--val-fraction", type=_fraction, default=0.1, help="validation share of the rest (0.1)")
    prepare.add_argument(
        "--num-labeled",
        type=_number,
        default=None,
        help="label budget: a count (72) or a fraction of the train pool (0.125); default all",
    )
    prepare.add_argument("--include-classes", nargs="+", default=None, help="keep only these classes")
    prepare.add_argument("--exclude-classes", nargs="+", default=None, help="drop these classes (BUSI: normal)")
    prepare.add_argument("--mask-mode", choices=("binary", "labels"), default="binary", help="mask encoding")
    prepare.add_argument("--num-classes", type=int, default=None, help="label count for --mask-mode labels")
    prepare.add_argument(
        "--class-from",
        type=json.loads,
        default=None,
        help='JSON {class: filename regex}, e.g. \'{"covid": "^Cov", "regular": "^Reg"}\'',
    )
    prepare.add_argument("--no-dedup", action="store_true", help="keep exact pixel duplicates (not recommended)")
    prepare.add_argument(
        "--no-require-masks", action="store_true", help="allow labeled items without masks (classification-only data)"
    )

    phantom = sub.add_parser("phantom", help="generate the embedded phantom data set (and its datalist)")
    phantom.add_argument("output", type=Path, help="[REQUIRED] folder to create")
    phantom.add_argument("--num-images", type=int, default=120)
    phantom.add_argument("--size", type=int, default=256)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--geometry", choices=("linear", "curvilinear", "mixed"), default="mixed")
    phantom.add_argument("--label-mode", choices=("lesion", "multi_structure"), default="lesion")
    phantom.add_argument("--elastography", action="store_true", help="add a co-registered strain image per case")
    phantom.add_argument("--num-videos", type=int, default=0, help="cine loops for video pre-training")
    phantom.add_argument("--frames-per-video", type=int, default=16)
    phantom.add_argument("--no-annotations", action="store_true", help="no burned-in text outside the scan cone")
    phantom.add_argument("--no-datalist", action="store_true", help="only write the images")

    sub.add_parser("bundles", help="list the shipped bundles and their configs")

    run = sub.add_parser(
        "run",
        help="run a bundle config through MONAI's bundle runner",
        description="usseg run BUNDLE [CONFIG ...] [--key value ...]: CONFIG defaults to train; override configs "
        "(evaluate, multi_gpu_train) are merged on train. Every --key value pair overrides a config key and is "
        "passed to `python -m monai.bundle run` (values are parsed as YAML: 2, 0.5, [64,64], true). Nested keys "
        "use # (--train#dataloader#num_workers 0). Each key must already exist in the merged configs: MONAI would "
        "silently add a misspelt key (--max_epoch 2) and train with the default, so an unknown key is an error that "
        "names the closest existing keys. Prefix a key with + to add it on purpose (--+my_key 1); on an existing "
        "dict or list, + merges or appends as in MONAI config files (--+imports \"['$import numpy']\"). Runner "
        f"options ({', '.join(sorted(RUNNER_OPTIONS))}) are passed through unchecked. --tracking mlflow logs every "
        "loss component, the validation metrics and the executed config to a local MLflow store "
        "(OUTPUT_DIR/mlruns.db, no server; needs `pip install 'usseg[tracking]'`); with it, "
        f"{', '.join(sorted(TRACKING_KEYS))} may be overridden too.",
    )
    run.add_argument("bundle", help="[REQUIRED] bundle name (see `usseg bundles`) or a bundle folder")
    run.add_argument("configs", nargs="*", default=["train"], help="config names or files (default: train)")

    bundle_zip = sub.add_parser(
        "bundle-zip",
        help="pack a bundle with its trained weights as a model-zoo zip",
        description="Write DIR/NAME_v<version>.zip, unpacking to NAME/: configs, docs, LICENSE and models/model.pt "
        "(from --weights, else ./outputs/NAME/models/model.pt, else the bundle's own). Outputs and caches are left "
        "out. Weights over the zoo's 25 MB limit are listed in large_files.yml with --weights-url and their sha256. "
        "The metadata and the folder must pass the zoo's checks first.",
    )
    bundle_zip.add_argument("bundle", help="[REQUIRED] bundle name (see `usseg bundles`) or a bundle folder")
    bundle_zip.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="folder for the zip (default .)")
    bundle_zip.add_argument("--weights", type=Path, default=None, help="trained weights (a state dict) to publish")
    bundle_zip.add_argument("--weights-url", default=None, help="download URL of weights over 25 MB")
    bundle_zip.add_argument("--no-weights", action="store_true", help="pack the configs only, without models/model.pt")

    infer = sub.add_parser(
        "infer",
        help="segment images, NIfTI, DICOM (single frame or cine), videos and folders of them",
        description="Segment every input with a bundle's network and write, per input, NIfTI and PNG masks, PNG "
        "overlays and a JSON of per-frame class probabilities and areas (and DICOM SEG with --dicom-seg); cines get "
        "one PNG per frame (<stem>_f0003_seg.png). Folders are searched recursively. A file that fails is named in "
        "OUTPUT/inference_report.json and the run goes on; the exit code is 1 when any input failed.",
    )
    infer.add_argument("inputs", nargs="+", type=Path, help="[REQUIRED] files and folders to segment")
    infer.add_argument("-o", "--output-dir", type=Path, required=True, help="[REQUIRED] folder for the results")
    infer.add_argument(
        "--bundle", default="breast_us_supervised_segmentation", help="bundle name or folder (default %(default)s)"
    )
    infer.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights (a state dict); default ./outputs/BUNDLE/models/model.pt, else the bundle's models/model.pt",
    )
    infer.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="onnx: ONNX Runtime on the CPU")
    infer.add_argument(
        "--formats",
        nargs="+",
        choices=("nii.gz", "png", "overlay", "json"),
        default=["nii.gz", "png", "overlay", "json"],
        help="outputs to write (default all)",
    )
    infer.add_argument("--dicom-seg", action="store_true", help="also write DICOM SEG for DICOM inputs (highdicom)")
    infer.add_argument("--device", default="auto", help="torch device (default auto: CUDA when available)")
    infer.add_argument(
        "--spatial-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="network input size (default: bundle's)",
    )
    infer.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    infer.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--max_epochs", "2", "--train#dataloader#num_workers=0"]`` into ``{"max_epochs": 2, ...}``.

    A key in ``FLAGS`` (``--resume``) may stand alone and then means ``true``.

    Raises:
        SystemExit: on a token that is not ``--key`` or a key without a value.
    """
    overrides: dict[str, Any] = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise SystemExit(f"usseg run: expected --key value, got {token!r}")
        key, _, value = token[2:].partition("=")
        if not _:
            if key in FLAGS and (not tokens or tokens[0].startswith("--")):
                overrides[key] = True  # `--resume` alone means `--resume true`
                continue
            if not tokens:
                raise SystemExit(f"usseg run: --{key} needs a value")
            value = tokens.pop(0)
        overrides[key] = _scalar(value)
    return overrides


def bundle_config_files(bundle: str, configs: Sequence[str]) -> tuple[Path, list[str]]:
    """Resolve a bundle and config names to ``(bundle folder, [config files])``; overrides get train.yaml first."""
    from usseg.bundles import resolve_bundle

    root = resolve_bundle(bundle)
    files: list[str] = []
    for name in configs or ["train"]:
        path = Path(name)
        if not path.is_file():
            matches = [root / "configs" / f"{name}{ext}" for ext in (".yaml", ".yml", ".json")]
            path = next((m for m in matches if m.is_file()), None)
            if path is None:
                available = sorted(p.stem for p in (root / "configs").glob("*.y*ml"))
                raise SystemExit(f"usseg run: bundle {root.name} has no config {name!r} (available: {available})")
        files.append(str(path.resolve()))
    if Path(files[0]).stem in OVERRIDE_CONFIGS:
        files.insert(0, str((root / "configs" / "train.yaml").resolve()))
    return root, files


def _prepare(args: argparse.Namespace) -> None:
    from usseg.data.datalist import build_datalist

    build_datalist(
        args.root,
        args.layout,
        args.output,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        num_labeled=args.num_labeled,
        include_classes=args.include_classes,
        exclude_classes=args.exclude_classes,
        dedup=not args.no_dedup,
        mask_mode=args.mask_mode,
        num_classes=args.num_classes,
        require_masks=not args.no_require_masks,
        class_from=args.class_from,
        progress=True,
    )
    print(f"datalist written to {args.output}")


def _phantom(args: argparse.Namespace) -> None:
    from usseg.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(
        args.output,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        geometry=args.geometry,
        label_mode=args.label_mode,
        modalities=("bmode", "elastography") if args.elastography else ("bmode",),
        num_videos=args.num_videos,
        frames_per_video=args.frames_per_video,
        annotations=not args.no_annotations,
        progress=True,
    )
    print(f"phantom written to {root}")
    if not args.no_datalist:
        from usseg.data.datalist import build_datalist

        output = Path(root) / "datalist.json"
        build_datalist(
            root,
            "generic",
            output,
            seed=args.seed,
            progress=True,  # mask mode and label count come from the phantom's dataset.json
        )
        print(f"datalist written to {output}")


def _bundle_zip(args: argparse.Namespace) -> None:
    from usseg.zoo import zip_bundle

    archive = zip_bundle(
        args.bundle,
        args.output_dir,
        weights=args.weights,
        weights_url=args.weights_url,
        include_weights=not args.no_weights,
    )
    if archive.weights is None:
        print("weights: none (--no-weights)")
    elif archive.weights_in_zip:
        print(f"weights: {archive.weights} -> models/model.pt")
    else:
        print(f"weights: {archive.weights} -> large_files.yml ({args.weights_url}, sha256 listed)")
    print(f"bundle zip written to {archive.path}")


def _infer(args: argparse.Namespace) -> None:
    from usseg.inference import infer

    report = infer(
        args.inputs,
        bundle=args.bundle,
        output_dir=args.output_dir,
        weights=args.weights,
        backend=args.backend,
        formats=args.formats,
        dicom_seg=args.dicom_seg,
        device=args.device,
        progress=not args.no_progress,
        spatial_size=args.spatial_size,
        batch_size=args.batch_size,
    )
    print(f"segmented {len(report.succeeded)} file(s), {len(report.failed)} failed; report: {report.report_path}")
    for failure in report.failed:
        print(f"FAILED {failure['error']}", file=sys.stderr)
    if report.failed:
        raise SystemExit(1)


def _bundles(_: argparse.Namespace) -> None:
    from usseg.bundles import list_bundles

    for name, info in list_bundles().items():
        print(f"{name}  v{info['version']}  {info['task']}")
        print(f"    {info['path']}")
        print(f"    configs: {', '.join(info['configs'])}")


def _config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a raw config, parents before children (``train``, ``train#dataloader``, ...)."""
    children = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for name, value in children:
        config_id = f"{prefix}#{name}" if prefix else str(name)
        yield config_id
        yield from _config_ids(value, config_id)


def _closest_ids(key: str, ids: Sequence[str]) -> list[str]:
    """Up to ``_MAX_SUGGESTIONS`` ids near ``key``: by the whole id, then by its last part (a misplaced parent)."""
    found = difflib.get_close_matches(key, ids, n=_MAX_SUGGESTIONS, cutoff=0.6)
    last = key.rsplit("#", 1)[-1]
    by_last: dict[str, list[str]] = {}
    for config_id in ids:
        by_last.setdefault(config_id.rsplit("#", 1)[-1], []).append(config_id)
    for name in difflib.get_close_matches(last, list(by_last), n=_MAX_SUGGESTIONS, cutoff=0.8):
        for config_id in sorted(by_last[name], key=len):
            if config_id not in found:
                found.append(config_id)
    return found[:_MAX_SUGGESTIONS]


def _add_or_merge(parser: Any, config_id: str, value: Any, key: str) -> Any:
    """The value a ``+``-prefixed override sets: ``value`` for a new id, merged into an existing dict or list.

    Raises:
        InputError: the parent of a new id does not exist or is not a dict, or an existing id holds a value that
            cannot be merged with ``value``.
    """
    if config_id in parser:
        existing = copy.deepcopy(parser[config_id])
        if isinstance(existing, dict) and isinstance(value, dict):
            return {**existing, **value}
        if isinstance(existing, list) and isinstance(value, list):
            return existing + value
        raise InputError(
            key,
            f"{config_id!r} already exists with a value of type {type(existing).__name__}; + merges a dict into a "
            f"dict or appends a list to a list, not a {type(value).__name__}. Drop the + to replace the value.",
        )
    parent, _, _ = config_id.rpartition("#")
    if parent and not isinstance(parser.get(parent), dict):
        problem = "does not exist" if parent not in parser else f"is a {type(parser[parent]).__name__}"
        raise InputError(key, f"cannot add {config_id!r}: its parent {parent!r} {problem}; new keys go into a dict.")
    return value


def check_override_keys(
    config_files: Sequence[str | os.PathLike],
    overrides: Mapping[str, Any],
    meta_file: str | os.PathLike | None = None,
    extra_keys: Collection[str] = (),
) -> dict[str, Any]:
    """Check command-line override keys against the merged configs, before MONAI's runner sees them.

    MONAI's runner adds an unknown override key without a word, so a typo (``max_epoch`` for ``max_epochs``) trains
    with the default. Here every key must name an existing config id (``#`` or ``::`` for nested ids, list
    positions as digits), a MONAI component key (``_disabled_``...) of an existing dict, or a runner option
    (:data:`RUNNER_OPTIONS`). A key written ``+id`` is an explicit addition: a new id is added (its parent must be an
    existing dict), and on an existing dict or list the value is merged or appended, as ``+`` does in MONAI config
    files. Nothing is resolved or instantiated: the files are only read and merged with ``monai.bundle.ConfigParser``.

    Args:
        config_files: the config files in merge order (later files override earlier ones).
        overrides: ``{key: value}`` as from :func:`parse_overrides`.
        meta_file: the bundle's ``metadata.json``, whose content MONAI places under ``_meta_``; skipped when None
            or missing.
        extra_keys: further keys accepted although the files lack them (those ``--tracking`` settings add).

    Returns:
        The overrides to hand to ``monai.bundle.run``: ``+`` removed from the keys and merged values in place.

    Raises:
        InputError: an unknown key (the message names it, the config files, the closest existing keys, and the
            ``--+key`` form), an empty key, a key ``usseg run`` sets itself (``config_file``, ``meta_file``,
            ``logging_file``), or a ``+`` key that cannot be added or merged.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.fspath(path) for path in config_files])
    if meta_file is not None and Path(meta_file).is_file():
        parser.read_meta(os.fspath(meta_file))
    file_names = ", ".join(Path(path).name for path in config_files)
    checked: dict[str, Any] = {}
    unknown: list[tuple[str, str]] = []
    ids: list[str] | None = None
    for key, value in overrides.items():
        # MONAI accepts both separators; "#" is the one usseg bundles use, so analyse and suggest in that form
        config_id = (key[1:] if key.startswith("+") else key).replace("::", "#")
        if not config_id.strip():
            raise InputError(key or "''", "empty override key; write --name value.")
        if key in _SET_BY_USSEG:
            raise InputError(
                key,
                f"is set by usseg run from the bundle; name the configs as positional arguments instead of --{key}.",
            )
        if key.startswith("+"):
            checked[config_id] = _add_or_merge(parser, config_id, value, key)
            continue
        parent, _, last = config_id.rpartition("#")
        is_component_key = bool(parent) and last in _COMPONENT_KEYS and isinstance(parser.get(parent), dict)
        if key in RUNNER_OPTIONS or key in extra_keys or config_id in parser or is_component_key:
            checked[key] = value
            continue
        ids = list(_config_ids(parser.get())) if ids is None else ids
        closest = _closest_ids(config_id, ids)
        hint = f"did you mean {', '.join(closest)}?" if closest else "no similar key exists."
        unknown.append((key, f"no such key in {file_names}; {hint} Write --+{key} to add it on purpose."))
    if unknown:
        # every unknown key at once, so a command with two typos is fixed in one go
        first_key, first_problem = unknown[0]
        others = [f"{key}: {problem}" for key, problem in unknown[1:]]
        footer = "(MONAI would add an unknown key silently, and the run would keep the default value.)"
        raise InputError(first_key, "\n".join([first_problem, *others, footer]))
    return checked


def tracking_settings(tracking: Any, bundle_name: str) -> Any:
    """The ``tracking`` argument for ``monai.bundle.run``: usseg's MLflow settings for ``"mlflow"``, else as given.

    Args:
        tracking: the ``--tracking`` value: ``"mlflow"``, a settings file, or a settings dict.
        bundle_name: names the MLflow experiment.

    Returns:
        :func:`usseg.handlers.tracking.mlflow_settings` for ``"mlflow"`` (every loss component logged), else
        ``tracking`` unchanged (MONAI reads a settings file itself).

    Raises:
        ImportError: ``"mlflow"`` while MLflow is not installed (the message names the ``tracking`` extra).
    """
    from usseg.handlers.tracking import MLFLOW_EXTRA_HINT, mlflow_available, mlflow_settings

    if tracking != "mlflow":
        return tracking
    if not mlflow_available():
        raise ImportError(f"--tracking mlflow needs MLflow, which is not installed; {MLFLOW_EXTRA_HINT}.")
    return mlflow_settings(experiment_name=bundle_name)


def _run(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from monai.bundle import run as monai_run

    root, files = bundle_config_files(args.bundle, args.configs)
    meta_file = root / "configs" / "metadata.json"
    tracking_on = overrides.get("tracking") is not None
    overrides = check_override_keys(
        files, overrides, meta_file=meta_file, extra_keys=TRACKING_KEYS if tracking_on else ()
    )
    if tracking_on:
        overrides["tracking"] = tracking_settings(overrides["tracking"], root.name)
    monai_run(
        config_file=files,
        meta_file=str(meta_file),
        logging_file=str(root / "configs" / "logging.conf"),
        **overrides,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    extra: list[str] = []
    if argv[:1] == ["run"] and "-h" not in argv and "--help" not in argv:
        # everything from the first --key on is for MONAI's runner, not for argparse
        split = next((i for i, token in enumerate(argv) if token.startswith("--")), len(argv))
        argv, extra = argv[:split], argv[split:]
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            _run(args, parse_overrides(extra))
        else:
            commands = {
                "prepare": _prepare,
                "phantom": _phantom,
                "bundles": _bundles,
                "bundle-zip": _bundle_zip,
                "infer": _infer,
            }
            commands[args.command](args)
    except (OSError, ValueError, ImportError) as err:  # bad input, unwritable folder, missing extra: one clear line
        parser.exit(2, f"usseg {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
