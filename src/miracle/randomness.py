"""Seeded, portable random choices that a decoder must repeat: permutations and signs.

TEMPORARY: torch.Generator based until the coder's counter-based generator lands.
"""

from __future__ import annotations

import torch


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_003 + index)


def random_permutation(n: int, seed: int, stream: int, index: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, stream, index))


def random_signs(n: int, seed: int, stream: int, index: int) -> torch.Tensor:
    bits = torch.randint(0, 2, (n,), generator=_generator(seed, stream, index))
    return bits.float() * 2 - 1
