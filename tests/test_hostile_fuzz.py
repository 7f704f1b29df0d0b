"""Property-based fuzzing of the reader (spec/wroll-v4.md, "Threat model").

A bounded number of cases on every run (`WROLL_FUZZ_EXAMPLES`, default 500,
the same cases each time); `python tests/fuzz_reader.py --examples 100000`
runs a longer, random campaign. See `tests/fuzz_reader.py` for the targets.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests import fuzz_reader

EXAMPLES = int(os.environ.get("WROLL_FUZZ_EXAMPLES", "500"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@BOUNDED
@given(fuzz_reader.seeds, fuzz_reader.byte_edits)
def test_damaged_bytes_load_the_written_weights_or_are_refused(seed, edits):
    fuzz_reader.check_bytes(seed, edits)


@pytest.mark.slow
@BOUNDED
@given(fuzz_reader.bound_seeds, fuzz_reader.manifest_edits)
def test_edited_manifests_never_yield_values_that_were_not_written(seed, edits):
    fuzz_reader.check_manifest(seed, edits)
