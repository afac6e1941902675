"""Relative entropy coding of Gaussian blocks: encode a posterior sample as a candidate index.

For one block, the posterior is ``q = N(mu, diag sigma**2)`` and the coding distribution
``p = N(0, diag s**2)``. Sender and receiver share ``K = 2**bits`` candidates
``w_k = s * z_k`` with ``z_k`` standard normal (:mod:`miracle.coder.candidates`); the sender
picks an index ``k`` and the receiver regenerates ``w_k`` from ``(s, k, bits, seed, block
id)`` alone. The index costs ``bits`` bits; when ``KL(q || p)`` is somewhat below
``bits * ln 2`` nats, the chosen ``w_k`` is approximately a sample of ``q`` (Havasi et al.
2019, section 3). The coder knows nothing about networks: callers hand it blocks.

Scores. With ``w = s z``,

    ln q(w) - ln p(w) = sum_i a_i z_i**2 + b_i z_i + const,
    a_i = 1/2 - s_i**2 / (2 sigma_i**2),   b_i = s_i mu_i / sigma_i**2

(the 1/2 is the ln p(w) = -z**2/2 term, which the official MIRACLE code dropped). Padding
dimensions given as ``mu = 0, sigma = s`` have ``a_i = b_i = 0`` and cost nothing.

Selection rules:

- ``"mrc"`` (minimal random coding): ``k ~ softmax(scores)``, drawn with the sender's
  private randomness (``sender_seed``), streamed over chunks of candidates by weighted
  reservoir sampling, so it is exact without holding K scores per block.
- ``"ordered"`` (ordered random coding, Theis & Yosri 2022):
  ``k = argmax_k score_k - ln t_k`` with increasing arrival times ``t_k`` from the shared
  seed; small indices are likelier, so an entropy coder can shorten them.
- ``"greedy"``: ``k = argmax_k score_k``, the candidate of highest ``q/p``. Not a sample of
  ``q``: it leans towards the posterior's mean, which is what a decoded network is judged by
  (the receiver decodes any index the same way, so the choice is the sender's alone).

Fast path. Blocks share one bank of candidates; block ``b`` sees it through a seeded
permutation of coordinates, sign flips and a row offset. The flips and permutation fold into
the score coefficients, so a group of G blocks is scored by one matrix product of a
``G x 2D`` coefficient matrix with the bank's features ``[Z**2, Z]``, a chunk of rows at a
time. Decoding regenerates only the chosen rows.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from miracle.coder.candidates import (
    STREAM_SENDER,
    BlockTransforms,
    CandidateBank,
    arrival_log2_times,
    block_candidates,
    block_transforms,
    check_bits,
    uniform53_from_words,
)
from miracle.coder.philox import check_seed, philox_words
from miracle.errors import InvalidInput

__all__ = ["DEFAULT_BANK_CACHE_BYTES", "RULES", "encode", "decode", "kl_bits"]

RULES = ("mrc", "ordered", "greedy")

# The bank's features are kept between calls when they take at most this many bytes
# (LeNet-5: K = 2**20, D = 44 -> 369 MB); larger banks are regenerated chunk by chunk.
DEFAULT_BANK_CACHE_BYTES = 1 << 30

# Candidates scored per matrix product. A constant (not derived from the number of blocks) so
# that the sender's random draws for a block (addressed by chunk, docs/shared_randomness.md
# section 6) do not depend on which blocks are coded with it. At D = 44, 2**14 rows of
# features are 5.8 MB and a 64-block score chunk 4 MB: cache-sized.
ROW_CHUNK = 1 << 14

# Blocks scored per matrix product: more amortises reading the bank, fewer keeps the
# R x G score chunk (and the softmax passes over it) in cache.
COLUMNS_PER_PRODUCT = 64


# --------------------------------------------------------------------------- validation


def _as_float32_2d(value: object, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``value`` as a float32 [G, D] CPU tensor and whether it was given as one block [D]."""
    if not isinstance(value, torch.Tensor):
        raise InvalidInput(f"{name} must be a torch.Tensor of shape [G, D] or [D], got {type(value).__name__}.")
    if value.dtype != torch.float32:
        raise InvalidInput(
            f"{name} must be float32 (the coded sample is float32, bit for bit), got {value.dtype}; "
            f"pass {name}.float()."
        )
    if value.dim() not in (1, 2) or value.numel() == 0:
        raise InvalidInput(
            f"{name} must have shape [G, D] (G blocks of D dims) or [D] (one block) with G, D >= 1, "
            f"got {tuple(value.shape)}."
        )
    single = value.dim() == 1
    value = value.detach().cpu()
    if single:
        value = value.unsqueeze(0)
    if not torch.isfinite(value).all():
        raise InvalidInput(f"{name} contains NaN or inf; the coder needs finite values.")
    return value, single


def _check_positive(value: torch.Tensor, name: str) -> None:
    if not (value > 0).all():
        raise InvalidInput(f"{name} must be > 0 everywhere (a standard deviation), got min {value.min().item()}.")


def _check_block_ids(block_ids: object, num_blocks: int) -> torch.Tensor:
    if block_ids is None:
        return torch.arange(num_blocks, dtype=torch.int64)
    if isinstance(block_ids, numbers.Integral) and not isinstance(block_ids, bool):
        block_ids = [int(block_ids)]
    try:
        ids = torch.as_tensor(block_ids)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise InvalidInput(f"block_ids must be integers in [0, 2**63), got {block_ids!r} ({error}).") from None
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InvalidInput(f"block_ids must be integers, got dtype {ids.dtype}.")
    ids = ids.to(torch.int64).reshape(-1)
    if ids.numel() != num_blocks:
        raise InvalidInput(f"block_ids must give one id per block: {num_blocks} blocks, {ids.numel()} ids.")
    if (ids < 0).any():
        raise InvalidInput("block_ids must be >= 0 (they address rows of the shared randomness).")
    return ids


def _check_indices(indices: object, num_blocks: int, single: bool, bits: int) -> torch.Tensor:
    if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        indices = torch.tensor([int(indices)])
    if not isinstance(indices, torch.Tensor):
        raise InvalidInput(f"indices must be an integer torch.Tensor of shape [G], got {type(indices).__name__}.")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise InvalidInput(f"indices must have an integer dtype (e.g. torch.int64), got {indices.dtype}.")
    expected = "a 0-d or 1-element tensor for one block" if single else f"shape [{num_blocks}]"
    if (single and indices.numel() != 1) or (not single and tuple(indices.shape) != (num_blocks,)):
        raise InvalidInput(f"indices must be {expected} (one per block of s), got {tuple(indices.shape)}.")
    indices = indices.detach().cpu().to(torch.int64).reshape(-1)
    num_candidates = 1 << bits
    if (indices < 0).any() or (indices >= num_candidates).any():
        raise InvalidInput(
            f"indices must be in [0, 2**bits) = [0, {num_candidates}), got min {indices.min().item()} "
            f"max {indices.max().item()}; check that bits matches the encoder's."
        )
    return indices


def _check_gaussians(mu: object, sigma: object, s: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    mu_2d, single = _as_float32_2d(mu, "mu")
    sigma_2d, _ = _as_float32_2d(sigma, "sigma")
    s_2d, _ = _as_float32_2d(s, "s")
    shapes = {tuple(t.shape) for t in (mu, sigma, s)}  # type: ignore[union-attr]
    if len(shapes) != 1:
        raise InvalidInput(f"mu, sigma and s must have the same shape, got {sorted(shapes)}.")
    _check_positive(sigma_2d, "sigma")
    _check_positive(s_2d, "s")
    return mu_2d, sigma_2d, s_2d, single


# --------------------------------------------------------------------------- public API


def kl_bits(mu: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """KL(q || p) in bits per block (float64 ``[G]``, or 0-d for one block ``[D]``).

    KL(N(mu, sigma**2) || N(0, s**2)) = ln(s/sigma) + (sigma**2 + mu**2)/(2 s**2) - 1/2 nats
    per dimension, summed over the block and divided by ln 2.
    """
    mu_2d, sigma_2d, s_2d, single = _check_gaussians(mu, sigma, s)
    mu64, sigma64, s64 = (t.double() for t in (mu_2d, sigma_2d, s_2d))
    kl_nats = torch.log(s64 / sigma64) + (sigma64**2 + mu64**2) / (2 * s64**2) - 0.5
    kl = kl_nats.sum(dim=1) / math.log(2)
    return kl[0] if single else kl


def decode(
    s: torch.Tensor,
    indices: torch.Tensor | int,
    bits: int,
    seed: int,
    *,
    block_ids: torch.Tensor | Sequence[int] | int | None = None,
) -> torch.Tensor:
    """The coded samples of the given indices: float32 ``[G, D]`` (``[D]`` for one block).

    Args:
        s: coding-distribution scales, float32 ``[G, D]`` (or ``[D]``), > 0, exactly as
            given to :func:`encode`.
        indices: integer tensor ``[G]`` (0-d or 1 element, or an int, for one block), each in
            ``[0, 2**bits)``.
        bits: bits per index, 1..24.
        seed: shared seed, int in [0, 2**64).
        block_ids: global ids of the blocks (default ``0..G-1``), as given to :func:`encode`.

    Only the G chosen candidate rows are generated, so decoding is cheap for any K.
    """
    bits = check_bits(bits)
    seed = check_seed(seed, "seed")
    s_2d, single = _as_float32_2d(s, "s")
    _check_positive(s_2d, "s")
    ids = _check_block_ids(block_ids, s_2d.shape[0])
    idx = _check_indices(indices, s_2d.shape[0], single, bits)
    samples = _samples(s_2d, idx, bits, seed, ids)
    return samples[0] if single else samples


def encode(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    s: torch.Tensor,
    bits: int,
    seed: int,
    *,
    block_ids: torch.Tensor | Sequence[int] | int | None = None,
    rule: str = "mrc",
    sender_seed: int = 0,
    bank_cache_bytes: int = DEFAULT_BANK_CACHE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one candidate index per block; return ``(indices, samples)``.

    Args:
        mu, sigma: posterior means and standard deviations, float32 ``[G, D]`` (``[D]`` for
            one block). Padding dimensions: ``mu = 0, sigma = s``.
        s: coding-distribution scales, float32, same shape, > 0.
        bits: bits per index, 1..24 (K = 2**bits candidates).
        seed: shared seed, int in [0, 2**64): the receiver needs it to decode.
        block_ids: global block ids (default ``0..G-1``); blocks coded in several calls must
            use distinct ids so that their candidates differ.
        rule: ``"mrc"``, ``"ordered"`` or ``"greedy"`` (see the module docstring).
        sender_seed: the sender's private seed for the ``"mrc"`` draw, int in [0, 2**64).
        bank_cache_bytes: keep the bank's features (``K * 2D * 4`` bytes) in memory between
            calls if they fit in this many bytes, else stream them in chunks.

    Returns:
        ``indices``: int64 ``[G]`` (0-d for one block) in ``[0, 2**bits)``;
        ``samples``: float32 ``[G, D]`` (``[D]``), equal bit for bit to
        ``decode(s, indices, bits, seed, block_ids=block_ids)``.
    """
    bits = check_bits(bits)
    seed = check_seed(seed, "seed")
    sender_seed = check_seed(sender_seed, "sender_seed")
    if rule not in RULES:
        raise InvalidInput(f"rule must be one of {RULES}, got {rule!r}.")
    if isinstance(bank_cache_bytes, bool) or not isinstance(bank_cache_bytes, numbers.Integral) or bank_cache_bytes < 0:
        raise InvalidInput(f"bank_cache_bytes must be an int >= 0, got {bank_cache_bytes!r}.")
    mu_2d, sigma_2d, s_2d, single = _check_gaussians(mu, sigma, s)
    num_blocks, dim = mu_2d.shape
    ids = _check_block_ids(block_ids, num_blocks)

    bank = CandidateBank(seed, dim, bits, int(bank_cache_bytes))
    transforms = block_transforms(seed, ids, dim, bits)
    coefficients = _bank_coefficients(mu_2d, sigma_2d, s_2d, transforms.permutation, transforms.signs)
    log2_arrivals = arrival_log2_times(seed, bits) if rule == "ordered" else None

    bank_rows = torch.empty(num_blocks, dtype=torch.int64)
    for first in range(0, num_blocks, COLUMNS_PER_PRODUCT):
        columns = slice(first, first + COLUMNS_PER_PRODUCT)
        if rule == "mrc":
            bank_rows[columns] = _select_mrc(bank, coefficients[columns], ids[columns], sender_seed)
        else:
            bank_rows[columns] = _select_maximum(
                bank, coefficients[columns], transforms.row_offsets[columns], log2_arrivals
            )
    # Candidate k of a block is bank row (k + offset) mod K.
    indices = (bank_rows - transforms.row_offsets) & ((1 << bits) - 1)
    samples = _samples(s_2d, indices, bits, seed, ids, transforms)
    return (indices[0], samples[0]) if single else (indices, samples)


# --------------------------------------------------------------------------- internals


def _samples(
    s: torch.Tensor,
    indices: torch.Tensor,
    bits: int,
    seed: int,
    block_ids: torch.Tensor,
    transforms: BlockTransforms | None = None,
) -> torch.Tensor:
    """w = s * z for the chosen candidates: the one function both encode and decode use."""
    z = block_candidates(seed, block_ids, indices, s.shape[1], bits, transforms)
    return s * z


def _bank_coefficients(
    mu: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor, permutation: torch.Tensor, signs: torch.Tensor
) -> torch.Tensor:
    """Score coefficients on the bank's features ``[Z**2, Z]``, in bits: float32 ``[G, 2D]``.

    Block g's candidate uses ``z_i = signs_i Z[row, perm_i]``, so ``a_i z_i**2 + b_i z_i =
    a_i Z[row, perm_i]**2 + signs_i b_i Z[row, perm_i]``: the coefficient of bank column
    ``perm_i`` is ``a_i`` on ``Z**2`` and ``signs_i b_i`` on ``Z``. Divided by ln 2, so scores
    are log2 q/p (up to a constant) and the softmax can use exp2, about three times faster
    than exp in torch on this CPU. Computed in float64, then rounded once.
    """
    mu64, sigma64, s64 = mu.double(), sigma.double(), s.double()
    variance = sigma64 * sigma64
    a = (0.5 - (s64 * s64) / (2.0 * variance)) / math.log(2)
    b = (s64 * mu64 / variance) / math.log(2)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or max(a.abs().max(), b.abs().max()) > _MAX_COEFFICIENT:
        raise InvalidInput(
            f"s/sigma or s*mu/sigma**2 is too large (a score coefficient exceeds {_MAX_COEFFICIENT:g}); "
            "such a posterior costs far more than 24 bits per dimension: widen sigma or shrink s."
        )
    on_squares = torch.zeros_like(a).scatter_(1, permutation, a)
    on_values = torch.zeros_like(b).scatter_(1, permutation, signs.double() * b)
    return torch.cat([on_squares, on_values], dim=1).to(torch.float32)


# Squared bank normals are below 45 (|z| <= 6.7), so with coefficients below this bound a
# float32 score cannot overflow, even summed over a million dimensions.
_MAX_COEFFICIENT = 1e30

# Within a chunk, the MRC draw first picks a run of this many candidates by its total weight,
# then a candidate within the run: two short searches instead of a cumulative sum over all.
_RUN_LENGTH = 64


def _sender_uniforms(sender_seed: int, block_ids: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """Two private float64 uniforms per (block, chunk): ``[G, num_chunks, 2]``.

    Words 4c..4c+3 of row ``block id`` of STREAM_SENDER under ``sender_seed``; the first pair
    picks a candidate within chunk c, the second decides whether it replaces the current one.
    """
    words = philox_words(sender_seed, STREAM_SENDER, block_ids, 4 * num_chunks).view(-1, num_chunks, 4)
    return torch.stack(
        [uniform53_from_words(words[..., 0], words[..., 1]), uniform53_from_words(words[..., 2], words[..., 3])],
        dim=2,
    )


def _draw_within_chunk(runs: torch.Tensor, run_totals: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw of one position per block; int64 ``[G]`` in ``[0, n * L)``.

    ``runs`` ``[G, n, L]`` are the weights (>= 0) of a chunk cut into runs of L,
    ``run_totals`` ``[G, n]`` their float64 sums (positive total), ``uniforms`` ``[G]`` in
    [0, 1). A run is chosen by its cumulative weight, then a position within it by the
    leftover fraction of the same uniform. Cumulative sums run in float64, so rounding is far
    below any probability that matters; a rounding overshoot is clamped to the last position.
    """
    num_blocks, num_runs, run_length = runs.shape
    cumulative = torch.cumsum(run_totals, dim=1)
    target = uniforms * cumulative[:, -1]
    run = torch.searchsorted(cumulative, target.unsqueeze(1), right=True).squeeze(1).clamp_(max=num_runs - 1)
    before = torch.where(run > 0, cumulative.gather(1, (run - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
    fraction = ((target - before) / run_totals.gather(1, run.unsqueeze(1)).squeeze(1)).clamp_(0.0, 1.0)
    within = torch.cumsum(runs[torch.arange(num_blocks), run].double(), dim=1)
    position = torch.searchsorted(within, (fraction * within[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return run * run_length + position.clamp_(max=run_length - 1)


def _select_mrc(
    bank: CandidateBank, coefficients: torch.Tensor, block_ids: torch.Tensor, sender_seed: int
) -> torch.Tensor:
    """Bank rows drawn with probability softmax(scores), per block; int64 ``[G]``.

    Weighted reservoir sampling over chunks: draw a row within the chunk from the chunk's
    softmax, then keep it instead of the current choice with probability
    (chunk mass) / (mass seen so far). By induction the choice after the last chunk has
    probability 2**score / sum(2**scores), exactly as a draw over all K at once, but only
    one chunk of scores is ever held.
    """
    num_chunks = -(-bank.num_candidates // ROW_CHUNK)
    uniforms = _sender_uniforms(sender_seed, block_ids, num_chunks)
    num_blocks = coefficients.shape[0]
    chosen = torch.zeros(num_blocks, dtype=torch.int64)
    log2_mass_seen = torch.full((num_blocks,), -math.inf, dtype=torch.float64)
    for chunk_index, (first_row, features) in enumerate(bank.chunks(ROW_CHUNK)):
        scores = coefficients @ features.T  # [G, R] in bits, one row per block
        chunk_max = scores.amax(dim=1, keepdim=True)
        weights = scores.sub_(chunk_max).exp2_()  # in place; in (0, 1], max 1 per block
        run_length = min(_RUN_LENGTH, weights.shape[1])
        runs = weights.view(num_blocks, -1, run_length)
        # float32 sums of runs of 64 weights <= 1 lose nothing that matters; then float64.
        run_totals = runs.sum(dim=2).double()
        local = _draw_within_chunk(runs, run_totals, uniforms[:, chunk_index, 0])
        log2_mass = chunk_max.squeeze(1).double() + torch.log2(run_totals.sum(dim=1))
        log2_mass_after = torch.logaddexp2(log2_mass_seen, log2_mass)
        replace = uniforms[:, chunk_index, 1] < torch.exp2(log2_mass - log2_mass_after)
        chosen = torch.where(replace, first_row + local, chosen)
        log2_mass_seen = log2_mass_after
    return chosen


def _select_maximum(
    bank: CandidateBank, coefficients: torch.Tensor, row_offsets: torch.Tensor, log2_arrivals: torch.Tensor | None
) -> torch.Tensor:
    """Bank rows maximising score - log2 t_k, with k = (row - offset) mod K (ordered), or the
    score alone when ``log2_arrivals`` is None (greedy); int64 ``[G]``.

    (The argmax of ln q/p - ln t is that of log2 q/p - log2 t: the same rule in bits.)
    """
    num_candidates = bank.num_candidates
    chunk_rows = min(ROW_CHUNK, num_candidates)
    # Row j of this view is log2 t_{j .. j+R-1}: each block's arrivals for a chunk are one
    # such window, except for the one chunk where its candidate indices wrap around K.
    windows = log2_arrivals.unfold(0, chunk_rows, 1) if log2_arrivals is not None else None  # a view
    num_blocks = coefficients.shape[0]
    best = torch.full((num_blocks,), -math.inf, dtype=torch.float32)
    chosen = torch.zeros(num_blocks, dtype=torch.int64)
    for first_row, features in bank.chunks(chunk_rows):
        rows_here = features.shape[0]
        scores = coefficients @ features.T  # [G, R]
        if windows is not None:
            starts = (first_row - row_offsets) % num_candidates  # candidate index of the chunk's first row
            wraps = starts > num_candidates - rows_here
            arrivals = windows[torch.where(wraps, 0, starts), :rows_here]
            for g in torch.nonzero(wraps).squeeze(1).tolist():
                arrivals[g] = log2_arrivals[(int(starts[g]) + torch.arange(rows_here)) % num_candidates]
            scores.sub_(arrivals)
        # max-with-index is several times slower than amax in torch, so locate the maximum
        # only in the rows that improve (ties keep the earlier row; argmax returns the first).
        chunk_best = scores.amax(dim=1)
        better = torch.nonzero(chunk_best > best).squeeze(1)
        if better.numel():
            best[better] = chunk_best[better]
            chosen[better] = first_row + scores[better].argmax(dim=1)
    return chosen
