"""An archive is one function of (model, options, format version): the same bytes
with or without the C kernel, and whatever the CPU, its vector units or the BLAS
kernel numpy picks for it.

(a) numpy's coder and the kernel encode the same tensors to the same bits;
(b) so does a process told to use another BLAS kernel (`OPENBLAS_CORETYPE`) and
    none of numpy's AVX code paths (`NPY_DISABLE_CPU_FEATURES`): the closest this
    machine comes to another one;
(c) `weightroll.roll` writes byte-identical archives of real Keras models either way.

Rolls with `validation_data` are not covered: they run the model in TensorFlow or
JAX, whose arithmetic is theirs.
"""

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from weightroll import _encode
from weightroll._format import image
from weightroll.coders import uniform

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL = uniform._kernel


def _tensors():
    """Tensors of every shape the coder treats its own way, made by integer
    arithmetic and numpy's seeded generator (the same on every machine)."""
    rng = np.random.default_rng(18)

    def heavy(*shape):
        x = rng.standard_t(3, size=shape) * 0.05
        if len(shape) >= 2:  # channels of different sizes
            x = x * rng.uniform(0.1, 3.0, size=shape[-1])
        return x.astype(np.float32)

    conv = heavy(3, 3, 16, 24)
    conv.reshape(-1)[[5, 900]] = [40.0, -60.0]  # outliers
    return [
        ("conv/kernel", conv),
        ("conv/bias", heavy(24)),
        ("dense/kernel", heavy(300, 70)),  # several blocks, per-row scales tried
        ("wide/kernel", heavy(2, 70_000)),  # rows longer than a block
        ("long/vector", heavy(140_000)),  # a vector of three blocks
        ("middle/kernel", heavy(4, 7, 5, 9)),
        ("norm/gamma", np.ones(24, np.float32)),  # lossless
        ("half/kernel", heavy(40, 30).astype(np.float16)),
        ("steps", np.arange(7, dtype=np.int64)),  # exact
    ]


def _digest(encoded):
    """SHA-256 of everything an `Encoded` puts in an archive, PNG included."""
    h = hashlib.sha256()
    h.update(json.dumps(encoded.tensors, sort_keys=True, default=repr).encode())
    h.update(json.dumps(encoded.decoder, sort_keys=True, default=repr).encode())
    for array in encoded.decoder_arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(bytes(encoded.exact_bytes))
    h.update(json.dumps(encoded.stats, sort_keys=True, default=repr).encode())
    h.update(bytes(image.encode_png(encoded.codes)[0]))
    return h.hexdigest()


# The settings whose coding the kernel takes part in; the paper's MLP fit
# (numpy and BLAS only) is checked on other machines below.
SETTINGS = {
    "tolerance 0.01": {"tolerance": 0.01},
    "tolerance 0.1": {"tolerance": 0.1},
    "codebook 3 bits": {"bits": 3},
}
MLP_SETTINGS = {"mlp 4 bits": {"decoder": "mlp", "bits": 4}}


def digests(settings=SETTINGS):
    """`{setting: digest}` of `_tensors()` encoded under each of `settings`."""
    return {name: _digest(_encode.encode(_tensors(), **kwargs)) for name, kwargs in settings.items()}


def _without_kernel(function, *args, **kwargs):
    saved = uniform._kernel
    uniform._kernel = None
    try:
        return function(*args, **kwargs)
    finally:
        uniform._kernel = saved


def test_numpy_encodes_what_the_kernel_encodes():
    if KERNEL is None:
        pytest.skip("the C kernel is not built (setup.py): numpy is the only coder here")
    assert digests() == _without_kernel(digests)


_OTHER_MACHINE = """
import json, sys
sys.path.insert(0, {tests!r})
import test_same_bytes as t
from weightroll.coders import uniform
everything = {{**t.SETTINGS, **t.MLP_SETTINGS}}
out = {{"kernel" if uniform._kernel is not None else "numpy": t.digests(everything)}}
if uniform._kernel is not None:
    out["numpy"] = t._without_kernel(t.digests, t.SETTINGS)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_another_blas_kernel_and_no_vector_units_encode_the_same():
    """What a machine without AVX (numpy's dispatched paths switched off) and
    with another OpenBLAS kernel (Prescott: SSE3) computes: the same bits,
    the MLP's fit included (BLAS products and numpy's transcendental
    functions differ there in their last bits)."""
    from numpy._core import _multiarray_umath as umath

    dispatched = " ".join(getattr(umath, "__cpu_dispatch__", []))
    env = dict(os.environ, OPENBLAS_CORETYPE="Prescott", NPY_DISABLE_CPU_FEATURES=dispatched,
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _OTHER_MACHINE.format(tests=str(ROOT / "tests"))],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    here = digests({**SETTINGS, **MLP_SETTINGS})
    for coder, there in json.loads(run.stdout.strip().splitlines()[-1]).items():
        assert there == {name: here[name] for name in there}, coder


def _models():
    import keras

    from tests import _models as shared

    yield "sequential_cnn", shared.sequential_cnn()[0]
    keras.utils.set_random_seed(5)
    inputs = keras.Input((24,))
    hidden = keras.layers.Dense(4096, activation="relu")(inputs)  # 102k kernel values: two blocks
    yield "wide_mlp", keras.Model(inputs, keras.layers.Dense(10)(hidden))


ROLLS = {
    "balanced": {},
    "tolerance 0.05": {"tolerance": 0.05},
    "codebook 4 bits": {"bits": 4},
}


@pytest.mark.slow
def test_rolled_archives_are_the_same_without_the_kernel():
    import weightroll

    if KERNEL is None:
        pytest.skip("the C kernel is not built (setup.py): numpy is the only coder here")

    def roll(model, kwargs):
        buf = io.BytesIO()
        weightroll.roll(model, buf, **kwargs)
        return buf.getvalue()

    for name, model in _models():
        for setting, kwargs in ROLLS.items():
            with_kernel = roll(model, kwargs)
            assert _without_kernel(roll, model, kwargs) == with_kernel, (name, setting)
