"""What the benchmarks measure weightroll against, and how they measure it.

The baseline codecs (float16 + zstd, per-channel int8 + zstd) work on numpy
arrays and are decoded back for real, so their quality is measured the same
way as weightroll's: decoded weights put into the model, the model run on
held-out inputs. Quality metrics are computed here, independently of
`weightroll.report`, so that the library is not asked to grade itself.

Also here: interleaved timing of a baseline and a candidate (for
pytest-benchmark), the machine description, and the code that prints the
tables at the end of the run and writes them into `benchmarks/README.md`.
"""

import contextlib
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import numpy as np
import zstandard

ZSTD_LEVEL = 19
README = pathlib.Path(__file__).with_name("README.md")
# Set WEIGHTROLL_BENCH_README=0 to print the tables without rewriting README.md.
WRITE_README = os.environ.get("WEIGHTROLL_BENCH_README", "1") != "0"


# ---------------------------------------------------------------- baseline codecs


def zstd(data, level=ZSTD_LEVEL):
    return zstandard.ZstdCompressor(level=level).compress(data)


def unzstd(data):
    return zstandard.ZstdDecompressor().decompress(data)


def _is_float(array):
    return np.issubdtype(array.dtype, np.floating)


def float16_zstd(arrays):
    """Every float tensor as float16, other tensors as they are, one zstd -19 frame.

    Shapes and dtypes are not stored: they come from the architecture, which
    is counted separately (see `architecture_zst`).
    """
    parts = [np.ascontiguousarray(a.astype("<f2") if _is_float(a) else a).tobytes() for a in arrays]
    return zstd(b"".join(parts))


def float16_unzstd(blob, like):
    data, out, offset = unzstd(blob), [], 0
    for a in like:
        dtype = np.dtype("<f2") if _is_float(a) else a.dtype
        n = a.size * dtype.itemsize
        out.append(np.frombuffer(data, dtype, a.size, offset).reshape(a.shape).astype(a.dtype))
        offset += n
    return out


def _int8_quantised(a):
    """Symmetric per-output-channel int8: scale = max|w| / 127 over every axis
    but the last (Keras kernels are `(..., inputs, outputs)`)."""
    return _is_float(a) and a.ndim >= 2


def int8_zstd(arrays):
    """Kernels (float tensors of rank >= 2) as symmetric per-channel int8,
    with one float32 scale per output channel; 1-D tensors (biases,
    normalisation) and non-float tensors as they are. All of it, int8 bytes
    and scales included, in one zstd -19 frame.
    """
    codes, rest = [], []
    for a in arrays:
        if _int8_quantised(a):
            w = a.astype(np.float32).reshape(-1, a.shape[-1])
            scale = np.abs(w).max(axis=0) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            codes.append(np.clip(np.rint(w / scale), -127, 127).astype(np.int8).tobytes())
            rest.append(scale.astype("<f4").tobytes())
        else:
            rest.append(np.ascontiguousarray(a).tobytes())
    return zstd(b"".join(codes + rest))


def int8_unzstd(blob, like):
    data, offset = unzstd(blob), 0
    quantised = {}
    for i, a in enumerate(like):
        if _int8_quantised(a):
            quantised[i] = np.frombuffer(data, np.int8, a.size, offset).reshape(-1, a.shape[-1])
            offset += a.size
    out = []
    for i, a in enumerate(like):
        if i in quantised:
            scale = np.frombuffer(data, "<f4", a.shape[-1], offset)
            offset += 4 * a.shape[-1]
            out.append((quantised[i].astype(np.float32) * scale).reshape(a.shape).astype(a.dtype))
        else:
            out.append(np.frombuffer(data, a.dtype, a.size, offset).reshape(a.shape).copy())
            offset += a.nbytes
    return out


def float32_zstd(arrays):
    """Arrays as they are (float32), one zstd -19 frame: the lossless floor for raw weights."""
    return zstd(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))


def float32_unzstd(blob, like):
    data, out, offset = unzstd(blob), [], 0
    for a in like:
        out.append(np.frombuffer(data, a.dtype, a.size, offset).reshape(a.shape).copy())
        offset += a.nbytes
    return out


def architecture_zst(model):
    """The model's Keras config as compact JSON, zstd -19: what a weights-only
    baseline must ship beside its weights to be a model (a `.wroll` holds the same)."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    return zstd(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())


# ---------------------------------------------------------------- quality


def variable_arrays(model):
    """A numpy copy of every variable of `model`, in `model.variables` order."""
    return [np.array(v.numpy(), copy=True) for v in model.variables]


@contextlib.contextmanager
def weights_swapped(model, arrays):
    """Run `model` with `arrays` as its variables, then put the originals back."""
    originals = variable_arrays(model)
    try:
        for v, a in zip(model.variables, arrays, strict=True):
            v.assign(a)
        yield model
    finally:
        for v, a in zip(model.variables, originals, strict=True):
            v.assign(a)


def weight_relative_rmse(originals, decoded, keep=None):
    """sqrt(sum of squared errors / sum of squares) over the float tensors
    (those whose index is in `keep`, when given)."""
    err = ref = 0.0
    for i, (a, b) in enumerate(zip(originals, decoded, strict=True)):
        if not _is_float(a) or (keep is not None and i not in keep):
            continue
        a64, b64 = a.astype(np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
        err += float(np.sum((a64 - b64) ** 2))
        ref += float(np.sum(a64 * a64))
    return float(np.sqrt(err / ref)) if ref > 0 else 0.0


def output_quality(reference, outputs, classifier):
    """Mean cosine between output rows and, for classifiers, top-1 agreement."""
    a = np.asarray(reference, np.float64).reshape(len(reference), -1)
    b = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-300)
    quality = {"cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))}
    if classifier:
        quality["top1_agreement"] = float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))
    return quality


# ---------------------------------------------------------------- timing


class Interleaved:
    """Time a baseline and a candidate alternately in the same rounds.

    pytest-benchmark times the candidate (its table shows it); the baseline
    runs, timed here, in the `setup` of every round just before it. Both are
    also timed here with wall and process CPU time, warm-up rounds dropped.
    `between` (untimed) runs before each of the two, e.g. to clear Keras's
    session or delete the output file.
    """

    def __init__(self, baseline, candidate, between=None):
        self.baseline, self.candidate, self.between = baseline, candidate, between
        self.times = {"baseline": [], "candidate": []}  # (wall, cpu) per call

    def _timed(self, side, function):
        if self.between is not None:
            self.between()
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        self.times[side].append((time.perf_counter() - wall, time.process_time() - cpu))

    def run(self, benchmark, rounds, warmup_rounds=1):
        def setup():
            self._timed("baseline", self.baseline)
            if self.between is not None:
                self.between()
            return (), {}

        def target():
            wall, cpu = time.perf_counter(), time.process_time()
            self.candidate()
            self.times["candidate"].append((time.perf_counter() - wall, time.process_time() - cpu))

        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        for side, values in self.times.items():
            if len(values) > warmup_rounds:
                self.times[side] = values[warmup_rounds:]
        return self.summary()

    def summary(self):
        out = {}
        for side, values in self.times.items():
            out[side] = {
                "wall_median": statistics.median(w for w, _ in values),
                "wall_min": min(w for w, _ in values),
                "cpu_median": statistics.median(c for _, c in values),
                "rounds": len(values),
            }
        out["ratio_wall_median"] = out["candidate"]["wall_median"] / out["baseline"]["wall_median"]
        out["ratio_wall_min"] = out["candidate"]["wall_min"] / out["baseline"]["wall_min"]
        out["ratio_cpu_median"] = out["candidate"]["cpu_median"] / out["baseline"]["cpu_median"]
        return out


# ---------------------------------------------------------------- reporting


def machine_description():
    """One markdown paragraph: cores, CPU, memory, versions, load."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
        memory = f"{mem:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "RAM unknown"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"Measured {datetime.date.today().isoformat()} on `nproc` = {nproc} ({cpu}, {memory}), "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__} "
        f"(backend {keras.backend.backend()}), numpy {np.__version__}, zstandard {zstandard.__version__}. "
        f"Load average when the tables were written: {load}; other processes (test suites) were "
        "running on the machine at the same time, so timings are noisy: compare ratios measured "
        "in the same run, not absolute seconds across runs."
    )


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class _Summary:
    """A pytest plugin that prints the benchmarks' tables after pytest-benchmark's."""

    def __init__(self):
        self.sections = {}

    def pytest_terminal_summary(self, terminalreporter):
        for name, text in self.sections.items():
            terminalreporter.write_sep("-", f"weightroll {name}")
            for line in text.splitlines():
                terminalreporter.write_line(line)


def publish(config, name, text, complete):
    """Print `text` at the end of the run and, when `complete` (every case of
    the file ran), put it into README.md between the markers named `name`."""
    summary = config.pluginmanager.get_plugin("weightroll_bench_summary")
    if summary is None:
        summary = _Summary()
        config.pluginmanager.register(summary, "weightroll_bench_summary")
    summary.sections[name] = text
    if complete and WRITE_README:
        replace_section(name, text)
    elif not complete:
        summary.sections[name] += (
            "\n(Not every case ran, so README.md was left as it was.)"
        )


def replace_section(name, text, path=README):
    begin, end = f"<!-- begin {name} (written by the benchmark) -->", f"<!-- end {name} -->"
    current = path.read_text() if path.exists() else ""
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1]
        current = f"{head}{begin}\n{text}\n{end}{tail}"
    else:
        current = f"{current.rstrip()}\n\n{begin}\n{text}\n{end}\n"
    path.write_text(current)


def fmt_bytes(n):
    return f"{int(n):,}"
