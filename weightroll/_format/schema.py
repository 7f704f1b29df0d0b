"""The names and values the format defines: its version, member names, dtypes
and decoder kinds (spec §2, §4)."""

FORMAT_NAME = "wroll"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
# The lowest version a writer may label an archive without `coding_sha256`.
FORMAT_VERSION_1_0 = "1.0"

MANIFEST_MEMBER = "manifest.json"
IMAGE_MEMBER = "weights.png"
DECODER_CONFIG_MEMBER = "decoder.json.zst"
DECODER_WEIGHTS_MEMBER = "decoder.bin"
ARCHITECTURE_MEMBER = "architecture.json.zst"
EXACT_MEMBER = "exact.bin"
REQUIRED_MEMBERS = (IMAGE_MEMBER, DECODER_CONFIG_MEMBER, DECODER_WEIGHTS_MEMBER, ARCHITECTURE_MEMBER)

CODED_DTYPES = ("float16", "float32", "float64")
EXACT_DTYPES = CODED_DTYPES + (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
)
DECODER_KINDS = ("codebook", "mlp")
MLP_ACTIVATIONS = ("relu",)  # tanh would depend on the platform's libm


def itemsize(dtype):
    """Bytes per element of one of `EXACT_DTYPES` (`bool` is one byte)."""
    return 1 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit())) // 8
