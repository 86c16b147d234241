"""How each tool is run: one command line per (tool, method), each in its own process.

Every runner reads the case's plane files and writes one output file; the benchmark times the
whole process (start-up, decoding, fusion, encoding), as a user running the tool would see it.

Settings: each tool's defaults, except

* alignment off on the synthetic stacks, which have no drift (a tool that aligns anyway —
  focusstacker always runs SIFT — pays for it);
* output geometry kept (focusweave ``--keep-size``) so that every output can be compared pixel by
  pixel with the ground truth and the planes;
* a lossless output format where the tool offers one (focusstacker writes only JPEG, quality 100);
* enfuse, a general exposure blender, gets the focus-stacking recipe from its manual
  (contrast weight only, hard mask).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stacks import StackCase

ROOT = Path(__file__).resolve().parents[2]
BENCH_ENV = ROOT / ".bench-venv" / "bin"
OUR_ENV = ROOT / ".venv" / "bin"
RUN_OURS = Path(__file__).resolve().parent / "run_ours.py"
RUN_FOCUSSTACKER = Path(__file__).resolve().parent / "run_focusstacker.py"
RUN_BEST_PLANE = Path(__file__).resolve().parent / "run_best_plane.py"

Argv = Callable[[StackCase, list[str], Path], list[str]]


@dataclass(frozen=True)
class Runner:
    """One (tool, method) configuration of the benchmark."""

    #: Row label, "tool: method".
    label: str
    tool: str
    #: Output file suffix (decides the format the tool writes).
    suffix: str
    argv: Argv
    #: True for this package's own fusers.
    ours: bool = False
    #: Largest stack (megapixels) to give it in the default run (keeps the run under ~20 min).
    max_mpx: float = 1e9
    #: The same with ``--all`` (only what would take far too long is left out).
    max_mpx_all: float = 1e9
    #: Most timed runs on the small stacks (slow tools run once).
    max_repeats: int = 3
    #: Plane files it needs: "any" (PNG or the original JPEGs) or "jpeg" (JPEG only).
    input_kind: str = "any"

    def command(self, case: StackCase, planes: list[str], output: Path) -> list[str]:
        return self.argv(case, planes, output)

    def shell(self, case: StackCase, planes: list[str], output: Path) -> str:
        """The command as one would type it (for docs/PEERS.md)."""
        return shlex.join(self.command(case, planes, output))


def _ours(fuser: str, max_mpx: float = 1e9, label: str | None = None) -> Runner:
    return Runner(
        max_mpx=max_mpx,
        label=label or f"wsi_fusion: {fuser}",
        tool="wsi_fusion",
        suffix=".png",
        ours=True,
        argv=lambda case, planes, out: (
            [str(OUR_ENV / "python"), str(RUN_OURS), fuser, str(out)] + planes
        ),
    )


def _ours_cli(case: StackCase, planes: list[str], out: Path) -> list[str]:
    # The whole pipeline: tiling, tissue detection, registration (auto), pyramid, lossless OME-TIFF.
    # Stacks whose planes must not be registered by phase correlation (the unstained cells)
    # run with registration off, as a user told so by the data's README would.
    # Stacks saved out of focal order (a focus sweep through focus and back) run with
    # ``--plane-order similarity`` for the same reason.
    register = ["--register", "off"] if case.notes.get("register") is False else []
    order = ["--plane-order", "similarity"] if case.notes.get("plane_order") == "similarity" else []
    return [str(OUR_ENV / "wsi-fusion"), "fuse", *planes, "-o", str(out)] + [
        "--lossless",
        "--overwrite",
        "--quiet",
        *register,
        *order,
    ]


def _openfocus(
    method: str, max_mpx: float = 1e9, max_repeats: int = 3, max_mpx_all: float = 1e9
) -> Runner:
    def argv(case: StackCase, planes: list[str], out: Path) -> list[str]:
        # openfocus aligns only when asked (default --align none), so no flag differs by case.
        return [str(BENCH_ENV / "openfocus"), "-i", *planes, "-o", str(out), "-m", method]

    return Runner(
        label=f"openfocus: {method}",
        tool="openfocus",
        suffix=".png",
        argv=argv,
        max_mpx=max_mpx,
        max_repeats=max_repeats,
        max_mpx_all=max_mpx_all,
    )


def _focusweave(case: StackCase, planes: list[str], out: Path) -> list[str]:
    # focusweave takes a folder: the case's plane folder holds nothing but the planes.
    folder = str(Path(planes[0]).parent)
    align = ["--no-align"] if case.kind == "synthetic" else []
    return [str(BENCH_ENV / "focusweave"), folder, "--output", str(out), "--keep-size", *align]


def _rawhdr(command: str, max_mpx: float = 1e9) -> Runner:
    return Runner(
        max_mpx=max_mpx,
        label=f"rawhdr: {command}",
        tool="rawhdr",
        suffix=".tif",  # its PNG writer fails on 16-bit RGB with Pillow >= 11; TIFF is float32
        argv=lambda case, planes, out: (
            [str(BENCH_ENV / "rawhdr"), command, "-o", str(out)] + planes
        ),
    )


def _enfuse(case: StackCase, planes: list[str], out: Path) -> list[str]:
    return [
        "enfuse",
        "--exposure-weight=0",
        "--saturation-weight=0",
        "--contrast-weight=1",
        "--hard-mask",
        "--contrast-window-size=5",
        "--output",
        str(out),
        *planes,
    ]


def _focusstacker(case: StackCase, planes: list[str], out: Path) -> list[str]:
    return [str(BENCH_ENV / "python"), str(RUN_FOCUSSTACKER), str(out), *planes]


#: Every configuration, ours first. The CLI row runs only on the real stacks (see bench_peers).
#: In the default run, ``max_mpx`` keeps the slow or secondary configurations off the big stacks
#: so that the whole run fits in ~20 minutes on a busy 2-core machine; every tool keeps its best
#: (or only) method on every stack. ``--all`` lifts these limits.
SMALL = 2.5
BIG = 5.0
RUNNERS: list[Runner] = [
    # Baseline: the middle plane copied, no fusion (what a viewer of one plane sees).
    _ours("plane", label="baseline: middle plane"),
    # Baseline: the sharpest plane by mean gradient energy, copied (what an autofocus keeps).
    Runner(
        label="baseline: best single plane",
        tool="wsi_fusion",
        suffix=".png",
        ours=True,
        argv=lambda case, planes, out: (
            [str(OUR_ENV / "python"), str(RUN_BEST_PLANE), str(out)] + planes
        ),
    ),
    _ours("focus_measure"),
    _ours("laplacian_pyramid", max_mpx=BIG),
    _ours("wavelet", max_mpx=SMALL),
    Runner(
        label="wsi-fusion fuse (CLI)",
        tool="wsi_fusion",
        suffix=".ome.tif",
        ours=True,
        argv=_ours_cli,
    ),
    _openfocus("openfocus_b", max_mpx=SMALL),
    _openfocus("openfocus_c"),
    _openfocus("dct"),
    _openfocus("guided_filter", max_mpx=SMALL),
    # The default method: a neural network on the CPU, ~40 s per Mpx here.
    _openfocus("stackmffv3", max_mpx=1.1, max_repeats=1, max_mpx_all=BIG),
    Runner(label="focusweave", tool="focusweave", suffix=".png", argv=_focusweave),
    _rawhdr("pyramid-fusion"),
    _rawhdr("focus-fusion", max_mpx=SMALL),
    Runner(label="enfuse: contrast, hard mask", tool="enfuse", suffix=".tif", argv=_enfuse),
    Runner(
        label="focusstacker",
        tool="focusstacker",
        suffix=".jpg",
        argv=_focusstacker,
        input_kind="jpeg",
        max_mpx=SMALL,
        max_mpx_all=BIG,
        max_repeats=1,
    ),
]
