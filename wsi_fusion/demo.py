"""The built-in demo: a synthetic 5-plane z-stack made from a real H&E region, fused end to end.

Used by ``make demo`` / ``wsi-fusion demo``. It writes the stack (OME-TIFF with Z), fuses it into
an OME-Zarr (with the focus map) and an OME-TIFF that share one tile cache, and reports the PSNR
of the fused slide and of each input plane against the known ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import zarr
from skimage.metrics import peak_signal_noise_ratio

from wsi_fusion.config import RunConfig
from wsi_fusion.pipeline import ProgressReporter, fuse_slide


def run_demo(
    out_dir: Path, *, fuser: str = "focus_measure", progress: ProgressReporter | None = None
) -> list[str]:
    """Run the demo into ``out_dir``; return the summary lines to print."""
    from wsi_fusion.synth.demo import make_demo_stack

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stack_dir = out_dir / "stack"
    if not (stack_dir / "stack.ome.tif").exists():
        make_demo_stack(stack_dir, forms=("ome-tiff",))
    stack = stack_dir / "stack.ome.tif"
    config = RunConfig(fuser=fuser, focus_map=True)
    cache = out_dir / "fused.cache"
    zarr_out = out_dir / "fused.ome.zarr"
    tiff_out = out_dir / "fused.ome.tif"
    first = fuse_slide(
        [stack],
        zarr_out,
        config,
        overwrite=True,
        keep_cache=True,
        cache_dir=cache,
        progress=progress,
    )
    # Same inputs and settings: the second run takes every fused tile from the cache.
    fuse_slide([stack], tiff_out, config, overwrite=True, cache_dir=cache, progress=progress)

    truth = tifffile.imread(stack_dir / "ground_truth.tif")
    true_focus = tifffile.imread(stack_dir / "focus_index.tif").astype(np.intp)
    fused = np.asarray(zarr.open_group(zarr_out, mode="r")["0"]).transpose(1, 2, 0)
    with tifffile.TiffFile(stack) as tif:
        planes = tif.series[0].asarray()
    plane_psnr = [peak_signal_noise_ratio(truth, p) for p in planes]
    best = int(np.argmax(plane_psnr))
    fused_psnr = peak_signal_noise_ratio(truth, fused)
    # The best any plane-selecting fuser can do: the true in-focus plane at every pixel (the
    # planes are stored as JPEG, which caps it).
    oracle = np.take_along_axis(planes, true_focus[None, :, :, None], axis=0)[0]
    oracle_psnr = peak_signal_noise_ratio(truth, oracle)
    return [
        f"demo stack:  {stack} ({len(planes)} planes, {truth.shape[1]}x{truth.shape[0]} px)",
        f"fused:       {zarr_out} (OME-Zarr, focus map in labels/focus_map)",
        f"             {tiff_out} (pyramidal OME-TIFF)",
        f"provenance:  {first.run_json}",
        "PSNR vs ground truth: planes "
        + ", ".join(f"z{k} {v:.1f} dB" for k, v in enumerate(plane_psnr))
        + f"; fused ({fuser}) {fused_psnr:.1f} dB, "
        f"{fused_psnr - plane_psnr[best]:+.1f} dB over the best plane "
        f"(true focus plane per pixel: {oracle_psnr:.1f} dB)",
        "open the OME-Zarr in napari (napari-ome-zarr plugin) or QuPath, the OME-TIFF in QuPath",
    ]
