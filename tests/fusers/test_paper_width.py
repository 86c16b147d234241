"""``width: paper``: every learned fuser loads the weights the GPU run's ``h100-8min`` preset
trains (``workflows/gpu_run.sh``).

Each network is built from the preset's own run config, the way its training code builds it, and
saved (random init, fp16) as the training does; the fuser must load that file with
``width: paper`` (by ``weights: PATH``, or from the preset's ``output`` path when none is given)
and fuse with it. A file of the other width is refused with an error that names the width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FloatArray, depth_map, focal_stack
from learned_checks import one_torch_thread  # noqa: F401 (fixture)
from scipy import ndimage as ndi

from wsi_fusion.errors import WeightsError
from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers._torch import TorchFuser
from wsi_fusion.fusers._weights import WEIGHTS_ENV, save_weights

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
PRESET = "h100-8min"


def _msegnet(preset: str | None) -> Any:
    from wsi_fusion.nets.msegnet import build_msegnet
    from wsi_fusion.training.msegnet import MSegNetTrainConfig

    cfg = _config("train_msegnet.yaml", MSegNetTrainConfig, preset)
    return cfg, build_msegnet(cfg.widths, cfg.blocks)  # training.msegnet.train


def _acnn(preset: str | None) -> Any:
    from wsi_fusion.nets.acnn import ACNN
    from wsi_fusion.training.acnn import WIDTHS, ACNNTrainConfig

    cfg = _config("train_acnn.yaml", ACNNTrainConfig, preset)
    return cfg, ACNN(WIDTHS[cfg.width])  # training.acnn.train


def _gacn(preset: str | None) -> Any:
    from wsi_fusion.nets.gacn import GACN, PAPER, SMALL
    from wsi_fusion.training.gacn import GACNTrainConfig

    cfg = _config("train_gacn.yaml", GACNTrainConfig, preset)
    return cfg, GACN(SMALL if cfg.width == "small" else PAPER)  # training.gacn.train


def _fmb_net(preset: str | None) -> Any:
    from wsi_fusion.nets.fmb_net import FmbNet
    from wsi_fusion.training.fmb_net import FmbTrainConfig

    cfg = _config("train_fmb_net.yaml", FmbTrainConfig, preset)
    return cfg, FmbNet(cfg.width, step=cfg.step, prior=cfg.prior)  # training.fmb_net


def _cgan(mode: str) -> Callable[[str | None], Any]:
    def build(preset: str | None) -> Any:
        from wsi_fusion.nets.cgan_blurmask import DenseUNetGenerator
        from wsi_fusion.training.cgan_blurmask import CganTrainConfig

        cfg = _config(f"train_cgan_{mode}.yaml", CganTrainConfig, preset)
        n_planes = 1 if cfg.mode == "single" else 3  # training.cgan_blurmask.train_cgan
        return cfg, DenseUNetGenerator(n_planes, cfg.width, gated=cfg.gated)

    return build


def _config(name: str, model: Any, preset: str | None) -> Any:
    from wsi_fusion.training.config import load_train_config

    return load_train_config(ROOT / "configs" / name, model, preset=preset, dry_run=False)


#: (fuser, its parameters, the network as the preset's training builds it)
CASES = {
    "msegnet": ("msegnet", {}, _msegnet),
    "acnn": ("acnn", {}, _acnn),
    "gacn": ("gacn", {}, _gacn),
    "fmb_net": ("fmb_net", {}, _fmb_net),
    "cgan_single": ("cgan_blurmask", {"mode": "single"}, _cgan("single")),
    "cgan_few": ("cgan_blurmask", {"mode": "few"}, _cgan("few")),
}


def _fuser(case: str, **params: Any) -> TorchFuser:
    name, own, _ = CASES[case]
    fuser = create_fuser(name, **{"device": "cpu", **own, **params})
    assert isinstance(fuser, TorchFuser)
    return fuser


def _save(case: str, preset: str | None, path: Path) -> str:
    """The network of ``case`` as the run config (with ``preset``) trains it, random, saved as
    the training saves it (fp16 safetensors); its sha256."""
    torch.manual_seed(0)
    _, net = CASES[case][2](preset)
    return save_weights(net, path)


def _needs_shipped_bm(case: str) -> None:
    """The paper-width cGAN runs behind the shipped lite BM (absent in a partial checkout)."""
    if CASES[case][0] == "cgan_blurmask":
        from wsi_fusion.fusers.cgan_blurmask import CganBlurMaskFuser

        if CganBlurMaskFuser.weights_status() != "present":
            pytest.skip(f"shipped cgan_blurmask weights {CganBlurMaskFuser.weights_status()}")


@pytest.fixture(scope="module")
def stack() -> FloatArray:
    """3 planes of 64 x 64 px with structure (no blank-tile shortcut); numpy/scipy only, so the
    GPU machine's image runs it too."""
    noise = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    sharp = np.clip(ndi.gaussian_filter(noise, (0, 1, 1)) * 2 - 0.5, 0, 1).astype(np.float32)
    return focal_stack(sharp, depth_map(sharp.shape[1:], n_planes=3), n_planes=3)


@pytest.mark.parametrize("case", list(CASES))
def test_preset_output_is_where_the_fuser_looks(case: str) -> None:
    cfg, _ = CASES[case][2](PRESET)
    assert cfg.output == f"models/{_fuser(case, width='paper').paper_weights_file()}"


@pytest.mark.parametrize("case", list(CASES))
def test_paper_weights_load_and_fuse(case: str, stack: FloatArray, tmp_path: Path) -> None:
    _needs_shipped_bm(case)
    path = tmp_path / "trained.safetensors"
    sha = _save(case, PRESET, path)
    fuser = _fuser(case, width="paper", weights=str(path))
    out = fuser.fuse(stack)
    assert out.fused.shape == stack.shape[1:]
    assert out.fused.dtype == np.float32 and np.isfinite(out.fused).all()
    weights = fuser.describe()["weights"]
    assert weights["sha256"] == sha and weights["pinned"] is False
    assert weights["model"].endswith(".paper")
    if CASES[case][0] == "cgan_blurmask":  # only the mode's generator is built
        mode = CASES[case][1]["mode"]
        built = {name for name in ("single", "few") if name in fuser.model._modules}
        assert built == {mode}
    # The recorded hash is what the pipeline hands every worker: it loads that file only.
    assert _fuser(case, width="paper", weights=str(path), weights_sha256=sha).model is not None


@pytest.fixture
def weights_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty ``$WSI_FUSION_WEIGHTS`` folder holding only the shipped cGAN file (its BM)."""
    from wsi_fusion._resources import shipped_models_dir
    from wsi_fusion.fusers.cgan_blurmask import CganBlurMaskFuser

    folder = tmp_path / "models"
    record = CganBlurMaskFuser.weights_record
    shipped = shipped_models_dir() / record.file
    if shipped.is_file():
        (folder / record.file).parent.mkdir(parents=True)
        (folder / record.file).symlink_to(shipped)
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    yield folder


@pytest.mark.parametrize("case", list(CASES))
def test_without_weights_the_preset_output_is_loaded(case: str, weights_folder: Path) -> None:
    _needs_shipped_bm(case)
    fuser = _fuser(case, width="paper")
    target = weights_folder / fuser.paper_weights_file()
    with pytest.raises(WeightsError, match="gpu_run.sh") as info:
        _ = fuser.model
    assert str(target) in str(info.value) and "weights=PATH" in str(info.value)
    sha = _save(case, PRESET, target)
    fuser = _fuser(case, width="paper")
    assert fuser.model is not None
    assert fuser.describe()["weights"]["sha256"] == sha


@pytest.mark.parametrize("case", list(CASES))
def test_a_file_of_the_other_width_names_the_width(case: str, tmp_path: Path) -> None:
    _needs_shipped_bm(case)
    lite, paper = tmp_path / "lite.safetensors", tmp_path / "paper.safetensors"
    _save(case, None, lite)  # the base run config: the shipped width
    _save(case, PRESET, paper)
    with pytest.raises(WeightsError, match="do not fit") as info:
        _ = _fuser(case, width="paper", weights=str(lite)).model
    assert "width 'paper'" in str(info.value) and "lite.safetensors" in str(info.value)
    if CASES[case][0] == "cgan_blurmask":
        return  # a bare generator is not the packed file that width lite loads (tested above)
    with pytest.raises(WeightsError, match="do not fit") as info:
        _ = _fuser(case, weights=str(paper)).model
    assert "needs width 'paper'" in str(info.value)


def test_paper_cgan_records_the_shipped_bm(tmp_path: Path) -> None:
    _needs_shipped_bm("cgan_single")
    from wsi_fusion.fusers.cgan_blurmask import CganBlurMaskFuser

    path = tmp_path / "g.safetensors"
    _save("cgan_single", PRESET, path)
    described = _fuser("cgan_single", width="paper", weights=str(path)).describe()
    record = CganBlurMaskFuser.weights_record
    assert described["blurmask"]["sha256"] == record.sha256
    assert described["blurmask"]["pinned"] is True


def test_margin_uses_the_width() -> None:
    from wsi_fusion.nets.msegnet import MSegNetConfig, receptive_halo

    lite, paper = (
        _fuser("msegnet", depth_radius=0),
        _fuser("msegnet", depth_radius=0, width="paper"),
    )
    assert paper.widths == (32, 64, 128, 256)
    assert paper.margin == receptive_halo(MSegNetConfig(widths=paper.widths, blocks=1))
    assert lite.margin == receptive_halo(MSegNetConfig(widths=lite.widths, blocks=1))


@pytest.mark.gpu
def test_paper_widths_fuse_on_cuda(stack: FloatArray, tmp_path: Path) -> None:
    """On the GPU machine (``gpu_run.sh`` step 2): each paper-width network, as the preset
    trains it, loads and fuses on CUDA under bf16 autocast, as a user of the run's weights would.
    """
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from wsi_fusion.fusers.cgan_blurmask import CganBlurMaskFuser

    for case, (name, _, _) in CASES.items():
        if name == "cgan_blurmask" and CganBlurMaskFuser.weights_status() != "present":
            continue
        path = tmp_path / f"{case}.safetensors"
        _save(case, PRESET, path)
        fuser = _fuser(case, width="paper", weights=str(path), device="cuda", precision="bf16")
        out = fuser.fuse_batch([stack, stack])
        assert all(r.fused.shape == stack.shape[1:] for r in out), case
        assert all(np.isfinite(r.fused).all() for r in out), case
