"""Philox4x32-10, the counter-based generator behind the coder's shared randomness.

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; the Random123 library) maps a 128-bit counter and a 64-bit key to 128 random bits.
Being a pure function of (counter, key), any output can be produced without producing the
ones before it: that is what makes candidate rows addressable, and what lets a receiver
regenerate only the rows it needs.

Words are held in ``torch.int64`` tensors with values in ``[0, 2**32)`` so that one call is
vectorised over millions of counters. The 32x32-bit product of a Philox round needs 64 bits;
an int64 multiply keeps its low 64 bits (two's complement wraparound), which is the full
unsigned product, and the high and low 32-bit halves are recovered with an arithmetic shift
and masks. The known-answer vectors of Random123 (tests/test_philox.py) pin all of this,
including the all-ones counter and key, whose products overflow int64.

How counters are laid out for the coder (which word is the stream, which the row) is defined
in :mod:`miracle.coder.candidates` and docs/shared_randomness.md; :func:`philox_words` is
the one addressing helper they share.
"""

from __future__ import annotations

import numbers

import torch

from miracle.errors import InvalidInput

__all__ = [
    "WORD_MASK",
    "check_seed",
    "philox4x32_10",
    "philox_words",
    "seed_to_key",
]

# Round multipliers and Weyl key increments of Philox4x32 (Random123, philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

WORD_MASK = 0xFFFFFFFF
_MAX_UINT64 = (1 << 64) - 1

# Philox calls per internal batch in philox_words (2 MiB per int64 buffer): large enough to
# amortise torch's per-operation overhead and thread synchronisation (a 2**20-row bank was
# generated 1.5x faster than with 2**16 on the 2-core machine), small enough to bound memory.
_CALLS_PER_BATCH = 1 << 18


def check_seed(value: object, name: str = "seed") -> int:
    """Return ``value`` as a Python int if it is an integer in [0, 2**64), else raise InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInput(f"{name} must be an int in [0, 2**64), got {value!r}; pass an int.")
    value = int(value)
    if not 0 <= value <= _MAX_UINT64:
        raise InvalidInput(
            f"{name} must be in [0, 2**64), got {value}; reduce it modulo 2**64 or pick another."
        )
    return value


def seed_to_key(seed: int) -> tuple[int, int]:
    """Split a 64-bit seed into the Philox key words, low word first."""
    seed = check_seed(seed)
    return seed & WORD_MASK, seed >> 32


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply Philox4x32-10 to counters ``(c0, c1, c2, c3)`` under ``key = (k0, k1)``.

    Each counter word is an int64 tensor with values in [0, 2**32); the four must have the
    same shape. Returns the four output words, int64 tensors of that shape with values in
    [0, 2**32), in Random123's order (``philox4x32(ctr, key).v[0..3]``).
    """
    shape = counter[0].shape
    for word in counter:
        if word.dtype != torch.int64 or word.shape != shape:
            raise InvalidInput(
                "philox4x32_10 needs four int64 counter tensors of one shape; "
                f"got {[(w.dtype, tuple(w.shape)) for w in counter]}."
            )
    k0, k1 = (int(k) & WORD_MASK for k in key)
    # Work in place on private buffers: allocation-free rounds are about twice as fast.
    c0, c1, c2, c3 = (w.clone() for w in counter)
    product0 = torch.empty_like(c0)
    product1 = torch.empty_like(c0)
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + PHILOX_W0) & WORD_MASK
            k1 = (k1 + PHILOX_W1) & WORD_MASK
        # c0 and c2 are exact 32-bit words here, so each product is < 2**64: the int64
        # multiply wraps around but keeps all 64 bits of the unsigned product.
        torch.mul(c0, PHILOX_M0, out=product0)
        torch.mul(c2, PHILOX_M1, out=product1)
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0). hi is the arithmetic
        # shift ">> 32", whose sign-extended upper bits the final mask removes. The low words
        # are kept unmasked (the whole product): only their low 32 bits ever reach a masked
        # result, which saves two masks per round.
        torch.bitwise_right_shift(product1, 32, out=c0)
        c0.bitwise_xor_(c1).bitwise_xor_(k0).bitwise_and_(WORD_MASK)
        torch.bitwise_right_shift(product0, 32, out=c2)
        c2.bitwise_xor_(c3).bitwise_xor_(k1).bitwise_and_(WORD_MASK)
        # The products become the new c1 and c3; the old buffers are reused next round.
        c1, product1 = product1, c1
        c3, product0 = product0, c3
    return c0, c1.bitwise_and_(WORD_MASK), c2, c3.bitwise_and_(WORD_MASK)


def philox_words(
    seed: int, stream: int | torch.Tensor, rows: torch.Tensor, num_words: int
) -> torch.Tensor:
    """Words ``0 .. num_words-1`` of the given rows of a stream, as int64 in [0, 2**32).

    Word ``j`` of row ``r`` of stream ``stream`` under ``seed`` is output word ``j % 4`` of
    Philox4x32-10 at counter ``(j // 4, r mod 2**32, r >> 32, stream)`` with key
    ``(seed mod 2**32, seed >> 32)``. A row's words do not depend on ``num_words`` (a longer
    request extends a shorter one) nor on which other rows are requested with it.

    Args:
        seed: the key, an int in [0, 2**64).
        stream: the fourth counter word in [0, 2**32): an int, or a 1-D int64 tensor giving
            one stream per row (several streams in one vectorised call).
        rows: 1-D int64 tensor of row indices in [0, 2**63).
        num_words: words per row, >= 1 and at most 4 * 2**32.

    Returns:
        int64 tensor of shape ``[len(rows), num_words]``.
    """
    key = seed_to_key(seed)
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise InvalidInput(f"rows must be a 1-D int64 tensor, got {rows.dtype} {tuple(rows.shape)}.")
    if rows.numel() and int(rows.min()) < 0:
        raise InvalidInput(f"rows must be >= 0, got {int(rows.min())}.")
    streams = torch.as_tensor(stream, dtype=torch.int64).expand(rows.shape)
    if (streams < 0).any() or (streams > WORD_MASK).any():
        raise InvalidInput(f"stream must be in [0, 2**32), got {stream}.")
    if num_words < 1 or num_words > 4 * (WORD_MASK + 1):
        raise InvalidInput(f"num_words must be in [1, 2**34], got {num_words}.")
    groups = -(-num_words // 4)
    total_calls = rows.numel() * groups
    out = torch.empty((total_calls, 4), dtype=torch.int64)
    # Batches run over the flattened (row, group) calls, so both many short rows and one
    # very long row are generated in bounded memory.
    for start in range(0, total_calls, _CALLS_PER_BATCH):
        call = torch.arange(start, min(start + _CALLS_PER_BATCH, total_calls), dtype=torch.int64)
        row_position = call // groups
        row = rows[row_position]
        c0 = call % groups
        c1 = row & WORD_MASK
        c2 = row >> 32
        c3 = streams[row_position]
        out[start : start + call.numel()] = torch.stack(philox4x32_10((c0, c1, c2, c3), key), dim=1)
    # Output word w of call (row, group g) is word 4g + w of that row.
    return out.view(rows.numel(), 4 * groups)[:, :num_words]
