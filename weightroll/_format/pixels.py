"""The code image's pixels before they are deflated: the tensors' own code
arrays, in image order, never joined into one.

A writer lays tensors' codes out one after the other (`offset` in each
manifest entry). Joining them into one array would copy every code once
more, into memory touched for the first time (0.31 s for the 477M codes of
the LM stack in `benchmarks/bench_speed.py`); the PNG writer instead reads
each piece of rows it deflates straight from the arrays that hold it.
"""

import numpy as np


class Pixels:
    """uint8 codes held as a sequence of 1-D arrays, read by position.

    Args:
        parts: 1-D uint8 arrays (or anything `np.asarray` makes one of), in
            order; code `i` of the whole is in the part that covers it.
    """

    def __init__(self, parts):
        self.parts = [np.asarray(part, np.uint8).reshape(-1) for part in parts]
        self.parts = [part for part in self.parts if part.size]
        self.starts = np.cumsum([0] + [part.size for part in self.parts], dtype=np.int64)
        self.size = int(self.starts[-1])

    @classmethod
    def of(cls, codes):
        """`codes` as `Pixels`: itself if it is one, else one array."""
        return codes if isinstance(codes, cls) else cls([codes])

    def _spans(self, begin, end):
        """`(part, first, stop, at)` for each part that codes `[begin, end)`
        touch: its codes `[first, stop)` are codes `at...` of the range."""
        i = int(np.searchsorted(self.starts, begin, side="right")) - 1
        while begin < end and i < len(self.parts):
            start = int(self.starts[i])
            first, stop = begin - start, min(end - start, self.parts[i].size)
            yield self.parts[i], first, stop, begin
            begin = start + stop
            i += 1

    def read(self, begin, end, out=None):
        """Codes `[begin, end)` (clipped to the codes held) as one array:
        a view when one part holds them all, else a copy (into `out`, a
        uint8 array of at least that many, when given)."""
        begin, end = max(0, begin), min(end, self.size)
        if end <= begin:
            return np.zeros(0, np.uint8)
        spans = list(self._spans(begin, end))
        if len(spans) == 1 and out is None:
            part, first, stop, _ = spans[0]
            return part[first: stop]
        out = np.empty(end - begin, np.uint8) if out is None else out[: end - begin]
        for part, first, stop, at in spans:
            out[at - begin: at - begin + stop - first] = part[first: stop]
        return out

    def slice(self, begin, end):
        """Codes `[begin, end)` as `Pixels` of views: nothing copied."""
        return Pixels([part[first: stop] for part, first, stop, _ in self._spans(begin, end)])

    def every(self, stride):
        """Every `stride`-th code from the first (`codes[::stride]`), joined."""
        picked = []
        for part, start in zip(self.parts, self.starts[:-1].tolist()):
            phase = -start % stride
            picked.append(part[phase::stride])
        return np.concatenate(picked) if picked else np.zeros(0, np.uint8)
