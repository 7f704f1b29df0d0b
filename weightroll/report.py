"""The roll value: what rolling cost, measured on weights and outputs (numpy)."""

import dataclasses

import numpy as np

from weightroll._format.manifest import finite_or_none
from weightroll.coders.error import sum_of_squares


def tensor_error(original, decoded):
    """Relative RMSE and max absolute error of one tensor, with the sums behind them.

    Returns:
        `(error, sq_err, sq_ref)`: the dict stored in the manifest, and the
        squared error and squared norm (for the overall figure).
    """
    a = np.asarray(original).reshape(-1)
    b = np.asarray(decoded).reshape(-1)
    if a.dtype.name == "bfloat16":  # numpy does not count ml_dtypes' bfloat16 as floating
        a, b = a.astype(np.float32), b.astype(a.dtype).astype(np.float32)
    if a.size == 0 or not np.issubdtype(a.dtype, np.floating):
        exact = a.size == 0 or bool(np.array_equal(a, b))
        return {"relative_rmse": 0.0 if exact else None, "max_abs_error": 0.0 if exact else None}, 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        err = a - b.astype(a.dtype)
        if not np.all(np.isfinite(err)):  # matching infinities and NaNs are no error
            err = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0, err)
    sq_err = sum_of_squares(err)
    finite = bool(np.all(np.isfinite(a)))
    sq_ref = sum_of_squares(a) if finite else float("inf")
    max_err = float(np.max(np.abs(err))) if err.size else 0.0
    return error_from_sums(sq_err, sq_ref, max_err)


def error_from_sums(sq_err, sq_ref, max_err):
    """`tensor_error`'s result from the sums it is made of (`sq_ref` is inf
    for a tensor holding non-finite values)."""
    if sq_err == 0.0:
        rel = 0.0
    elif sq_ref == 0.0:
        rel = float("inf")
    else:
        rel = float(np.sqrt(sq_err / sq_ref))
    finite = sq_ref < float("inf")
    return ({"relative_rmse": finite_or_none(rel), "max_abs_error": finite_or_none(max_err)},
            sq_err, sq_ref if finite else 0.0)


def exact_error(array):
    """`tensor_error` of a tensor stored exactly, without comparing it to itself."""
    a = np.asarray(array)
    finite_float = np.issubdtype(a.dtype, np.floating) and a.size and bool(np.all(np.isfinite(a)))
    return {"relative_rmse": 0.0, "max_abs_error": 0.0}, 0.0, sum_of_squares(a) if finite_float else 0.0


def weights_roll_value(stats, storage, sizes):
    """Per-tensor and overall weight errors.

    Args:
        stats: dict path -> `tensor_error`'s `(error, sq_err, sq_ref)`.
        storage: dict path -> "coded", "exact" or "reference".
        sizes: dict path -> number of values.

    Returns:
        `(per_tensor, overall)`; only float tensors count towards `overall`.
    """
    per_tensor, sq_err, sq_ref, max_err = {}, 0.0, 0.0, 0.0
    coded = exact = 0
    for path, (error, e2, r2) in stats.items():
        per_tensor[path] = error
        sq_ref += r2
        if storage[path] == "coded":
            coded += sizes[path]
            sq_err += e2
            max_err = max(max_err, error["max_abs_error"] or 0.0)
        else:
            exact += sizes[path]
    overall = {
        "relative_rmse": finite_or_none(np.sqrt(sq_err / sq_ref)) if sq_ref > 0 else 0.0,
        "max_abs_error": finite_or_none(max_err),
        "coded_values": int(coded),
        "exact_values": int(exact),
    }
    return per_tensor, overall


def flatten_outputs(outputs):
    """A model's outputs (a list of arrays) as one float64 matrix, a row per sample."""
    return np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outputs], axis=1)


# For each figure of an output roll value, whether a larger one is worse.
_LARGER_IS_WORSE = {"max_abs_diff": True, "mean_abs_diff": True, "relative_rmse": True, "cosine": False,
                    "top1_agreement": False}


def worse_roll_value(held_out, fit):
    """The output roll value to stand by: the held-out samples' figures, each
    replaced by the fit samples' where that is worse.

    The fit samples are the ones the codes were chosen on, so a fresh input
    does no better than they do, in expectation; a held-out figure better than
    the fit's comes from a small held-out part that happened to be easy
    (6 of 24 crops of HED's calibration photographs measured 0.0195 against
    the fit's 0.035; other photographs then gave 0.0335).

    Args:
        held_out: `outputs_roll_value` on the samples held out of the fit.
        fit: the same on the fit samples.

    Returns:
        A dict with `held_out`'s keys, `samples` the held-out count.
    """
    out = dict(held_out)
    for key, larger_is_worse in _LARGER_IS_WORSE.items():
        if key in held_out:
            a, b = held_out[key], fit.get(key)
            out[key] = None if a is None or b is None else (max(a, b) if larger_is_worse else min(a, b))
    return out


def outputs_roll_value(original, rolled):
    """How far a rolled model's outputs moved from the original's.

    Args:
        original: list of output arrays of the original model.
        rolled: the same outputs from the rolled model.

    Returns:
        A dict: `samples`, `max_abs_diff`, `mean_abs_diff`, `relative_rmse`,
        `cosine` (mean over samples) and, for a single output whose last axis
        has more than one entry, `top1_agreement`.
    """
    a, b = flatten_outputs(original), flatten_outputs(rolled)
    diff = np.abs(a - b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na > 0) & (nb > 0), np.sum(a * b, axis=1) / (na * nb), np.where(na == nb, 1.0, 0.0))
    result = {
        "samples": int(a.shape[0]),
        "max_abs_diff": finite_or_none(diff.max() if diff.size else 0.0),
        "mean_abs_diff": finite_or_none(diff.mean() if diff.size else 0.0),
        "relative_rmse": finite_or_none(np.linalg.norm(a - b) / np.linalg.norm(a)) if np.linalg.norm(a) else 0.0,
        "cosine": finite_or_none(cos.mean() if cos.size else 1.0),
    }
    if len(original) == 1 and np.ndim(original[0]) >= 2 and np.shape(original[0])[-1] > 1:
        top_a = np.argmax(np.asarray(original[0]), axis=-1)
        top_b = np.argmax(np.asarray(rolled[0]), axis=-1)
        result["top1_agreement"] = float(np.mean(top_a == top_b))
    return result


@dataclasses.dataclass(frozen=True)
class RollReport:
    """What `weightroll.roll` wrote and what it cost.

    Attributes:
        filepath: where the archive was written (None for a file object).
        archive_bytes: size of the archive.
        float32_bytes: size of the model's variables as float32 (4 bytes per value).
        member_bytes: size of each archive member.
        parameters: number of values in the model's variables.
        decoder: `"codebook"` or `"mlp"`.
        settings: how the rate was set: `{"bits": N}` or `{"tolerance": t}`
            (with `"quality"` when a preset was named).
        roll_value: the roll value stored in the archive: `"weights"` (overall
            `relative_rmse`, `max_abs_error`), `"tensors"` (the same per
            variable path) and `"outputs"` (None unless `validation_data` was
            given): measured on the calibration samples held out of the fit
            (every 4th), each figure replaced by the fit samples' where that is
            worse (`worse_roll_value`), with the held-out samples' own figures
            under `"held_out"` and the fit samples' under `"fit"`.
    """

    filepath: object
    archive_bytes: int
    float32_bytes: int
    member_bytes: dict
    parameters: int
    decoder: str
    settings: dict
    roll_value: dict

    @property
    def compression_ratio(self):
        """How many times smaller the archive is than the float32 weights."""
        return self.float32_bytes / self.archive_bytes if self.archive_bytes else float("inf")

    @property
    def bits_per_value(self):
        """Archive bits per stored value, all members included."""
        return 8 * self.archive_bytes / self.parameters if self.parameters else 0.0

    def __str__(self):
        w = self.roll_value["weights"]
        lines = [
            f"Rolled {self.parameters:,} values into {self.archive_bytes:,} bytes "
            f"({_ratio_words(self.compression_ratio)} float32, {self.bits_per_value:.2f} bits per value; "
            f"decoder={self.decoder}, {', '.join(f'{k}={v}' for k, v in self.settings.items())}).",
            f"Weight roll value: relative RMSE {w['relative_rmse']:.3g}, max abs error {w['max_abs_error']:.3g}.",
        ]
        out = self.roll_value.get("outputs")
        if out:
            fit = out.get("fit")
            where = (f"{out['samples']} held-out samples (the fit used {fit['samples']}; each figure the worse "
                     "of the two parts')" if fit else f"{out['samples']} samples")
            line = (f"Output roll value on {where}: relative RMSE {out['relative_rmse']:.3g}, "
                    f"max abs diff {out['max_abs_diff']:.3g}, mean abs diff {out['mean_abs_diff']:.3g}, "
                    f"cosine {out['cosine']:.6f}")
            if "top1_agreement" in out:
                line += f", top-1 agreement {out['top1_agreement']:.2%}"
            if fit:
                line += f"; on the fit samples: relative RMSE {fit['relative_rmse']:.3g}, cosine {fit['cosine']:.6f}"
            lines.append(line + ".")
        return "\n".join(lines)


def _ratio_words(ratio):
    """'4.2x smaller than' or, for archives bigger than the weights (tiny models), '1.6x larger than'."""
    return f"{ratio:.1f}x smaller than" if ratio >= 1 else f"{1 / ratio:.1f}x larger than"
