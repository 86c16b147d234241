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
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

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
) -> tuple[FloatImage, FloatImage]:
    """m-SegNet / blur-mask recipe: regions replaced by a blurred copy.

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
    return degrade(out, rng, noise), mask


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
    n: int = 6, size: int = 512, n_planes: int = 5, seed: int = 1001, noise: float = 0.005
) -> list[tuple[str, SynthStack]]:
    """The held-out evaluation set: ``n`` stacks from the held-out images, default defocus model.

    Half the stacks come from the held-out H&E rows, half from the IHC image; the synthesis
    uses the default :class:`~wsi_fusion.synth.SynthParams` (as ``wsi-fusion synth``) with mild
    noise so fusers that amplify noise are not flattered. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    sources = heldout_sources()
    names: Sequence[str] = list(sources)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        crop = random_crop(sources[name], size, rng, min_tissue=0.6, tries=30)
        stack_seed = seed + i
        out.append(
            (f"{name}_{stack_seed}", make_stack(crop, n_planes, seed=stack_seed, noise_sigma=noise))
        )
    return out
