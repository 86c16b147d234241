"""Publish an output, its sidecars and its ``run.json`` together, and trust only a whole set.

A ``run.json`` that sits beside an image it does not describe is worse than none: a batch rerun
skips the slide as up to date. So the record is the *commit* of a publication:

- **OME-Zarr**: the record goes inside the store (the ``wsi_fusion`` group attribute, which
  then holds the run's ``report`` too) before the one atomic rename of ``OUTPUT.partial`` to
  ``OUTPUT``, so the image, its labels and its record appear together. The copy beside it
  (``OUTPUT.run.json``, for people and older tools) is removed before the swap and rewritten
  after it, so it is either missing or right.
- **DICOM** (a folder of instances): like OME-Zarr, one atomic rename of the folder. Its record
  goes inside it, into the folder's ownership marker (``.wsi_fusion``, ``record``), after its
  sidecars (focus map TIFFs) are renamed into place and listed in it with size and modification
  time, which a record is trusted only while they keep.
- **TIFF**: several files cannot be renamed at once. The old ``OUTPUT.run.json`` is removed
  first, the sidecars and then the image are renamed into place, and the new record, written
  beforehand as ``OUTPUT.run.json.partial``, is renamed last. It lists every file of the
  publication with its size, modification time and sha256, and a record is trusted only while
  those files are still there, with that size and modification time.

A kill at any point leaves either the previous complete publication, or files without a record
that resume and ``batch`` redo instead of trusting.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_fusion.io.destination import Destination, publish
from wsi_fusion.io.ownership import MARKER_NAME, TOOL, marker, ome_zarr_attributes


def publish_run(
    dest: Destination, record: dict[str, Any], sidecars: Sequence[tuple[Path, Path]] = ()
) -> None:
    """Publish ``dest.partial`` (and ``(partial, final)`` sidecars) with ``record`` as run.json."""
    if dest.format == "ome-zarr":
        _record_in_attributes(dest.partial, record)
        _unlink(dest.run_json)
        publish(dest.partial, dest.output)
        _write_atomically(dest.run_json, record)
        return
    if dest.format == "dicom":
        _unlink(dest.run_json)
        for partial, final in sidecars:
            publish(partial, final)
        record = {**record, "publication": {"files": [_describe(f, f.name) for _, f in sidecars]}}
        _record_in_marker(dest.partial, record)
        publish(dest.partial, dest.output)
        _write_atomically(dest.run_json, record)
        return
    files = [*sidecars, (dest.partial, dest.output)]  # the image last
    record = {**record, "publication": {"files": [_describe(p, f.name) for p, f in files]}}
    _write_json(dest.run_json_partial, record)
    _unlink(dest.run_json)
    for partial, final in files:
        publish(partial, final)
    os.replace(dest.run_json_partial, dest.run_json)


def trusted_record(output: Path) -> dict[str, Any] | None:
    """The run record of a complete publication at ``output``; ``None`` if there is none."""
    if output.is_dir():
        inside = ome_zarr_attributes(output)
        if inside is not None:
            return inside if "report" in inside else None
        record = (marker(output) or {}).get("record")
        if not isinstance(record, dict) or "report" not in record:
            return None
        files = record.get("publication", {}).get("files", [])  # a DICOM folder's sidecars
    else:
        record = _read_json(output.with_name(output.name + ".run.json"))
        if record is None:
            return None
        files = record.get("publication", {}).get("files")
        if not isinstance(files, list) or output.name not in {f.get("name") for f in files}:
            return None
    for entry in files:
        path = output.with_name(str(entry.get("name")))
        try:
            st = path.stat()
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (entry.get("size"), entry.get("mtime_ns")):
            return None
    return record


def _record_in_attributes(store: Path, record: dict[str, Any]) -> None:
    """Put the whole record (with its ``report``) into the group's ``wsi_fusion`` attribute."""
    import zarr

    group = zarr.open_group(store, mode="r+")
    # A JSON round trip turns Paths and numpy scalars into plain values, as create_image does.
    group.attrs[TOOL] = json.loads(json.dumps(record, default=str))


def _record_in_marker(folder: Path, record: dict[str, Any]) -> None:
    """Put the whole record into the ownership marker of a folder output (DICOM)."""
    claim = {**(marker(folder) or {}), "record": json.loads(json.dumps(record, default=str))}
    _write_atomically(folder / MARKER_NAME, claim)


def _describe(path: Path, name: str) -> dict[str, Any]:
    st = path.stat()
    return {"name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    with path.open("w") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _write_atomically(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    _write_json(partial, record)
    os.replace(partial, path)


def _unlink(path: Path) -> None:
    if path.is_file() or path.is_symlink():
        path.unlink()
