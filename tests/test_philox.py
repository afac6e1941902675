"""Philox4x32-10: Random123's known answers, the counter layout, batching, bad input."""

import pytest
import torch

from miracle.coder import philox
from miracle.coder.philox import WORD_MASK, philox4x32_10, philox_words, seed_to_key
from miracle.errors import InvalidInput

# Random123 kat_vectors, philox4x32 10 rounds: counter (4 words), key (2 words) -> output.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _call(counter, key):
    words = philox4x32_10(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
    return tuple(int(w) for w in words)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_known_answers(counter, key, expected):
    assert _call(counter, key) == expected


def test_lanes_are_independent():
    """Many counters in one call give what each gives alone (vectorisation is exact)."""
    counters = [c for c, _, _ in KNOWN_ANSWERS]
    key = KNOWN_ANSWERS[2][1]
    together = philox4x32_10(tuple(torch.tensor([c[i] for c in counters]) for i in range(4)), key)
    for lane, counter in enumerate(counters):
        assert tuple(int(w[lane]) for w in together) == _call(counter, key)


def test_outputs_are_32_bit_words():
    counter = tuple(torch.randint(0, 2**32, (10_000,), generator=torch.Generator().manual_seed(i)) for i in range(4))
    for word in philox4x32_10(counter, (WORD_MASK, 12345)):
        assert word.dtype == torch.int64
        assert int(word.min()) >= 0 and int(word.max()) <= WORD_MASK


def test_seed_to_key_low_word_first():
    assert seed_to_key(0x299F31D0A4093822) == (0xA4093822, 0x299F31D0)
    assert seed_to_key(0) == (0, 0)
    assert seed_to_key(2**64 - 1) == (WORD_MASK, WORD_MASK)


def test_word_layout():
    """Word j of row r of stream S is output word j % 4 at counter (j // 4, r lo, r hi, S)."""
    seed, stream = 0x299F31D0A4093822, 7
    rows = torch.tensor([0, 5, 2**32 + 3, 2**62 + 11])
    words = philox_words(seed, stream, rows, 11)
    assert words.shape == (4, 11)
    for i, row in enumerate(rows.tolist()):
        for j in range(11):
            expected = _call((j // 4, row & WORD_MASK, row >> 32, stream), seed_to_key(seed))[j % 4]
            assert int(words[i, j]) == expected


def test_rows_are_addressable_and_prefix_stable():
    rows = torch.arange(1000)
    bulk = philox_words(1, 0, rows, 9)
    assert torch.equal(philox_words(1, 0, torch.tensor([777, 3]), 9), bulk[[777, 3]])
    assert torch.equal(philox_words(1, 0, rows, 3), bulk[:, :3])  # fewer words: a prefix


def test_batching_does_not_change_words(monkeypatch):
    rows = torch.arange(300)
    reference = philox_words(42, 2, rows, 13)
    monkeypatch.setattr(philox, "_CALLS_PER_BATCH", 7)  # batches end mid-row
    assert torch.equal(philox_words(42, 2, rows, 13), reference)


def test_per_row_streams():
    rows = torch.tensor([4, 4, 9])
    mixed = philox_words(3, torch.tensor([0, 1, 1]), rows, 5)
    assert torch.equal(mixed[0], philox_words(3, 0, rows[:1], 5)[0])
    assert torch.equal(mixed[1:], philox_words(3, 1, rows[1:], 5))
    assert not torch.equal(mixed[0], mixed[1])  # streams differ


def test_streams_seeds_and_rows_differ():
    base = philox_words(0, 0, torch.tensor([0]), 8)
    assert not torch.equal(base, philox_words(1, 0, torch.tensor([0]), 8))
    assert not torch.equal(base, philox_words(0, 1, torch.tensor([0]), 8))
    assert not torch.equal(base, philox_words(0, 0, torch.tensor([1]), 8))
    assert not torch.equal(base, philox_words(2**32, 0, torch.tensor([0]), 8))  # high key word counts


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "7", None])
def test_bad_seed(seed):
    with pytest.raises(InvalidInput, match="seed"):
        philox_words(seed, 0, torch.tensor([0]), 4)


def test_bad_arguments():
    with pytest.raises(InvalidInput, match="stream"):
        philox_words(0, 2**32, torch.tensor([0]), 4)
    with pytest.raises(InvalidInput, match="stream"):
        philox_words(0, -1, torch.tensor([0]), 4)
    with pytest.raises(InvalidInput, match="rows"):
        philox_words(0, 0, torch.tensor([0.0]), 4)
    with pytest.raises(InvalidInput, match="rows"):
        philox_words(0, 0, torch.tensor([[0]]), 4)
    with pytest.raises(InvalidInput, match="num_words"):
        philox_words(0, 0, torch.tensor([0]), 0)
    with pytest.raises(InvalidInput, match="counter"):
        philox4x32_10((torch.zeros(2, dtype=torch.int64),) * 3 + (torch.zeros(3, dtype=torch.int64),), (0, 0))
