# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""``usseg infer``: every input kind, folders with a bad file, spacing, DICOM SEG, ONNX Runtime and the CLI.

Inputs are pydicom's bundled ultrasound files and PNG / NIfTI / mp4 files written here; the network is the bundle's
``network_def`` with seeded random weights, run at 64 x 64 to stay fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Resize
from PIL import Image
from pydicom.data import get_testdata_file

from usseg.bundles import bundle_root
from usseg.cli.main import main
from usseg.data.dicom_seg import source_reference
from usseg.errors import InputError
from usseg.inference import REPORT_NAME, Segmenter, collect_inputs, infer, load_frames
from usseg.zoo import EXPORT_ATOL, inference_config, load_network

BUNDLE = "breast_us_supervised_segmentation"
SIZE = (64, 64)
CINE = "examples_ybr_color.dcm"  # 30-frame YBR_FULL_422 JPEG cine with ultrasound regions
PALETTE = "examples_palette.dcm"  # single-frame PALETTE COLOR with ultrasound regions
RGB = "examples_rgb_color.dcm"  # single-frame RGB, no calibration
# highdicom warns about the one-component patient names of pydicom's sample files
pytestmark = [
    pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name"),
    pytest.mark.filterwarnings("ignore:.*'dynamic_axes' is not recommended when dynamo=True:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"),
]


# ----------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights of the bundle's network_def, saved as a bare state dict."""
    parser = ConfigParser()
    parser.read_config(str(inference_config(bundle_root(BUNDLE))))
    parser["bundle_root"] = bundle_root(BUNDLE)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def segmenter(weights: Path) -> Segmenter:
    return Segmenter(BUNDLE, weights, spatial_size=SIZE, batch_size=4)


def _gradient(height: int, width: int, seed: int) -> np.ndarray:
    """A bright blob on a noisy background: uint8 (H, W), so the network sees structure."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    blob = 200.0 * np.exp(-(((rows - height / 2) ** 2 + (cols - width / 3) ** 2) / (0.05 * height * width)))
    return np.clip(blob + rng.normal(30, 10, (height, width)), 0, 255).astype(np.uint8)


def _write_png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 56)) -> np.ndarray:
    image = _gradient(*size, seed)
    Image.fromarray(image).save(path)
    return image


def _write_nifti(path: Path, frames: np.ndarray, zooms: tuple[float, float] = (0.3, 0.2)) -> None:
    """Frames (F, H, W) stored as (X, Y, F) = (W, H, F), the layout usseg documents for NIfTI input."""
    data = frames.transpose(2, 1, 0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([zooms[0], zooms[1], 1.0, 1.0])), str(path))


def _write_mp4(path: Path, num_frames: int = 3, size: tuple[int, int] = (48, 64)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for index in range(num_frames):
            gray = _gradient(*size, seed=10 + index)
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=-1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _region_spacing_mm(path: str) -> tuple[float, float]:
    """(row, column) mm of the first ultrasound region, read straight from the file (cm -> mm)."""
    region = pydicom.dcmread(path, stop_before_pixels=True).SequenceOfUltrasoundRegions[0]
    return float(region.PhysicalDeltaY) * 10.0, float(region.PhysicalDeltaX) * 10.0


# -------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("case", "expected_shape", "expected_spacing"),
    [
        pytest.param("cine", (30, 240, 320), "regions", id="dicom_cine_30_frames"),
        pytest.param("palette", (1, 350, 800), "regions", id="dicom_palette_single_frame"),
        pytest.param("rgb", (1, 240, 320), None, id="dicom_rgb_single_frame"),
    ],
)
def test_load_frames_dicom(case: str, expected_shape: tuple[int, ...], expected_spacing: str | None) -> None:
    path = get_testdata_file({"cine": CINE, "palette": PALETTE, "rgb": RGB}[case])
    frames, meta = load_frames(path)
    assert frames.dtype == np.uint8 and frames.shape == expected_shape
    assert meta["input_type"] == "dicom" and meta["num_frames"] == expected_shape[0]
    assert meta["sop_instance_uid"] == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    if expected_spacing is None:
        assert meta["pixel_spacing_mm"] is None
    else:
        assert meta["pixel_spacing_mm"] == pytest.approx(_region_spacing_mm(path))


@pytest.mark.parametrize(
    "num_frames",
    [pytest.param(1, id="nifti_2d"), pytest.param(3, id="nifti_3d_frames_last")],
)
def test_load_frames_nifti(tmp_path: Path, num_frames: int) -> None:
    frames = np.stack([_gradient(20, 30, seed) for seed in range(num_frames)])
    path = tmp_path / "scan.nii.gz"
    if num_frames == 1:
        nib.save(nib.Nifti1Image(frames[0].T.astype(np.uint8), np.diag([0.3, 0.2, 1.0, 1.0])), str(path))
    else:
        _write_nifti(path, frames)
    loaded, meta = load_frames(path)
    np.testing.assert_array_equal(loaded, frames)
    assert meta["pixel_spacing_mm"] == pytest.approx((0.2, 0.3))  # (row, column) = (Y zoom, X zoom)


def test_load_frames_nifti_unit_range_is_scaled(tmp_path: Path) -> None:
    frames = np.stack([_gradient(16, 12, 0)])
    path = tmp_path / "unit.nii"
    nib.save(nib.Nifti1Image((frames.transpose(2, 1, 0) / 255.0).astype(np.float64), np.eye(4)), str(path))
    np.testing.assert_array_equal(load_frames(path)[0], frames)


def test_load_frames_png_and_video(tmp_path: Path) -> None:
    image = _write_png(tmp_path / "still.png")
    frames, meta = load_frames(tmp_path / "still.png")
    np.testing.assert_array_equal(frames, image[None])
    assert meta == {"input_type": "image", "num_frames": 1, "pixel_spacing_mm": None, "spacing_source": "none"}
    _write_mp4(tmp_path / "clip.mp4", num_frames=4)
    video, meta = load_frames(tmp_path / "clip.mp4")
    assert video.shape == (4, 48, 64) and meta["input_type"] == "video"
    # lossy mpeg4 smooths the noise, but each decoded frame is still the encoded picture, in order
    encoded = _gradient(48, 64, seed=11).astype(float)
    assert np.corrcoef(video[1].astype(float).ravel(), encoded.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        pytest.param("notes.txt", b"hello", "unsupported file type", id="unsupported_suffix"),
        pytest.param("broken.png", b"\x89PNG\r\n\x1a\n garbage", "truncated or damaged", id="corrupt_png"),
        pytest.param("broken.dcm", b"\0" * 128 + b"DICM" + b"\1" * 40, "no pixel data", id="corrupt_dicom"),
        pytest.param("broken.mp4", b"not a video at all", "video", id="corrupt_video"),
    ],
)
def test_load_frames_rejects_bad_files(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as caught:
        load_frames(path)
    assert str(path) in str(caught.value)


def test_load_frames_rejects_out_of_range_nifti(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8), 1000, dtype=np.int16), np.eye(4)), str(path))
    with pytest.raises(InputError, match=r"\[1000, 1000\]") as caught:
        load_frames(path)
    assert str(path) in str(caught.value)


# ------------------------------------------------------------------------------------------------ segmenting


def test_segmenter_matches_bundle_preprocessing(weights: Path, segmenter: Segmenter) -> None:
    """Same probabilities as the bundle's transforms: /255, MONAI Resize (area) there and back, softmax."""
    frames = np.stack([_gradient(50, 70, seed) for seed in range(3)])
    network = load_network(bundle_root(BUNDLE), weights)
    expected = []
    for frame in frames:
        image = Resize(SIZE, mode="area")(torch.from_numpy(frame[None] / 255.0).float())
        with torch.no_grad():
            probabilities = torch.softmax(network(torch.as_tensor(image)[None]), dim=1)[0]
        expected.append(np.asarray(Resize((50, 70), mode="area")(probabilities)))
    result = segmenter(frames)
    assert result.shape == (3, 2, 50, 70) and result.dtype == np.float32
    np.testing.assert_allclose(result, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(result.sum(axis=1), 1.0, atol=1e-5)
    assert segmenter.class_names == ["background", "lesion"] and segmenter.resize_mode == "area"


def test_onnx_backend_agrees_with_torch(weights: Path, segmenter: Segmenter, tmp_path: Path) -> None:
    """Probabilities within EXPORT_ATOL; masks equal wherever the two classes are not tied within that tolerance."""
    onnx = Segmenter(BUNDLE, weights, backend="onnx", spatial_size=SIZE, onnx_cache_dir=tmp_path)
    assert onnx.onnx_file is not None and onnx.onnx_file.parent == tmp_path and onnx.onnx_file.suffix == ".onnx"
    frames = np.stack([_gradient(48, 56, seed) for seed in range(2)])
    eager, exported = segmenter(frames), onnx(frames)
    np.testing.assert_allclose(exported, eager, atol=EXPORT_ATOL)
    margin = np.abs(eager[:, 1] - eager[:, 0])
    decided = margin > 2 * EXPORT_ATOL
    assert decided.mean() > 0.99  # the comparison below is not vacuous
    np.testing.assert_array_equal(exported.argmax(1)[decided], eager.argmax(1)[decided])
    # the export is cached by content: a second segmenter reuses the file
    stamp = onnx.onnx_file.stat().st_mtime_ns
    again = Segmenter(BUNDLE, weights, backend="onnx", spatial_size=SIZE, onnx_cache_dir=tmp_path)
    assert again.onnx_file == onnx.onnx_file and again.onnx_file.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"backend": "tensorrt"}, ValueError, "'tensorrt'", id="unknown_backend"),
        pytest.param({"spatial_size": (64,)}, ValueError, r"\(64,\)", id="one_spatial_size"),
        pytest.param({"spatial_size": (64, 0)}, ValueError, r"\(64, 0\)", id="zero_spatial_size"),
        pytest.param({"batch_size": 0}, ValueError, "got 0", id="zero_batch"),
        pytest.param({"weights": "missing.pt"}, FileNotFoundError, "missing.pt", id="missing_weights"),
    ],
)
def test_segmenter_validates_arguments(weights: Path, kwargs: dict, error: type, match: str) -> None:
    arguments = {"weights": weights, **kwargs}
    with pytest.raises(error, match=match):
        Segmenter(BUNDLE, **arguments)


# ------------------------------------------------------------------------------------------------- infer()


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """PNG, NIfTI cine, mp4 in a subfolder, a DICOM without suffix, a corrupt PNG and a text file."""
    folder = tmp_path / "inputs"
    (folder / "clips").mkdir(parents=True)
    _write_png(folder / "case1.png")
    _write_nifti(folder / "case2.nii.gz", np.stack([_gradient(40, 44, seed) for seed in (1, 2)]))
    _write_mp4(folder / "clips" / "loop.mp4", num_frames=3)
    shutil.copyfile(get_testdata_file(RGB), folder / "IM_0001")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_infer_folder_continues_past_a_bad_file(
    mixed_folder: Path, weights: Path, segmenter: Segmenter, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = infer(mixed_folder, BUNDLE, out, weights=weights, spatial_size=SIZE, progress=False)
    assert not report.ok
    assert [f["input"] for f in report.failed] == [str(mixed_folder / "broken.png")]
    assert str(mixed_folder / "broken.png") in report.failed[0]["error"]
    assert [s["input"] for s in report.skipped] == [str(mixed_folder / "notes.txt")]
    assert sorted(Path(s["input"]).name for s in report.succeeded) == [
        "IM_0001",
        "case1.png",
        "case2.nii.gz",
        "loop.mp4",
    ]
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["num_failed"] == 1 and saved["num_succeeded"] == 4 and saved["failed"] == report.failed

    # the PNG mask is the argmax of the segmenter's probabilities, saved as {0, 255}
    frames, _ = load_frames(mixed_folder / "case1.png")
    expected = segmenter(frames).argmax(axis=1)[0]
    np.testing.assert_array_equal(_read_png(out / "case1_seg.png"), expected.astype(np.uint8) * 255)
    assert _read_png(out / "case1_overlay.png").shape == (48, 56, 3)
    record = json.loads((out / "case1_inference.json").read_text())
    assert record["frames"][0]["area_pixels"]["lesion"] == int(expected.sum())
    assert record["frames"][0]["area_mm2"] is None  # a PNG has no calibration

    # a cine from a subfolder: outputs in the same subfolder, one PNG per frame, frames last in the NIfTI
    assert sorted(p.name for p in (out / "clips").glob("loop_f*_seg.png")) == [
        f"loop_f000{i}_seg.png" for i in range(3)
    ]
    assert nib.load(out / "clips" / "loop_seg.nii.gz").shape == (64, 48, 3)
    # NIfTI input: its zooms are the spacing of the output
    nifti = nib.load(out / "case2_seg.nii.gz")
    assert nifti.shape == (44, 40, 2) and nifti.header.get_zooms()[:2] == pytest.approx((0.3, 0.2))
    # the DICOM without suffix was recognised by its marker
    assert (out / "IM_0001_seg.nii.gz").is_file()
    assert json.loads((out / "IM_0001_inference.json").read_text())["source_metadata"]["input_type"] == "dicom"


def test_infer_cine_spacing_and_dicom_seg_per_frame(weights: Path, tmp_path: Path) -> None:
    source = get_testdata_file(CINE)
    out = tmp_path / "out"
    report = infer(
        source,
        BUNDLE,
        out,
        weights=weights,
        formats=("nii.gz", "json"),
        dicom_seg=True,
        spatial_size=SIZE,
        progress=False,
    )
    assert report.ok and report.succeeded[0]["num_frames"] == 30

    row_mm, col_mm = _region_spacing_mm(source)
    nifti = nib.load(out / "examples_ybr_color_seg.nii.gz")
    assert nifti.shape == (320, 240, 30)
    np.testing.assert_allclose(np.diag(nifti.affine)[:2], (col_mm, row_mm), rtol=1e-6)
    labels = np.asarray(nifti.dataobj).transpose(2, 1, 0)  # (F, H, W)

    record = json.loads((out / "examples_ybr_color_inference.json").read_text())
    assert record["source_metadata"]["spacing_source"] == "ultrasound_regions"
    frame = record["frames"][7]
    assert frame["area_pixels"]["lesion"] == int((labels[7] == 1).sum())
    assert frame["area_mm2"]["lesion"] == pytest.approx(frame["area_pixels"]["lesion"] * row_mm * col_mm)

    source_dataset = pydicom.dcmread(source, stop_before_pixels=True)
    segs = sorted(out.glob("examples_ybr_color_f*_seg.dcm"))
    assert len(segs) == 30
    series = set()
    for index in (0, 7, 29):
        seg = hd.seg.segread(segs[index])
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
        assert seg.StudyInstanceUID == source_dataset.StudyInstanceUID
        reference = source_reference(segs[index])
        assert reference == {
            "sop_instance_uid": source_dataset.SOPInstanceUID,
            "sop_class_uid": source_dataset.SOPClassUID,
            "frame_number": index + 1,
        }
        assert seg.InstanceNumber == index + 1
        np.testing.assert_array_equal(np.asarray(seg.pixel_array).reshape(240, 320), labels[index])
        series.add(seg.SeriesInstanceUID)
    assert len(series) == 1


def test_infer_single_frame_dicom_seg(weights: Path, tmp_path: Path) -> None:
    source = get_testdata_file(PALETTE)
    report = infer(
        [source], BUNDLE, tmp_path, weights=weights, formats=("png",), dicom_seg=True, spatial_size=SIZE, progress=False
    )
    assert report.ok
    seg = hd.seg.segread(tmp_path / "examples_palette_seg.dcm")
    assert source_reference(tmp_path / "examples_palette_seg.dcm") == {
        "sop_instance_uid": pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.6.1",
        "frame_number": None,
    }
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    mask = _read_png(tmp_path / "examples_palette_seg.png") // 255
    np.testing.assert_array_equal(np.asarray(seg.pixel_array).reshape(mask.shape), mask)


def test_infer_same_stem_gets_distinct_outputs(weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write_png(folder / "a.png", seed=1)
    _write_nifti(folder / "a.nii.gz", _gradient(48, 56, seed=2)[None])
    out = tmp_path / "out"
    report = infer(folder, BUNDLE, out, weights=weights, formats=("png",), spatial_size=SIZE, progress=False)
    assert report.ok
    outputs = sorted(Path(p).name for entry in report.succeeded for p in entry["outputs"])
    assert outputs == ["a_png_seg.png", "a_seg.png"]  # a.nii.gz sorts first and keeps the plain stem


def test_collect_inputs_reports_missing_and_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    files, skipped, failed = collect_inputs([tmp_path / "missing.png", tmp_path / "empty"])
    assert files == [] and skipped == []
    assert [f["input"] for f in failed] == [str(tmp_path / "missing.png"), str(tmp_path / "empty")]
    assert "no such file" in failed[0]["error"] and "no file to segment" in failed[1]["error"]


def test_infer_rejects_unknown_format(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'jpg'"):
        infer(tmp_path, BUNDLE, tmp_path / "out", weights=weights, formats=("png", "jpg"))


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_infer_exit_codes(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    _write_png(good)
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    common = ["--bundle", BUNDLE, "--weights", str(weights), "--spatial-size", "64", "64", "--no-progress"]
    assert main(["infer", str(good), "-o", str(tmp_path / "ok"), *common]) == 0
    assert (tmp_path / "ok" / "good_seg.png").is_file()
    with pytest.raises(SystemExit) as caught:
        main(["infer", str(good), str(bad), "-o", str(tmp_path / "mixed"), *common])
    assert caught.value.code == 1
    assert str(bad) in capsys.readouterr().err
    saved = json.loads((tmp_path / "mixed" / REPORT_NAME).read_text())
    assert [f["input"] for f in saved["failed"]] == [str(bad)] and saved["num_succeeded"] == 1


# ------------------------------------------------------------------------- the bundle's inference.yaml: same path


def _bundle_inference(inputs: Path, out: Path, weights: Path, **overrides: object) -> None:
    from monai.bundle import run as monai_run

    configs = Path(bundle_root(BUNDLE)) / "configs"
    monai_run(
        config_file=str(configs / "inference.yaml"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        input_dir=str(inputs),
        predictions_dir=str(out),
        ckpt_path=str(weights),
        progress=False,
        **{"spatial_size": list(SIZE), **overrides},
    )


def test_bundle_inference_takes_dicom_cine_single_frame_video_and_png_like_usseg_infer(
    weights: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    (inputs / "cines").mkdir(parents=True)
    shutil.copy(get_testdata_file(CINE), inputs / "cines" / CINE)
    shutil.copy(get_testdata_file(RGB), inputs / RGB)
    _write_mp4(inputs / "clip.mp4", num_frames=3)
    png = _write_png(inputs / "scan.png")
    bundle_out, cli_out = tmp_path / "bundle", tmp_path / "cli"
    # 32 x 32 and no overlays (tested above): a 30-frame cine segmented twice stays fast
    _bundle_inference(inputs, bundle_out, weights, spatial_size=[32, 32], formats=["nii.gz", "png", "json"])
    assert main(["infer", str(inputs), "-o", str(cli_out), "--weights", str(weights), "--spatial-size", "32", "32",
                 "--formats", "nii.gz", "png", "json", "--no-progress"]) == 0  # fmt: skip

    report = json.loads((bundle_out / REPORT_NAME).read_text())
    assert report["num_succeeded"] == 4 and report["num_failed"] == 0
    frames = {Path(entry["input"]).name: entry["num_frames"] for entry in report["succeeded"]}
    assert frames == {CINE: 30, RGB: 1, "clip.mp4": 3, "scan.png": 1}

    # the cine keeps its subfolder, its frames along the last NIfTI axis and the spacing of its ultrasound regions
    nifti = nib.load(bundle_out / "cines" / "examples_ybr_color_seg.nii.gz")
    assert nifti.shape == (320, 240, 30)
    np.testing.assert_allclose(np.diag(nifti.affine)[:2], _region_spacing_mm(get_testdata_file(CINE))[::-1])
    assert len(list((bundle_out / "cines").glob("examples_ybr_color_f*_seg.png"))) == 30
    assert _read_png(bundle_out / "clip_f0002_seg.png").shape == (48, 64)
    assert _read_png(bundle_out / "scan_seg.png").shape == png.shape

    # one code path: the bundle run and `usseg infer` write the same masks and the same per-frame figures
    bundle_files = sorted(p.relative_to(bundle_out) for p in bundle_out.rglob("*") if p.is_file())
    assert bundle_files == sorted(p.relative_to(cli_out) for p in cli_out.rglob("*") if p.is_file())
    for relative in bundle_files:
        if relative.suffix == ".png" or relative.name.endswith(".nii.gz"):
            first, second = bundle_out / relative, cli_out / relative
            assert first.read_bytes() == second.read_bytes(), relative
        elif relative.name.endswith("_inference.json"):
            bundle_record = json.loads((bundle_out / relative).read_text())
            cli_record = json.loads((cli_out / relative).read_text())
            assert bundle_record["frames"] == cli_record["frames"], relative


def test_bundle_inference_uses_its_own_network_and_names_weights_that_do_not_fit(weights: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_png(inputs / "scan.png")
    # the config's network, not a second copy built from the file: an override of network_def reaches the run
    with pytest.raises(RuntimeError) as info:  # MONAI wraps what the component raised: look down the chain
        _bundle_inference(inputs, tmp_path / "out", weights, **{"network_def#channels": [8, 16, 32, 64, 128]})
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    input_error = next(e for e in chain if isinstance(e, InputError))
    assert str(weights) in str(input_error) and "does not fit the network" in str(input_error)


def test_segmenter_with_a_given_network_matches_the_bundle_network(weights: Path, segmenter: Segmenter) -> None:
    parser = ConfigParser()
    parser.read_config(str(inference_config(bundle_root(BUNDLE))))
    parser["bundle_root"] = bundle_root(BUNDLE)
    network = parser.get_parsed_content("network_def")
    given = Segmenter(BUNDLE, weights, spatial_size=SIZE, batch_size=4, network=network)
    assert given._network is network
    frames = np.stack([_gradient(50, 70, seed) for seed in range(3)])
    np.testing.assert_allclose(given(frames), segmenter(frames), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"network": "unet"}, TypeError, "network must be a torch.nn.Module", id="network_not_module"),
        pytest.param({"num_classes": 0}, ValueError, "num_classes must be an integer >= 1, got 0", id="classes_0"),
    ],
)
def test_segmenter_network_arguments_are_validated(weights: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Segmenter(BUNDLE, weights, spatial_size=SIZE, **kwargs)


def test_infer_refuses_a_segmenter_of_another_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="segmenter must be a usseg.inference.Segmenter"):
        infer(tmp_path, output_dir=tmp_path / "out", segmenter=object(), progress=False)


def test_inference_sources(tmp_path: Path) -> None:
    from usseg.data.prepare import inference_sources

    scan = tmp_path / "scan.dcm"
    shutil.copy(get_testdata_file(RGB), scan)
    assert inference_sources(input_dir=scan) == [str(scan.resolve())]
    assert inference_sources(input_dir=tmp_path) == [str(tmp_path.resolve())]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "a.png"}, {"image": "b.png"}]}))
    assert inference_sources(datalist=datalist) == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    with pytest.raises(FileNotFoundError, match="missing"):
        inference_sources(input_dir=tmp_path / "missing")
