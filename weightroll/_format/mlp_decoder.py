"""The paper's pix-to-weight MLP, evaluated as the format defines it (spec §6.3).

Readers evaluate the network once on every code and look codes up in the
result; this is that evaluation, in a summation order every correct
implementation reproduces bit for bit. Fitting the network is encoding
(`weightroll.coders.mlp`).
"""

import numpy as np

ACTIVATION = "relu"


def dense(h, kernel, bias):
    """`h @ kernel + bias` with a fixed summation order and no fused multiply-add.

    Each output is `((bias + h[0] * k[0]) + h[1] * k[1]) + ...`, every step one
    IEEE binary64 multiply and one add, so every correct implementation gets
    the same bits (a BLAS matmul may reorder the sum or fuse operations).
    """
    acc = np.broadcast_to(bias, (h.shape[0], bias.shape[0])).copy()
    for k in range(kernel.shape[0]):
        acc += h[:, k:k + 1] * kernel[k]
    return acc


def evaluate(params, bits, activation=ACTIVATION, codes=None):
    """The MLP's float32 output for `codes` (all `2**bits` codes by default)."""
    if activation != "relu":
        raise ValueError(f"Unsupported activation {activation!r}; the format defines 'relu' only.")
    if codes is None:
        codes = np.arange(1 << bits)
    h = np.asarray(codes, np.float64).reshape(-1, 1)
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(dense(h, params[i], params[i + 1]), 0.0)
    out = dense(h, params[-2], params[-1])
    return out[:, 0].astype(np.float32)
