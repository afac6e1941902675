"""Shared candidates: golden values, exactness of the transform, normality, addressing, blocks."""

import math
import struct

import numpy as np
import pytest
import torch
from scipy import stats

from miracle.coder import candidates
from miracle.coder.candidates import (
    CANDIDATE_GENERATOR_VERSION,
    LN2,
    LN_COEFFS,
    SIN_COEFFS,
    SQRT2,
    CandidateBank,
    block_candidates,
    block_transforms,
    normal_rows,
    normals_from_words,
)
from miracle.coder.philox import philox_words
from miracle.errors import InvalidInput

GOLDEN_SEED = 0x0123456789ABCDEF


def bit_patterns(values: torch.Tensor) -> list[str]:
    return [f"{struct.unpack('<I', struct.pack('<f', float(v)))[0]:08x}" for v in values.reshape(-1)]


# --------------------------------------------------------------------------- golden values


def test_version():
    assert CANDIDATE_GENERATOR_VERSION == 1  # the golden values below pin version 1


def test_golden_candidates():
    """Pins the whole stream (Philox, layout, Box-Muller, rounding): docs/shared_randomness.md §7."""
    rows = normal_rows(GOLDEN_SEED, torch.tensor([0, 1, 2**32 + 7]), 6)
    assert bit_patterns(rows[0]) == "3de16bed bf4d97ec c00e4db4 3e9a0fb4 bec317b0 3f4b1beb".split()
    assert bit_patterns(rows[1]) == "beadf295 3eec2e89 bf25c8bc 3f3eb610 bf8e8bb1 3f8f3a24".split()
    assert bit_patterns(rows[2]) == "bd864501 3f91f217 c0114e43 be833d31 3ef67fa8 3e2b7558".split()


def test_golden_block_transforms():
    t = block_transforms(GOLDEN_SEED, torch.tensor([0, 12345]), 6, 20)
    assert t.permutation.tolist() == [[3, 4, 5, 0, 2, 1], [1, 5, 4, 0, 2, 3]]
    assert t.signs.tolist() == [[-1, -1, -1, 1, 1, -1], [-1, 1, 1, -1, 1, -1]]
    assert t.row_offsets.tolist() == [479269, 491244]


def test_golden_edge_words():
    normals = normals_from_words(torch.tensor([[0xFFFFFFFF, 0], [0, 0]]))
    assert bit_patterns(normals) == ["80000000", "80000000", "40d5224d", "00000000"]


def test_constants_are_nearest_float64():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    assert LN_COEFFS == tuple(float(mpmath.mpf(2) / (2 * k + 1)) for k in range(len(LN_COEFFS)))
    assert SIN_COEFFS == tuple(
        float((-1) ** k * (mpmath.pi / 2) ** (2 * k + 1) / mpmath.factorial(2 * k + 1)) for k in range(len(SIN_COEFFS))
    )
    assert LN2 == float(mpmath.log(2))
    assert SQRT2 == float(mpmath.sqrt(2))
    assert struct.unpack("<q", struct.pack("<d", SQRT2))[0] & ((1 << 52) - 1) == candidates._SQRT2_FRACTION_BITS


# --------------------------------------------------------------------------- the transform


def _reference_normals(words: np.ndarray) -> np.ndarray:
    """Box-Muller with numpy's libm in float64 (not portable, but accurate)."""
    u = (words[:, 0].astype(np.float64) + 1) * 2.0**-32
    theta = 2 * np.pi * words[:, 1].astype(np.float64) * 2.0**-32
    rho = np.sqrt(-2 * np.log(u))
    return np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)


def test_transform_matches_box_muller():
    """Our exact-operation evaluation agrees with libm Box-Muller to float32 rounding."""
    edges = [0, 1, 2, (1 << 29) - 1, 1 << 29, (1 << 29) + 1, 1 << 30, (1 << 31) - 1, 1 << 31,
             3 << 30, (1 << 32) - (1 << 29), (1 << 32) - 2, (1 << 32) - 1, 0x6A09E667, 0xB504F333]
    grid = torch.tensor([[a, b] for a in edges for b in edges], dtype=torch.int64)
    random_words = philox_words(5, 9, torch.arange(50_000), 2)
    words = torch.cat([grid, random_words])
    ours = normals_from_words(words).double().numpy()
    reference = _reference_normals(words.numpy())
    # One float32 ulp at the value (plus a floor for values near zero, whose ulp is tiny).
    tolerance = np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64) + 1e-12
    assert np.all(np.abs(ours - reference) <= tolerance)


def test_candidates_are_standard_normal():
    z = normal_rows(11, torch.arange(1 << 16), 16).reshape(-1).double().numpy()  # 2**20 values
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 4 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 4 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.abs(z).max() <= math.sqrt(64 * math.log(2)) + 1e-6


def test_columns_are_uncorrelated():
    z = normal_rows(12, torch.arange(1 << 15), 8).double()
    correlation = torch.corrcoef(z.T)
    off_diagonal = correlation - torch.eye(8, dtype=torch.float64)
    assert off_diagonal.abs().max() < 4 / math.sqrt(z.shape[0])


# --------------------------------------------------------------------------- addressing


def test_rows_regenerated_alone_equal_bank_rows():
    bank = CandidateBank(3, 10, 12, cache_bytes=1 << 30)
    chunks = list(bank.chunks(1 << 12))
    assert len(chunks) == 1
    z_bank = chunks[0][1][:, 10:]  # features are [Z**2, Z]
    rows = torch.tensor([0, 1, 2047, 4095, 1234])
    assert torch.equal(normal_rows(3, rows, 10), z_bank[rows])
    assert torch.equal(chunks[0][1][:, :10], z_bank * z_bank)


def test_batch_sizes_do_not_change_normals(monkeypatch):
    reference = normal_rows(4, torch.arange(500), 7)
    monkeypatch.setattr(candidates, "_PAIRS_PER_BATCH", 3)
    assert torch.equal(normal_rows(4, torch.arange(500), 7), reference)


def test_thread_count_does_not_change_normals():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = normal_rows(5, torch.arange(1 << 15), 8)
        torch.set_num_threads(2)
        two = normal_rows(5, torch.arange(1 << 15), 8)
    finally:
        torch.set_num_threads(threads)
    assert one.numpy().tobytes() == two.numpy().tobytes()


def test_dim_gives_a_prefix():
    assert torch.equal(normal_rows(6, torch.arange(20), 5), normal_rows(6, torch.arange(20), 44)[:, :5])


def test_cached_and_streamed_banks_agree():
    cached = torch.cat([f for _, f in CandidateBank(7, 5, 10, cache_bytes=1 << 30).chunks(100)])
    streamed = torch.cat([f for _, f in CandidateBank(7, 5, 10, cache_bytes=0).chunks(100)])
    assert torch.equal(cached, streamed)
    assert cached.shape == (1024, 10)


# --------------------------------------------------------------------------- blocks


def test_block_transforms_are_valid():
    t = block_transforms(8, torch.arange(200), 44, 16)
    assert torch.equal(t.permutation.sort(dim=1).values, torch.arange(44).expand(200, 44))
    assert set(t.signs.unique().tolist()) == {-1.0, 1.0}
    assert int(t.row_offsets.min()) >= 0 and int(t.row_offsets.max()) < 2**16
    assert len({tuple(p) for p in t.permutation.tolist()}) == 200  # distinct permutations
    assert len(set(t.row_offsets.tolist())) > 190  # offsets collide rarely (K = 65536)


def test_block_candidates_follow_the_definition():
    seed, dim, bits = 9, 6, 8
    ids = torch.tensor([0, 3, 1000])
    indices = torch.tensor([0, 17, 255])
    t = block_transforms(seed, ids, dim, bits)
    z = block_candidates(seed, ids, indices, dim, bits)
    for g in range(3):
        row = (int(indices[g]) + int(t.row_offsets[g])) % 2**bits
        bank_row = normal_rows(seed, torch.tensor([row]), dim)[0]
        assert torch.equal(z[g], t.signs[g] * bank_row[t.permutation[g]])


def test_blocks_get_different_standard_normal_candidates():
    seed, dim, bits = 10, 4, 12
    k = torch.arange(2**bits)
    per_block = [block_candidates(seed, torch.full_like(k, b), k, dim, bits) for b in range(8)]
    for a in range(8):
        for b in range(a + 1, 8):
            assert not torch.equal(per_block[a], per_block[b])
            # Same index, different blocks: uncorrelated coordinates.
            c = torch.corrcoef(torch.stack([per_block[a].reshape(-1), per_block[b].reshape(-1)]).double())[0, 1]
            assert abs(float(c)) < 4 / math.sqrt(per_block[a].numel())
        # Each block's candidates alone (blocks share one bank, so pooling them would count
        # the same bank values several times).
        assert stats.kstest(per_block[a].reshape(-1).double().numpy(), "norm").pvalue > 1e-3


def test_bits_validated():
    for bits in (0, 25, 2.0, True):
        with pytest.raises(InvalidInput, match="bits"):
            block_transforms(0, torch.tensor([0]), 3, bits)
    with pytest.raises(InvalidInput, match="dim"):
        normal_rows(0, torch.tensor([0]), 0)
