"""``wsi-fusion evaluate`` / :mod:`wsi_fusion.evaluation`: sampled-tile quality of a fused slide."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from helpers import run_cli
from scipy import ndimage
from skimage import data as skdata

from wsi_fusion.errors import PlaneMismatch, UnsupportedInput
from wsi_fusion.evaluation import (
    EXTRA_METRICS,
    SEAM,
    SEAM_PLANES,
    default_metrics,
    evaluate_slide,
    sample_tiles,
    seam_region,
    summarise,
)
from wsi_fusion.metrics import UnknownMetric
from wsi_fusion.metrics.contact_sheet import sheet_size
from wsi_fusion.synth import make_stack

SIZE = (256, 384)
#: Background columns on the right: no sampled tile may reach them.
BLANK_FROM = 288
#: Small tiles and plan keep the suite fast (metrics cost ~ tile area x planes).
FAST: dict[str, Any] = {"n_tiles": 3, "tile": 96, "plan_tile": 96, "plan_overlap": 32}


def write_ome_tiff(path: Path, image: npt.NDArray[np.uint8]) -> Path:
    """OME-TIFF, tiled and lossless: (Y, X, 3) one plane or (Z, Y, X, 3) a z-stack."""
    axes = "ZYXS" if image.ndim == 4 else "YXS"
    tifffile.imwrite(
        path,
        image,
        ome=True,
        metadata={"axes": axes},
        tile=(64, 64),
        compression="zlib",
        photometric="rgb",
    )
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-plane synthetic stack with ground truth, a blurred "fusion" and a mismatched stack."""
    root = tmp_path_factory.mktemp("evaluate")
    sharp = skdata.immunohistochemistry()[: SIZE[0], : SIZE[1]].copy()
    sharp[:, BLANK_FROM:] = 255  # glass: the tissue mask must keep sampled tiles off it
    stack = make_stack(sharp, 3, seed=3, sigma_per_plane=2.0)
    blurred = ndimage.gaussian_filter(stack.ground_truth, sigma=(2.0, 2.0, 0)).astype(np.uint8)
    return {
        "planes": write_ome_tiff(root / "planes.ome.tif", stack.planes),
        "gt": write_ome_tiff(root / "gt.ome.tif", stack.ground_truth),
        "blurred": write_ome_tiff(root / "blurred.ome.tif", blurred),
        "small_planes": write_ome_tiff(root / "small.ome.tif", stack.planes[:, :200]),
        "small_gt": write_ome_tiff(root / "small_gt.ome.tif", stack.ground_truth[:200]),
    }


def test_fused_equal_to_ground_truth(slide: dict[str, Path]) -> None:
    report = evaluate_slide(slide["gt"], [slide["planes"]], slide["gt"], **FAST)
    s = report.summary
    assert s["psnr"].mean == math.inf and s["psnr"].std == 0.0
    assert s["ssim"].mean == pytest.approx(1.0) and s["cc"].mean == pytest.approx(1.0)
    assert list(s) == [*default_metrics(True), *EXTRA_METRICS, SEAM, SEAM_PLANES]
    assert s["psnr"].n == len(report.boxes) == FAST["n_tiles"]
    # An all-in-focus image is as sharp as the sharpest plane and stays inside their envelope.
    assert 0.9 < s["focus_attainment"].median < 1.2 and s["halo"].mean < 0.01
    assert all(b.w == b.h == FAST["tile"] and b.x + b.w <= BLANK_FROM for b in report.boxes)
    # Block checks pooled over the tiles' textured blocks.
    blocks = report.blocks
    assert blocks["fidelity_n"] > 0 and blocks["attainment_n"] > 0
    assert -1.0 <= blocks["fidelity_p10"] <= blocks["fidelity_median"] <= 1.0
    assert blocks["attainment_p10"] <= blocks["attainment_median"]
    assert 0.0 <= blocks["attainment_outside"] <= 1.0
    assert "fidelity p10 / median" in report.table()


def test_blurred_fusion_scores_lower(slide: dict[str, Path]) -> None:
    sharp = evaluate_slide(slide["gt"], [slide["planes"]], metrics=["q_abf"], **FAST)
    blurred = evaluate_slide(slide["blurred"], [slide["planes"]], metrics=["q_abf"], **FAST)
    assert [b for b in sharp.boxes] == [b for b in blurred.boxes]  # same seed, same tiles
    assert blurred.summary["q_abf"].mean < sharp.summary["q_abf"].mean - 0.1
    assert blurred.summary["focus_attainment"].mean < 0.8 < sharp.summary["focus_attainment"].mean


def test_json_and_csv(slide: dict[str, Path], tmp_path: Path) -> None:
    report = evaluate_slide(slide["gt"], [slide["planes"]], slide["gt"], **FAST)
    loaded = json.loads(report.write_json(tmp_path / "q.json").read_text())  # strict JSON
    assert {
        "fused",
        "planes",
        "ground_truth",
        "shape",
        "tile",
        "seed",
        "n_tiles",
        "plan",
        "seam_box",
        "summary",
        "tiles",
    } <= set(loaded)
    assert loaded["summary"]["psnr"]["mean"] == "inf"
    assert set(loaded["summary"]["ssim"]) == {"mean", "std", "median", "min", "max", "n", "better"}
    assert len(loaded["tiles"]) == FAST["n_tiles"]
    assert {"y", "x", "h", "w", "psnr", "q_abf", "focus_attainment", "fidelity_p10"} <= set(
        loaded["tiles"][0]
    )
    assert loaded["blocks"]["fidelity_median"] is not None and loaded["contact_sheet"] is None
    with report.write_csv(tmp_path / "q.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["metric", "mean", "std", "median", "min", "max", "n", "better"]
    assert [r["metric"] for r in rows] == list(report.summary)
    assert float(rows[0]["mean"]) == math.inf


@pytest.mark.parametrize("which", ["planes", "gt"])
def test_size_mismatch(slide: dict[str, Path], which: str) -> None:
    planes = slide["small_planes"] if which == "planes" else slide["planes"]
    gt = slide["small_gt"] if which == "gt" else slide["gt"]
    with pytest.raises(PlaneMismatch, match="384 x 200") as err:
        evaluate_slide(slide["gt"], [planes], gt, **FAST)
    assert "384 x 256" in str(err.value) and ("small" in str(err.value))


def test_bad_metric_names(slide: dict[str, Path]) -> None:
    with pytest.raises(UnknownMetric, match="'nope'"):
        evaluate_slide(slide["gt"], [slide["planes"]], metrics=["nope"], **FAST)
    with pytest.raises(UnsupportedInput, match="psnr.*ground truth"):
        evaluate_slide(slide["gt"], [slide["planes"]], metrics=["psnr"], **FAST)
    with pytest.raises(UnsupportedInput, match="3 planes"):
        evaluate_slide(slide["planes"], [slide["planes"]], **FAST)


def test_sampling_is_seeded_and_avoids_glass() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[:, :100] = True  # tissue in the left half of a 1000 x 2000 slide
    draw = [sample_tiles(mask, (1000, 2000), 5, 200, seed=s) for s in (1, 1, 2)]
    assert draw[0] == draw[1] != draw[2]
    assert all(b.x + b.w <= 1000 for b in draw[0]) and len(set(draw[0])) == 5
    assert len(sample_tiles(mask, (1000, 2000), 100, 200)) == 25  # all tissue tiles
    with pytest.raises(UnsupportedInput):
        sample_tiles(mask, (1000, 2000), 0, 200)


def test_seam_region_lies_on_the_plan() -> None:
    mask = np.ones((50, 60), dtype=bool)
    box = seam_region(mask, (5000, 6000), 512, 128)
    assert (box.h, box.w) == (2 * 384 + 512,) * 2 and box.y % 384 == 0 and box.x % 384 == 0
    assert seam_region(mask, (700, 900), 512, 128) == seam_region(mask, (700, 900), 512, 128)
    assert (
        seam_region(mask, (700, 900), 512, 128).h,
        seam_region(mask, (700, 900), 512, 128).w,
    ) == (700, 900)


def test_summarise_nan_and_inf() -> None:
    s = summarise("psnr", [math.inf, math.inf, math.nan])
    assert (s.mean, s.std, s.n) == (math.inf, 0.0, 2)
    empty = summarise("halo", [math.nan])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.better == "lower"


def test_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    slide: dict[str, Path],
    tmp_path: Path,
) -> None:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        str(slide["blurred"]),
        "--planes",
        str(slide["planes"]),
        "--ground-truth",
        str(slide["gt"]),
        "--metrics",
        "psnr,q_abf",
        "--tiles",
        "2",
        "--tile",
        "96",
        "--plan-tile",
        "96",
        "--plan-overlap",
        "32",
        "--json",
        str(tmp_path / "q.json"),
        "--csv",
        str(tmp_path / "q.csv"),
        "-q",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.split()[:1] == ["metric"] and "mean ± std" in line for line in lines)
    for name in ("psnr", "q_abf", "focus_attainment", "halo", "seam"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert (tmp_path / "q.json").exists() and (tmp_path / "q.csv").exists()


def test_cli_mismatch_and_per_plane_files(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    slide: dict[str, Path],
    tmp_path: Path,
) -> None:
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        str(slide["gt"]),
        "--planes",
        str(slide["small_planes"]),
    )
    assert code == 1 and "small.ome.tif" in err and "384 x 200" in err
    # One file per plane after a single --planes.
    planes = tifffile.imread(slide["planes"])
    files = [str(write_ome_tiff(tmp_path / f"z{k}.ome.tif", p)) for k, p in enumerate(planes)]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        str(slide["gt"]),
        "--planes",
        *files,
        "--metrics",
        "q_abf",
        "--tiles",
        "1",
        "--tile",
        "96",
        "-q",
    )
    assert code == 0, err
    assert "q_abf" in out


def test_planes_are_registered_like_the_fusion(tmp_path: Path) -> None:
    # Planes drift by up to 2.5 px; the "fusion" is the ground truth, aligned with the middle
    # plane, as wsi-fusion fuse's registered output is.
    sharp = skdata.immunohistochemistry()[: SIZE[0], : SIZE[1]].copy()
    drift = ((2.5, -1.5), (0.0, 0.0), (-2.0, 1.5))
    stack = make_stack(sharp, 3, seed=3, sigma_per_plane=2.0, drift=drift)
    planes = write_ome_tiff(tmp_path / "planes.ome.tif", stack.planes)
    fused = write_ome_tiff(tmp_path / "fused.ome.tif", stack.ground_truth)
    fast = {**FAST, "metrics": ["q_abf"]}

    raw = evaluate_slide(fused, [planes], register="off", **fast)
    assert raw.registration == {"mode": "off", "applied": False}
    # No run.json: the drift is measured on the planes and, being > 0.5 px, applied.
    auto = evaluate_slide(fused, [planes], **fast)
    reg = auto.registration
    assert reg["applied"] and reg["source"] == "measured" and reg["reference_plane"] == 1
    assert reg["max_abs_px"] == pytest.approx(2.5, abs=0.5)  # largest node; global: 2.5 exactly
    assert auto.summary["q_abf"].mean > raw.summary["q_abf"].mean + 0.02
    assert json.loads(json.dumps(auto.to_dict()))["registration"]["source"] == "measured"

    # With a run.json, auto follows the fusion: it did not register, so neither does evaluate.
    from wsi_fusion.io.readers import open_stack
    from wsi_fusion.registration import estimate_drift

    with open_stack([planes]) as opened:
        field = estimate_drift(opened, reference=1)
    run_json = {
        "config": {"tile": 96, "overlap": 32},
        "registration": {"mode": "auto", "applied": False, "drift": field.to_json()},
    }
    Path(str(fused) + ".run.json").write_text(json.dumps(run_json))
    followed = evaluate_slide(fused, [planes], **fast)
    assert followed.registration["source"] == "run.json"
    assert not followed.registration["applied"]
    assert followed.summary["q_abf"].mean == pytest.approx(raw.summary["q_abf"].mean)
    forced = evaluate_slide(fused, [planes], register="on", **fast)
    assert forced.registration["applied"] and forced.registration["source"] == "run.json"
    assert forced.summary["q_abf"].mean == pytest.approx(auto.summary["q_abf"].mean, abs=0.01)


def test_contact_sheet_shows_the_patch(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A fusion that is the sharp plane except one 64 px block taken from a defocused plane."""
    import imageio.v3 as iio

    sharp = skdata.immunohistochemistry()[:256, :256].copy()
    far = ndimage.gaussian_filter(sharp.astype(np.float64), (3.0, 3.0, 0)) * 0.85 + 20
    near = ndimage.gaussian_filter(sharp, (1.5, 1.5, 0))
    planes = np.stack([far.astype(np.uint8), sharp, near])
    fused = sharp.copy()
    fused[64:128, 128:192] = planes[0, 64:128, 128:192]
    stack = write_ome_tiff(tmp_path / "planes.ome.tif", planes)
    fused_path = write_ome_tiff(tmp_path / "fused.ome.tif", fused)
    sheet = tmp_path / "worst.png"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        str(fused_path),
        "--planes",
        str(stack),
        "--metrics",
        "q_avg",
        "--tiles",
        "4",
        "--tile",
        "128",
        "--register",
        "off",
        "--contact-sheet",
        str(sheet),
        "--worst",
        "2",
        "-q",
    )
    assert code == 0, err
    assert "fidelity p10 / median" in out and f"wrote {sheet}" in out
    listed = json.loads((tmp_path / "worst.png.json").read_text())
    rows = listed["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds[:2] == ["fidelity", "fidelity"] and kinds[2] == "attainment" and len(rows) <= 4
    for first in (rows[0], rows[2]):  # the worst block of each kind is the patch
        assert first["box"] == {"y": 64, "x": 128, "h": 64, "w": 64} and first["plane"] == 1
    assert rows[0]["score"] < 0.8 < rows[1]["score"]
    image = iio.imread(sheet)
    assert image.shape == (*sheet_size(len(rows)), 3)


def _workflow() -> Any:
    """``workflows/evaluate.py`` as a module (workflows/ is not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "workflows" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("workflows_evaluate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_workflow_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    wf = _workflow()
    args = wf.parse_args(
        ["--stacks", "wbc,algae", "--fusers", "focus_measure,plane", "--crop", "1024"]
    )
    assert (args.stacks, args.fusers, args.crop) == (
        ["wbc", "algae"],
        ["focus_measure", "plane"],
        1024,
    )
    assert args.contact_sheet is None and args.worst == 8
    default = wf.parse_args([])
    assert default.stacks is None and default.fusers is None
    assert wf.parse_args(["--fusers", "gacn", "acnn,plane"]).fusers == ["gacn", "acnn", "plane"]
    sheet = wf.parse_args(["--contact-sheet", "out/w.png", "--worst", "4"])
    assert (sheet.contact_sheet, sheet.worst) == (Path("out/w.png"), 4)
    assert set(wf.STACK_NAMES) == {
        "synthetic",
        "wbc",
        "algae",
        "smear",
        "unstained",
        "pseudoscorpion",
        "skeleton",
    }
    with pytest.raises(SystemExit):
        wf.parse_args(["--stacks", "wbc,nope"])
    assert "unknown stack nope; choose from synthetic, wbc" in capsys.readouterr().err
    for bad in (["--stacks", ","], ["--crop", "8"], ["--worst", "0"]):
        with pytest.raises(SystemExit):
            wf.parse_args(bad)
    name = wf.sheet_path(Path("out/w.png"), "wbc", "cgan_blurmask (few planes: 0, ±1)").name
    assert name.startswith("w.wbc.cgan_blurmask") and name.endswith(".png") and " " not in name
    # Without ../shared/data every real stack is skipped, not an error.
    wf.SHARED = tmp_path
    assert wf.real_stacks(256, ["wbc", "unstained"]) == {}
    assert "skipping real stack wbc" in capsys.readouterr().out


def test_workflow_oracle_and_its_gaps() -> None:
    wf = _workflow()
    planes = np.stack([np.full((2, 3, 3), v, dtype=np.uint8) for v in (10, 20, 30)])
    focus_index = np.array([[0, 1, 2], [2, 2, 0]], dtype=np.uint8)
    assert wf.oracle_fusion(planes, focus_index)[..., 0].tolist() == [[10, 20, 30], [30, 30, 10]]
    synthetic = {
        "a": {"focus_measure": {"psnr": 39.8}, wf.ORACLE: {"psnr": 40.0}},
        "b": {"focus_measure": {"psnr": 39.5}, wf.ORACLE: {"psnr": 40.0}},
    }
    rows = {line.split(" | ")[0]: line for line in wf.oracle_gap_lines({"synthetic": synthetic})}
    # Per stack 0.2 and 0.5 dB under the oracle: the largest gap, one stack over 0.3 dB.
    assert rows["| focus_measure"] == "| focus_measure | 39.80 | 39.50 | 0.50 | 1 |"
    assert rows[f"| {wf.ORACLE}"].endswith("| 40.00 | 40.00 | – | – |")
