"""Resource limits a reader enforces before it allocates anything.

Each constant is referenced by the numbered rejection rules in
`spec/wroll-v4.md` ("Limits"). A legitimate archive written by weightroll stays
far inside every one of them; they exist so that a hostile file cannot make a
reader allocate or inflate without bound.
"""

# The manifest is read whole into memory before anything else is checked; a
# 100M-parameter model with thousands of tensors needs a few MiB. Bounds the
# size a 3.x manifest's zstd frame declares (checked before it is inflated) and
# the member itself, or a 1.x/2.x `manifest.json`. (R2, R44)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

# The architecture JSON of very large Keras models is a few MiB; 256 MiB leaves
# room while bounding what a zstd frame may expand to. (R9, R10, R35)
MAX_ARCHITECTURE_BYTES = 256 * 1024 * 1024

# A 4.x archive's decoder arrays (tables and scales) are inflated from a zstd
# frame; a model's tables and per-channel scales take a few MiB at most.
# Bounds the size their entries declare before anything is inflated. (R9)
MAX_DECODER_BYTES = 256 * 1024 * 1024

# zlib documents deflate's best case as 1032:1, so a PNG whose declared raw
# size (height * (width + 1) bytes, one filter byte per row) exceeds this
# multiple of its own size cannot be honest: it is a decompression bomb.
DEFLATE_MAX_RATIO = 1032

# Absolute ceiling on pixels in the code image (8 GiB of codes), whatever the
# ratio says; far beyond any model a single host serves. (R8, R16, R25)
MAX_PIXELS = 1 << 33

# Writers use a width of at most 4096; readers accept up to this, well inside
# PNG's own limit of 2**31 - 1, so that a row buffer stays small. (R8, R25)
MAX_IMAGE_WIDTH = 1 << 20

# numpy itself refuses more than 64 dimensions; no Keras weight has more than 8. (R13, R18)
MAX_TENSOR_RANK = 32

# Upper bound on the element count of any one tensor, and of the sum over all
# tensors of an archive: what a reader allocates for the decoded weights. The
# coded and exact tensors are also bounded by the image and exact.bin, which
# they may not share (R21); the sum bounds the referenced ones, which copy a
# base tensor each. (R13, R17 to R19)
MAX_TENSOR_ELEMENTS = 1 << 33

# Every JSON member is at most this deeply nested (the top-level object is
# depth 1): a manifest is 5 levels deep, a Keras config a few dozen. Deeper
# means a parser-exhaustion attempt: recursive parsers and Keras's recursive
# deserialisation would run out of stack. (R2, R36)
MAX_JSON_DEPTH = 200

# The paper's pix-to-weight MLP has two hidden layers of 16 units; a reader
# accepts up to this many layers and units so it never allocates much for one,
# nor spends more than about a second evaluating it on all 256 codes. (R9)
MAX_MLP_LAYERS = 8
MAX_MLP_UNITS = 1024

# Asset files (a lookup layer's vocabulary, a tokenizer's merges): how many an
# archive may list, and how large each may expand to. (R41)
MAX_ASSETS = 10_000
MAX_ASSET_BYTES = 1 << 30

# A sharded archive (2.0): how many shard files its index may list, and how many
# values all its shards may hold together (4 TiB of float32); each shard keeps
# every per-archive limit above. (R43)
MAX_SHARDS = 100_000
MAX_TOTAL_ELEMENTS = 1 << 40
