"""Open a `.wroll` archive: its validated manifest and checksum-verified members."""

import hashlib
import io
import os

import numpy as np
import zstandard

from weightroll._format import container, image, manifest_member, paths, rules
from weightroll._format import manifest as mf
from weightroll.errors import ArchiveError, LimitError, short


class RolledArchive:
    """An opened archive whose manifest has been validated.

    Opening reads the zip directory and the manifest only (`manifest.json.zst`,
    or `manifest.json` before format 3.0), and checks R1 to R21 and R44.
    Members are read on demand; `verify_members()` checks the SHA-256 of
    every one of them, and the decoding functions below call it before they
    use any member.

    Args:
        source: a path, a binary file object or bytes.
    """

    def __init__(self, source):
        self._file = None
        self.path = None  # set when opened from a path: a sharded index finds its shards beside it
        self._verified = {}  # member name -> its bytes, once its SHA-256 matched
        self._all_verified = False
        if isinstance(source, (str, os.PathLike)):
            self._file = paths.open_read(source)  # a local path, or gs://, ram://, ... through gfile
            self.path = os.fspath(source)
            source = self._file
        try:
            self._members = container.open_members(source)
            # The JSON text, from manifest.json.zst (3.x) or manifest.json (1.x, 2.x).
            text, self.manifest_member = manifest_member.read(self._members)
            self.manifest_text_size = len(text)
            self.manifest_sha256 = hashlib.sha256(text).hexdigest()  # what a sharded index records of a shard
            manifest = mf.loads(text, "manifest.json", rule=rules.MANIFEST_JSON)
            major, _ = mf.check_version(manifest)
            manifest_member.check_version(major, self.manifest_member)
            sizes = {n: self._members.size(n) for n in self._members.names if n != self.manifest_member}
            self.manifest = mf.validate(manifest, sizes)
        except BaseException:
            self.close()
            raise

    def member_sizes(self):
        """`{name: size}` of every zip member, manifest included, in file order."""
        return {name: self._members.size(name) for name in self._members.names}

    def verify_members(self):
        """Check every listed member's zip CRC and SHA-256 (R22, R23), once.

        The members this reader decodes are kept for `member()` (the code
        image until `codes()` decodes it); the others (members of a later
        minor version) are hashed in pieces and dropped.
        """
        if self._all_verified:
            return
        for name in self.manifest["members"]:
            if name in _DECODED_MEMBERS:
                self.member(name)
            elif name not in self._verified:
                self._check_sha256(name, self._members.sha256(name))
                self._verified[name] = None
        self._all_verified = True

    def member(self, name):
        """The bytes of member `name`, after checking its CRC and SHA-256 (R22, R23)."""
        data = self._verified.get(name)
        if data is None:
            data, digest = self._members.read(name, self.manifest["members"][name]["size"], sha256=True)
            self._check_sha256(name, digest)
            self._verified[name] = data
        return data

    def _check_sha256(self, name, digest):
        if digest != self.manifest["members"][name]["sha256"]:
            raise ArchiveError(
                f"Member '{short(name)}' does not match its SHA-256 checksum in manifest.json; "
                "the archive is damaged or was altered.",
                rule=rules.MEMBER_SHA256,
            )

    def architecture_json(self):
        """The model's architecture JSON bytes, decompressed within the declared
        size (R35); None for a weights-only archive."""
        if "architecture" not in self.manifest:
            return None
        return self._zstd_member(mf.ARCHITECTURE_MEMBER, self.manifest["architecture"]["size"])

    def assets(self):
        """`{relative path: bytes}` of the asset files (a lookup layer's
        vocabulary, say), each within its declared size (R35, R41)."""
        return {a["path"]: self._zstd_member(mf.ASSETS_PREFIX + a["path"], a["size"])
                for a in self.manifest.get("assets", [])}

    def decoder_config_json(self):
        """The pix-to-weight network's Keras config JSON bytes (R35)."""
        return self._zstd_member(mf.DECODER_CONFIG_MEMBER, self.manifest["decoder"]["config_size"])

    def decoder_config(self):
        """The pix-to-weight network's Keras config, parsed strictly (R35, R36)."""
        config = mf.loads(self.decoder_config_json(), f"'{mf.DECODER_CONFIG_MEMBER}'")
        if not isinstance(config, dict):
            raise ArchiveError(f"'{mf.DECODER_CONFIG_MEMBER}' must hold a JSON object (a Keras config).",
                               rule=rules.JSON_MEMBER)
        return config

    def _zstd_member(self, name, declared):
        """A zstd-compressed member's content: one frame, exactly `declared`
        bytes, nothing after it. Never inflates more than `declared + 1` bytes."""
        data = self.member(name)
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' is not a zstd frame ({e}).", rule=rules.ZSTD_MEMBER) from None
        if size not in (-1, declared):  # -1: the frame does not say
            raise ArchiveError(f"'{name}' declares {size} bytes but manifest.json says {declared}.",
                               rule=rules.ZSTD_MEMBER)
        decompressor = zstandard.ZstdDecompressor()
        try:
            # Bounded: a frame that expands without limit stops at declared + 1 bytes.
            with decompressor.stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
                out = reader.read(declared + 1)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' cannot be decompressed ({e}).", rule=rules.ZSTD_MEMBER) from None
        if len(out) > declared:
            raise LimitError(f"'{name}' expands to more than the {declared} bytes manifest.json declares.",
                             rule=rules.ZSTD_MEMBER)
        if len(out) < declared:
            raise ArchiveError(f"'{name}' expands to {len(out)} bytes; manifest.json declares {declared}.",
                               rule=rules.ZSTD_MEMBER)
        # The frame is now known to give exactly `declared` bytes, so decoding it
        # again at once is bounded too; this tells where the frame ends.
        frame = decompressor.decompressobj()
        try:
            frame.decompress(data)
        except zstandard.ZstdError as e:
            raise ArchiveError(f"'{name}' cannot be decompressed ({e}).", rule=rules.ZSTD_MEMBER) from None
        if not frame.eof:
            raise ArchiveError(f"'{name}' ends inside its zstd frame; it is truncated.", rule=rules.ZSTD_MEMBER)
        if frame.unused_data:
            raise ArchiveError(
                f"'{name}' has {len(frame.unused_data)} bytes after its zstd frame; a member is one frame "
                "and nothing else.",
                rule=rules.ZSTD_MEMBER,
            )
        return out

    def decoder_arrays(self):
        """The pix-to-weight network's weights, as numpy arrays in manifest
        order (from 4.0 inflated from `decoder.bin.zst`, within the size the
        arrays take, R35)."""
        if self.decoder_weights_member == mf.COMPRESSED_DECODER_WEIGHTS_MEMBER:
            data = self._zstd_member(mf.COMPRESSED_DECODER_WEIGHTS_MEMBER, self.decoder_weights_size())
        else:
            data = self.member(mf.DECODER_WEIGHTS_MEMBER)
        arrays = []
        for entry in self.manifest["decoder"]["weights"]:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            count = int(np.prod(entry["shape"], dtype=np.int64))
            a = np.frombuffer(data, dtype=dtype, count=count, offset=entry["offset"])
            arrays.append(a.astype(a.dtype.newbyteorder("=")).reshape(entry["shape"]))
        return arrays

    @property
    def decoder_weights_member(self):
        """The member holding the decoder's arrays: `decoder.bin.zst` from 4.0, `decoder.bin` before."""
        return mf.decoder_weights_member(int(self.manifest["format_version"].split(".")[0]))

    def decoder_weights_size(self):
        """The bytes the decoder's arrays take, packed (what `decoder.bin.zst` inflates to)."""
        weights = self.manifest["decoder"]["weights"]
        if not weights:
            return 0
        last = weights[-1]
        return last["offset"] + int(np.prod(last["shape"], dtype=np.int64)) * (4 if last["dtype"] == "float32" else 8)

    def codes(self):
        """All codes of the image, as a 1-D uint8 array."""
        info = self.manifest["image"]
        codes = image.decode_png(self.member(mf.IMAGE_MEMBER), info["width"], info["height"], info["codes"])
        self._verified.pop(mf.IMAGE_MEMBER, None)  # the PNG's bytes are not needed again (read anew if asked)
        return codes

    def close(self):
        self._verified = {}
        self._all_verified = False
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The members a reader of this version decodes; `verify_members` keeps their bytes.
_DECODED_MEMBERS = (mf.IMAGE_MEMBER, mf.DECODER_CONFIG_MEMBER, mf.DECODER_WEIGHTS_MEMBER,
                    mf.COMPRESSED_DECODER_WEIGHTS_MEMBER, mf.ARCHITECTURE_MEMBER, mf.EXACT_MEMBER)  # asset members are read when loaded
