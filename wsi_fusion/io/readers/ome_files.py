"""Files an OME-TIFF's metadata tells readers to open besides itself (multi-file OME-TIFF).

A multi-file OME-TIFF spreads its planes over several files: the OME-XML of the file given names
the others (``TiffData/UUID/@FileName``, or ``BinaryOnly/@MetadataFile`` for a companion file),
and tifffile follows those names wherever they point. A slide file is untrusted input, so a name
like ``../elsewhere/x.tif`` or ``/home/other/scan.tif`` would make the tool read, fuse and publish
a file nobody gave it. The rule: a referenced file is read only when it sits in the same folder as
the file that names it (after resolving symlinks); it is then listed in ``run.json`` and hashed
into the run digest like an input. Anything else is refused before any reader opens the file.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET

import tifffile

from wsi_fusion.errors import UnreadableSlide, UnsupportedInput

logger = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def referenced_files(path: str | os.PathLike[str]) -> list[str]:
    """Other files the OME-XML of ``path`` names, each checked to sit beside ``path``.

    Returns ``[]`` for anything that is not an OME-TIFF naming other files (including files
    tifffile cannot parse: the readers report those).

    Raises
    ------
    UnsupportedInput
        A named file lies outside the folder of ``path`` (a path, ``..``, or a symlink that
        leads elsewhere).
    UnreadableSlide
        A named file should be beside ``path`` but is missing.
    """
    main = os.fspath(path)
    xml = _ome_xml(main)
    if not xml:
        return []
    folder = os.path.dirname(os.path.abspath(main))
    own = os.path.realpath(main)
    found: list[str] = []
    for name in _named_files(xml, main):
        candidate = os.path.join(folder, os.path.normpath(name))
        if os.path.realpath(candidate) == own or candidate in found:
            continue
        _check_beside(main, name, candidate, folder)
        found.append(candidate)
    if found:
        logger.info("%s: multi-file OME-TIFF, also reading %s", main, ", ".join(found))
    return found


def _ome_xml(path: str) -> str | None:
    """The OME-XML of a TIFF, or ``None`` (not a TIFF, not OME, or unparsable)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        with tifffile.TiffFile(path) as tif:
            return tif.ome_metadata if tif.is_ome else None
    except Exception as err:  # a broken file is reported by the reader that opens it
        logger.debug("%s: no OME-XML read (%s)", path, err)
        return None


def _named_files(xml: str, path: str) -> list[str]:
    """Every file name the OME-XML refers to (``UUID/@FileName``, ``BinaryOnly/@MetadataFile``)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []  # unreadable OME-XML: tifffile cannot follow references in it either
    # A UUID equal to the document's own is this file, whatever FileName says (renamed files).
    own_uuid = (root.get("UUID") or "").strip()
    names: list[str] = []
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        name = element.get("FileName") if tag == "UUID" else None
        if name is not None and own_uuid and (element.text or "").strip() == own_uuid:
            continue
        if tag == "BinaryOnly":
            name = element.get("MetadataFile")
        if name is not None and name not in names:
            names.append(name)
    return names


def _check_beside(main: str, name: str, candidate: str, folder: str) -> None:
    """Refuse a referenced file that is not a plain name of a file in ``folder``."""
    fix = (
        "wsi_fusion reads only the inputs given and the files beside a multi-file OME-TIFF; put "
        "every file of the dataset in one folder (with FileName attributes naming them there), "
        "or convert it into one OME-TIFF first (e.g. `bfconvert`)"
    )
    # "./x.tif" is beside the file too; "../x.tif", "sub/x.tif", "C:\\x.tif" and "/x.tif" are not.
    norm = os.path.normpath(name)
    plain = (
        norm not in ("", ".", "..")
        and os.path.basename(norm) == norm
        and "\\" not in norm
        and ".." not in name.split("/")  # "sub/../x.tif" depends on "sub": not followed
    )
    if not plain:
        raise UnsupportedInput(
            f"{main}: its OME-XML names the file {name!r} outside its folder, refused; {fix}"
        )
    real = os.path.realpath(candidate)
    if os.path.dirname(real) != os.path.realpath(folder):
        raise UnsupportedInput(
            f"{main}: its OME-XML names {name!r}, a link to {real} outside its folder, "
            f"refused; {fix}"
        )
    if not os.path.isfile(real):
        raise UnreadableSlide(
            f"{main}: its OME-XML names {name!r} beside it, but {candidate} does not exist; "
            "copy every file of this multi-file OME-TIFF into the same folder"
        )
