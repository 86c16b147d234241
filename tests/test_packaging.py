"""The shipped weights and configs: found in a checkout, inside an installed wheel, and shipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_fusion import _resources
from wsi_fusion.config import load_config, shipped_config
from wsi_fusion.fusers import fuser_class, list_fusers
from wsi_fusion.fusers._weights import WEIGHTS_ENV, models_dir

REPO = Path(__file__).resolve().parents[1]
#: What a wheel is built from (setup.py copies models/ and configs/ into the package).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "wsi_fusion")


def _learned_fusers() -> list[str]:
    return [n for n in list_fusers() if getattr(fuser_class(n), "weights_record", None)]


def test_checkout_resolves_the_repository_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert models_dir() == REPO / "models"
    assert _resources.shipped_configs_dir() == REPO / "configs"


def test_packaged_folders_win_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site-packages" / "wsi_fusion"
    (package / "_models").mkdir(parents=True)
    (package / "_configs").mkdir()
    monkeypatch.setattr(_resources, "_PACKAGE", package)
    monkeypatch.setattr(_resources, "_REPO", tmp_path / "site-packages")  # no models/ there
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert models_dir() == package / "_models"
    assert _resources.shipped_configs_dir() == package / "_configs"
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "mine"))
    assert models_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    "name", ["lossless-focus-map", "lossless-focus-map.yaml", "configs/lossless-focus-map.yaml"]
)
def test_shipped_config_by_name_from_any_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert shipped_config(name) == REPO / "configs" / "lossless-focus-map.yaml"
    config = load_config(name)
    assert config.focus_map and config.compression == "deflate"


def test_a_local_config_file_wins_over_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default.yaml").write_text("tile: 256\noverlap: 64\n")
    assert load_config("default.yaml").tile == 256
    assert shipped_config("elsewhere/default.yaml") == Path("elsewhere/default.yaml")


def test_wheel_ships_weights_and_configs_and_finds_them_installed(tmp_path: Path) -> None:
    """Build the wheel from the working tree, check its contents, run it from outside the repo.

    Issue 12's target, so it is in the default run (CI): 20-35 s here."""
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS + ("models", "configs"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(dist)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("wsi_fusion-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for folder, packaged in (("models", "_models"), ("configs", "_configs")):
            tracked = [
                p
                for p in (REPO / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
            assert tracked
            for path in tracked:
                member = f"wsi_fusion/{packaged}/{path.relative_to(REPO / folder).as_posix()}"
                assert member in names, f"{member} missing from the wheel"
                assert zf.read(member) == path.read_bytes()
    # A fresh venv outside the repository with the wheel pip-installed; its dependencies come
    # from this environment through a .pth line (offline; the editable install's own .pth is
    # not processed there, so only the installed wheel provides wsi_fusion).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "_test_deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in (WEIGHTS_ENV, "PYTHONPATH")}
    exe = str(venv / "bin" / "wsi-fusion")
    run = subprocess.run(
        [exe, "fusers"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    lines = {line.split("\t")[0]: line for line in run.stdout.splitlines()}
    learned = _learned_fusers()
    assert learned
    for name in learned:
        assert "\tpresent (" in lines[name], lines[name]
        assert str(site / "wsi_fusion" / "_models") in lines[name]

    # Every learned fuser loads its packaged weights (sha256 checked) and fuses, from a shipped
    # config found by name.
    code = (
        "import numpy as np, wsi_fusion; from wsi_fusion.config import load_config; "
        "assert load_config('lossless-focus-map').focus_map; "
        "stack = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8); "
        f"[print(n, wsi_fusion.fuse_array(stack, n).shape) for n in {learned!r}]; "
        "print(wsi_fusion.__file__)"
    )
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    for name in learned:
        assert f"{name} (96, 96, 3)" in run.stdout, run.stdout + run.stderr
    assert run.stdout.strip().endswith(str(site / "wsi_fusion" / "__init__.py"))

    # The command line of the target: wsi-fusion fuse ... --fuser gacn.
    rng = np.random.default_rng(1)
    planes = []
    for z in range(3):
        planes.append(tmp_path / f"plane_{z}.png")
        Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(planes[-1])
    out = tmp_path / "fused.ome.tif"
    run = subprocess.run(
        [exe, "fuse", *map(str, planes), "-o", str(out), "--fuser", "gacn", "--no-tissue"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert record["fuser"]["name"] == "gacn" and record["fuser"]["weights"]["pinned"] is True
