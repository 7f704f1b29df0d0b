"""Speed and memory (issue 8): weightroll against Keras's own saving and loading.

On `ResNet50(weights=None)` (25,636,712 values) and a ~1M-value CNN, each
pair measured in the same run, interleaved round by round (baseline, then
candidate), warm-up round dropped:

1. `weightroll.roll(model, "x.wroll")` against `model.save("x.keras")`;
2. `weightroll.load_rolled("x.wroll")` against `keras.models.load_model("x.keras")`;
3. `weightroll.unroll("x.wroll")` in float32 bytes produced per second,
   against the bound set by bare PNG decoding of the archive's own
   `weights.png`: inflating its IDAT stream, the least any PNG decoder does
   (the faster of zlib and zlib-ng; no filters undone, no checks);
4. peak memory of roll, load_rolled and their Keras counterparts: the RSS
   high-water mark over the RSS just before the operation, and tracemalloc's
   peak (numpy and Python allocations only, not TensorFlow's), each in a
   fresh subprocess per operation, as multiples of the float32 weights. For
   the loads, whose result holds the weights, the RSS beyond the loaded
   model's own float32 weights is shown too.

pytest-benchmark times the candidates (its table); the summary printed at the
end, and written into `benchmarks/README.md`, has both sides and the ratios.

Run: `python -m pytest benchmarks/bench_speed.py --benchmark-only`
(about 2.5 minutes on 2 cores; not part of `pytest tests`).

The big models of issue 16 (`WEIGHTROLL_BENCH_BIG=1`, or a comma-separated
list of their names) run instead of the two above, with that issue's goals,
into their own README section; each needs several GB and minutes per round:

- `lm_float32`, `lm_bfloat16`: an LM-shaped stack of 476,775,248 values (a
  50,000 x 4,096 Embedding, four 4,096-wide Dense layers, a 50,000-way
  output Dense), in float32 (1.9 GB) and in bfloat16;
- `gemma_bfloat16`: a KerasHub `GemmaBackbone` built from a config (no
  preset) of 1,021,904,896 values, the ~1B of issue 16: Gemma 2B's layer
  shape (width 2,048, 8 query heads of 256, one key-value head, FFN 16,384)
  in 16 layers with a 32,000-token vocabulary, in bfloat16.

Their memory probes run one at a time, not side by side.
"""

import concurrent.futures
import gc
import json
import os
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

if __name__ != "__main__":
    import _baselines as bl

BIG_ROUNDS = {"lm_float32": 3, "lm_bfloat16": 3, "gemma_bfloat16": 3}
_BIG = os.environ.get("WEIGHTROLL_BENCH_BIG", "")
BIG = [n for n in BIG_ROUNDS if _BIG == "1" or n in _BIG.split(",")]
ROUNDS = {n: BIG_ROUNDS[n] for n in BIG} if BIG else {"resnet50": 5, "cnn_1m": 7}
SECTION = "bench_speed_big" if BIG else "bench_speed"
WARMUP_ROUNDS = 1
MB = 1e6

if BIG:  # goals of issue 16, on 2 cores
    ROLL_OVER_SAVE = 0.5
    LOAD_OVER_LOAD_MODEL = 0.25
    UNROLL_MB_PER_S = 1500
    ROLL_MEMORY = 0.5  # peak extra memory, times the float32 weights
    LOAD_MEMORY = 1.2
else:  # goals of issue 8
    ROLL_OVER_SAVE = 1.0
    LOAD_OVER_LOAD_MODEL = 1.0
    UNROLL_MB_PER_S = 500
    ROLL_MEMORY = 1.5
    LOAD_MEMORY = 1.2

pytestmark = pytest.mark.filterwarnings(  # raised inside Keras's own `model.save`
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


# ---------------------------------------------------------------- the models


def build(name):
    import keras

    keras.utils.set_random_seed(0)
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None)
    if name == "cnn_1m":
        layers = keras.layers
        return keras.Sequential([
            keras.Input((32, 32, 3)),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, activation="relu"),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(256, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(1024, activation="relu"),
            layers.Dense(180, activation="softmax"),
        ], name="cnn_1m")  # 1,002,996 values
    if name.startswith("lm_"):
        return lm_stack(name[len("lm_"):])
    if name == "gemma_bfloat16":
        import keras_hub

        return keras_hub.models.GemmaBackbone(
            vocabulary_size=32_000, num_layers=16, num_query_heads=8, num_key_value_heads=1, hidden_dim=2048,
            intermediate_dim=16_384, head_dim=256, dtype="bfloat16")
    if name == "tiny":  # for warming up a subprocess
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="tiny")
    raise ValueError(name)


def lm_stack(dtype):
    """The LM-shaped stack of issue 16 (476,775,248 values)."""
    import keras

    layers = keras.layers
    inputs = keras.Input((16,), dtype="int32")
    x = layers.Embedding(50_000, 4096, dtype=dtype)(inputs)
    for _ in range(4):
        x = layers.Dense(4096, dtype=dtype)(x)
    return keras.Model(inputs, layers.Dense(50_000, dtype=dtype)(x), name=f"lm_{dtype}")


TITLES = {"resnet50": "ResNet50(weights=None)", "cnn_1m": "CNN, ~1M values",
          "lm_float32": "LM stack, float32", "lm_bfloat16": "LM stack, bfloat16",
          "gemma_bfloat16": "KerasHub GemmaBackbone, bfloat16"}


# ---------------------------------------------------------------- operations


def op_save(model, folder):
    model.save(os.path.join(folder, "model.keras"))


def op_roll(model, folder):
    import weightroll

    weightroll.roll(model, os.path.join(folder, "model.wroll"))


def op_load_model(folder):
    import keras

    return keras.models.load_model(os.path.join(folder, "model.keras"))


def op_load_rolled(folder):
    import weightroll

    return weightroll.load_rolled(os.path.join(folder, "model.wroll"))


def png_member(path):
    with zipfile.ZipFile(path) as zf:
        return zf.read("weights.png")


def idat_stream(data):
    """The concatenated IDAT chunk data of a PNG (its zlib stream)."""
    pos, parts = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if kind == b"IDAT":
            parts.append(data[pos + 8: pos + 8 + length])
        pos += 12 + length
    return b"".join(parts)


def png_inflaters():
    import zlib

    from zlib_ng import zlib_ng

    return {"zlib": zlib.decompress, "zlib-ng": zlib_ng.decompress}


def png_decode(stream, inflate):
    """Bare PNG decoding: inflate the zlib stream (rows and filter bytes)."""
    return inflate(stream)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in ROUNDS}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    """Each model saved once as `.keras` and rolled once, plus the tiny model
    the memory probes warm up on."""
    folders = {}
    for name, model in [*models.items(), ("tiny", build("tiny"))]:
        folder = tmp_path_factory.mktemp(name)
        op_save(model, folder)
        op_roll(model, folder)
        folders[name] = folder
    return folders


RESULTS = {"save_roll": {}, "load": {}, "unroll": {}, "memory": {}, "facts": {}}


def _facts(name, model, folder):
    params = int(sum(np.prod(v.shape) for v in model.variables))
    RESULTS["facts"][name] = {
        "parameters": params,
        "float32_bytes": 4 * params,
        "keras_bytes": (folder / "model.keras").stat().st_size,
        "wroll_bytes": (folder / "model.wroll").stat().st_size,
    }
    return RESULTS["facts"][name]


def _remove(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    gc.collect()


# ---------------------------------------------------------------- 1-3: time


@pytest.mark.parametrize("name", list(ROUNDS))
def test_roll_against_save(benchmark, models, files, tmp_path, name):
    model = models[name]
    _facts(name, model, files[name])
    benchmark.group = "roll (candidate) against model.save, interleaved"
    pair = bl.Interleaved(
        baseline=lambda: op_save(model, tmp_path),
        candidate=lambda: op_roll(model, tmp_path),
        between=lambda: _remove(tmp_path / "model.keras", tmp_path / "model.wroll"),
    )
    result = pair.run(benchmark, ROUNDS[name], WARMUP_ROUNDS)
    benchmark.extra_info.update(result)
    RESULTS["save_roll"][name] = result


@pytest.mark.parametrize("name", list(ROUNDS))
def test_load_rolled_against_load_model(benchmark, files, name):
    import keras

    folder = files[name]

    def between():
        keras.backend.clear_session()
        gc.collect()

    benchmark.group = "load_rolled (candidate) against keras.models.load_model, interleaved"
    pair = bl.Interleaved(baseline=lambda: op_load_model(folder), candidate=lambda: op_load_rolled(folder),
                          between=between)
    result = pair.run(benchmark, ROUNDS[name], WARMUP_ROUNDS)
    benchmark.extra_info.update(result)
    RESULTS["load"][name] = result


@pytest.mark.parametrize("name", list(ROUNDS))
def test_unroll_throughput(benchmark, files, name):
    import weightroll

    path = files[name] / "model.wroll"
    data = png_member(path)
    stream = idat_stream(data)
    produced = 4 * sum(a.size for a in weightroll.unroll(path).values())  # as float32, whatever the dtype
    inflaters = png_inflaters()

    def fastest_of(inflate):  # a few tries each, to pick the faster library
        times = []
        for _ in range(3):
            start = time.perf_counter()
            png_decode(stream, inflate)
            times.append(time.perf_counter() - start)
        return min(times)
    inflater = min(inflaters, key=lambda k: fastest_of(inflaters[k]))
    inflate = inflaters[inflater]
    benchmark.group = "unroll (candidate) against bare PNG decode of its weights.png, interleaved"
    pair = bl.Interleaved(baseline=lambda: png_decode(stream, inflate), candidate=lambda: weightroll.unroll(path),
                          between=gc.collect)
    result = pair.run(benchmark, 3 * ROUNDS[name], WARMUP_ROUNDS)
    result.update({
        "produced_bytes": produced,
        "png_bytes": len(data),
        "png_inflater": inflater,
        "unroll_mb_per_s": produced / MB / result["candidate"]["wall_median"],
        "png_bound_mb_per_s": produced / MB / result["baseline"]["wall_median"],
        "unroll_cpu_mb_per_s": produced / MB / result["candidate"]["cpu_median"],
    })
    benchmark.extra_info.update(result)
    RESULTS["unroll"][name] = result


# ---------------------------------------------------------------- 4: memory


MEMORY_OPS = ["save", "roll", "load_model", "load_rolled"]


def _probe_command(op, name, metric, files):
    return [sys.executable, __file__, op, name, metric, str(files[name]), str(files["tiny"])]


def _run_probe(command):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # weightroll, even if not installed
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800 if BIG else 300)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {command[2:5]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(ROUNDS))
@pytest.mark.parametrize("op", MEMORY_OPS)
def test_peak_memory(benchmark, files, op, name):
    """Two fresh subprocesses (RSS high-water mark; tracemalloc), run side by
    side (one after the other for the big models). pytest-benchmark's time
    here is the probes' wall time, not a speed figure."""
    benchmark.group = "memory probes (subprocess wall time; not a speed figure)"
    commands = [_probe_command(op, name, metric, files) for metric in ("rss", "tracemalloc")]

    def probe():
        with concurrent.futures.ThreadPoolExecutor(1 if BIG else 2) as pool:
            return list(pool.map(_run_probe, commands))

    rss, traced = benchmark.pedantic(probe, rounds=1, iterations=1)
    result = {"rss_peak_delta": rss["peak_delta"], "rss_before": rss["before"],
              "tracemalloc_peak": traced["peak_delta"], "float32_bytes": rss["float32_bytes"]}
    benchmark.extra_info.update(result)
    RESULTS["memory"].setdefault(name, {})[op] = result


def _status(ok):
    return "met" if ok else "**not met**"


# ---------------------------------------------------------------- report


@pytest.fixture(scope="module", autouse=True)
def _tables(request):
    yield
    complete = (all(len(RESULTS[k]) == len(ROUNDS) for k in ("save_roll", "load", "unroll"))
                and all(len(RESULTS["memory"].get(n, {})) == len(MEMORY_OPS) for n in ROUNDS))
    bl.publish(request.config, SECTION, report(), complete)


def report():
    parts = [bl.machine_description()]
    facts = RESULTS["facts"]
    if facts:
        parts.append(bl.markdown_table(
            ["model", "values", "float32 bytes", "`.keras` bytes", "`.wroll` bytes (default `roll`)"],
            [[TITLES[n], f"{f['parameters']:,}", bl.fmt_bytes(f["float32_bytes"]), bl.fmt_bytes(f["keras_bytes"]),
              bl.fmt_bytes(f["wroll_bytes"])] for n, f in facts.items()]))
    rows = []
    for key, base_name, cand_name, goal in [("save_roll", "`model.save`", "`weightroll.roll`", ROLL_OVER_SAVE),
                                            ("load", "`keras.models.load_model`", "`weightroll.load_rolled`",
                                             LOAD_OVER_LOAD_MODEL)]:
        for name, r in RESULTS[key].items():
            b, c = r["baseline"], r["candidate"]
            rows.append([TITLES[name], f"{cand_name} / {base_name}", r["candidate"]["rounds"],
                         f"{b['wall_median']:.3f} ({b['wall_min']:.3f})",
                         f"{c['wall_median']:.3f} ({c['wall_min']:.3f})",
                         f"**{r['ratio_wall_median']:.2f}x** ({r['ratio_wall_min']:.2f}x)",
                         f"{b['cpu_median']:.3f} / {c['cpu_median']:.3f} = {r['ratio_cpu_median']:.2f}x",
                         f"<= {goal:g}x: {_status(r['ratio_wall_median'] <= goal)}"])
    if rows:
        parts.append("#### Time: weightroll against Keras (seconds; median, fastest in brackets)\n\n" + bl.markdown_table(
            ["model", "candidate / baseline", "rounds", "baseline s", "candidate s", "ratio, wall",
             "CPU s, baseline / candidate", "goal"], rows))
    rows = []
    for name, r in RESULTS["unroll"].items():
        rows.append([TITLES[name], f"{r['produced_bytes'] / MB:.1f}", f"{r['candidate']['wall_median']:.3f}",
                     f"**{r['unroll_mb_per_s']:.0f}**", f"{r['unroll_cpu_mb_per_s']:.0f}",
                     f"{r['baseline']['wall_median']:.3f} ({r['png_inflater']})", f"{r['png_bound_mb_per_s']:.0f}",
                     f"{r['unroll_mb_per_s'] / r['png_bound_mb_per_s']:.0%}",
                     f">= {UNROLL_MB_PER_S} MB/s: {_status(r['unroll_mb_per_s'] >= UNROLL_MB_PER_S)}"])
    if rows:
        parts.append("#### `weightroll.unroll` throughput (float32 MB produced per second, MB = 10^6 bytes)\n\n"
                     + bl.markdown_table(
                         ["model", "float32 MB", "unroll s", "unroll MB/s (wall)", "unroll MB/s (CPU)",
                          "bare PNG inflate s", "PNG-decode bound MB/s", "unroll / bound", "goal"], rows))
    rows = []
    for name, ops in RESULTS["memory"].items():
        for op in MEMORY_OPS:
            if op not in ops:
                continue
            m = ops[op]
            f32 = m["float32_bytes"]
            goal = {"roll": ROLL_MEMORY, "load_rolled": LOAD_MEMORY}.get(op)
            # What an operation needs beyond what it returns: a load's result
            # holds the model's float32 weights (1.0x), a save's or roll's nothing.
            beyond = m["rss_peak_delta"] - (f32 if op.startswith("load") else 0)
            status = f"<= {goal}x: {_status(beyond / f32 <= goal)}" if goal else "(baseline)"
            rows.append([TITLES[name], f"`{op}`", f"{f32 / MB:.1f}", f"{m['rss_before'] / MB:.0f}",
                         f"{m['rss_peak_delta'] / MB:.1f}", f"{m['rss_peak_delta'] / f32:.2f}x",
                         f"**{beyond / f32:.2f}x**",
                         f"{m['tracemalloc_peak'] / MB:.1f}", f"{m['tracemalloc_peak'] / f32:.2f}x", status])
    if rows:
        parts.append(
            "#### Peak memory (fresh subprocess per operation; MB = 10^6 bytes)\n\n"
            "RSS peak: the RSS high-water mark during the operation (reset through `/proc/self/clear_refs`) "
            "minus the RSS just before it; for the loads it includes the loaded model's own variables "
            "(1.0x). Extra memory, the goal's measure: that peak, less the loaded model's own float32 "
            "weights for the loads (what the operation needs beyond what it returns). tracemalloc peak: "
            "numpy and Python allocations only (TensorFlow's variables are not traced). Each subprocess "
            "first runs the same operation on a tiny model, so one-time imports and TensorFlow start-up "
            "are not counted.\n\n"
            + bl.markdown_table(["model", "operation", "float32 MB", "RSS before MB", "RSS peak MB over before",
                                 "peak / float32", "extra (beyond the result) / float32", "tracemalloc peak MB",
                                 "tracemalloc / float32", "goal (extra)"], rows))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the probe (subprocess)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _probe(op, name, metric, folder, tiny_folder):
    import atexit
    import shutil
    import tempfile
    import tracemalloc

    import keras

    import weightroll  # noqa: F401  (imported before measuring)

    out = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, out, True)  # a saved big model is GBs: never left behind
    if op in ("save", "roll"):
        model = build(name)
        run = {"save": op_save, "roll": op_roll}[op]
        run(build("tiny"), out)  # warm-up: imports, first file written
        params = int(sum(np.prod(v.shape) for v in model.variables))

        def operation():
            run(model, out)
    else:
        load = {"load_model": op_load_model, "load_rolled": op_load_rolled}[op]
        load(tiny_folder)  # warm-up: imports, TensorFlow start-up
        keras.backend.clear_session()
        params = None
        loaded = []

        def operation():
            loaded.append(load(folder))
    gc.collect()
    if metric == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        operation()
        peak_delta = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        rss_before = None
    else:
        rss_before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        operation()
        peak_delta = _status_kb("VmHWM") - rss_before
    if params is None:
        params = int(sum(np.prod(v.shape) for v in loaded[0].variables))
    print(json.dumps({"op": op, "model": name, "metric": metric, "peak_delta": peak_delta,
                      "before": rss_before, "float32_bytes": 4 * params}))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _probe(*sys.argv[1:6])
