"""The exceptions weightroll raises on bad input.

Every error about an archive, a model or an argument is a `WrollError`, which is
a `ValueError`, so callers that already catch `ValueError` keep working. The few
subclasses exist only where a caller may want to react differently.
Operating-system errors (`FileNotFoundError`, `PermissionError`) are not wrapped.
"""


class WrollError(ValueError):
    """Root of every error weightroll raises on bad input."""


class ArchiveError(WrollError):
    """The file is not a sound `.wroll` archive: not a zip, truncated, damaged,
    a member missing, a checksum that does not match, or a manifest that
    contradicts the data."""


class VersionError(ArchiveError):
    """The archive was written in a format version this reader cannot read."""


class LimitError(ArchiveError):
    """The archive asks for more resources than the reader's limits allow
    (a zip, PNG or zstd bomb, an absurd shape)."""


class UnsafeArchiveError(WrollError):
    """Loading would run code from the archive, which `safe_mode=True` refuses."""
