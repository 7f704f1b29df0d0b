"""Build a model whose variables take their first values from an archive.

Keras gives every variable its initialiser's value as it is created: random
kernels that loading overwrites at once. For ResNet50 that is two thirds of
`keras.models.load_model`'s time, and memory for values nobody reads.
Created inside `keras.StatelessScope(initialize_variables=False)`, variables
are instead recorded, each with its initialiser, on a per-thread list that
Keras initialises later. Here each recorded variable gets the archive's value
as its initialiser, and is initialised from it.

The list and the initialiser hooks are private Keras API. Where they are
missing, or the model cannot be built under the scope (a layer that creates
a variable from a concrete value, say), the model is built the ordinary way
and its variables are assigned.
"""

import contextlib

from weightroll.errors import UnsafeArchiveError, WrollError

_REGISTRY = "uninitialized_variables"  # Keras's per-thread list of variables awaiting a value


def _keras_state():
    """Keras's global-state module if deferring can work here, else None."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import in_stateless_scope
    except ImportError:  # pragma: no cover - a Keras without them
        return None
    if in_stateless_scope():  # inside someone else's scope: leave their bookkeeping alone
        return None
    return global_state


def pending(variable):
    """Whether `variable` was created under the scope and awaits its value."""
    return (getattr(variable, "_value", False) is None and callable(getattr(variable, "_initializer", None))
            and callable(getattr(variable, "_deferred_initialize", None)))


def _laid_out(variable):
    """Whether `variable` has a layout of the active distribution (JAX)."""
    initialize_layout = getattr(variable, "_initialize_layout", None)  # JAX's variables only
    if not callable(initialize_layout) or not callable(getattr(variable, "_initialize", None)):
        return False
    initialize_layout()  # the distribution's layout for it, as Keras gives it on initialisation
    return getattr(variable, "_layout", None) is not None


class Deferral:
    """Variables created through `build` await their first values from `give`."""

    def __init__(self, state):
        self._state = state
        self._before = list(state.get_global_attribute(_REGISTRY) or [])

    def _ours(self):
        registry = self._state.get_global_attribute(_REGISTRY) or []
        return registry[len(self._before):]

    def _restore(self):
        self._state.set_global_attribute(_REGISTRY, list(self._before))

    def build(self, build_model):
        """`build_model()` with its variables left uninitialised, or, if it
        fails that way, `build_model()` the ordinary way."""
        import keras

        try:
            with keras.StatelessScope(initialize_variables=False):
                return build_model()
        except UnsafeArchiveError:
            raise
        except WrollError:
            self._restore()  # forget the half-built model's variables
            return build_model()

    def give(self, variable, value):
        """Initialise `variable` from `value` if it awaits one; returns
        whether it did (else the caller assigns the value)."""
        if not pending(variable):
            return False
        if _laid_out(variable):
            # A JAX variable under a `keras.distribution`: each device gets
            # its part of the array (`jax.device_put` to the variable's
            # sharding), as an assignment gives it. Through its initialiser
            # Keras would jit the initialiser of a big variable (the array a
            # compiled-in constant; a lambda cannot even be jitted), or put
            # the whole array on one device before laying it out.
            variable._initialize(value)
            variable._initializer = None
            return True
        value = _shared_tensor(value)
        variable._initializer = lambda shape, dtype=None: value
        variable._deferred_initialize()
        return True

    def finish(self):
        """Initialise, from their own initialisers, variables created under
        the scope that received no value (an optimizer's, say)."""
        for variable in self._ours():
            if pending(variable):
                variable._deferred_initialize()


# Arrays smaller than this are handed to Keras as they are.
_SHARE_BYTES = 1 << 20
# TensorFlow's CPU kernels need this alignment, and abort on a tensor without it.
_TF_ALIGNMENT = 64


def _shared_tensor(value):
    """Under TensorFlow, a freshly decoded array as a tensor that shares its
    memory (through DLPack), so that the variable takes the array as its
    own storage; else `value` itself.

    From a numpy array, `tf.Variable` makes two copies of it: its
    `convert_to_eager_tensor` copies every array, and TensorFlow copies that
    copy again unless it is 64-byte aligned (numpy's large buffers are not).
    For a 477M-value model that was 5 of load_rolled's 9 seconds, and a
    tensor's transient memory three times its size. The decoder's arrays are
    64-byte aligned (`decode._aligned_empty`) and nobody else holds them, so
    the variable may own one. bfloat16, which numpy cannot export, travels
    as its uint16 bits and is bit-cast back, still without a copy.
    """
    import numpy as np

    if (not isinstance(value, np.ndarray) or value.nbytes < _SHARE_BYTES or not value.flags.c_contiguous
            or not value.flags.writeable or value.ctypes.data % _TF_ALIGNMENT):
        return value
    import keras

    if keras.backend.backend() != "tensorflow":
        return value
    try:
        import tensorflow as tf

        if value.dtype.name == "bfloat16":
            return tf.bitcast(tf.experimental.dlpack.from_dlpack(value.view(np.uint16).__dlpack__()), tf.bfloat16)
        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    except (BufferError, TypeError, ValueError, AttributeError, ImportError):  # a dtype DLPack does not carry
        return value


@contextlib.contextmanager
def deferral():
    """A `Deferral` for building one model, or None where Keras cannot defer.

    On a normal exit every variable created under it has a value; on any exit
    Keras's list of variables awaiting values is as it was before.
    """
    state = _keras_state()
    if state is None:
        yield None
        return
    handle = Deferral(state)
    try:
        yield handle
        handle.finish()
    finally:
        handle._restore()
