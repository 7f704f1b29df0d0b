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
    pytest.mark.slow,  # the other backend starts in a subprocess
]

BUILDERS = ["sequential_cnn", "functional_text"]

# Loads each archive given (archive, inputs, outputs path), one line of JSON each:
# the other backend starts once for all the models.
_LOAD = """
import json, sys
import numpy as np
import weightroll, keras
args = sys.argv[1:]
for archive, inputs, outputs in zip(args[0::3], args[1::3], args[2::3]):
    model = weightroll.load_rolled(archive)
    x = np.load(inputs)
    np.save(outputs, np.asarray(model.predict(x, verbose=0)))
    print(json.dumps({"backend": keras.backend.backend(),
                      "weights": [np.asarray(v.numpy()).tobytes().hex() for v in model.variables]}))
"""


def _in_other_backend(*args):
    env = dict(os.environ, KERAS_BACKEND=OTHER, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", _LOAD, *map(str, args)], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"backend"')]
    assert len(results) == len(args) // 3, out.stdout
    return results


@pytest.fixture(scope="module")
def rolled_and_loaded_in_other_backend(tmp_path_factory):
    """Every builder's model rolled here, then loaded under the other backend in one
    subprocess: `{builder: (model, x, folder, what the other backend saw)}`."""
    rolled, args = {}, []
    for builder in BUILDERS:
        model, x = getattr(_models, builder)()
        folder = tmp_path_factory.mktemp(builder)
        weightroll.roll(model, folder / "m.wroll")
        np.save(folder / "x.npy", x)
        rolled[builder] = model, x, folder
        args += [folder / "m.wroll", folder / "x.npy", folder / "y.npy"]
    results = _in_other_backend(*args)
    return {builder: (*rolled[builder], result) for builder, result in zip(BUILDERS, results)}


@pytest.mark.parametrize("builder", BUILDERS)
def test_archive_loads_under_the_other_backend_with_the_same_weights(rolled_and_loaded_in_other_backend, builder):
    _, x, folder, result = rolled_and_loaded_in_other_backend[builder]
    assert result["backend"] == OTHER
    here = weightroll.load_rolled(folder / "m.wroll")
    floats = [i for i, v in enumerate(here.variables) if np.issubdtype(np.dtype(v.dtype), np.floating)]
    for i in floats:
        assert bytes.fromhex(result["weights"][i]) == np.asarray(here.variables[i].numpy()).tobytes()
    np.testing.assert_allclose(np.load(folder / "y.npy"), here.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
