"""Progress on the terminal for work that takes more than a moment.

The command line opens a `task()` around a long call; library code reports
what it got through with `advance()`, which does nothing when no task is
open, so library users pay nothing and no callback argument has to be
threaded through every signature (`logging` works the same way).

A task draws one status line on stderr, redrawn in place by a background
thread, and only once it has run for `DELAY` seconds: quick commands print
nothing extra. When stderr is not a terminal (a pipe, a file, a CI log) or
the caller passes `enabled=False` (`--quiet`), nothing is drawn at all.
Until the first `advance()` a task shows a spinner and the time elapsed;
after it, a bar of how much of `total` is done.

Some work goes over the same items more than once (rolling with calibration
data encodes the tensors in trial after trial before the archive's own
encoding): an item reported again starts a new pass, and the bar counts the
current pass only, with its number. The count never passes `total`.

Standard library only: importing this module must stay free.
"""

import contextlib
import os
import shutil
import sys
import threading
import time

# Seconds a task runs before anything is drawn, and between two redraws.
DELAY = 0.5
INTERVAL = 0.1

_SPINNER = "|/-\\"
_BAR_WIDTH = 24

_active = None  # the open task, if any (module-wide: `advance` may come from any thread)


def advance(amount=1, detail=None):
    """Report `amount` more units of the open task done; `detail` names the
    current item (e.g. a tensor's path). A no-op when no task is open."""
    task = _active
    if task is not None:
        task.advance(amount, detail)


def stream_is_terminal(stream):
    """Whether `stream` is an interactive terminal (False for anything odd)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Task:
    def __init__(self, label, total, unit, fd, delay, ascii_only):
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail = ""
        self.passes = 1
        self._seen = set()  # the items (details) counted in this pass
        self.started = time.monotonic()
        self._fd = fd
        self._delay = delay
        self._ascii = ascii_only
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drawn = False
        self._thread = None
        if fd is not None:
            self._thread = threading.Thread(target=self._run, name="weightroll-progress", daemon=True)
            self._thread.start()

    def advance(self, amount, detail):
        with self._lock:
            if detail is not None:
                self.detail = str(detail)
                if self.detail in self._seen:  # the work goes over its items again
                    self.passes += 1
                    self.done = 0
                    self._seen.clear()
                self._seen.add(self.detail)
            self.done += amount

    def line(self, width, tick=0):
        """The status line, at most `width` characters."""
        with self._lock:
            done, detail, passes = self.done, self.detail, self.passes
        elapsed = f"{time.monotonic() - self.started:.1f}s"
        if done and self.total:
            done = min(done, self.total)
            fraction = done / self.total
            filled = int(round(fraction * _BAR_WIDTH))
            full, empty = ("#", "-") if self._ascii else ("\u2588", "\u2591")
            bar = full * filled + empty * (_BAR_WIDTH - filled)
            amount = f"{_amount(done)}/{_amount(self.total)} {self.unit}".rstrip()
            if passes > 1:
                amount += f", pass {passes}"
            parts = [f"{self.label} {bar} {fraction:4.0%}", amount]
        else:
            parts = [f"{self.label} {_SPINNER[tick % len(_SPINNER)]}"]
            if self.total:
                parts.append(f"{_amount(self.total)} {self.unit}".rstrip())
        head = "  ".join(parts)
        room = width - len(head) - len(elapsed) - 4
        if detail and room >= 8:  # the end of a path says the most
            head += "  " + (detail if len(detail) <= room else "..." + detail[-(room - 3):])
        text = f"{head}  {elapsed}"
        return text if len(text) <= width else text[: max(width - 3, 0)] + "..."

    def _run(self):
        tick = 0
        if self._stop.wait(self._delay):
            return
        while True:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self._write("\r" + self.line(width, tick) + "\x1b[K")
            self._drawn = True
            tick += 1
            if self._stop.wait(INTERVAL):
                return

    def _write(self, text):
        try:
            os.write(self._fd, text.encode("utf-8", "replace"))
        except OSError:  # the terminal went away: stop drawing, never fail the work
            self._stop.set()

    def close(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self._drawn:
                self._write("\r\x1b[K")
            os.close(self._fd)


@contextlib.contextmanager
def task(label, total=None, unit="values", *, enabled=True, stream=None, delay=DELAY):
    """Show progress of the work done inside the `with` block.

    Args:
        label: what is being done, e.g. `"Rolling"`.
        total: how many units the work has, if known; `advance()` calls add up
            to it. Defaults to `None` (a spinner only).
        unit: the name of a unit, shown after the counts. Defaults to `"values"`.
        enabled: `False` draws nothing (e.g. for `--quiet`). Defaults to `True`.
        stream: where to draw; only a terminal gets anything. Defaults to
            `sys.stderr`.
        delay: seconds before the first draw. Defaults to `DELAY`.

    Yields:
        The task, whose `advance(amount, detail)` may also be called directly.
    """
    global _active
    stream = sys.stderr if stream is None else stream
    fd = None
    if enabled and stream_is_terminal(stream):
        # A duplicate of the terminal's descriptor: drawing keeps working while
        # the command line redirects fd 2 (as it does around TensorFlow's import).
        try:
            fd = os.dup(stream.fileno())
        except (AttributeError, ValueError, OSError):
            fd = None
    encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
    current = _Task(label, total, unit, fd, delay, ascii_only=encoding != "utf8")
    previous, _active = _active, current
    try:
        yield current
    finally:
        _active = previous
        current.close()


def _amount(n):
    """A short count: 999, 12.3k, 4.56M, 1.2G."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:.0f}"
