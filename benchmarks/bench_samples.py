"""How many calibration samples calibration needs (issue 14, item 2).

For real models of `_real_models.py` (the MTCNN R-Net and O-Net, and the
Transformer language model trained here on the standard library's
docstrings), `weightroll.roll(model, path, validation_data=x)` with the
default `quality="balanced"` (output tolerance 0.04) is run with `n` of the
model's calibration inputs, for several `n`, and measured on the same
held-out inputs as `bench_real.py` (other photographs, other modules).

The `n` samples are the first `n` of a fixed permutation of the model's
calibration pool (its 48 calibration inputs for MTCNN, 128 windows of the
training text for the language model), so a smaller set is a part of every
larger one. Every 4th of them is held out of the fit by weightroll itself;
the stored roll value is measured on those.

Reported per row: bits per weight, the held-out output relative RMSE and
mean cosine, the stored roll value, and their ratio (a stored value that
promises less error than fresh inputs see is the failure this measures).

Run: `python -m pytest benchmarks/bench_samples.py --benchmark-only`
(needs `pip install -e ".[test,bench]"`; about 20 minutes on 2 cores, most
of it the language model's calibrated rolls).
"""

import numpy as np
import pytest

import _baselines as bl
import weightroll
from bench_real import case, output_error

COUNTS = {"mtcnn_rnet": [8, 16, 32, 48], "mtcnn_onet": [8, 16, 32, 48], "stdlib_lm": [8, 16, 32, 64, 128]}
RESULTS = {name: {} for name in COUNTS}

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def calibration_subset(real, n):
    pool = real.calibration if real.calibration_pool is None else real.calibration_pool
    if n > len(pool):
        raise ValueError(f"{real.name} has {len(pool)} calibration inputs; asked for {n}")
    return pool[np.sort(np.random.default_rng(0).permutation(len(pool))[:n])]


@pytest.mark.parametrize(("name", "n"), [pytest.param(m, n, id=f"{m}-{n}") for m in COUNTS for n in COUNTS[m]])
def test_calibration_samples(benchmark, tmp_path, name, n):
    real = case(name)
    benchmark.group = f"calibration samples: {real.title}"
    benchmark.name = f"{n} samples"
    path = tmp_path / "model.wroll"
    x = calibration_subset(real, n)
    report = benchmark.pedantic(lambda: weightroll.roll(real.model, path, validation_data=x), rounds=1,
                                iterations=1)
    loaded = weightroll.load_rolled(path)
    from _real_models import predict

    held = output_error(real.reference, predict(loaded, real.held_out))
    stored = report.roll_value["outputs"]
    RESULTS[name][n] = {
        "bits_per_weight": 8 * report.archive_bytes / real.parameters,
        "held_out": held,
        "stored": stored["relative_rmse"],
        "stored_samples": stored["samples"],
        "fit": stored.get("fit", {}).get("relative_rmse"),
        "seconds": benchmark.stats.stats.median,
    }
    benchmark.extra_info.update(RESULTS[name][n])


@pytest.fixture(scope="module", autouse=True)
def _tables(request):
    yield
    complete = all(len(RESULTS[m]) == len(COUNTS[m]) for m in COUNTS)
    bl.publish(request.config, "bench_samples", report(), complete)


def report():
    header = ["model", "calibration samples (held out of the fit)", "bits per weight", "held-out rel. RMSE",
              "held-out cosine (min)", "stored roll value (fit samples')", "held-out / stored", "roll s"]
    rows = []
    for name, by_n in RESULTS.items():
        for n, r in sorted(by_n.items()):
            held = r["held_out"]
            rows.append([name, f"{n} ({r['stored_samples']})", f"{r['bits_per_weight']:.3f}",
                         f"{held['relative_rmse']:.4f}", f"{held['cosine']:.6f} ({held['min_cosine']:.4f})",
                         f"{r['stored']:.4f} ({r['fit']:.4f})" if r["fit"] is not None else f"{r['stored']:.4f}",
                         f"{held['relative_rmse'] / max(r['stored'], 1e-300):.2f}x", f"{r['seconds']:.0f}"])
    return (bl.machine_description() + " `quality=\"balanced\"` (output tolerance 0.04), held-out inputs as in "
            "`bench_real.py`.\n\n" + bl.markdown_table(header, rows))
