"""MRXS (3DHISTECH/MIRAX) focal planes: detected from ``Slidedat.ini`` and refused with the route.

OpenSlide, the only MRXS reader here, has no focal-plane API: it reads the slide's zoom-level
hierarchy and gives one plane of a z-stack without saying so. A MIRAX slide declares its focal
planes in ``Slidedat.ini``: section ``[HIERARCHICAL]`` lists the hierarchies ``HIER_<i>_NAME``;
the one named ``Microscope focus level`` has ``HIER_<i>_COUNT`` values ``HIER_<i>_VAL_<j>``,
``ExtFocusLevel`` (the scanner's own extended-focus image, not a focal plane) and one
``ZStackLevel_(<k>)`` per plane, each with a section (``HIER_<i>_VAL_<j>_SECTION``) whose
``OFFSET_IN_MICROMETERS`` is the plane's depth. Names as in OpenSlide's MIRAX format notes and
Glencoe Software's bioformats2raw ``MiraxReader``, which reads those planes.

So a single ``.mrxs`` with two or more ``ZStackLevel`` values is refused before OpenSlide opens
it, naming the routes that do give every plane (:data:`ROUTE`).
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from wsi_fusion.errors import UnsupportedInput

logger = logging.getLogger(__name__)

#: Name of the hierarchy that holds the focal planes.
FOCUS_HIERARCHY = "Microscope focus level"
#: OpenSlide refuses a larger Slidedat.ini too (1 MiB); a little room for odd files.
_MAX_INI_BYTES = 4 << 20
_ZSTACK_VALUE = re.compile(r"^ZStackLevel_?\(?([+-]?\d+)\)?$", re.IGNORECASE)

#: What to do instead, named in the refusal and in docs/OUTPUTS.md ("MRXS z-stacks").
ROUTE = (
    "OpenSlide reads only one of them, so this file cannot be fused as it is. Either export "
    "each focal plane to its own slide file with 3DHISTECH's software and pass those files in "
    "focal order (wsi-fusion fuse plane_1 ... plane_N), or convert the slide with "
    "bioformats2raw (its MiraxReader reads MRXS focal planes) and pass the OME-Zarr it writes; "
    "'wsi-fusion info' shows how many planes an input holds. See docs/OUTPUTS.md, "
    "'MRXS z-stacks'."
)


@dataclass(frozen=True)
class MiraxFocus:
    """Focal planes a ``Slidedat.ini`` declares.

    Attributes
    ----------
    levels
        The ``ZStackLevel`` value names, in the order the file lists them.
    offsets_um
        Each plane's ``OFFSET_IN_MICROMETERS`` (``None`` where its section does not say).
    extended_focus
        Whether the slide also holds the scanner's extended-focus image (``ExtFocusLevel``).
    """

    levels: tuple[str, ...]
    offsets_um: tuple[float | None, ...]
    extended_focus: bool

    @property
    def n_planes(self) -> int:
        """Number of focal planes (``ZStackLevel`` values)."""
        return len(self.levels)


def slidedat_path(path: str | os.PathLike[str]) -> Path | None:
    """``<name>/Slidedat.ini`` beside ``<name>.mrxs`` when it exists (how OpenSlide detects
    MIRAX), else ``None``."""
    p = Path(path)
    if p.suffix.lower() != ".mrxs":
        return None
    ini = p.with_suffix("") / "Slidedat.ini"
    return ini if ini.is_file() else None


def parse_slidedat(text: str) -> MiraxFocus:
    """The focal planes declared by the text of a ``Slidedat.ini``.

    Parameters
    ----------
    text
        The file's text; anything before its first section header (a byte-order mark) is
        skipped.

    Returns
    -------
    MiraxFocus
        No levels when the slide has no ``Microscope focus level`` hierarchy (a one-plane scan).

    Raises
    ------
    configparser.Error
        When the text is not an INI file.
    """
    ini = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    ini.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    ini.read_string(text[text.find("[") :] if "[" in text else text)
    if not ini.has_section("HIERARCHICAL"):
        return MiraxFocus((), (), False)
    hier = ini["HIERARCHICAL"]
    for i in range(_int(hier.get("HIER_COUNT"))):
        if hier.get(f"HIER_{i}_NAME", "").strip() != FOCUS_HIERARCHY:
            continue
        levels: list[str] = []
        offsets: list[float | None] = []
        extended = False
        for j in range(_int(hier.get(f"HIER_{i}_COUNT"))):
            value = hier.get(f"HIER_{i}_VAL_{j}", "").strip()
            if value.lower() == "extfocuslevel":
                extended = True
            if not _ZSTACK_VALUE.match(value):
                continue
            levels.append(value)
            section = hier.get(f"HIER_{i}_VAL_{j}_SECTION", "").strip()
            offset = ini.get(section, "OFFSET_IN_MICROMETERS", fallback=None) if section else None
            offsets.append(_float(offset))
        return MiraxFocus(tuple(levels), tuple(offsets), extended)
    return MiraxFocus((), (), False)


def mrxs_focus(path: str | os.PathLike[str]) -> MiraxFocus | None:
    """The focal planes of an MRXS slide, or ``None`` for any other file (or an unreadable
    ``Slidedat.ini``: OpenSlide then gives its own error)."""
    ini = slidedat_path(path)
    if ini is None:
        return None
    try:
        with open(ini, "rb") as handle:
            raw = handle.read(_MAX_INI_BYTES + 1)
        if len(raw) > _MAX_INI_BYTES:
            return None
        return parse_slidedat(raw.decode("utf-8", errors="replace"))
    except (OSError, configparser.Error) as err:
        logger.debug("%s: Slidedat.ini not parsed (%s)", ini, err)
        return None


def refuse_mrxs_zstack(path: str | os.PathLike[str]) -> None:
    """Refuse an MRXS whose ``Slidedat.ini`` declares two or more focal planes.

    Raises
    ------
    UnsupportedInput
        Naming the file, its planes (and their depths when recorded) and :data:`ROUTE`.
    """
    focus = mrxs_focus(path)
    if focus is None or focus.n_planes < 2:
        return
    depths = ""
    if all(o is not None for o in focus.offsets_um):
        depths = " at " + ", ".join(f"{o:g}" for o in focus.offsets_um if o is not None) + " µm"
    raise UnsupportedInput(
        f"{os.fspath(path)}: this MRXS slide holds {focus.n_planes} focal planes "
        f"({focus.levels[0]} ... {focus.levels[-1]}{depths}; Slidedat.ini, "
        f"'{FOCUS_HIERARCHY}'). {ROUTE}"
    )


def _int(value: str | None) -> int:
    try:
        return max(int(str(value).strip()), 0)
    except ValueError:
        return 0


def _float(value: str | None) -> float | None:
    try:
        return float(str(value).strip()) if value is not None else None
    except ValueError:
        return None
