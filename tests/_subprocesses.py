"""The result a test's subprocess prints: its last `RESULT <json>` line."""

import json
import subprocess

import pytest


def result_of(process, timeout, what):
    """Wait for `process` (a `subprocess.Popen` with text pipes) and return
    the JSON of its last `RESULT ` line; fail the test, naming `what`, when
    it runs over `timeout` seconds, exits non-zero or prints no result."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"{what} ran over {timeout} s:\n{(stderr or '')[-3000:]}")
    lines = [line[len("RESULT "):] for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"{what} failed:\n{stderr[-4000:]}"
    return json.loads(lines[-1])
