"""Every truncation and every single-byte flip of a small archive (spec/wroll-v4.md,
"Threat model"): each case unrolls to exactly the written weights (a byte the
reader does not use, such as a timestamp) or raises a `WrollError`; no other
exception, no slow case. numpy only: about 40,000 cases in a few seconds.
"""

import pathlib
import time
import warnings

import pytest

import weightroll
from tests.fuzz_reader import same_weights
from weightroll.errors import WrollError

ARCHIVE = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors" / "dense_codebook_2bit.wroll"
DATA = ARCHIVE.read_bytes()
WRITTEN = weightroll.unroll(DATA)
# Every case takes about a millisecond; one that takes this long is a hang.
SLOW_CASE_SECONDS = 5.0
# Each byte is flipped in every one of its bits alone, then in all of them.
FLIPS = [1 << bit for bit in range(8)] + [0xFF]


def _outcome(data):
    """`"loaded"` (the written weights, exactly) or the broken rule, e.g. `"R22"`."""
    start = time.perf_counter()
    try:
        got = weightroll.unroll(data)
    except WrollError as e:
        assert e.rule is not None, f"a refusal without a rule: {e}"
        return e.rule
    finally:
        assert time.perf_counter() - start < SLOW_CASE_SECONDS
    assert same_weights(got, WRITTEN), "the archive loaded different weights"
    return "loaded"


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_the_archive_is_small_and_loads():
    assert len(DATA) < 4096
    assert _outcome(DATA) == "loaded"


def test_every_truncation_is_refused():
    outcomes = {_outcome(DATA[:length]) for length in range(len(DATA))}
    assert outcomes == {"R1"}  # without its end record, nothing is a zip


@pytest.mark.slow
def test_every_single_byte_flip_loads_the_written_weights_or_is_refused():
    outcomes = {}
    for offset in range(len(DATA)):
        for mask in FLIPS:
            damaged = bytearray(DATA)
            damaged[offset] ^= mask
            rule = _outcome(bytes(damaged))
            outcomes[rule] = outcomes.get(rule, 0) + 1
    # Flips in the member data are caught by the CRC-32 (R22) before any
    # SHA-256; flips in the headers by the zip rules. Some bytes are unused.
    assert outcomes["R22"] > len(DATA) * 4
    assert outcomes["R1"] > 0 and outcomes["loaded"] > 0


def test_a_flip_in_a_zip_comment_loads_the_written_weights():
    with_comment = DATA[:-2] + (8).to_bytes(2, "little") + b"comments"  # the end record's comment
    assert _outcome(with_comment) == "loaded"
    damaged = bytearray(with_comment)
    damaged[-3] ^= 0xFF
    assert _outcome(bytes(damaged)) == "loaded"
