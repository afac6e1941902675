import math
import re
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miracle.errors import InvalidInput, MiracleError
from miracle.fileformat import (
    FORMAT_VERSION,
    MAGIC,
    ChecksumMismatch,
    EmptyFile,
    FileFormatError,
    MalformedFile,
    MrcContents,
    MrcFileNotFound,
    MrcReadError,
    MrcWriteError,
    NotAnMrcFile,
    TruncatedFile,
    UnsupportedVersion,
    byte_breakdown,
    crc8,
    decode_mrc,
    describe_fields,
    encode_mrc,
    model_fingerprint,
    pack_indices,
    read_mrc,
    unpack_indices,
    write_mrc,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"

# The worked example of docs/format.md. Any change of these bytes is a change of the format.
GOLDEN_HEX = (
    "4d 52 43 89 01 4b 00 00 00 56 04 74 69 6e 79 94 "
    "2d 2e 20 8f 8b ec 2c 01 d2 09 00 07 05 03 02 02 "
    "02 01 00 00 00 3f 00 00 80 3e 01 0f 62 6e 2e 72 "
    "75 6e 6e 69 6e 67 5f 6d 65 61 6e 01 02 00 00 80 "
    "3f 00 00 00 c0 1f e2 98 7d aa 56"
)


def tiny() -> MrcContents:
    return MrcContents(
        model_name="tiny",
        fingerprint=model_fingerprint([("fc.weight", (2, 3)), ("fc.bias", (2,))]),
        generator_version=1, coder_seed=1234, hash_seed=0, partition_seed=7,
        bits_per_block=5, num_blocks=3, block_dim=2,
        group_sizes=[2, 1], prior_scales=torch.tensor([0.5, 0.25]),
        indices=torch.tensor([3, 31, 17]),
        uncoded={"bn.running_mean": torch.tensor([1.0, -2.0])},
    )


def rich() -> MrcContents:
    g = torch.Generator().manual_seed(0)
    return MrcContents(
        model_name="my-nét",  # non-ASCII on purpose
        fingerprint=bytes(range(8)),
        generator_version=3, coder_seed=2**64 - 1, hash_seed=2**32 + 5, partition_seed=127,
        bits_per_block=13, num_blocks=301, block_dim=17,
        group_sizes=[1, 50, 300],
        # awkward float32 values: subnormal, largest finite, a value float64 cannot round-trip via str
        prior_scales=torch.tensor([1e-45, 3.4028235e38, 0.1], dtype=torch.float32),
        indices=torch.randint(0, 2**13, (301,), generator=g),
        uncoded={
            "bn.running_var": torch.rand(5, generator=g),
            "bn.weight": torch.tensor([-0.0, float("nan"), float("inf"), 1.5]),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
            "grid": torch.randn(2, 3, 4, generator=g),
        },
    )


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("make", [tiny, rich])
def test_round_trip_is_exact(make, tmp_path):
    contents = make()
    data = encode_mrc(contents)
    for back in (decode_mrc(data), read_mrc(_write(tmp_path, contents))):
        assert back == contents
        for name in ("model_name", "fingerprint", "generator_version", "coder_seed", "hash_seed",
                     "partition_seed", "bits_per_block", "num_blocks", "block_dim", "group_sizes"):
            assert getattr(back, name) == getattr(contents, name), name
        assert back.prior_scales.dtype == torch.float32
        assert torch.equal(back.prior_scales.view(torch.int32), contents.prior_scales.view(torch.int32))
        assert back.indices.dtype == torch.int64 and torch.equal(back.indices, contents.indices)
        assert list(back.uncoded) == list(contents.uncoded)
        for k, v in contents.uncoded.items():
            assert back.uncoded[k].shape == v.shape and back.uncoded[k].dtype == torch.float32
            assert torch.equal(back.uncoded[k].view(torch.int32), v.view(torch.int32)), k
    assert encode_mrc(decode_mrc(data)) == data


def test_equality_is_bitwise():
    a, b = tiny(), tiny()
    assert a == b
    b.prior_scales = torch.tensor([0.5, float(torch.tensor(0.25).nextafter(torch.tensor(1.0)))])
    assert a != b
    b = tiny()
    b.uncoded = {"bn.running_mean": torch.tensor([1.0, -2.0]), "x": torch.zeros(1)}
    assert a != b


def _write(folder: Path, contents: MrcContents, name: str = "m.mrc") -> Path:
    path = folder / name
    assert write_mrc(path, contents) == path.stat().st_size
    return path


# ----------------------------------------------------------------------------- golden bytes


def test_golden_bytes_of_the_worked_example():
    assert encode_mrc(tiny()).hex(" ") == GOLDEN_HEX


def test_docs_show_the_golden_bytes_and_a_correct_budget():
    text = DOC.read_text()
    block = re.search(r"golden-hex-begin -->\s*```\s*(.*?)```", text, re.S).group(1)
    assert " ".join(block.split()) == GOLDEN_HEX
    lenet = encode_mrc(lenet_like())
    bd = byte_breakdown(lenet)
    assert (f"header {bd['header_bytes']} + side information {bd['side_info_bytes']} + indices "
            f"{bd['index_bytes']} + checksum {bd['checksum_bytes']} | **{bd['size_bytes']}**") in text


def lenet_like() -> MrcContents:
    shapes = [("conv1.weight", (20, 1, 5, 5)), ("conv1.bias", (20,)), ("conv2.weight", (50, 20, 5, 5)),
              ("conv2.bias", (50,)), ("fc1.weight", (500, 800)), ("fc1.bias", (500,)),
              ("fc2.weight", (10, 500)), ("fc2.bias", (10,))]
    return MrcContents(
        model_name="lenet5", fingerprint=model_fingerprint(shapes), generator_version=1,
        coder_seed=0, hash_seed=0, partition_seed=0, bits_per_block=16, num_blocks=750, block_dim=36,
        group_sizes=[1, 1, 2, 1, 50, 1, 1, 1], prior_scales=torch.full((8,), 0.05),
        indices=torch.randint(0, 2**16, (750,), generator=torch.Generator().manual_seed(0)),
    )


def test_crc8_is_crc8_smbus():
    assert crc8(b"123456789") == 0xF4


# ----------------------------------------------------------------------------- byte breakdown


@pytest.mark.parametrize("make", [tiny, rich, lenet_like])
def test_byte_breakdown_sums_to_the_size(make):
    data = encode_mrc(make())
    bd = byte_breakdown(data)
    assert bd["size_bytes"] == len(data)
    assert bd["header_bytes"] + bd["side_info_bytes"] + bd["index_bytes"] + bd["checksum_bytes"] == len(data)
    assert bd["checksum_bytes"] == 4
    assert bd["index_bytes"] == math.ceil(make().num_blocks * make().bits_per_block / 8)
    assert b"".join(raw for _, _, raw in describe_fields(data)) == data


def test_lenet_like_file_fits_the_target():
    bd = byte_breakdown(encode_mrc(lenet_like()))
    assert bd["index_bytes"] == 1500 and bd["size_bytes"] < 1600


# ----------------------------------------------------------------------------- bit packing


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 24), st.integers(0, 200), st.randoms(use_true_random=False))
def test_pack_unpack_round_trip(bits, count, rnd):
    values = [rnd.randrange(1 << bits) for _ in range(count)]
    if count:  # make sure the extremes are exercised
        values[0], values[-1] = (1 << bits) - 1, 0 if count > 1 else values[-1]
    packed = pack_indices(torch.tensor(values, dtype=torch.int64), bits)
    assert len(packed) == math.ceil(count * bits / 8)
    back = unpack_indices(packed, bits, count)
    assert back.dtype == torch.int64 and back.tolist() == values


@pytest.mark.parametrize("bits", range(1, 25))
def test_pack_is_msb_first_and_zero_padded(bits):
    values = [(1 << bits) - 1, 1, 0]  # all ones, then the lowest bit alone
    stream = "".join(format(v, f"0{bits}b") for v in values)
    stream += "0" * (-len(stream) % 8)
    expected = int(stream, 2).to_bytes(len(stream) // 8, "big")
    assert pack_indices(values, bits) == expected
    assert pack_indices([1], bits) == (1 << (8 * math.ceil(bits / 8) - bits)).to_bytes(math.ceil(bits / 8), "big")


def test_pack_is_vectorised():
    import time

    values = torch.randint(0, 2**24, (100_000,), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    packed = pack_indices(values, 24)
    back = unpack_indices(packed, 24, len(values))
    assert time.perf_counter() - start < 0.5
    assert torch.equal(back, values)


@pytest.mark.parametrize("values, bits", [([4], 2), ([-1], 3), ([0], 0), ([0], 25), ([[1, 2]], 4)])
def test_pack_rejects_out_of_range(values, bits):
    with pytest.raises(InvalidInput):
        pack_indices(torch.tensor(values), bits)


def test_unpack_rejects_wrong_length_and_dirty_padding():
    with pytest.raises(InvalidInput, match="take 2 bytes"):
        unpack_indices(b"\x00", 5, 3)
    with pytest.raises(InvalidInput, match="padding"):
        unpack_indices(b"\x00\x01", 5, 3)


# ----------------------------------------------------------------------------- validation on write


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(bits_per_block=0), "bits per block"),
        (dict(bits_per_block=25), "bits per block"),
        (dict(indices=torch.tensor([3, 32, 17])), "does not fit in 5 bits"),
        (dict(indices=torch.tensor([3, 31])), "num_blocks = 3"),
        (dict(group_sizes=[2, 1, 1]), "3 group sizes but 2 prior scales"),
        (dict(prior_scales=torch.tensor([0.5, 0.0])), "finite and > 0"),
        (dict(prior_scales=torch.tensor([0.5, float("inf")])), "finite and > 0"),
        (dict(prior_scales=torch.tensor([0.5, float("nan")])), "finite and > 0"),
        (dict(prior_scales=torch.tensor([0.5, 0.25], dtype=torch.float64)), "float32"),
        (dict(fingerprint=b"1234567"), "8 bytes"),
        (dict(coder_seed=-1), "coder_seed"),
        (dict(hash_seed=2**64), "hash_seed"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(group_sizes=[0, 1]), "group size"),
        (dict(uncoded={"n": torch.tensor([1], dtype=torch.int64)}), "float32 only"),
        (dict(uncoded={"": torch.zeros(1)}), "non-empty"),
    ],
)
def test_invalid_contents_are_refused(change, message, tmp_path):
    contents = tiny()
    for k, v in change.items():
        setattr(contents, k, v)
    with pytest.raises(InvalidInput, match=message):
        encode_mrc(contents)
    with pytest.raises(MiracleError):
        write_mrc(tmp_path / "x.mrc", contents)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- errors on read


def test_missing_file(tmp_path):
    with pytest.raises(MrcFileNotFound, match="no such .mrc file") as e:
        read_mrc(tmp_path / "nope.mrc")
    assert "nope.mrc" in str(e.value) and isinstance(e.value, FileNotFoundError)


def test_unreadable_path_is_a_read_error(tmp_path):
    with pytest.raises(MrcReadError, match="cannot read"):
        read_mrc(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.mrc").write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty"):
        read_mrc(tmp_path / "e.mrc")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(40), b"hello, world\n", b"{}", b"MRC"[:1] + b"X"])
def test_not_an_mrc_file(data, tmp_path):
    (tmp_path / "x.mrc").write_bytes(data)
    with pytest.raises(NotAnMrcFile, match="not a miracle .mrc file"):
        read_mrc(tmp_path / "x.mrc")


def _with_version(version: int) -> bytes:
    """The golden file relabelled with another version, its checksums made valid again."""
    data = bytearray(encode_mrc(tiny()))
    data[4] = version
    data[9] = crc8(bytes(data[:9]))
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    return bytes(data)


def test_newer_version_asks_for_a_newer_miracle():
    with pytest.raises(UnsupportedVersion, match=r"version 2 .*newer miracle"):
        decode_mrc(_with_version(FORMAT_VERSION + 1))
    with pytest.raises(UnsupportedVersion, match="version 0"):
        decode_mrc(_with_version(0))


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 6, 9, 10, 20, 40, 69, 70, 71, 74])
def test_truncated_file(length):
    data = encode_mrc(tiny())[:length]
    with pytest.raises(TruncatedFile, match="truncated") as e:
        decode_mrc(data)
    if length >= 10:  # the declared length is readable: both lengths are given
        assert f"75 bytes expected, {length} found" in str(e.value)


def test_truncated_large_file_gives_both_lengths(tmp_path):
    data = encode_mrc(lenet_like())
    (tmp_path / "t.mrc").write_bytes(data[:1000])
    with pytest.raises(TruncatedFile, match=f"{len(data)} bytes expected, 1000 found"):
        read_mrc(tmp_path / "t.mrc")


def test_appended_bytes_are_refused():
    with pytest.raises(MalformedFile, match="unexpected bytes after the end"):
        decode_mrc(encode_mrc(tiny()) + b"\n")


GOLDEN = bytes.fromhex(GOLDEN_HEX)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(GOLDEN) - 1), st.integers(1, 255))
def test_any_changed_byte_is_caught_by_a_checksum(position, xor):
    data = bytearray(GOLDEN)
    data[position] ^= xor
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        decode_mrc(bytes(data))


def test_every_change_of_one_byte_is_caught_exhaustively():
    """All 255 wrong values at every position: a CRC catches every burst up to its width."""
    for position in range(len(GOLDEN)):
        for xor in range(1, 256):
            data = bytearray(GOLDEN)
            data[position] ^= xor
            with pytest.raises(ChecksumMismatch):
                decode_mrc(bytes(data))


def test_read_errors_name_the_path_and_are_miracle_errors(tmp_path):
    data = bytearray(GOLDEN)
    data[50] ^= 0xFF  # inside the uncoded tensor's name
    path = tmp_path / "bad.mrc"
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as e:
        read_mrc(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, FileFormatError) and isinstance(e.value, MiracleError)


def _rechecksum(data: bytearray) -> bytes:
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "position, value, message",
    [
        (28, 0, "bits per block is 0"),  # bits_per_block
        (28, 30, "bits per block is 30"),
        (10, 200, "needs"),  # model name length beyond the end
        (31, 100, "coded tensors"),  # num_coded
        (42, 90, "uncoded"),  # num_uncoded
        (60, 127, "remain"),  # uncoded shape: far too many values
        (70, 0xE3, "padding"),  # a padding bit set in the last index byte
        (11, 0xFF, "UTF-8"),  # model name bytes
    ],
)
def test_checksum_valid_but_inconsistent_fields_are_malformed(position, value, message):
    data = bytearray(GOLDEN)
    data[position] = value
    with pytest.raises(MalformedFile, match=message):
        decode_mrc(_rechecksum(data))


def _reframe(without_checksum: bytes) -> bytes:
    """Fix the total length, header check and CRC-32 of an edited file."""
    data = bytearray(without_checksum + bytes(4))
    data[5:9] = len(data).to_bytes(4, "little")
    data[9] = crc8(bytes(data[:9]))
    return _rechecksum(data)


def test_overlong_varint_is_malformed():
    assert _reframe(GOLDEN[:-4]) == GOLDEN
    overlong = GOLDEN[:26] + b"\x80\x00" + GOLDEN[27:-4]  # hash_seed 0 in two bytes
    with pytest.raises(MalformedFile, match="canonical varint"):
        decode_mrc(_reframe(overlong))


def test_bytes_between_indices_and_checksum_are_malformed():
    with pytest.raises(MalformedFile, match="1 bytes left"):
        decode_mrc(_reframe(GOLDEN[:-4] + b"\x00"))


# ----------------------------------------------------------------------------- writing


def test_write_leaves_no_temporary_file(tmp_path):
    _write(tmp_path, tiny())
    _write(tmp_path, rich())  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["m.mrc"]
    assert read_mrc(tmp_path / "m.mrc") == rich()


@pytest.mark.parametrize("target", ["missing/x.mrc", "file/x.mrc", "folder"])
def test_unwritable_path_raises_and_leaves_nothing(target, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep").write_text("")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(MrcWriteError, match=re.escape(str(tmp_path / target))) as e:
        write_mrc(tmp_path / target, tiny())
    assert isinstance(e.value, MiracleError)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_names_shapes_and_order():
    base = [("a.weight", (3, 4)), ("a.bias", (3,))]
    fp = model_fingerprint(base)
    assert len(fp) == 8 and fp == model_fingerprint(dict(base))
    others = [
        [("a.weight", (4, 3)), ("a.bias", (3,))],
        [("a.weight", (3, 4)), ("a.bias", (4,))],
        [("a.weight", (3, 4, 1)), ("a.bias", (3,))],
        [("b.weight", (3, 4)), ("a.bias", (3,))],
        [("a.bias", (3,)), ("a.weight", (3, 4))],
        [("a.weight", (3, 4))],
        [("a.weight", (34,)), ("a.bias", (3,))],
    ]
    assert len({fp, *(model_fingerprint(o) for o in others)}) == len(others) + 1


def test_fingerprint_text_is_as_documented():
    import hashlib

    text = "conv1.weight:20,1,5,5\nconv1.bias:20\nscalar:\n"
    shapes = [("conv1.weight", (20, 1, 5, 5)), ("conv1.bias", (20,)), ("scalar", ())]
    assert model_fingerprint(shapes) == hashlib.sha256(text.encode()).digest()[:8]
    assert "`conv1.weight:20,1,5,5\\nconv1.bias:20\\n`" in DOC.read_text()
    with pytest.raises(InvalidInput):
        model_fingerprint([("bad\nname", (1,))])


def test_magic_has_a_non_ascii_byte():
    assert len(MAGIC) == 4 and any(b >= 0x80 for b in MAGIC)
