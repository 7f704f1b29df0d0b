"""Per-tensor codebooks fitted by 1-D k-means (Lloyd-Max).

A tensor's values are mapped to at most `2**bits` reconstruction values (its
codebook); each value is stored as the index of its nearest entry. Decoding is
a table look-up and therefore exact for the chosen codes.
"""

import numpy as np

_MAX_ITERATIONS = 40


def fit_codebook(values, bits):
    """Fit a codebook to `values` and code them.

    When the tensor has at most `2**bits` distinct values, the codebook is
    those values and coding is lossless (up to float32). Otherwise Lloyd's
    algorithm runs on the sorted values, started from quantiles, each
    iteration costing `O(K log n)` thanks to prefix sums.

    Args:
        values: a float array of any shape.
        bits: code width, 1 to 8.

    Returns:
        `(table, codes)`: a sorted float32 array of at most `2**bits` entries and
        a uint8 array of `values.size` indices into it.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    k = 1 << bits
    if x.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.uint8)
    s = np.sort(x)
    distinct = np.concatenate(([True], s[1:] != s[:-1]))
    if np.count_nonzero(distinct) <= k:
        table = np.unique(s[distinct].astype(np.float32))
    else:
        table = _lloyd(s, k).astype(np.float32)
        table = np.unique(table)
        # One more Lloyd step in float32: re-centre each entry on the mean of
        # the values it codes, then drop entries that coded nothing.
        codes = assign(x, table)
        counts = np.bincount(codes, minlength=table.size)
        sums = np.bincount(codes, weights=x, minlength=table.size)
        used = counts > 0
        table = np.unique((sums[used] / counts[used]).astype(np.float32))
    # Codes always point at the nearest entry of the final table.
    return table, assign(x, table)


def assign(x, table):
    """Index of the nearest entry of the sorted `table` for each value of `x`."""
    if table.size == 1:
        return np.zeros(x.size, np.uint8)
    t = table.astype(np.float64)
    boundaries = (t[:-1] + t[1:]) / 2
    return np.searchsorted(boundaries, x, side="left").astype(np.uint8)


def _lloyd(s, k):
    """k-means centroids of the sorted float64 array `s`."""
    n = s.size
    prefix = np.concatenate(([0.0], np.cumsum(s)))
    centroids = _companded_start(s, k)
    for _ in range(_MAX_ITERATIONS):
        boundaries = (centroids[:-1] + centroids[1:]) / 2
        edges = np.concatenate(([0], np.searchsorted(s, boundaries, side="left"), [n]))
        counts = np.diff(edges)
        keep = counts > 0
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        updated = sums[keep] / counts[keep]
        if updated.size == centroids.size and np.array_equal(updated, centroids):
            break
        centroids = np.unique(updated)
    return centroids


def _companded_start(s, k, bins=4096):
    """Starting centroids with density proportional to p(x) ** (1/3).

    That is the asymptotically optimal point density for mean squared error
    (Panter and Dite), so Lloyd's iterations start close to their optimum,
    rather than crawling out from quantiles into the tails.
    """
    counts, edges = np.histogram(s, bins=bins)
    mass = np.cumsum(_cube_root(counts.astype(np.float64)))
    targets = (np.arange(k) + 0.5) / k * mass[-1]
    idx = np.searchsorted(mass, targets)
    centres = (edges[idx] + edges[idx + 1]) / 2
    return np.unique(np.clip(centres, s[0], s[-1]))


def _cube_root(c):
    """Cube roots of non-negative float64 `c` by Newton's method from a power
    of two at most twice the root: elementwise arithmetic, the same bits on
    every machine (numpy's `power` uses a vector math library on some CPUs,
    whose last bits differ from libm's)."""
    y = np.ldexp(1.0, -(-np.frexp(c)[1] // 3))
    for _ in range(8):  # quadratic convergence: 2x off, then 1.4, 1.1, 1.01, 1 + 1e-4, 1e-8, 1e-16
        y = (2.0 * y + c / (y * y)) / 3.0
    return np.where(c > 0, y, 0.0)
