"""The 2019 paper's pix-to-weight network: one global grid and a small MLP.

Rolling, as the paper does it: every coded weight of the model is quantised on
one min-max grid of `2**bits` levels shared by all tensors; an MLP is then
fitted by regression from the normalised grey level `q / (2**bits - 1)` to the
weight. Decoding evaluates the MLP at the pixel's normalised level.

The MLP runs in float64 and its output is rounded to float32, so that any
correct float64 implementation (numpy, Keras, another language) yields the
same float32 weights. The fit gives the same network, bit for bit, on every
machine: its matrix products are exact (`_product`), its other operations
elementwise, and it calls no transcendental function of numpy's or libm's,
whose last bits differ between CPUs.
"""

import math

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
    same inputs give the same network bit for bit, on every machine.

    Returns:
        A list `[kernel0, bias0, kernel1, bias1, ...]` of float64 arrays.
    """
    levels = 1 << bits
    counts = np.bincount(codes, minlength=levels).astype(np.float64)
    sums = np.bincount(codes, weights=np.asarray(values, np.float64).reshape(-1), minlength=levels)
    used = counts > 0
    x = (np.arange(levels, dtype=np.float64) * input_scale(bits))[used][:, None]
    target = sums[used] / counts[used]
    weight = counts[used] / counts[used].sum()  # a sum of integers: exact in any order
    mean = math.fsum((weight * target).tolist())  # correctly rounded: no order to agree on
    spread = target - mean
    std = math.sqrt(math.fsum((weight * spread * spread).tolist())) or 1.0
    y = ((target - mean) / std)[:, None]

    rng = np.random.default_rng(seed)
    sizes = (1,) + HIDDEN_UNITS + (1,)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / fan_in)  # He uniform, suited to relu
        params.append(rng.uniform(-limit, limit, size=(fan_in, fan_out)))
        params.append(np.full(fan_out, 0.01 if fan_out > 1 else 0.0))
    # All parameters in one vector, each a view of it: an Adam step is a few
    # operations on the vector.
    theta = np.concatenate([p.reshape(-1) for p in params])
    offsets = np.cumsum([0] + [p.size for p in params])
    params = [theta[start: stop].reshape(p.shape) for p, start, stop in zip(params, offsets, offsets[1:])]
    moment1, moment2 = np.zeros_like(theta), np.zeros_like(theta)
    rates = _LEARNING_RATE * (0.5 * (1 + _cosine(np.pi * np.arange(1, _STEPS + 1) / _STEPS)) + 1e-3)
    decay1 = decay2 = 1.0  # 0.9 ** step and 0.999 ** step, by products (not libm's pow)
    for step in range(1, _STEPS + 1):
        g = np.concatenate([grad.reshape(-1) for grad in _gradients(params, x, y, weight[:, None])])
        decay1, decay2 = decay1 * 0.9, decay2 * 0.999
        moment1 *= 0.9
        moment1 += 0.1 * g
        moment2 *= 0.999
        moment2 += 0.001 * g * g
        theta -= float(rates[step - 1]) * (moment1 / (1 - decay1)) / (np.sqrt(moment2 / (1 - decay2)) + 1e-12)
    params = [p.copy() for p in params]
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
        h = np.maximum(_product(h, params[i]) + params[i + 1], 0.0)
        activations.append(h)
    out = _product(h, params[-2]) + params[-1]
    delta = 2.0 * w * (out - y)
    grads = [None] * len(params)
    ones = np.ones((x.shape[0], 1))
    for i in range(len(params) - 2, -1, -2):
        a = activations[i // 2]
        # The bias's gradient is the kernel's for an input of ones: one product.
        both = _product(np.concatenate([a, ones], axis=1).T, delta)
        grads[i], grads[i + 1] = both[:-1], both[-1]
        if i:
            delta = _product(delta, params[i].T) * (a > 0)
    return grads


# The fit's matrix products sum over at most 2**_TERMS_BITS terms (the grey
# levels); their operands are split into integers of _PIECE_BITS bits.
_TERMS_BITS = 8
_PIECE_BITS = (53 - _TERMS_BITS) // 2


def _pieces(a):
    """`(high, low, scale)`: `a * scale` (`scale` a power of two) split into
    integers of at most `_PIECE_BITS` bits, `high + low * 2**-_PIECE_BITS`,
    to within 2**-45 of `a`'s largest magnitude. Each step is exact."""
    scale = math.ldexp(1.0, _PIECE_BITS - math.frexp(float(np.abs(a).max()))[1])  # |a| * scale < 2**22
    scaled = a * scale
    high = np.rint(scaled)
    return high, np.rint((scaled - high) * 2.0 ** _PIECE_BITS), scale


def _product(a, b):
    """The matrix product `a @ b` (to within about 2**-43 of its largest
    terms), the same bits on every machine. A plain `a @ b` is not: BLAS
    kernels add in an order, and fuse multiplies with adds, as the CPU
    suits. Here each of three BLAS products multiplies integer pieces
    (`_pieces`) of at most 22 bits and sums at most 2**8 such products:
    every partial sum is an integer below 2**53, exact in float64, in any
    order. The three exact products are then combined in a fixed order."""
    if a.shape[1] == 1:  # no sums: one rounding per product
        return a * b
    if a.shape[1] > 1 << _TERMS_BITS:
        raise ValueError(f"_product sums at most {1 << _TERMS_BITS} terms, not {a.shape[1]}.")
    a_high, a_low, a_scale = _pieces(a)
    b_high, b_low, b_scale = _pieces(b)
    exact = a_high @ b_high + (a_high @ b_low + a_low @ b_high) * 2.0 ** -_PIECE_BITS
    return exact / a_scale / b_scale


def _cosine(t):
    """cos(t) for `t` in [0, pi], by its Taylor series to the 30th power in
    Horner's order: elementwise float64 operations, the same bits everywhere
    (numpy's and libm's cosines may differ in the last bit between CPUs)."""
    t2 = t * t
    out = np.ones_like(t)
    for n in range(15, 0, -1):
        out = 1.0 - out * t2 / ((2 * n - 1) * (2 * n))
    return out
