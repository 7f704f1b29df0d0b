"""Fuzz targets for the `.wroll` reader (spec/wroll-v4.md, "Threat model").

Two properties, over every valid test vector in `spec/vectors/` as a seed:

* `check_bytes`: an archive whose bytes were damaged anyhow (bytes flipped,
  overwritten, inserted, deleted, duplicated, cut off) unrolls to exactly the
  seed's weights, or is refused with a `WrollError`.
* `check_manifest`: an archive whose manifest was edited anyhow (a field
  replaced by any JSON value, removed, or copied from elsewhere; two tensors'
  paths or keys swapped; tensor entries reordered), with the member checksums
  repaired so that the edit reaches the deeper rules, is refused with a
  `WrollError`, or unrolls each path to exactly the values the writer wrote
  under that path.

In both, any other exception is a bug, and so is a case that takes seconds.
Nothing here imports Keras: one case takes about a millisecond.

`tests/test_hostile_fuzz.py` runs a bounded number of cases of each on every
test run (`WROLL_FUZZ_EXAMPLES`, default 500). For a longer campaign:

    python tests/fuzz_reader.py --examples 100000

which prints the first failing case, shrunk, with the line that replays it.
"""

import argparse
import copy
import hashlib
import io
import json
import pathlib
import sys
import time
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _manifests
import weightroll
from weightroll._format import container, manifest_member
from weightroll.errors import WrollError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "spec" / "vectors"
# A case that takes longer than this is a hang in the making: every seed
# unrolls in about a millisecond.
SLOW_CASE_SECONDS = 10.0


def _base(name):
    path = VECTORS / f"{name}.base.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text())
    return {p: np.array(e["values"], dtype=e["dtype"]).reshape(e["shape"]) for p, e in entries.items()}


def _seeds():
    seeds = []
    for path in sorted(VECTORS.glob("*.wroll")):
        name = path.name[: -len(".wroll")]
        data = path.read_bytes()
        base = _base(name)
        seeds.append((name, data, base, weightroll.unroll(data, base=base)))
    return seeds


SEEDS = _seeds()


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def same_weights(got, want):
    """Equal paths in the same order, and per tensor the same dtype, shape and bits."""
    return list(got) == list(want) and all(
        got[p].dtype == want[p].dtype and got[p].shape == want[p].shape and got[p].tobytes() == want[p].tobytes()
        for p in want
    )


def _unroll(data, base):
    """`unroll(data)`, or None when it raises a `WrollError`; fails on a slow case."""
    start = time.perf_counter()
    try:
        return weightroll.unroll(data, base=base)
    except WrollError:
        return None
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < SLOW_CASE_SECONDS, f"one case took {elapsed:.1f} s"


# --- byte-level damage -----------------------------------------------------------

_positions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
_edits = st.one_of(
    st.tuples(st.just("xor"), _positions, st.integers(1, 255)),
    st.tuples(st.just("set"), _positions, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), _positions, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _positions, st.integers(1, 256)),
    st.tuples(st.just("repeat"), _positions, st.integers(1, 256)),
    st.tuples(st.just("cut"), _positions, st.just(0)),
)


def damage(data, edits):
    """`data` after `edits`, each `(kind, position in [0, 1), argument)`."""
    data = bytearray(data)
    for kind, where, arg in edits:
        i = int(where * len(data)) if data else 0
        if kind == "xor" and data:
            data[i] ^= arg
        elif kind == "set":
            data[i: i + len(arg)] = arg
        elif kind == "insert":
            data[i:i] = arg
        elif kind == "delete":
            del data[i: i + arg]
        elif kind == "repeat":
            data[i:i] = data[i: i + arg]
        elif kind == "cut":
            del data[i:]
    return bytes(data)


def check_bytes(seed, edits):
    """Damaged bytes load the seed's weights exactly, or raise a WrollError."""
    _, data, base, want = SEEDS[seed]
    got = _unroll(damage(data, edits), base)
    assert got is None or same_weights(got, want)


# --- manifest edits with repaired checksums ----------------------------------------

_json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 300), st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, 1, 255, 256, 4096, 1 << 33, 1 << 62]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["coded", "exact", "reference", "float16", "float32", "float64", "int32", "bool",
                     "uint8", "codebook", "mlp", "relu", "weights.png", "decoder.bin", "decoder.bin.zst",
                     "exact.bin", "trellis",
                     "1.0", "2.0", "1.9", "4.0", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every place in a JSON value, as a tuple of keys and indices (the root is `()`)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _at(node, path):
    for key in path:
        node = node[key]
    return node


def edit_manifest(manifest, edits):
    """`manifest` (a copy) after `edits`, each `(action, target, argument)`:
    `replace` the node at target (an index into the places) by argument,
    `delete` it, `copy` another place's value (argument: an index) onto it,
    `add` argument under a new key of a dict, `nudge` the integer found at or
    after target by argument (offsets, sizes, counts, shapes: where the
    range rules live); and the structural edits on the tensor entries: `swap`
    two entries' `path`s or `key`s (argument: which field and the other
    entry), `move` an entry to another place in the list."""
    manifest = copy.deepcopy(manifest)
    for action, target, value in edits:
        tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
        if action in ("swap", "move"):
            if isinstance(tensors, list) and len(tensors) > 1:
                i, j = target % len(tensors), value[1] % len(tensors)
                if action == "move":
                    tensors.insert(j, tensors.pop(i))
                elif isinstance(tensors[i], dict) and isinstance(tensors[j], dict):
                    field = value[0]
                    a, b = tensors[i].get(field), tensors[j].get(field)
                    tensors[i][field], tensors[j][field] = b, a
            continue
        places = list(_paths(manifest))[1:]
        if not places:
            break
        path = places[target % len(places)]
        parent, key = _at(manifest, path[:-1]), path[-1]
        if action == "replace":
            parent[key] = value
        elif action == "delete":
            del parent[key]
        elif action == "copy":
            parent[key] = copy.deepcopy(_at(manifest, places[value % len(places)]))
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][f"x{target % 7}"] = value
        elif action == "nudge":
            numbers = [p for p in places if type(_at(manifest, p)) is int]
            if numbers:
                path = numbers[target % len(numbers)]
                _at(manifest, path[:-1])[path[-1]] += value
    return manifest


manifest_edits = st.lists(
    st.one_of(
        st.tuples(st.just("replace"), st.integers(0, 10_000), _json_values),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.none()),
        st.tuples(st.just("copy"), st.integers(0, 10_000), st.integers(0, 10_000)),
        st.tuples(st.just("add"), st.integers(0, 10_000), _json_values),
        st.tuples(st.just("nudge"), st.integers(0, 10_000), st.sampled_from([-4, -2, -1, 1, 2, 3, 4, 8, 12, 64])),
        st.tuples(st.just("swap"), st.integers(0, 10_000),
                  st.tuples(st.sampled_from(["path", "key"]), st.integers(0, 10_000))),
        st.tuples(st.just("move"), st.integers(0, 10_000), st.tuples(st.none(), st.integers(0, 10_000))),
    ),
    min_size=1, max_size=3,
)


def repack(members, manifest):
    """An archive with `manifest` whose listed members' sizes and SHA-256s are
    repaired (where the manifest still has a place for them)."""
    manifest = copy.deepcopy(manifest)
    listed = manifest.get("members") if isinstance(manifest, dict) else None
    for name, data in members:
        if isinstance(listed, dict) and isinstance(listed.get(name), dict):
            listed[name].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    buffer = io.BytesIO()
    # In the member the edited version names (the seed's when it names none).
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    name = manifest_member.member_for(version, default=members[0][0])
    others = [(n, d) for n, d in members if n not in _manifests.NAMES]
    container.write_members(buffer, [(name, manifest_member.pack(text, name))] + others)
    return buffer.getvalue()


def check_manifest(seed, edits):
    """An edited manifest is refused, or each path it yields holds exactly the
    values the writer wrote under that path: no edit can make the reader
    return other values, or the right values under another name, quietly."""
    _, data, base, want = SEEDS[seed]
    members = _members(data)
    manifest = _manifests.read(members)
    got = _unroll(repack(members, edit_manifest(manifest, edits)), base)
    if got is not None:
        for path, array in got.items():
            assert path in want, f"tensor '{path}' was not written"
            assert (array.dtype == want[path].dtype and array.shape == want[path].shape
                    and array.tobytes() == want[path].tobytes()), f"tensor '{path}' holds other values"


seeds = st.integers(0, len(SEEDS) - 1)
# The seeds whose tensor names are bound to their data (format 2.0 and later,
# R40). A 1.x archive's paths are labels only: a path moved onto another
# tensor's data goes unnoticed by design of 1.x (spec §4.9), so manifest edits
# fuzz the other seeds; byte damage fuzzes them all.
bound_seeds = st.sampled_from([i for i, (_, data, _, _) in enumerate(SEEDS)
                               if not _manifests.read(data)["format_version"].startswith("1.")])
byte_edits = st.lists(_edits, min_size=1, max_size=4)


def run(examples):
    """Run both targets for `examples` random cases each; raises on the first failure."""
    options = dict(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    targets = (("bytes", check_bytes, seeds, byte_edits), ("manifest", check_manifest, bound_seeds, manifest_edits))
    for name, target, chosen, strategy in targets:
        start = time.perf_counter()
        given(chosen, strategy)(settings(**options)(target))()
        print(f"{name}: {examples} cases passed in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="cases per target (default 10000)")
    args = parser.parse_args(argv)
    run(args.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
