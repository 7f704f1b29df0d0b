#!/usr/bin/env bash
# The test command: the whole suite under Keras's TensorFlow backend, then the
# round-trip, callback and cross-backend tests again under JAX (float64 enabled,
# which the paper's MLP decoder network needs).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
KERAS_BACKEND=tensorflow python -m pytest tests -q "$@"
KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -q "$@" \
  tests/test_roundtrip.py tests/test_callback.py tests/test_backends.py tests/test_pix_to_weight.py tests/test_archive.py \
  tests/test_load_values.py tests/test_keras_saving_port.py tests/test_checkpoint_keras.py
