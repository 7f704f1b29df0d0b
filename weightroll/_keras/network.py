"""The pix-to-weight network as a Keras model.

`"codebook"`: inputs are a table index (the tensor's table offset plus the
pixel's code) and a scale index (the tensor's scale offset plus the value's
channel, or 0 for no scale); two `Embedding(·, 1)` layers hold the
reconstruction values and the scales, and their float32 product is the weight.
`"mlp"`: input is the pixel's code; float64 `Dense` layers, as in the
2019 paper (the grey-level normalisation is folded into the first kernel).
"""

import functools
import json

import numpy as np


def build(decoder, arrays):
    """A Keras model equivalent to the decoder described by a manifest section."""
    import keras

    if decoder["kind"] == "codebook":
        table, scales = arrays
        index = keras.Input(shape=(), dtype="int32", name="table_index")
        scale_index = keras.Input(shape=(), dtype="int32", name="scale_index")
        table_layer = keras.layers.Embedding(max(table.shape[0], 1), 1, name="codebook", dtype="float32")
        scale_layer = keras.layers.Embedding(scales.shape[0], 1, name="scales", dtype="float32")
        outputs = keras.layers.Multiply(name="scaled", dtype="float32")(
            [table_layer(index), scale_layer(scale_index)]
        )
        model = keras.Model([index, scale_index], outputs, name="pix_to_weight_codebook")
        if table.shape[0]:
            table_layer.set_weights([table])
        scale_layer.set_weights([scales])
        return model
    inputs = keras.Input(shape=(1,), dtype="float64", name="code")
    x = inputs
    dense = []
    for i in range(0, len(arrays), 2):
        last = i == len(arrays) - 2
        layer = keras.layers.Dense(
            arrays[i].shape[1], activation=None if last else decoder["activation"], dtype="float64",
            name=f"dense_{i // 2}",
        )
        x = layer(x)
        dense.append(layer)
    model = keras.Model(inputs, x, name="pix_to_weight_mlp")
    for i, layer in enumerate(dense):
        layer.set_weights([arrays[2 * i], arrays[2 * i + 1]])
    return model


def config_json(network):
    """The network's Keras config as canonical JSON bytes."""
    import keras

    return _canonical(keras.saving.serialize_keras_object(network))


def _canonical(config):
    return (json.dumps(config, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def decoder_config_json(decoder, arrays):
    """`config_json(build(decoder, arrays))`, without building a codebook network
    each time: its config differs between archives only in the two tables'
    sizes (`input_dim`), so a template built once is filled in."""
    if decoder["kind"] != "codebook":
        return config_json(build(decoder, arrays))
    config = json.loads(_codebook_template())
    sizes = {"codebook": max(arrays[0].shape[0], 1), "scales": arrays[1].shape[0]}
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] in sizes:
            layer["config"]["input_dim"] = int(sizes[layer["config"]["name"]])
    return _canonical(config)


@functools.lru_cache(maxsize=None)
def _codebook_template():
    return config_json(build({"kind": "codebook"}, [np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)]))


def from_archive(archive):
    """Rebuild the pix-to-weight network stored in an open archive.

    The config is deserialised with `safe_mode=True` (it never holds code)
    and the weights come from `decoder.bin`.
    """
    import keras

    from weightroll._format import manifest as mf

    config = mf.loads(archive.decoder_config_json(), "decoder.json")
    network = keras.saving.deserialize_keras_object(config, safe_mode=True)
    arrays = archive.decoder_arrays()
    if archive.manifest["decoder"]["kind"] == "codebook":
        if arrays[0].shape[0]:
            network.get_layer("codebook").set_weights(arrays[:1])
        network.get_layer("scales").set_weights(arrays[1:])
    else:
        for i in range(len(arrays) // 2):
            network.get_layer(f"dense_{i}").set_weights(arrays[2 * i: 2 * i + 2])
    return network


def run(network, decoder, inputs, scale_inputs=None):
    """Run the Keras network; float32 outputs.

    For `"codebook"`, `inputs` are table indices (table offset + code) and
    `scale_inputs` scale indices (0 for an unscaled value); for `"mlp"`,
    `inputs` are codes.
    """
    if decoder["kind"] == "codebook":
        if scale_inputs is None:
            scale_inputs = np.zeros(np.shape(inputs), np.int32)
        out = network([np.asarray(inputs, np.int32), np.asarray(scale_inputs, np.int32)], training=False)
    else:
        out = network(np.asarray(inputs, np.float64).reshape(-1, 1), training=False)
    return np.asarray(out, dtype=np.float64).reshape(-1).astype(np.float32)
