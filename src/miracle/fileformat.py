"""The ``.mrc`` file: everything a receiver needs to rebuild the coded weights, and nothing else.

The byte-level specification is docs/format.md; this module follows it exactly and the tests
check both against the same golden bytes. In short::

    header     magic "MRC\\x89" | version u8 | total length u32 | header CRC-8
               | model name | fingerprint | generator version | 3 seeds | bits | B | D
    side info  group sizes | prior scales (f32) | uncoded tensors (f32)
    indices    B indices of exactly `bits` bits each, MSB first, zero-padded
    checksum   CRC-32 (zlib.crc32) of every byte before it, u32 little-endian

Integers are unsigned LEB128 varints (small seeds and counts cost one byte), floats are
float32 little-endian. Example::

    contents = MrcContents(model_name="lenet5", fingerprint=model_fingerprint(shapes), ...)
    write_mrc("lenet5.mrc", contents)
    assert read_mrc("lenet5.mrc") == contents          # bit-exact, tensors included
    byte_breakdown(encode_mrc(contents))["size_bytes"]  # what the file costs
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .blocks import MAX_BITS_PER_BLOCK, MIN_BITS_PER_BLOCK
from .coder.candidates import check_bits
from .errors import InvalidInput, MiracleError
from .files import WriteError, write_bytes

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MrcContents",
    "model_fingerprint",
    "pack_indices",
    "unpack_indices",
    "encode_mrc",
    "decode_mrc",
    "write_mrc",
    "read_mrc",
    "byte_breakdown",
    "describe_fields",
    "packed_size",
    "crc8",
    "FileFormatError",
    "MrcFileNotFound",
    "MrcReadError",
    "EmptyFile",
    "NotAnMrcFile",
    "UnsupportedVersion",
    "TruncatedFile",
    "ChecksumMismatch",
    "MalformedFile",
    "MrcWriteError",
]

FORMAT_VERSION = 1
# "MRC" to be recognisable in a hex dump, then a non-ASCII byte (as PNG's \x89) so that a file
# sent through a 7-bit or text-mode channel is caught at once.
MAGIC = b"MRC\x89"
FINGERPRINT_BYTES = 8
CHECKSUM_BYTES = 4
_MAX_VARINT_BYTES = 10
_LENGTH_BYTES = 4  # total_length is a u32
_HEAD_BYTES = len(MAGIC) + 1 + _LENGTH_BYTES + 1  # magic, version, total length, header check
_MAX_FILE_BYTES = (1 << 32) - 1
# No file holds more values; the bound applies to empty tensors too, whose strides still need it.
_MAX_TENSOR_ELEMENTS = 1 << 32
_U64 = 1 << 64
_SECTIONS = ("header", "side_info", "index", "checksum")


# ----------------------------------------------------------------------------- errors


class FileFormatError(MiracleError):
    """A ``.mrc`` file cannot be read: missing, not an .mrc file, newer, truncated or corrupt."""


class MrcFileNotFound(FileFormatError, FileNotFoundError):
    """The path does not exist."""


class MrcReadError(FileFormatError, OSError):
    """The path exists but cannot be read (a folder, no permission, an I/O error)."""


class EmptyFile(FileFormatError):
    """The file has zero bytes."""


class NotAnMrcFile(FileFormatError):
    """The file does not start with the .mrc magic bytes."""


class UnsupportedVersion(FileFormatError):
    """The file's format version is not one this miracle reads."""


class TruncatedFile(FileFormatError):
    """The file ends before its declared length."""


class ChecksumMismatch(FileFormatError):
    """A checksum does not match: the file is corrupt."""


class MalformedFile(FileFormatError):
    """Checksums are valid but the fields are inconsistent (a faulty writer) or bytes follow the end."""


MrcWriteError = WriteError  # the output path cannot be written


# ----------------------------------------------------------------------------- contents


@dataclass(eq=False)
class MrcContents:
    """What a ``.mrc`` file holds. Equality is exact: tensors must match bit for bit.

    Fields are described in docs/format.md. ``prior_scales`` is float32 with one scale per
    coded tensor, ``uncoded`` maps state_dict names to float32 tensors (order kept),
    ``indices`` is int64 with ``num_blocks`` values in [0, 2**bits_per_block).
    """

    model_name: str
    fingerprint: bytes
    generator_version: int
    coder_seed: int
    hash_seed: int
    partition_seed: int
    bits_per_block: int
    num_blocks: int
    block_dim: int
    group_sizes: list[int]
    prior_scales: torch.Tensor
    indices: torch.Tensor
    uncoded: dict[str, torch.Tensor] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MrcContents):
            return NotImplemented
        plain = ("model_name", "fingerprint", "generator_version", "coder_seed", "hash_seed",
                 "partition_seed", "bits_per_block", "num_blocks", "block_dim")
        return (
            all(getattr(self, k) == getattr(other, k) for k in plain)
            and list(self.group_sizes) == list(other.group_sizes)
            and _same_bits(self.prior_scales, other.prior_scales)
            and _same_bits(self.indices, other.indices)
            and list(self.uncoded) == list(other.uncoded)
            and all(_same_bits(v, other.uncoded[k]) for k, v in self.uncoded.items())
        )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:  # compare bits, so NaNs and -0.0 count too
        a, b = a.contiguous().view(torch.int32), b.contiguous().view(torch.int32)
    return bool(torch.equal(a, b))


# ----------------------------------------------------------------------------- fingerprint


def model_fingerprint(
    shapes: Iterable[tuple[str, tuple[int, ...]]] | Mapping[str, tuple[int, ...]],
) -> bytes:
    """First 8 bytes of SHA-256 over ``"<name>:<d1>,...,<dn>\\n"`` per coded tensor, in order.

    ``shapes`` is a list of ``(name, shape)`` pairs or a mapping name -> shape (its order is
    used).
    """
    items = shapes.items() if isinstance(shapes, Mapping) else shapes
    lines = []
    for name, shape in items:
        if "\n" in name:
            raise InvalidInput(f"a tensor name must not contain a newline, got {name!r}")
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise InvalidInput(f"negative dimension in the shape of {name!r}: {tuple(dims)}")
        lines.append(f"{name}:{','.join(str(d) for d in dims)}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).digest()[:FINGERPRINT_BYTES]


# ----------------------------------------------------------------------------- bit packing


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` indices of ``bits`` bits: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def pack_indices(indices: torch.Tensor | np.ndarray | Iterable[int], bits: int) -> bytes:
    """Pack indices into one MSB-first bit stream of exactly ``bits`` bits each, zero-padded.

    The result has ``ceil(len(indices) * bits / 8)`` bytes.
    """
    bits = check_bits(bits)
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise InvalidInput(f"indices must be an integer tensor, got {indices.dtype}")
        values = indices.detach().cpu().to(torch.int64).numpy()
    else:
        values = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise InvalidInput(f"indices must be integers, got {values.dtype}")
        values = values.astype(np.int64)
    if values.ndim != 1:
        raise InvalidInput(f"indices must be one-dimensional, got shape {tuple(values.shape)}")
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        bad = values[(values < 0) | (values >= (1 << bits))][0]
        raise InvalidInput(
            f"index {int(bad)} does not fit in {bits} bits (range 0 to {(1 << bits) - 1})"
        )
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    stream = ((values[:, None] >> shifts) & 1).astype(np.uint8)  # [count, bits], MSB first
    return np.packbits(stream.reshape(-1)).tobytes()  # packbits zero-pads the last byte


def unpack_indices(data: bytes, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: ``count`` int64 indices of ``bits`` bits each.

    ``data`` must have exactly ``ceil(count * bits / 8)`` bytes with zero padding bits.
    """
    bits = check_bits(bits)
    if count < 0:
        raise InvalidInput(f"count must be >= 0, got {count}")
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise InvalidInput(f"{count} indices of {bits} bits take {expected} bytes, got {len(data)}")
    stream = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
    if stream[count * bits:].any():
        raise InvalidInput("the padding bits after the last index are not zero")
    weights = np.left_shift(np.int64(1), np.arange(bits - 1, -1, -1, dtype=np.int64))
    values = stream[: count * bits].reshape(count, bits).astype(np.int64) @ weights
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))


# ----------------------------------------------------------------------------- primitives


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _varint(len(raw)) + raw


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS: polynomial 0x07, initial value 0, no reflection, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()


# ----------------------------------------------------------------------------- encoding


def _check_uint(value: object, name: str, low: int = 0, high: int = _U64 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _check_contents(c: MrcContents) -> None:
    if not isinstance(c.model_name, str):
        raise InvalidInput(f"model_name must be a str, got {type(c.model_name).__name__}")
    if not isinstance(c.fingerprint, (bytes, bytearray)) or len(c.fingerprint) != FINGERPRINT_BYTES:
        raise InvalidInput(
            f"fingerprint must be {FINGERPRINT_BYTES} bytes (see model_fingerprint), "
            f"got {c.fingerprint!r}"
        )
    for name in ("generator_version", "coder_seed", "hash_seed", "partition_seed"):
        _check_uint(getattr(c, name), name)
    check_bits(c.bits_per_block)
    _check_uint(c.num_blocks, "num_blocks", 1)
    _check_uint(c.block_dim, "block_dim", 1)
    if len(c.group_sizes) < 1:
        raise InvalidInput("group_sizes is empty: a file codes at least one tensor")
    for g in c.group_sizes:
        _check_uint(g, "a group size", 1)
    s = c.prior_scales
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or s.dim() != 1:
        raise InvalidInput(
            "prior_scales must be a 1-D float32 tensor (the exact scales the coder used), got "
            + (f"{s.dtype} of shape {tuple(s.shape)}" if isinstance(s, torch.Tensor)
               else type(s).__name__)
        )
    if len(s) != len(c.group_sizes):
        raise InvalidInput(
            f"{len(c.group_sizes)} group sizes but {len(s)} prior scales: "
            "give one of each per coded tensor"
        )
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise InvalidInput(f"prior scales must be finite and > 0, got {s.tolist()}")
    idx = c.indices
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or len(idx) != c.num_blocks:
        raise InvalidInput(
            f"indices must be a 1-D tensor of num_blocks = {c.num_blocks} values, got "
            + (f"shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__)
        )
    for name, t in c.uncoded.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"uncoded tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidInput(
                f"uncoded tensor {name!r} is {kind}; .mrc stores float32 only: convert it, or leave "
                "it out if the network does not need it (e.g. num_batches_tracked)"
            )
        if math.prod(d for d in t.shape if d) >= _MAX_TENSOR_ELEMENTS:
            raise InvalidInput(f"uncoded tensor {name!r} of shape {tuple(t.shape)} is too large for an .mrc file")


def _spans_of(contents: MrcContents) -> list[tuple[str, str, bytes]]:
    """The file body as (section, field, bytes), without the envelope head and the checksum."""
    c = contents
    fields: list[tuple[str, str, bytes]] = [
        ("header", "model_name", _str(c.model_name)),
        ("header", "fingerprint", bytes(c.fingerprint)),
        ("header", "generator_version", _varint(c.generator_version)),
        ("header", "coder_seed", _varint(c.coder_seed)),
        ("header", "hash_seed", _varint(c.hash_seed)),
        ("header", "partition_seed", _varint(c.partition_seed)),
        ("header", "bits_per_block", bytes([c.bits_per_block])),
        ("header", "num_blocks", _varint(c.num_blocks)),
        ("header", "block_dim", _varint(c.block_dim)),
        ("side_info", "num_coded", _varint(len(c.group_sizes))),
        ("side_info", "group_sizes", b"".join(_varint(int(g)) for g in c.group_sizes)),
        ("side_info", "prior_scales", _f32_bytes(c.prior_scales)),
        ("side_info", "num_uncoded", _varint(len(c.uncoded))),
    ]
    for name, t in c.uncoded.items():
        fields += [
            ("side_info", f"uncoded[{name}].name", _str(name)),
            ("side_info", f"uncoded[{name}].shape",
             _varint(t.dim()) + b"".join(_varint(d) for d in t.shape)),
            ("side_info", f"uncoded[{name}].values", _f32_bytes(t)),
        ]
    fields.append(("index", "indices", pack_indices(c.indices, c.bits_per_block)))
    return fields


def _head(total_length: int) -> bytes:
    head = MAGIC + bytes([FORMAT_VERSION]) + total_length.to_bytes(_LENGTH_BYTES, "little")
    return head + bytes([crc8(head)])


def encode_mrc(contents: MrcContents) -> bytes:
    """The bytes of a ``.mrc`` file; raises InvalidInput if the contents are out of range."""
    _check_contents(contents)
    body = b"".join(raw for _, _, raw in _spans_of(contents))
    total = _HEAD_BYTES + len(body) + CHECKSUM_BYTES
    if total > _MAX_FILE_BYTES:
        raise InvalidInput(f"the file would be {total} bytes, more than the format's 4 GiB limit")
    data = _head(total) + body
    return data + zlib.crc32(data).to_bytes(CHECKSUM_BYTES, "little")


# ----------------------------------------------------------------------------- decoding


class _Reader:
    """Bounds-checked cursor over a checksum-verified file body."""

    def __init__(self, data: bytes, where: str, pos: int, end: int) -> None:
        self.data, self.where, self.pos, self.end = data, where, pos, end
        self.spans: list[tuple[str, str, int, int]] = []

    def malformed(self, what: str) -> MalformedFile:
        return MalformedFile(
            f"{self.where}: malformed .mrc file at byte {self.pos}: {what}. Its checksums are "
            "valid, so the program that wrote it is faulty; write it again with miracle"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.malformed(f"{what} needs {n} bytes but only {self.end - self.pos} remain")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if (byte == 0 and i > 0) or value >= _U64:
                    raise self.malformed(f"{what} is not a canonical varint below 2^64")
                return value
        raise self.malformed(f"{what} is a varint longer than {_MAX_VARINT_BYTES} bytes")

    def text(self, what: str) -> str:
        raw = self.take(self.varint(f"length of {what}"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.malformed(f"{what} is not valid UTF-8") from None

    def f32(self, count: int, what: str) -> torch.Tensor:
        if count * 4 > self.end - self.pos:  # check before allocating anything
            raise self.malformed(f"{what} needs {count * 4} bytes but only {self.end - self.pos} remain")
        raw = self.take(count * 4, what)
        return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))

    def field(self, section: str, name: str, read):
        start = self.pos
        value = read()
        self.spans.append((section, name, start, self.pos))
        return value


def _read_head(data: bytes, where: str) -> tuple[int, int]:
    """Envelope checks (steps 2-9 of docs/format.md): returns (total_length, end of head)."""
    size = len(data)
    if size == 0:
        raise EmptyFile(f"{where}: the file is empty (0 bytes); it is not a usable .mrc file")
    if data[: len(MAGIC)] != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(data):
            raise TruncatedFile(
                f"{where}: truncated .mrc file: only {size} bytes, it ends inside its magic bytes"
            )
        stored = int.from_bytes(data[-CHECKSUM_BYTES:], "little")
        restored = MAGIC + data[len(MAGIC) : -CHECKSUM_BYTES]
        if size >= len(MAGIC) + CHECKSUM_BYTES and zlib.crc32(restored) == stored:
            raise ChecksumMismatch(f"{where}: the .mrc file is corrupt: its magic bytes are damaged")
        raise NotAnMrcFile(
            f"{where}: not a miracle .mrc file (it starts with {data[: len(MAGIC)].hex()}, "
            f"an .mrc file starts with {MAGIC.hex()})"
        )
    if size < _HEAD_BYTES:
        raise TruncatedFile(
            f"{where}: truncated .mrc file: only {size} bytes, it ends inside its header"
        )
    pos = _HEAD_BYTES
    # a fixed-size length keeps the span the CRC-8 covers fixed, so it catches any one-byte change
    total = int.from_bytes(data[len(MAGIC) + 1 : pos - 1], "little")
    if crc8(data[: pos - 1]) != data[pos - 1]:
        raise ChecksumMismatch(f"{where}: the .mrc file is corrupt: its header check does not match")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        newer = (
            "a newer miracle is needed to read it (upgrade miracle)" if version > FORMAT_VERSION
            else "no miracle writes that version"
        )
        raise UnsupportedVersion(
            f"{where}: .mrc format version {version} is not supported: this miracle reads "
            f"version {FORMAT_VERSION} only; {newer}"
        )
    if size < total:
        raise TruncatedFile(f"{where}: truncated .mrc file: {total} bytes expected, {size} found")
    if size > total:
        raise MalformedFile(
            f"{where}: {size - total} unexpected bytes after the end of the .mrc file "
            f"({total} bytes expected, {size} found)"
        )
    if total < pos + CHECKSUM_BYTES:
        raise MalformedFile(f"{where}: malformed .mrc file: declared length {total} is too short")
    stored = int.from_bytes(data[-CHECKSUM_BYTES:], "little")
    if zlib.crc32(data[:-CHECKSUM_BYTES]) != stored:
        raise ChecksumMismatch(f"{where}: the .mrc file is corrupt: its CRC-32 checksum does not match")
    return total, pos


def _parse(data: bytes, where: str) -> tuple[MrcContents, list[tuple[str, str, int, int]]]:
    data = bytes(data)
    total, head_end = _read_head(data, where)
    r = _Reader(data, where, head_end, total - CHECKSUM_BYTES)
    r.spans += [
        ("header", "magic", 0, len(MAGIC)),
        ("header", "format_version", len(MAGIC), len(MAGIC) + 1),
        ("header", "total_length", len(MAGIC) + 1, head_end - 1),
        ("header", "header_check", head_end - 1, head_end),
    ]
    model_name = r.field("header", "model_name", lambda: r.text("model name"))
    fingerprint = r.field("header", "fingerprint", lambda: r.take(FINGERPRINT_BYTES, "fingerprint"))
    ints = {k: r.field("header", k, lambda k=k: r.varint(k))
            for k in ("generator_version", "coder_seed", "hash_seed", "partition_seed")}
    bits = r.field("header", "bits_per_block", lambda: r.take(1, "bits per block")[0])
    if not MIN_BITS_PER_BLOCK <= bits <= MAX_BITS_PER_BLOCK:
        raise r.malformed(
            f"bits per block is {bits}, not in {MIN_BITS_PER_BLOCK}..{MAX_BITS_PER_BLOCK}"
        )
    num_blocks = r.field("header", "num_blocks", lambda: r.varint("number of blocks"))
    block_dim = r.field("header", "block_dim", lambda: r.varint("block dimension"))
    if num_blocks < 1 or block_dim < 1:
        raise r.malformed(f"{num_blocks} blocks of dimension {block_dim}")

    num_coded = r.field("side_info", "num_coded", lambda: r.varint("number of coded tensors"))
    if not 1 <= num_coded <= r.end - r.pos:  # every group size takes at least one byte
        raise r.malformed(f"{num_coded} coded tensors")
    group_sizes = r.field("side_info", "group_sizes",
                          lambda: [r.varint("a group size") for _ in range(num_coded)])
    if min(group_sizes) < 1:
        raise r.malformed("a group size is 0")
    prior_scales = r.field("side_info", "prior_scales", lambda: r.f32(num_coded, "prior scales"))
    if not (torch.isfinite(prior_scales).all() and (prior_scales > 0).all()):
        raise r.malformed("a prior scale is not finite and > 0")
    num_uncoded = r.field("side_info", "num_uncoded", lambda: r.varint("number of uncoded tensors"))
    if num_uncoded > r.end - r.pos:
        raise r.malformed(f"{num_uncoded} uncoded tensors")
    uncoded: dict[str, torch.Tensor] = {}
    for _ in range(num_uncoded):
        start = r.pos
        name = r.text("uncoded tensor name")
        r.spans.append(("side_info", f"uncoded[{name}].name", start, r.pos))
        if not name or name in uncoded:
            raise r.malformed(f"uncoded tensor name {name!r} is empty or repeated")

        def read_shape() -> list[int]:
            ndim = r.varint(f"ndim of {name!r}")
            if ndim > r.end - r.pos:
                raise r.malformed(f"{name!r} has {ndim} dimensions")
            dims = [r.varint(f"a dimension of {name!r}") for _ in range(ndim)]
            if math.prod(d for d in dims if d) >= _MAX_TENSOR_ELEMENTS:
                raise r.malformed(f"{name!r} has the impossible shape {tuple(dims)}")
            return dims

        shape = r.field("side_info", f"uncoded[{name}].shape", read_shape)
        values = r.field("side_info", f"uncoded[{name}].values",
                         lambda: r.f32(math.prod(shape), f"values of {name!r}"))
        uncoded[name] = values.reshape(shape)

    index_bytes = packed_size(num_blocks, bits)
    raw = r.field("index", "indices", lambda: r.take(index_bytes, "indices"))
    if r.pos != r.end:
        raise r.malformed(f"{r.end - r.pos} bytes left between the indices and the checksum")
    try:
        indices = unpack_indices(raw, bits, num_blocks)
    except InvalidInput as e:
        raise r.malformed(str(e)) from None
    r.spans.append(("checksum", "crc32", r.end, total))
    contents = MrcContents(
        model_name=model_name, fingerprint=fingerprint, bits_per_block=bits, num_blocks=num_blocks,
        block_dim=block_dim, group_sizes=group_sizes, prior_scales=prior_scales,
        uncoded=uncoded, indices=indices, **ints,
    )
    return contents, r.spans


def decode_mrc(data: bytes) -> MrcContents:
    """Parse the bytes of a ``.mrc`` file; raises a FileFormatError subclass if they are not one."""
    return _parse(data, "<bytes>")[0]


def byte_breakdown(data: bytes) -> dict[str, int]:
    """Sizes of the sections of a ``.mrc`` file; the four parts add up to ``size_bytes``."""
    _, spans = _parse(data, "<bytes>")
    sizes = {f"{s}_bytes": 0 for s in _SECTIONS}
    for section, _, start, end in spans:
        sizes[f"{section}_bytes"] += end - start
    return {"size_bytes": len(data), **sizes}


def describe_fields(data: bytes) -> list[tuple[str, str, bytes]]:
    """Every field of a ``.mrc`` file in file order, as (section, field, raw bytes)."""
    _, spans = _parse(data, "<bytes>")
    return [(section, name, bytes(data[start:end])) for section, name, start, end in spans]


# ----------------------------------------------------------------------------- files


def write_mrc(path: str | os.PathLike, contents: MrcContents) -> int:
    """Write ``contents`` to ``path`` atomically (:func:`miracle.files.write_bytes`); returns
    the file size in bytes."""
    return write_bytes(path, encode_mrc(contents))  # encoding validates before the disk is touched


def read_mrc(path: str | os.PathLike) -> MrcContents:
    """Read and check a ``.mrc`` file; every failure is a FileFormatError naming the path."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MrcFileNotFound(f"{where}: no such .mrc file") from None
    except OSError as e:
        raise MrcReadError(f"cannot read {where!r}: {e.strerror or e}") from e
    return _parse(data, where)[0]
