"""An archive written under one Keras backend loads under another with the same weights."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import weightroll
from tests import _models

OTHER = {"tensorflow": "jax", "jax": "tensorflow"}[keras.backend.backend()]
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec(OTHER) is None, reason=f"the {OTHER} backend is not installed"),
    pytest.mark.slow,  # each test starts the other backend in a subprocess
]

_LOAD = """
import json, sys
import numpy as np
import weightroll, keras
model = weightroll.load_rolled(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model.predict(x, verbose=0)))
print(json.dumps({"backend": keras.backend.backend(),
                  "weights": [np.asarray(v.numpy()).tobytes().hex() for v in model.variables]}))
"""


def _in_other_backend(*args):
    env = dict(os.environ, KERAS_BACKEND=OTHER, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", _LOAD, *map(str, args)], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("builder", ["sequential_cnn", "functional_text"])
def test_archive_loads_under_the_other_backend_with_the_same_weights(tmp_path, builder):
    model, x = getattr(_models, builder)()
    weightroll.roll(model, tmp_path / "m.wroll")
    np.save(tmp_path / "x.npy", x)
    result = _in_other_backend(tmp_path / "m.wroll", tmp_path / "x.npy", tmp_path / "y.npy")
    assert result["backend"] == OTHER
    here = weightroll.load_rolled(tmp_path / "m.wroll")
    floats = [i for i, v in enumerate(here.variables) if np.issubdtype(np.dtype(v.dtype), np.floating)]
    for i in floats:
        assert bytes.fromhex(result["weights"][i]) == np.asarray(here.variables[i].numpy()).tobytes()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
