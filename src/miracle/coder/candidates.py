"""Shared randomness of the coder: standard-normal candidates that every receiver reproduces.

Everything here is a pure function of a seed and an address, computed from Philox4x32-10
words with correctly rounded float64 operations only (+, -, *, /, sqrt; products with 0,
+-1 and powers of two, which are exact; integer operations on IEEE-754 bit fields), then
rounded once to float32. torch.log, torch.sin and
torch.cos are avoided on purpose: their vectorised and scalar paths may differ by an ulp and
libm differs between platforms, so a row regenerated alone by a receiver could differ from
the same row generated inside a large bank by the sender. The exact specification (counter
layout, word order, polynomial coefficients, rounding) is docs/shared_randomness.md; bump
:data:`CANDIDATE_GENERATOR_VERSION` whenever any output of this module changes.

Terms used throughout:

- *bank*: ``Z[r, i]`` for rows ``r in [0, K)`` and columns ``i in [0, D)``: row ``r`` of
  the candidate stream, truncated to ``D`` normals. ``K = 2**bits``.
- *block transform*: for a block id ``b``, a coordinate permutation ``perm_b``, sign flips
  ``sign_b`` and a row offset ``off_b``, each from its own stream of the same seed.
- *candidate* ``k`` of block ``b``: ``z[i] = sign_b[i] * Z[(k + off_b) mod K, perm_b[i]]``.
  Each block's candidates are i.i.d. standard normal, and differ from other blocks', while
  all blocks share one bank (the point of the fast path: generate once, score many times).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch

from miracle.coder.philox import philox_words
from miracle.errors import InvalidInput

__all__ = [
    "CANDIDATE_GENERATOR_VERSION",
    "STREAM_CANDIDATES",
    "STREAM_PERMUTATION",
    "STREAM_SIGNS",
    "STREAM_ROW_OFFSET",
    "STREAM_ARRIVALS",
    "STREAM_SENDER",
    "BlockTransforms",
    "CandidateBank",
    "block_transforms",
    "block_candidates",
    "normals_from_words",
    "normal_rows",
    "uniform53_from_words",
    "arrival_log2_times",
    "check_bits",
    "clear_caches",
]

# Recorded by the file format: a change of any candidate, transform or arrival time (not of
# the sender's private choice) must bump it, and golden values in tests/test_candidates.py
# pin version 1.
CANDIDATE_GENERATOR_VERSION = 1

# Fourth Philox counter word: independent streams under one seed.
STREAM_CANDIDATES = 0  # the bank Z, 4 normals per Philox call
STREAM_PERMUTATION = 1  # sort keys of each block's coordinate permutation (row = block id)
STREAM_SIGNS = 2  # sign bits of each block (row = block id)
STREAM_ROW_OFFSET = 3  # row offset of each block (row = block id)
STREAM_ARRIVALS = 4  # Exp(1) gaps of the ordered rule's arrival times (row 0)
STREAM_SENDER = 5  # sender's private uniforms, keyed by sender_seed, not the shared seed

# --- constants of the uniform -> normal transform (docs/shared_randomness.md, section 3) ---
# Each is the float64 nearest to the stated real number, written in hex so the value is
# exact; tests/test_candidates.py recomputes them with mpmath.

# ln(m) = 2 atanh(f) = f * sum_k LN_COEFFS[k] f^(2k), f = (m-1)/(m+1); LN_COEFFS[k] = 2/(2k+1).
# With m in [sqrt(1/2), sqrt(2)), |f| <= 0.1716 and the first omitted term, relative to the
# sum, is below f^20/21 < 3e-17.
LN_COEFFS = tuple(
    float.fromhex(h)
    for h in (
        "0x1.0000000000000p+1",
        "0x1.5555555555555p-1",
        "0x1.999999999999ap-2",
        "0x1.2492492492492p-2",
        "0x1.c71c71c71c71cp-3",
        "0x1.745d1745d1746p-3",
        "0x1.3b13b13b13b14p-3",
        "0x1.1111111111111p-3",
        "0x1.e1e1e1e1e1e1ep-4",
        "0x1.af286bca1af28p-4",
    )
)
# sin((pi/2) r) = r * sum_k SIN_COEFFS[k] r^(2k), SIN_COEFFS[k] = (-1)^k (pi/2)^(2k+1)/(2k+1)!
# With |r| <= 1/2 (|angle| <= pi/4) the first omitted term is below 5e-17. The cosine is
# sqrt(1 - sin^2): on this range cos >= 0.707, so there is no cancellation, and one
# correctly rounded sqrt replaces a second series.
SIN_COEFFS = tuple(
    float.fromhex(h)
    for h in (
        "0x1.921fb54442d18p+0",
        "-0x1.4abbce625be53p-1",
        "0x1.466bc6775aae2p-4",
        "-0x1.32d2cce62bd86p-8",
        "0x1.50783487ee782p-13",
        "-0x1.e3074fde8871fp-19",
        "0x1.e8f434d018d63p-25",
        "-0x1.6fadb9f155744p-31",
    )
)
LN2 = float.fromhex("0x1.62e42fefa39efp-1")  # nearest float64 to ln 2
SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")  # nearest float64 to sqrt 2

_MANTISSA_MASK = (1 << 52) - 1
_EXPONENT_OF_ONE = 1023 << 52  # float64 bit pattern of 1.0
_SQRT2_FRACTION_BITS = 0x6A09E667F3BCD  # fraction field of SQRT2: m >= SQRT2 iff fraction >= this
_TWO_POW_M30 = 2.0**-30

# Word pairs per batch when generating normals: a dozen float64/int64 temporaries of 1 MiB
# each at a time. Like philox._CALLS_PER_BATCH, chosen large to amortise per-operation
# overhead (measured; smaller batches were slower, larger ones no faster).
_PAIRS_PER_BATCH = 1 << 17


def _horner(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """sum_k coeffs[k] x^k by Horner's rule, one rounded multiply and one rounded add per step.

    Separate in-place mul_ and add_ (never addcmul or torch.polyval) so no fused
    multiply-add can change the rounding on some platform.
    """
    acc = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc.mul_(x).add_(c)
    return acc


def _log_uniform(words: torch.Tensor) -> torch.Tensor:
    """ln(u) in float64 for u = (w + 1) * 2**-32 in (0, 1], w a 32-bit word (int64 tensor)."""
    bits = (words + 1).to(torch.float64).view(torch.int64)  # exact: w + 1 <= 2**32 < 2**53
    # w + 1 = m * 2**e with m in [1, 2), read off the IEEE-754 fields; then move m into
    # [sqrt(1/2), sqrt(2)) by halving it (one less in the exponent field) when m >= sqrt(2),
    # so |f| below stays small. All integer operations on the bit pattern: exact, and much
    # faster than torch.where on float64.
    fraction_bits = bits & _MANTISSA_MASK
    high = (fraction_bits >= _SQRT2_FRACTION_BITS).to(torch.int64)
    mantissa = (fraction_bits | _EXPONENT_OF_ONE).sub_(high << 52).view(torch.float64)
    exponent = (bits >> 52).add_(high).sub_(1023 + 32)  # the 32 is the 2**-32 of u
    f = (mantissa - 1.0).div_(mantissa + 1.0)
    log_mantissa = _horner(LN_COEFFS, f * f).mul_(f)
    return exponent.to(torch.float64).mul_(LN2).add_(log_mantissa)


def _sin_cos_2pi(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos) of 2 pi v in float64 for v = w * 2**-32 in [0, 1), w a 32-bit word.

    Exact reduction: 2 pi v = (pi/2) (n + r) with n = round(4 v) computed on the integer
    word and r = (w - n 2**30) * 2**-30 in [-1/2, 1/2), both exact. Then
    sin(a + n pi/2), cos(a + n pi/2) for n = 0..3 are (s, c), (c, -s), (-s, -c), (-c, s).
    """
    quadrant = (words + (1 << 29)) >> 30  # in 0..4; 4 is the same angle as 0
    r = (words - (quadrant << 30)).to(torch.float64).mul_(_TWO_POW_M30)
    sin_r = _horner(SIN_COEFFS, r * r).mul_(r)
    cos_r = (sin_r * sin_r).neg_().add_(1.0).sqrt_()  # 1 - s^2: negation is exact
    # The swap for odd n and the signs as products with 0.0/1.0 and -1.0/+1.0, which are
    # exact (x*1 = x, x*0 = ±0 and ±0 + y = y), instead of torch.where (slow on float64).
    odd = (quadrant & 1).to(torch.float64)
    even = 1.0 - odd
    sin_sign = (1 - (quadrant & 2)).to(torch.float64)  # -1 for n = 2, 3
    cos_sign = (1 - ((quadrant + 1) & 2)).to(torch.float64)  # -1 for n = 1, 2
    sin_v = (odd * cos_r).add_(even * sin_r).mul_(sin_sign)
    cos_v = (odd * sin_r).add_(even * cos_r).mul_(cos_sign)
    return sin_v, cos_v


def normals_from_words(words: torch.Tensor) -> torch.Tensor:
    """Box-Muller: 32-bit words ``[..., 2n]`` (int64) to float32 standard normals ``[..., 2n]``.

    Words ``2j`` (radius) and ``2j+1`` (angle) give normals ``2j = rho cos(theta)`` and
    ``2j+1 = rho sin(theta)``, with ``rho = sqrt(-2 ln((w_2j + 1) 2**-32))`` and
    ``theta = 2 pi w_2j+1 2**-32``, computed in float64 and rounded to nearest float32.
    """
    if words.shape[-1] % 2:
        raise InvalidInput(f"normals_from_words needs an even number of words, got {words.shape[-1]}.")
    shape = words.shape
    flat = words.reshape(-1, 2)
    out = torch.empty(flat.shape, dtype=torch.float32)
    for start in range(0, flat.shape[0], _PAIRS_PER_BATCH):
        pairs = flat[start : start + _PAIRS_PER_BATCH]
        radius = _log_uniform(pairs[:, 0]).mul_(-2.0).sqrt_()
        sin_v, cos_v = _sin_cos_2pi(pairs[:, 1])
        # Assigning float64 into the float32 output rounds to nearest, ties to even.
        out[start : start + pairs.shape[0], 0] = cos_v.mul_(radius)
        out[start : start + pairs.shape[0], 1] = sin_v.mul_(radius)
    return out.reshape(shape)


def uniform53_from_words(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """float64 uniform in [0, 1) from two 32-bit words: (high * 2**21 + low >> 11) * 2**-53."""
    return ((high << 21) | (low >> 11)).to(torch.float64) * 2.0**-53


def normal_rows(seed: int, rows: torch.Tensor, dim: int, stream: int = STREAM_CANDIDATES) -> torch.Tensor:
    """Rows of standard normals, float32 ``[len(rows), dim]``: normal ``i`` of row ``r``.

    Normal ``i`` of row ``r`` comes from words ``2*(i//2)`` and ``2*(i//2)+1`` of that row
    (see :func:`miracle.coder.philox.philox_words`), so it depends only on (seed, stream,
    r, i): not on ``dim``, the other rows requested, the batch size or the thread count.
    """
    if dim < 1:
        raise InvalidInput(f"dim must be >= 1, got {dim}.")
    num_words = 4 * -(-dim // 4)  # whole Philox calls; the tail of the last call is dropped
    return normals_from_words(philox_words(seed, stream, rows, num_words))[:, :dim]


def check_bits(bits: object) -> int:
    """Return ``bits`` as an int if it is an integer in 1..24, else raise InvalidInput."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= int(bits) <= 24:
        raise InvalidInput(
            f"bits must be an int in 1..24 (K = 2**bits candidates per block), got {bits!r}; "
            "more than 24 bits per block does not fit the coder's time and memory budget: "
            "use fewer bits per block, or more blocks."
        )
    return int(bits)


@dataclass(frozen=True)
class BlockTransforms:
    """Per-block transforms of the shared bank, for G blocks of dimension D.

    Candidate ``k`` of block ``g`` is ``signs[g] * Z[(k + row_offsets[g]) mod K, permutation[g]]``.
    """

    permutation: torch.Tensor  # int64 [G, D], a permutation of 0..D-1 per row
    signs: torch.Tensor  # float32 [G, D], entries +1.0 or -1.0
    row_offsets: torch.Tensor  # int64 [G], in [0, K)


def block_transforms(seed: int, block_ids: torch.Tensor, dim: int, bits: int) -> BlockTransforms:
    """The transforms of the given blocks (1-D int64 ids >= 0) for bank width ``dim``, K = 2**bits.

    - permutation: stable argsort of words 0..dim-1 of row ``b`` of STREAM_PERMUTATION (ties,
      rare, go to the smaller coordinate);
    - signs: word ``i`` of row ``b`` of STREAM_SIGNS, -1 if its lowest bit is 1, else +1;
    - row offset: word 0 of row ``b`` of STREAM_ROW_OFFSET, modulo K (uniform, K = 2**bits).
    """
    bits = check_bits(bits)
    num_blocks = block_ids.numel()
    # One vectorised Philox call for the three streams (rows repeated, one stream each).
    streams = torch.tensor([STREAM_PERMUTATION, STREAM_SIGNS, STREAM_ROW_OFFSET]).repeat_interleave(num_blocks)
    words = philox_words(seed, streams, block_ids.repeat(3), dim)
    keys, sign_words, offset_words = words[:num_blocks], words[num_blocks : 2 * num_blocks], words[2 * num_blocks :]
    permutation = torch.argsort(keys, dim=1, stable=True)
    signs = 1.0 - 2.0 * (sign_words & 1).to(torch.float32)
    offsets = offset_words[:, 0] & ((1 << bits) - 1)  # uniform on [0, K): K is a power of two
    return BlockTransforms(permutation=permutation, signs=signs, row_offsets=offsets)


def block_candidates(
    seed: int,
    block_ids: torch.Tensor,
    indices: torch.Tensor,
    dim: int,
    bits: int,
    transforms: BlockTransforms | None = None,
) -> torch.Tensor:
    """Candidate ``indices[g]`` of block ``block_ids[g]``, float32 ``[G, dim]``.

    Regenerates only the G bank rows needed (what a receiver does), never the bank.
    ``transforms`` may pass ``block_transforms(seed, block_ids, dim, bits)`` when the caller
    already has it (it is a pure function of those arguments, so the result is the same).
    """
    if transforms is None:
        transforms = block_transforms(seed, block_ids, dim, bits)
    rows = (indices + transforms.row_offsets) & ((1 << bits) - 1)
    bank_rows = normal_rows(seed, rows, dim)
    return transforms.signs * torch.gather(bank_rows, 1, transforms.permutation)


class CandidateBank:
    """The bank's scoring features ``[Z**2, Z]`` (float32 ``[K, 2D]``) for one (seed, D, bits).

    Scoring a block is a dot product of these features with per-block coefficients, so a
    group of blocks is one matrix product per chunk of rows. If ``K * 2D * 4`` bytes fit in
    ``cache_bytes`` the features are generated once and kept (in an LRU of one bank, shared
    between calls, since progressive coding calls the coder many times with the same bank);
    otherwise each chunk of rows is generated when needed, so memory stays bounded for any K.
    """

    def __init__(self, seed: int, dim: int, bits: int, cache_bytes: int) -> None:
        self.seed = seed
        self.dim = dim
        self.bits = check_bits(bits)
        self.num_candidates = 1 << bits
        self.cache_bytes = cache_bytes
        self._features = _cached_bank_features(seed, dim, bits) if self.fits_cache else None

    @property
    def feature_bytes(self) -> int:
        return self.num_candidates * 2 * self.dim * 4

    @property
    def fits_cache(self) -> bool:
        return self.feature_bytes <= self.cache_bytes

    def chunks(self, chunk_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_row, features[first_row : first_row + chunk_rows])`` over all rows."""
        for start in range(0, self.num_candidates, chunk_rows):
            stop = min(start + chunk_rows, self.num_candidates)
            if self._features is not None:
                yield start, self._features[start:stop]
            else:
                yield start, _features_of_rows(self.seed, self.dim, start, stop)


def _features_of_rows(seed: int, dim: int, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Features ``[Z**2, Z]`` of bank rows ``start .. stop-1``, written into ``out`` if given."""
    z = normal_rows(seed, torch.arange(start, stop, dtype=torch.int64), dim)
    if out is None:
        out = torch.empty((stop - start, 2 * dim), dtype=torch.float32)
    out[:, dim:] = z
    torch.mul(z, z, out=out[:, :dim])
    return out


# One bank at a time: a bank for LeNet-5 (K = 2**20, D = 44) is 369 MB of features, and
# coding uses one (seed, D, bits) throughout, so keeping more would only cost memory.
# Not thread-safe: one coder call at a time per process.
_BANK_CACHE: "OrderedDict[tuple[int, int, int], torch.Tensor]" = OrderedDict()
_ARRIVAL_CACHE: "OrderedDict[tuple[int, int], torch.Tensor]" = OrderedDict()
_BANK_GENERATION_ROWS = 1 << 16


def _cached_bank_features(seed: int, dim: int, bits: int) -> torch.Tensor:
    key = (seed, dim, bits)
    if key not in _BANK_CACHE:
        _BANK_CACHE.clear()  # free the old bank before allocating the new one
        num_candidates = 1 << bits
        features = torch.empty((num_candidates, 2 * dim), dtype=torch.float32)
        for start in range(0, num_candidates, _BANK_GENERATION_ROWS):
            stop = min(start + _BANK_GENERATION_ROWS, num_candidates)
            _features_of_rows(seed, dim, start, stop, out=features[start:stop])
        _BANK_CACHE[key] = features
    return _BANK_CACHE[key]


def clear_caches() -> None:
    """Drop the cached bank and arrival times (e.g. to free memory after coding)."""
    _BANK_CACHE.clear()
    _ARRIVAL_CACHE.clear()


# Arrival word k is word (k mod ARRIVAL_WORDS_PER_ROW) of row (k // ARRIVAL_WORDS_PER_ROW) of
# STREAM_ARRIVALS, so the sequence can be generated a few rows at a time.
ARRIVAL_WORDS_PER_ROW = 1 << 12


def arrival_log2_times(seed: int, bits: int) -> torch.Tensor:
    """log2 t_k for k in [0, K), float32 ``[K]``: the ordered rule's arrival times, in bits.

    ``t_k = E_0 + ... + E_k`` with ``E_j = -ln((w_j + 1) 2**-32)`` ~ Exp(1), where ``w_j`` is
    arrival word ``j`` (see ARRIVAL_WORDS_PER_ROW). Only the sender uses them (the receiver
    needs the index alone), so torch.log is acceptable here; the sums run in float64. One
    sequence serves all blocks: each block pairs it with its own candidates (own row offset,
    permutation and signs), so for every block the arrivals are independent of its
    candidates, which is what the ordered rule needs. Cached (one sequence, 4 K bytes).
    """
    bits = check_bits(bits)
    key = (seed, bits)
    if key not in _ARRIVAL_CACHE:
        _ARRIVAL_CACHE.clear()
        num_candidates = 1 << bits
        log_times = torch.empty(num_candidates, dtype=torch.float32)
        total = 0.0
        words_per_batch = ARRIVAL_WORDS_PER_ROW * 64
        for start in range(0, num_candidates, words_per_batch):
            stop = min(start + words_per_batch, num_candidates)
            first_row = start // ARRIVAL_WORDS_PER_ROW
            num_rows = -(-(stop - start) // ARRIVAL_WORDS_PER_ROW)
            rows = torch.arange(first_row, first_row + num_rows, dtype=torch.int64)
            words = philox_words(seed, STREAM_ARRIVALS, rows, ARRIVAL_WORDS_PER_ROW).reshape(-1)
            gaps = -torch.log((words[: stop - start] + 1).to(torch.float64) * 2.0**-32)
            times = torch.cumsum(gaps, 0) + total
            total = float(times[-1])
            log_times[start:stop] = torch.log2(times).to(torch.float32)
        _ARRIVAL_CACHE[key] = log_times
    return _ARRIVAL_CACHE[key]
