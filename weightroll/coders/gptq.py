"""Error-compensating rounding onto a uniform grid (GPTQ), in numpy.

A matrix `W` of shape `(inputs, outputs)` (a Dense kernel, say) feeds
`x @ W`. Rounding each weight to the nearest grid point ignores that the
errors of one output add up over the inputs; with `H = X^T X` (the inputs'
second moments on calibration data), GPTQ rounds the rows of `W` in turn and
moves each row's rounding error onto the rows not yet rounded, so that the
output error `trace(E^T H E)` shrinks. Rows are taken in decreasing order of
`diag(H)` ("act-order") and `H` is dampened by 10% of its mean diagonal
(1% fits the calibration data a little better and new data a little worse:
on the heavy-tailed test model the output error then grows by a third from
calibration to held-out inputs, against a tenth with 10%).

Values that a code cannot hold (more than 127 steps from zero, or marked
`exact` beforehand, such as planted outliers) keep their original value.
"""

import numpy as np

from weightroll.coders import uniform
from weightroll.errors import WrollError

HALF_RANGE = 127  # grid points -127..127 steps; farther values are stored exactly
DAMPENING = 0.1
_BLOCK = 128
# A value more than this many robust standard deviations from zero is stored
# exactly before rounding (a planted outlier: rounding it costs a code the
# grid cannot give it without coarsening every other value).
OUTLIER_SIGMAS = 40.0


def planted_outliers(values):
    """Values far outside the bulk: `|w| > 40 * sigma`, sigma from the median absolute value.

    Args:
        values: a float array.

    Returns:
        A bool array of `values`' shape.
    """
    a = np.abs(np.asarray(values, np.float64))
    sigma = float(np.median(a)) / 0.6745 if a.size else 0.0
    if sigma <= 0:
        return np.zeros(a.shape, bool)
    return a > OUTLIER_SIGMAS * sigma


def round_to_grid(values, step, exact=None):
    """Round to nearest: integer levels `q` with `values ~ q * step`.

    Args:
        values: a float array.
        step: positive steps, broadcastable to `values`.
        exact: optional bool array of values to keep exactly.

    Returns:
        `(levels, exact)`: int64 levels (0 where exact) and the bool mask of
        values kept exactly (those given plus those beyond 127 steps).
    """
    x = np.asarray(values, np.float64)
    q = np.rint(x / np.broadcast_to(np.asarray(step, np.float64), x.shape))
    out = np.abs(q) > HALF_RANGE
    if exact is not None:
        out |= exact
    return np.where(out, 0, q).astype(np.int64), out


def _inverse_factor(hessian, damp):
    """Upper Cholesky factor `U` of `(H + damp * mean(diag H) * I)^-1` (so `Hinv = U^T U`)."""
    h = np.array(hessian, np.float64)
    n = h.shape[0]
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    for attempt in range(6):
        lam = damp * (10 ** attempt) * mean
        try:
            lower = np.linalg.cholesky(h + lam * np.eye(n))
            inverse = np.linalg.inv(lower)
            hinv = inverse.T @ inverse
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            continue
    raise WrollError("The calibration inputs' second-moment matrix is not positive definite, even dampened.")


def quantize(values, step, hessian, exact=None, damp=None, act_order=True):
    """GPTQ: round `values` (inputs x outputs) onto `step`'s grid, compensating errors.

    Args:
        values: float array of shape `(n, m)`: `n` inputs (the rows GPTQ
            walks through), `m` outputs.
        step: positive grid steps, broadcastable to `(n, m)`.
        hessian: `(n, n)` symmetric positive semi-definite matrix (`X^T X`
            of the inputs), or None for plain rounding to nearest.
        exact: optional bool array `(n, m)` of values to keep exactly.
        damp: dampening, a fraction of the mean diagonal of `hessian`
            (default `DAMPENING`).
        act_order: round inputs with the largest `diag(hessian)` first.

    Returns:
        `(levels, exact)` as `round_to_grid` gives them: the decoded tensor
        is `levels * step`, with `values` where `exact`.
    """
    w = np.array(values, np.float64)
    if w.ndim != 2:
        raise WrollError(f"GPTQ takes a matrix; received shape {w.shape}.")
    if hessian is None:
        return round_to_grid(w, step, exact)
    n, m = w.shape
    if np.shape(hessian) != (n, n):
        raise WrollError(f"GPTQ: a ({n}, {m}) matrix needs a ({n}, {n}) Hessian; received {np.shape(hessian)}.")
    st = np.broadcast_to(np.asarray(step, np.float64), w.shape)
    keep = np.zeros(w.shape, bool) if exact is None else np.asarray(exact, bool)
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(n)
    original = w[order]
    work = original.copy()
    st, keep = st[order], keep[order]
    u = _inverse_factor(np.asarray(hessian)[np.ix_(order, order)], DAMPENING if damp is None else damp)
    q = np.zeros((n, m), np.int64)
    out = np.zeros((n, m), bool)
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        errors = np.zeros((end - start, m))
        for i in range(start, end):
            row = work[i]
            level = np.rint(row / st[i])
            far = keep[i] | (np.abs(level) > HALF_RANGE)
            decoded = np.where(far, original[i], level * st[i])
            q[i] = np.where(far, 0, level)
            out[i] = far
            err = (row - decoded) / u[i, i]
            errors[i - start] = err
            if i + 1 < end:
                work[i + 1:end] -= np.outer(u[i, i + 1:end], err)
        if end < n:
            work[end:] -= u[start:end, end:].T @ errors
    inverse = np.argsort(order)
    return q[inverse], out[inverse]


def weighted_error(values, decoded, hessian):
    """`trace(E^T H E)` for the error `E = values - decoded` (inputs x outputs)."""
    e = np.asarray(values, np.float64) - np.asarray(decoded, np.float64)
    return float(np.einsum("ij,ik,kj->", e, np.asarray(hessian, np.float64), e))


# A channel's sensitivity is taken as at least this fraction of the tensor's
# mean, so that no channel (an embedding row no calibration sample looks up,
# a unit the calibration data never activates) gets an unbounded step.
CHANNEL_FLOOR = 0.1
_SCALE_BITS = 32  # a float32 scale per channel


def channel_steps(fisher):
    """Grid steps from a diagonal Fisher: each channel's step is `1 / sqrt(mean F)`.

    A step proportional to `1 / sqrt(F)` gives every weight the same expected
    share of the output error (equal slopes). The channel axis is the one
    whose channels differ most in sensitivity (the largest saving,
    `0.5 * log2` of the ratio of arithmetic to geometric mean per value),
    if that saving pays for the channel scales; otherwise one step serves
    the whole tensor.

    Args:
        fisher: non-negative array of the tensor's shape.

    Returns:
        `(axis, steps)`: None and a float, or an axis and a float64 vector
        of one step per channel; None if the tensor has no sensitivity.
    """
    f = np.asarray(fisher, np.float64)
    mean = float(f.mean()) if f.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return None
    best = (0.0, None, 1.0 / np.sqrt(mean))
    for axis in range(f.ndim) if f.ndim >= 2 else ():
        if f.shape[axis] < 2:
            continue
        other = tuple(a for a in range(f.ndim) if a != axis)
        per = np.maximum(f.mean(axis=other), CHANNEL_FLOOR * mean)
        saving = 0.5 * (f.size / per.size) * float(np.sum(np.log2(np.mean(per) / per)))
        saving -= _SCALE_BITS * per.size
        if saving > best[0]:
            best = (saving, axis, 1.0 / np.sqrt(per))
    return best[1], best[2]


def code(values, axis, steps, hessian=None, shape=None, transpose=False):
    """Code a tensor on a grid of given steps, with GPTQ where a Hessian is given.

    Args:
        values: the float tensor.
        axis: channel axis of `steps`, or None for one step.
        steps: a float (axis None) or one step per channel.
        hessian: optional `(n, n)` Hessian of the matrix view's rows.
        shape: the `(rows, columns)` the tensor reshapes to for GPTQ.
        transpose: GPTQ works on the transposed view (rows of the view
            become its columns: an embedding's features are GPTQ's inputs).

    Returns:
        A `uniform.UniformCode` with planted outliers and values beyond
        127 steps stored exactly.
    """
    x = np.asarray(values)
    if axis is None:
        step32 = np.float32(steps)
        full = np.float64(step32)
    else:
        step32 = np.asarray(steps, np.float32)
        full = np.broadcast_to(uniform.broadcast_scales(step32.astype(np.float64), x.shape, axis), x.shape)
    exact = planted_outliers(x)
    if hessian is None:
        levels, out = round_to_grid(x, full, exact)
    else:
        view = (lambda a: a.reshape(shape).T) if transpose else (lambda a: a.reshape(shape))
        st = view(np.broadcast_to(full, x.shape))
        levels, out = quantize(view(x), st, hessian, view(exact))
        if transpose:
            levels, out = levels.T, out.T
        levels, out = levels.reshape(x.shape), out.reshape(x.shape)
    return uniform.from_levels(x, levels, out, step32, axis)
