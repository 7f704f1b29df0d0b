"""The exceptions weightroll raises on bad input.

Every error about an archive, a model or an argument is a `WrollError`, which is
a `ValueError`, so callers that already catch `ValueError` keep working. The few
subclasses exist only where a caller may want to react differently.
Where Keras raises another type for the same situation, the subclass is also
that type: a missing archive is a `WrollError` (Keras's `load_model` raises
`ValueError`) and a `FileNotFoundError`; an architecture Keras cannot
deserialize with a `TypeError` stays a `TypeError`. Other operating-system
errors (`PermissionError`, `IsADirectoryError`) are not wrapped.

An error raised because an archive breaks one of the numbered rejection rules
of `spec/wroll-v4.md` ("What a reader MUST reject") names that rule: its `rule`
attribute is the rule's number, e.g. `"R23"`, and its message ends with
`(spec rule R23)`. The numbers are the constants of `weightroll._format.rules`.
Errors about arguments or models have `rule` `None`.
"""


class WrollError(ValueError):
    """Root of every error weightroll raises on bad input.

    Args:
        message: what was wrong, what was expected and what was received.
        rule: the spec's rejection rule that the input breaks (`"R1"` ...),
            or `None`. Defaults to `None`.
    """

    rule = None

    def __init__(self, message="", *, rule=None):
        if rule is not None:
            message = f"{message} (spec rule {rule})"
        super().__init__(message)
        self.rule = rule


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


class ArchiveNotFoundError(WrollError, FileNotFoundError):
    """No file at the archive's path: a `WrollError`, as Keras's `load_model`
    raises `ValueError` for it, and a `FileNotFoundError`.

    Args:
        filepath: the path that was asked for.
    """

    def __init__(self, filepath):
        super().__init__(f"File not found: filepath={filepath}. Please ensure the file is an accessible "
                         "`.wroll` archive.")
        self.errno, self.strerror, self.filename = 2, "No such file or directory", str(filepath)

    def __str__(self):
        return self.args[0]


class ArchitectureTypeError(WrollError, TypeError):
    """Keras cannot build the archive's architecture and raised a `TypeError`
    (an unknown or unregistered class, say): still a `TypeError`, with
    Keras's message kept in this one."""


def short(value, limit=80):
    """`value` as text safe to quote in a message: printable characters only
    (a name read from an archive could hold a terminal escape), at most
    `limit` characters."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."
