"""The names and values the format defines: its version, member names, dtypes
and decoder kinds (spec §2, §4)."""

FORMAT_NAME = "wroll"
FORMAT_MAJOR = 4
FORMAT_MINOR = 0
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
# The MAJOR versions this reader reads: 1.x archives (tensors assigned by
# position, no keys), 2.x ones (their manifest stored raw) and 3.x ones (no
# trellis codes) load as they always did.
READABLE_MAJORS = (1, 2, 3, 4)
# The first MAJOR version with trellis codes (§6.2) and a compressed
# `decoder.bin.zst`.
TRELLIS_MAJOR = 4

MANIFEST_MEMBER = "manifest.json.zst"  # 3.x: the manifest, one zstd frame (see `manifest_member`)
RAW_MANIFEST_MEMBER = "manifest.json"  # 1.x and 2.x: the manifest as plain JSON
IMAGE_MEMBER = "weights.png"
DECODER_CONFIG_MEMBER = "decoder.json.zst"
DECODER_WEIGHTS_MEMBER = "decoder.bin"  # 1.x to 3.x: the decoder's arrays, raw
COMPRESSED_DECODER_WEIGHTS_MEMBER = "decoder.bin.zst"  # 4.x: the same bytes, one zstd frame
ARCHITECTURE_MEMBER = "architecture.json.zst"
EXACT_MEMBER = "exact.bin"
REQUIRED_MEMBERS = (IMAGE_MEMBER, DECODER_CONFIG_MEMBER, DECODER_WEIGHTS_MEMBER, ARCHITECTURE_MEMBER)

ASSETS_PREFIX = "assets/"  # asset members are named "assets/" + their path (2.0)
SHARD_SUFFIX = ".wroll"  # a shard of a sharded archive is a file beside its index (2.0)

FLOAT_DTYPES_1 = ("float16", "float32", "float64")
FLOAT_DTYPES = FLOAT_DTYPES_1 + ("bfloat16",)
# Integer tensors a table can hold exactly (at most 256 distinct values).
CODED_INTEGER_DTYPES = ("int8", "uint8")
INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
# What each MAJOR version may code, and may store exactly.
# (3.0 changed only how the manifest is stored; 4.0 added trellis codes.)
CODED_DTYPES = {1: FLOAT_DTYPES_1, 2: FLOAT_DTYPES + CODED_INTEGER_DTYPES}
CODED_DTYPES[3] = CODED_DTYPES[4] = CODED_DTYPES[2]
EXACT_DTYPES = {1: FLOAT_DTYPES_1 + INTEGER_DTYPES + ("bool",), 2: FLOAT_DTYPES + INTEGER_DTYPES + ("bool",)}
EXACT_DTYPES[3] = EXACT_DTYPES[4] = EXACT_DTYPES[2]
DECODER_KINDS = ("codebook", "mlp")
MLP_ACTIVATIONS = ("relu",)  # tanh would depend on the platform's libm


def itemsize(dtype):
    """Bytes per element of one of `EXACT_DTYPES` (`bool` is one byte)."""
    return 1 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit())) // 8


def numpy_dtype(name):
    """The numpy dtype of a dtype name the format allows; bfloat16 is
    `ml_dtypes.bfloat16` (numpy has none of its own)."""
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def decoder_weights_member(major):
    """The member holding the decoder's arrays in a `major`.x archive."""
    return COMPRESSED_DECODER_WEIGHTS_MEMBER if major >= TRELLIS_MAJOR else DECODER_WEIGHTS_MEMBER


def required_members(major):
    """The members every `major`.x archive has (an index or weights-only
    archive aside, see `manifest.validate`)."""
    return tuple(decoder_weights_member(major) if name == DECODER_WEIGHTS_MEMBER else name
                 for name in REQUIRED_MEMBERS)
