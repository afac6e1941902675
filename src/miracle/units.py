"""Sizes and budgets. One convention everywhere: 1 KB = 1000 bytes, 1 KiB = 1024 bytes."""

from __future__ import annotations

import re

from .errors import InvalidInput

_BITS_PER_UNIT = {"bits": 1, "bit": 1, "B": 8, "bytes": 8, "KB": 8000, "kB": 8000, "KiB": 8192}
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_budget_bits(budget: str | int | float) -> int:
    """``"1.5KB"`` -> 12000. A bare number is bits; units: bits, B/bytes, KB/kB (1000 B), KiB."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value, unit = float(budget), "bits"
    else:
        match = _BUDGET.match(str(budget))
        if not match or (match.group(2) or "bits") not in _BITS_PER_UNIT:
            raise InvalidInput(
                f"cannot read the budget {budget!r}; write a number with a unit, e.g. 1.5KB "
                f"(1 KB = 1000 bytes), 1536B, 12000bits or 1.5KiB"
            )
        value, unit = float(match.group(1)), match.group(2) or "bits"
    bits = value * _BITS_PER_UNIT[unit]
    if not bits > 0 or bits != bits or bits == float("inf"):
        raise InvalidInput(f"the budget must be a positive size, got {budget!r}")
    return int(round(bits))


def format_bytes(size_bytes: float) -> str:
    """``1520`` -> "1.52 KB", ``2.5e9`` -> "2.50 GB" (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.2f} {unit}"
    return f"{size_bytes:.0f} B"
