"""The reader under fuzz: a damaged file is a FileFormatError or reads as exactly what was written.

Mutations are bit flips, truncations, insertions and random headers. Most of them the checksums
catch; to reach the parser behind the checksums, the same mutations are also tried "resealed",
with the length and both checksums recomputed: then the reader must refuse the file or return
contents that encode back to exactly those bytes (it never accepts what the writer could not
have written). A resealed change can make a valid file of another model: decompressing it must
then fail with a MiracleError, never with another exception.
"""

import tempfile
import zlib
from pathlib import Path

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import miracle
from miracle.errors import MiracleError
from miracle.fileformat import (
    _HEAD_BYTES,
    _LENGTH_BYTES,
    CHECKSUM_BYTES,
    MAGIC,
    FileFormatError,
    crc8,
    decode_mrc,
    encode_mrc,
)
from test_fileformat import rich

LENET_FILE = Path(__file__).resolve().parents[1] / "results" / "lenet5-relu-mnist-mean-kl.mrc"
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 2**20)),
        st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("header"), st.binary(min_size=1, max_size=48)),
    ),
    min_size=1, max_size=3,
)


def mutate(data: bytes, changes) -> bytes:
    data = bytearray(data)
    for change in changes:
        kind, position = change[0], change[1] if isinstance(change[1], int) else 0
        position %= len(data) + 1
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << change[2]
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = change[2]
        elif kind == "header":
            data[: len(change[1])] = change[1]
    return bytes(data)


def reseal(data: bytes) -> bytes:
    """The same bytes with the total length and both checksums made consistent again."""
    if len(data) < _HEAD_BYTES + CHECKSUM_BYTES or not data.startswith(MAGIC):
        return data
    head = bytearray(data[:_HEAD_BYTES - 1])
    head[len(MAGIC) + 1 : len(MAGIC) + 1 + _LENGTH_BYTES] = len(data).to_bytes(_LENGTH_BYTES, "little")
    body = bytes(head) + bytes([crc8(bytes(head))]) + data[_HEAD_BYTES:-CHECKSUM_BYTES]
    return body + zlib.crc32(body).to_bytes(CHECKSUM_BYTES, "little")


RICH = encode_mrc(rich())


@FUZZ
@given(mutations)
def test_a_mutated_file_is_refused_or_unchanged(changes):
    mutated = mutate(RICH, changes)
    try:
        contents = decode_mrc(mutated)
    except FileFormatError:
        return
    assert mutated == RICH and contents == rich()


@FUZZ
@given(mutations)
@example([("insert", 130, b"\x01")])  # an empty tensor whose other dimensions overflowed torch's strides
def test_a_resealed_mutation_is_refused_or_read_back_to_the_same_bytes(changes):
    mutated = reseal(mutate(RICH, changes))
    try:
        contents = decode_mrc(mutated)
    except FileFormatError:
        return
    assert encode_mrc(contents) == mutated


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(mutations, st.booleans())
def test_a_mutated_model_file_decompresses_to_the_same_network_or_fails_cleanly(changes, resealed):
    original = LENET_FILE.read_bytes()
    mutated = mutate(original, changes)
    mutated = reseal(mutated) if resealed else mutated
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.mrc"
        path.write_bytes(mutated)
        try:
            model = miracle.decompress(path)
        except MiracleError:
            return
    if mutated == original:
        expected = miracle.decompress(LENET_FILE).state_dict()
        assert all(torch.equal(t, expected[name]) for name, t in model.state_dict().items())
