"""Exception hierarchy.

Every error names the bad value and the fix. Each class also inherits the builtin that fits, so
callers that catch ``FileNotFoundError`` or ``ValueError`` keep working.
"""

from __future__ import annotations


class WsiFusionError(Exception):
    """Base class of every error this package raises on purpose."""


class SlideNotFound(WsiFusionError, FileNotFoundError):
    """An input file or store does not exist."""


class UnreadableSlide(WsiFusionError, OSError):
    """An input exists but cannot be decoded (corrupt, truncated or unsupported format)."""


class PlaneMismatch(WsiFusionError, ValueError):
    """Focal planes differ in size, resolution or channel layout."""


class UnsupportedInput(WsiFusionError, ValueError):
    """An input is valid but of a kind this tool refuses (e.g. 16-bit data, too few planes)."""


class UnknownFuser(WsiFusionError, KeyError):
    """A fuser name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


class ConfigError(WsiFusionError, ValueError):
    """A run configuration is invalid (unknown key, bad value, tile/overlap mismatch)."""


class OverlapsInput(WsiFusionError, ValueError):
    """An output, sidecar or cache path is an input, holds one, or lies inside one."""


class ForeignPath(WsiFusionError, FileExistsError):
    """A folder the run would remove or replace was not made by this tool (no marker)."""


class OutputBusy(WsiFusionError, BlockingIOError):
    """Another live run holds the lock of this output (or batch folder)."""


class OutputExists(WsiFusionError, FileExistsError):
    """The output path already exists and ``--overwrite`` was not given."""


class OutputNotWritable(WsiFusionError, PermissionError):
    """The output folder does not exist or cannot be written."""


class WeightsError(WsiFusionError, ValueError):
    """Model weights are missing, corrupt, of the wrong shape or not safetensors."""


class StorageError(WsiFusionError, OSError):
    """The operating system refused a read or write of the run's files (disk full, file too
    large for the file system, permission denied, read-only or special file system)."""


class OutOfMemory(WsiFusionError, MemoryError):
    """A step needed more memory than is available (never reported as a corrupt input)."""
