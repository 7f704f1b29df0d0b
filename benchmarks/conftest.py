"""Shared set-up of the benchmarks (run them with `pytest benchmarks/bench_*.py`)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

_RESULTS = {}


@pytest.fixture(scope="session")
def results():
    """A dict the benchmarks fill; its `"summary"` lines are printed at the end."""
    return _RESULTS


def pytest_terminal_summary(terminalreporter):
    lines = _RESULTS.get("summary")
    if lines:
        terminalreporter.write_sep("-", "weightroll benchmark ratios")
        for line in lines:
            terminalreporter.write_line(line)
