"""The numbered rejection rules of `spec/wroll-v4.md` ("What a reader MUST reject").

One constant per rule, with the reason for the rule. Every error the reader
raises for a broken rule passes the constant as `rule=`, so the error carries
the number (`error.rule`) and its message ends with "(spec rule Rn)". The test
vectors' `invalid/index.json` lists the rule each invalid file breaks, and the
tests check that the error names that rule.
"""

# -- When the archive is opened -------------------------------------------------------

# The zip is read before anything else, so it must be unambiguous: one reading
# of the directory, members that start at byte 0 and never share bytes (a zip
# bomb of overlapping entries), nothing to decrypt or inflate.
ZIP_CONTAINER = "R1"
# The manifest is read whole and trusted to describe everything else, so it must
# be present, bounded, and parse one way only (no repeated keys, no NaN).
MANIFEST_JSON = "R2"
# A zip that is not a .wroll archive must not be half-read as one.
FORMAT_NAME = "R3"
# A reader must not guess at a format version it does not implement.
FORMAT_VERSION = "R4"
# A member no checksum covers could carry anything; every member is listed.
UNLISTED_MEMBER = "R5"
# The member list is what the checksums hang on: it must be well formed and
# agree with the zip.
MEMBER_ENTRY = "R6"
# The decoder indexes arrays with manifest numbers; a wrong type or a negative
# count must not reach it.
FIELD_TYPE = "R7"
# The image's shape bounds every code range and the PNG's decoded size.
IMAGE_FIELDS = "R8"
# The decoder turns codes into weights; an unknown or malformed one cannot be
# evaluated as the writer meant.
DECODER_FIELDS = "R9"
# The architecture's declared size bounds its decompression.
ARCHITECTURE_FIELDS = "R10"
# An archive without one of its parts cannot be decoded or rebuilt.
REQUIRED_MEMBERS = "R11"
# Paths are the keys of `unroll`'s result; a repeated one would hide a tensor.
TENSOR_PATH = "R12"
# Shapes decide what is allocated; they are bounded one by one and in sum.
SHAPE = "R13"
# The tensor digest is the last defence against wrong weights; it must be one.
TENSOR_SHA256_FIELD = "R14"
# A storage or dtype the reader does not know cannot be decoded faithfully.
STORAGE_DTYPE = "R15"
# Code ranges index the image; they must match the tensor and fit the image.
CODE_RANGE = "R16"
# Table ranges index the decoder table; they must fit it (codebooks only).
TABLE_RANGE = "R17"
# Scale ranges index the scales; they must fit them and the tensor's shape.
SCALES_RANGE = "R18"
# Outlier blocks index exact.bin; they must fit it.
OUTLIERS_RANGE = "R19"
# Exact byte ranges index exact.bin; they must fit it and the tensor.
EXACT_RANGE = "R20"
# Two tensors sharing codes or bytes means one of them is not what was written.
OVERLAP = "R21"

# -- When the data is read and decoded ------------------------------------------------

# Damaged member bytes must be refused before any of them is interpreted.
MEMBER_READ = "R22"
# The SHA-256 of every member is checked before any member is used.
MEMBER_SHA256 = "R23"
# The PNG must be exactly the image the manifest describes.
PNG_HEADER = "R24"
# A PNG that claims more pixels than deflate can produce is a decompression bomb.
PNG_BOMB = "R25"
# Pixel data that does not decode cannot give codes.
PNG_DATA = "R26"
# Padding is defined as 0, so that the image has one encoding.
PNG_PADDING = "R27"
# Scale 0 means "no scale"; any other value would scale unscaled tensors.
SCALES_RESERVED = "R28"
# A decoder that yields NaN or infinity is damaged: coded weights are finite.
NOT_FINITE = "R29"
# A code outside its table has no value.
CODE_OUTSIDE_TABLE = "R30"
# Outlier indices must name distinct elements of the tensor, in order.
OUTLIER_INDICES = "R31"
# A referenced tensor must come bit for bit from the base it was rolled against.
REFERENCE = "R32"
# The decoded values must be those the writer recorded.
TENSOR_DIGEST = "R33"
# A bool is one byte, 0 or 1; any other byte has no portable meaning.
BOOL_BYTES = "R34"

# -- By Keras loaders (and any reader of the JSON members) ---------------------------

# A zstd frame is decompressed within its declared size, and nothing may follow it.
ZSTD_MEMBER = "R35"
# The architecture and decoder configs parse one way only, within bounds.
JSON_MEMBER = "R36"
# The architecture must build a Keras model without running stored code unless
# the caller allows it (`safe_mode=False`).
ARCHITECTURE_MODEL = "R37"
# Weights are assigned by key (2.x; by position in 1.x); keys, count, shapes and
# kinds of dtype must agree with the model's.
VARIABLES = "R38"
# A coded tensor's coding digest covers everything its values are computed
# from (format 1.1), so a reader may check it instead of hashing the values.
CODING_DIGEST = "R39"
# §4.9 (2.0): every tensor has a unique `key`, and its `binding_sha256` matches
# its key, path, dtype, shape, storage and digests (a path moved to other data).
BINDING = "R40"
# §4.12 (2.0): asset paths are safe relative paths, each with its own member.
ASSETS = "R41"
# §7.1 (2.0): a coded integer tensor's table entries are integers its dtype holds.
INTEGER_TABLE = "R42"

# §4.13 (2.0): a sharded archive's index lists shard files beside it, each a
# weights-only archive whose manifest has the recorded digest; together within limits.
SHARDS = "R43"

# §2.1, §4.2 (3.0): the manifest is one zstd frame that declares its size, so
# that a reader bounds it before inflating anything; an archive has one
# manifest, in the member its version names, so that no two readers of the
# same file read two manifests.
MANIFEST_MEMBER = "R44"

# §4.9, §6.2 (4.0): a trellis-coded tensor's `trellis` field holds a segment
# length, a zero code and a low level within their ranges, on a coded tensor
# of a codebook archive.
TRELLIS = "R45"

# Every rule, in order: ("R1", ..., "R45").
ALL = tuple(sorted(
    (value for name, value in globals().items() if name.isupper() and isinstance(value, str)),
    key=lambda rule: int(rule[1:]),
))
