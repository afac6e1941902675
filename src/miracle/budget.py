"""What a budget buys: from "1.52KB" to a number of blocks of indices.

A budget counts one of two things:

* the whole file (``--budget``, ``budget=``; the default): header, side information (group
  sizes, prior scales, uncoded tensors such as BatchNorm statistics), indices and checksum.
  The indices get what the rest leaves, in whole blocks, rounded down, so the file is at most
  the budget and within one block of it;
* the indices alone (``--index-budget``, ``index_budget=``), as papers count: MIRACLE's
  1.52 KB is 608 blocks of 20 bits and nothing else. ``ceil(bits / bits_per_block)`` blocks.

The size of a file with B blocks is computed by encoding one with dummy indices
(:func:`miracle.fileformat.encode_mrc`), so the arithmetic cannot drift from the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .blocks import check_bits_per_block
from .errors import InvalidInput
from .units import parse_budget_bits

FILE, INDEX = "file", "index"


@dataclass(frozen=True)
class Budget:
    """A size in bits, of the whole file or of the indices alone."""

    bits: int
    counts: str = FILE

    @classmethod
    def from_options(cls, budget=None, index_budget=None) -> "Budget":
        """From the two ways of giving a budget, exactly one of which must be used."""
        if budget is not None and index_budget is not None:
            raise InvalidInput(
                "the budget is given twice: use --budget (the size of the whole file) or "
                "--index-budget (the indices alone), not both"
            )
        if budget is None and index_budget is None:
            raise InvalidInput("no budget: give --budget (the file's size, e.g. 1.52KB) or --index-budget")
        if budget is not None:
            return cls(parse_budget_bits(budget), FILE)
        return cls(parse_budget_bits(index_budget), INDEX)

    def num_blocks(self, bits_per_block: int, file_bytes_for: Callable[[int], int], max_blocks: int) -> int:
        """Blocks of ``bits_per_block`` bits that fit; ``file_bytes_for(B)`` is the size of
        the file with B blocks, ``max_blocks`` the most the model can use (one per free variable)."""
        check_bits_per_block(bits_per_block)
        if self.counts == INDEX:
            if self.bits < bits_per_block:
                raise InvalidInput(
                    f"the index budget ({self.bits} bits) is smaller than one block ({bits_per_block} "
                    "bits); raise the budget or lower the bits per block"
                )
            return math.ceil(self.bits / bits_per_block)
        budget_bytes = self.bits // 8
        smallest = file_bytes_for(1)
        if smallest > budget_bytes:
            raise InvalidInput(
                f"a file budget of {budget_bytes} bytes cannot hold this model: its side information "
                f"and one block of indices already take {smallest} bytes; give --budget {smallest}B or more"
            )
        # Bisection for the largest B that fits: the size grows with B (its index bits), up to
        # a byte that the varint of the shrinking block size can give back; every B it settles
        # on was measured to fit.
        low, high = 1, max_blocks
        while low < high:
            middle = (low + high + 1) // 2
            if file_bytes_for(middle) <= budget_bytes:
                low = middle
            else:
                high = middle - 1
        return low
