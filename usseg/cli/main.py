# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``usseg``: prepare datalists, generate the phantom, list and run bundles.

Each subcommand parses its arguments and calls one API function; the work lives in the library. ``usseg run`` only
resolves a bundle's config files and hands over to MONAI's own bundle runner.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main", "build_parser", "parse_overrides", "bundle_config_files"]

LAYOUTS = ("busi", "generic", "dicom", "video")
# configs merged on top of train.yaml rather than run alone
OVERRIDE_CONFIGS = ("evaluate", "multi_gpu_train", "multi_gpu_evaluate")


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
        "(evaluate, multi_gpu_train) are merged on train. Every --key value pair is passed to "
        "`python -m monai.bundle run` unchanged (values are parsed as YAML: 2, 0.5, [64,64], true).",
    )
    run.add_argument("bundle", help="[REQUIRED] bundle name (see `usseg bundles`) or a bundle folder")
    run.add_argument("configs", nargs="*", default=["train"], help="config names or files (default: train)")
    return parser


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--max_epochs", "2", "--train#dataloader#num_workers=0"]`` into ``{"max_epochs": 2, ...}``.

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
            if not tokens:
                raise SystemExit(f"usseg run: --{key} needs a value")
            value = tokens.pop(0)
        overrides[key] = _scalar(value)
    return overrides


def bundle_config_files(bundle: str, configs: Sequence[str]) -> tuple[Path, list[str]]:
    """Resolve a bundle and config names to ``(bundle folder, [config files])``; overrides get train.yaml first."""
    from usseg.bundles import bundle_root

    root = Path(bundle) if Path(bundle).is_dir() else Path(bundle_root(bundle))
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
            mask_mode="labels" if args.label_mode != "lesion" else "binary",
            num_classes=3 if args.label_mode != "lesion" else None,
            progress=True,
        )
        print(f"datalist written to {output}")


def _bundles(_: argparse.Namespace) -> None:
    from usseg.bundles import list_bundles

    for name, info in list_bundles().items():
        print(f"{name}  v{info['version']}  {info['task']}")
        print(f"    {info['path']}")
        print(f"    configs: {', '.join(info['configs'])}")


def _run(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from monai.bundle import run as monai_run

    root, files = bundle_config_files(args.bundle, args.configs)
    monai_run(
        config_file=files,
        meta_file=str(root / "configs" / "metadata.json"),
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
            {"prepare": _prepare, "phantom": _phantom, "bundles": _bundles}[args.command](args)
    except (FileNotFoundError, ValueError) as err:  # bad input: one clear line, not a traceback
        parser.exit(2, f"usseg {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
