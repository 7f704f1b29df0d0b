"""How sensitive a model's outputs are to each weight, from calibration inputs.

Three estimates, all on the same calibration samples:

- a diagonal Fisher per weight: with random directions `v` in output space
  (independent standard normals per sample), the gradient `g` of
  `sum(outputs * v)` has `E[g**2] = sum_n diag(J_n^T J_n)`, the expected
  squared output change per unit squared change of each weight alone;
- for a token embedding, the same directions' gradients with respect to the
  embedding's output give `H = E[G^T G]` over positions: how errors across
  one token's features combine in the outputs;
- for Dense and EinsumDense kernels, `H = X^T X` of the layer's inputs (the
  second moments GPTQ needs).

Gradients need the backend: TensorFlow (`tf.GradientTape`) and JAX
(`jax.grad` of `stateless_call`). Elsewhere `Unsupported` is raised and the
caller falls back to probing.
"""

import dataclasses
import inspect

import numpy as np

from weightroll._keras.model_io import input_count, input_rows

PROJECTIONS = 16
MIN_ROWS_PER_INPUT = 4
_BATCH = 128


class Unsupported(Exception):
    """The estimate does not apply to this model or backend."""


@dataclasses.dataclass
class Sensitivity:
    """What `estimate` measured, keyed by position in `model.variables`.

    Attributes:
        fisher: index -> float64 array of the variable's shape (diagonal Fisher).
        counts: index -> per-row occurrence counts of an embedding table
            (rows looked up in the calibration samples), when known.
        embedding: index -> `(d, d)` output-space Hessian of an embedding's
            features.
        inputs: index -> `(H, shape)`: a kernel's input second moments and
            the `(inputs, outputs)` matrix shape its values reshape to.
    """

    fisher: dict
    counts: dict
    embedding: dict
    inputs: dict


def _batches(x, size):
    for start in range(0, input_count(x), size):
        yield input_rows(x, start, start + size)


def _flatten(outputs):
    import keras

    return keras.tree.flatten(outputs)


def estimate(model, x, indices, projections=PROJECTIONS, seed=0, batch_size=None):
    """Measure the sensitivities of `model.variables[i]` for `i` in `indices`.

    Args:
        model: a built Keras model holding the original weights.
        x: calibration inputs (array, list or dict of arrays).
        indices: positions in `model.variables` to measure.
        projections: random output directions averaged over.

    Returns:
        A `Sensitivity`.

    Raises:
        Unsupported: on a backend other than TensorFlow or JAX, or when no
            gradient reaches the variables.
    """
    import keras

    backend = keras.backend.backend()
    size = batch_size or _BATCH
    variables = model.variables
    indices = list(indices)
    embeddings = _embedding_tables(model, variables, indices)
    if backend == "tensorflow":
        fisher, counts, emb = _tensorflow_fisher(model, x, variables, indices, embeddings, projections, seed, size)
    elif backend == "jax":
        fisher, counts, emb = _jax_fisher(model, x, variables, indices, embeddings, projections, seed, size)
    else:
        raise Unsupported(f"no gradients on the {backend} backend")
    if not any(np.any(f > 0) for f in fisher.values()):
        raise Unsupported("no gradient reaches the weights")
    return Sensitivity(fisher, counts, emb, _input_moments(model, x, variables, indices, size))


def _embedding_tables(model, variables, indices):
    """Positions of `keras.layers.Embedding` tables among `indices`."""
    import keras

    position = {id(v): i for i, v in enumerate(variables)}
    wanted = set(indices)
    found = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Embedding) and getattr(layer, "embeddings", None) is not None:
            i = position.get(id(layer.embeddings))
            if i in wanted and len(variables[i].shape) == 2:
                found.add(i)
    return found


def _directions(rng, shapes):
    """One random output direction: standard normals of each output's shape."""
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def _tensorflow_fisher(model, x, variables, indices, embeddings, projections, seed, size):
    import tensorflow as tf

    watched = [variables[i] for i in indices]
    fisher = {i: np.zeros(variables[i].shape, np.float64) for i in indices}
    counts, emb = {}, {i: np.zeros((variables[i].shape[1],) * 2) for i in embeddings}
    rng = np.random.default_rng(seed)
    batches = list(_batches(x, size))
    for d in range(projections):
        for xb in batches:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for v in watched:
                    tape.watch(v.value)
                outputs = _flatten(model(xb, training=False))
                directions = _directions(rng, [np.shape(o) for o in outputs])
                loss = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32) * v) for o, v in zip(outputs, directions)])
            grads = tape.gradient(loss, [v.value for v in watched])
            for i, g in zip(indices, grads):
                if g is None:
                    continue
                if isinstance(g, tf.IndexedSlices):
                    values = g.values.numpy().astype(np.float64)
                    rows = g.indices.numpy().reshape(-1)
                    values = values.reshape(rows.size, -1)
                    if i in emb:
                        emb[i] += values.T @ values
                        if d == 0:
                            counts[i] = counts.get(i, 0) + np.bincount(rows, minlength=variables[i].shape[0])
                    dense = np.zeros((variables[i].shape[0], values.shape[1]))
                    np.add.at(dense, rows, values)
                    g = dense.reshape(variables[i].shape)
                else:
                    g = np.asarray(g, np.float64)
                    if i in emb:
                        emb[i] += g.T @ g
                fisher[i] += g * g
    for i in list(emb):  # the same rule for an embedding's features (rows: its look-ups)
        if i not in counts or counts[i].sum() < MIN_ROWS_PER_INPUT * emb[i].shape[0]:
            del emb[i]
    return _averaged(fisher, counts, emb, projections)


def _jax_fisher(model, x, variables, indices, embeddings, projections, seed, size):
    import jax
    import jax.numpy as jnp

    trainable = model.trainable_variables
    frozen = model.non_trainable_variables
    slot = {id(v): ("t", k) for k, v in enumerate(trainable)}
    slot.update({id(v): ("n", k) for k, v in enumerate(frozen)})
    if any(id(variables[i]) not in slot for i in indices):
        raise Unsupported("a variable is neither trainable nor non-trainable")

    places = [slot[id(variables[i])] for i in indices]
    # `stateless_call` hands its keywords to `call` itself, which may not take `training`.
    call_kwargs = {"training": False} if "training" in inspect.signature(model.call).parameters else {}

    def loss(wanted, tv, nv, xb, directions):
        # Only the measured (float) variables are differentiated: others, such
        # as a seed generator's uint32 state, are constants here.
        tv, nv = list(tv), list(nv)
        for (kind, k), value in zip(places, wanted):
            (tv if kind == "t" else nv)[k] = value
        outputs, _ = model.stateless_call(tv, nv, xb, **call_kwargs)
        return sum(jnp.sum(o.astype("float32") * v) for o, v in zip(_flatten(outputs), directions))

    grad = jax.jit(jax.grad(loss, argnums=0))
    tv = [v.value for v in trainable]
    nv = [v.value for v in frozen]
    wanted = [variables[i].value for i in indices]
    fisher = {i: np.zeros(variables[i].shape, np.float64) for i in indices}
    emb = {i: np.zeros((variables[i].shape[1],) * 2) for i in embeddings}
    rng = np.random.default_rng(seed)
    batches = list(_batches(x, size))
    shapes = {}
    for d in range(projections):
        for b, xb in enumerate(batches):
            if b not in shapes:
                shapes[b] = [np.shape(o) for o in _flatten(model(xb, training=False))]
            directions = _directions(rng, shapes[b])
            grads = grad(wanted, tv, nv, xb, directions)
            for i, g in zip(indices, grads):
                g = np.asarray(g, np.float64)
                if i in emb:
                    emb[i] += g.T @ g
                fisher[i] += g * g
    return _averaged(fisher, {}, emb, projections)


def _averaged(fisher, counts, emb, projections):
    return ({i: f / projections for i, f in fisher.items()}, counts,
            {i: h / projections for i, h in emb.items()})


def _kernel_view(layer):
    """How a Dense or EinsumDense kernel multiplies its input: `(inputs, outputs, trailing)`,
    `trailing` being how many of the input's last axes it contracts, or None."""
    import keras

    kernel = getattr(layer, "_kernel", None)
    if kernel is None or getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return None
    shape = tuple(int(d) for d in kernel.shape)
    if isinstance(layer, keras.layers.Dense) and len(shape) == 2:
        return shape[0], shape[1], 1
    if isinstance(layer, keras.layers.EinsumDense):
        try:
            left, out = layer.equation.replace(" ", "").split("->")
            inp, ker = left.split(",")
        except ValueError:
            return None
        inp = inp.replace("...", "")
        if "." in ker or "." in out or len(ker) != len(shape):
            return None
        contracted = [c for c in ker if c in inp and c not in out]
        n = len(contracted)
        if not n or ker[:n] != "".join(contracted) or not inp.endswith(ker[:n]) or any(c in inp for c in ker[n:]):
            return None
        fan_in = int(np.prod(shape[:n]))
        return fan_in, int(np.prod(shape)) // fan_in, n
    return None


def _input_moments(model, x, variables, indices, size):
    """`X^T X` of the inputs of every Dense / EinsumDense kernel among `indices`,
    recorded by wrapping each layer's `call` for one pass over `x`."""
    position = {id(v): i for i, v in enumerate(variables)}
    wanted = set(indices)
    hooked = {}  # layer -> (index, view, moments)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        view = _kernel_view(layer)
        i = position.get(id(getattr(layer, "_kernel", None)))
        if view is not None and i in wanted and view[0] <= 8192:
            hooked[layer] = [i, view, np.zeros((view[0], view[0])), 0]
    if not hooked:
        return {}
    originals = {}

    def recorder(layer, call):
        def wrapped(inputs, *args, **kwargs):
            entry = hooked[layer]
            a = np.asarray(inputs, np.float64).reshape(-1, entry[1][0])
            entry[2] += a.T @ a
            entry[3] += a.shape[0]
            return call(inputs, *args, **kwargs)

        return wrapped

    try:
        for layer in hooked:
            originals[layer] = layer.__dict__.get("call")
            object.__setattr__(layer, "call", recorder(layer, layer.call))
        for xb in _batches(x, size):
            model(xb, training=False)
    finally:
        for layer, call in originals.items():
            if call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", call)
    # With fewer input rows than MIN_ROWS_PER_INPUT per input feature, X^T X
    # is (nearly) singular and GPTQ would hide the error in directions the
    # calibration data happens not to visit: such kernels are rounded plainly.
    return {i: (h, (view[0], view[1])) for i, view, h, rows in hooked.values()
            if np.any(h) and rows >= MIN_ROWS_PER_INPUT * view[0]}
