"""Seeded random choices that a decoder must repeat exactly: permutations and signs.

They come from the coder's counter-based generator (Philox4x32-10, see
docs/shared_randomness.md), not from torch's or numpy's sampling routines, whose streams may
change between versions: a file written today must decode with tomorrow's torch.
"""

from __future__ import annotations

import torch

from .coder.philox import philox_words

# Streams of the layout's randomness; the coder's own streams are 0..5 (candidates.py), and
# these stay clear of them even when the layout and coder seeds are equal.
STREAM_HASHING = 0x100
STREAM_PARTITION = 0x101


def random_permutation(n: int, seed: int, stream: int, index: int) -> torch.Tensor:
    """A permutation of range(n): stable argsort of words 0..n-1 of row ``index`` of ``stream``."""
    words = philox_words(seed, stream, torch.tensor([index]), n)[0]
    return torch.argsort(words, stable=True)


def random_signs(n: int, seed: int, stream: int, index: int) -> torch.Tensor:
    """n float32 signs: -1 where the lowest bit of word i of row ``index`` of ``stream`` is 1."""
    words = philox_words(seed, stream, torch.tensor([index]), n)[0]
    return 1.0 - 2.0 * (words & 1).to(torch.float32)


def derived_generator(*parts: int) -> torch.Generator:
    """A CPU torch generator seeded by a tuple of integers (seed, purpose, step, ...): training's
    batches and weight noise. They only need to repeat within one torch version (a resumed run),
    not across versions as the decoder's randomness above does."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63)
    return torch.Generator().manual_seed(seed)
