"""The 2019 paper's pix-to-weight network: one global grid and a small MLP.

Rolling, as the paper does it: every coded weight of the model is quantised on
one min-max grid of `2**bits` levels shared by all tensors; an MLP is then
fitted by regression from the normalised grey level `q / (2**bits - 1)` to the
weight. Decoding evaluates the MLP at the pixel's normalised level.

The MLP runs in float64 and its output is rounded to float32, so that any
correct float64 implementation (numpy, Keras, another language) yields the
same float32 weights.
"""

import numpy as np

from weightroll._format.mlp_decoder import ACTIVATION, evaluate  # noqa: F401 - the decoder side, re-exported

HIDDEN_UNITS = (16, 16)
_STEPS = 3000
_LEARNING_RATE = 0.01


def grid_codes(values, lo, hi, bits):
    """Codes of `values` on the global min-max grid `[lo, hi]` of `2**bits` levels."""
    levels = (1 << bits) - 1
    span = hi - lo
    if span <= 0:
        return np.zeros(np.size(values), np.uint8)
    q = np.rint((np.asarray(values, np.float64).reshape(-1) - lo) / span * levels)
    return np.clip(q, 0, levels).astype(np.uint8)


def input_scale(bits):
    """The factor turning a code into the network's input, in binary64."""
    return 1.0 / float((1 << bits) - 1)


def fit(codes, values, bits, seed=0):
    """Fit the MLP by least squares regression of `values` on `codes`.

    The regression loss over all weights equals, up to a constant, the loss
    over the `2**bits` grey levels weighted by how many weights each holds, so
    the fit runs on those few points (full-batch Adam, float64, seeded): the
    same inputs give the same network bit for bit.

    Returns:
        A list `[kernel0, bias0, kernel1, bias1, ...]` of float64 arrays.
    """
    levels = 1 << bits
    counts = np.bincount(codes, minlength=levels).astype(np.float64)
    sums = np.bincount(codes, weights=np.asarray(values, np.float64).reshape(-1), minlength=levels)
    used = counts > 0
    x = (np.arange(levels, dtype=np.float64) * input_scale(bits))[used][:, None]
    target = sums[used] / counts[used]
    weight = counts[used] / counts[used].sum()
    mean = float(np.sum(weight * target))
    std = float(np.sqrt(np.sum(weight * (target - mean) ** 2))) or 1.0
    y = ((target - mean) / std)[:, None]

    rng = np.random.default_rng(seed)
    sizes = (1,) + HIDDEN_UNITS + (1,)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / fan_in)  # He uniform, suited to relu
        params.append(rng.uniform(-limit, limit, size=(fan_in, fan_out)))
        params.append(np.full(fan_out, 0.01 if fan_out > 1 else 0.0))
    moment1 = [np.zeros_like(p) for p in params]
    moment2 = [np.zeros_like(p) for p in params]
    for step in range(1, _STEPS + 1):
        grads = _gradients(params, x, y, weight[:, None])
        lr = _LEARNING_RATE * (0.5 * (1 + np.cos(np.pi * step / _STEPS)) + 1e-3)
        for p, g, m, v in zip(params, grads, moment1, moment2):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-12)
    # Fold the target standardisation into the last layer and the input
    # normalisation into the first: the network then maps raw codes to weights.
    params[-2] = params[-2] * std
    params[-1] = params[-1] * std + mean
    params[0] = params[0] * input_scale(bits)
    return params


def _gradients(params, x, y, w):
    activations = [x]
    h = x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0.0)
        activations.append(h)
    out = h @ params[-2] + params[-1]
    delta = 2.0 * w * (out - y)
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        a = activations[i // 2]
        grads[i] = a.T @ delta
        grads[i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ params[i].T) * (a > 0)
    return grads
