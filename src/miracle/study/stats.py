"""Statistics of the study: tails of a distribution of weights, magnitude pruning, spread over seeds."""

from __future__ import annotations

import math

import torch


def excess_kurtosis(values: torch.Tensor) -> float:
    """E[(x - m)^4] / Var^2 - 3: 0 for a Gaussian, 3 for a Laplace, larger for heavier tails."""
    x = values.detach().double().flatten()
    centred = x - x.mean()
    variance = centred.pow(2).mean()
    if variance == 0:
        raise ValueError("the kurtosis of constant values is undefined")
    return float(centred.pow(4).mean() / variance**2 - 3)


def hill_tail_index(values: torch.Tensor, tail_fraction: float = 0.05) -> float:
    """Hill's estimate of alpha in P(|x| > t) ~ t^-alpha from the largest ``tail_fraction`` of
    |x|: smaller alpha means a heavier tail (a Gaussian's estimate grows with the sample size,
    a Student-t with nu degrees of freedom gives about nu)."""
    magnitudes = values.detach().double().abs().flatten()
    k = max(int(tail_fraction * magnitudes.numel()), 2)
    if k >= magnitudes.numel():
        raise ValueError(f"need more than {k} values for a tail index")
    top = torch.topk(magnitudes, k + 1).values  # descending; top[k] is the threshold
    if top[k] <= 0:
        raise ValueError("the tail threshold is zero: too many zeros for a tail index")
    return float(1.0 / torch.log(top[:k] / top[k]).mean())


def histogram(values: torch.Tensor, bins: int = 60, quantile_range: float = 0.999) -> dict:
    """Counts over ``bins`` equal bins spanning the central ``quantile_range`` of the values
    (the extreme tail would squeeze every other bin into one); the rest is counted outside."""
    x = values.detach().double().flatten()
    tail = (1 - quantile_range) / 2
    low, high = torch.quantile(x, torch.tensor([tail, 1 - tail], dtype=x.dtype)).tolist()
    if high <= low:
        low, high = low - 0.5, high + 0.5
    inside = (x >= low) & (x <= high)
    counts = torch.histc(x[inside], bins=bins, min=low, max=high)
    return {"edges": torch.linspace(low, high, bins + 1).tolist(), "counts": [int(c) for c in counts.tolist()],
            "outside": int((~inside).sum())}


def tail_summary(values: torch.Tensor) -> dict:
    return {"excess_kurtosis": excess_kurtosis(values), "hill_tail_index": hill_tail_index(values),
            "count": values.numel(), "histogram": histogram(values)}


def prune_by_magnitude(weights: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: zero the ``fraction`` of all entries (over every tensor
    together) with the smallest magnitude; ties are broken by position, so exactly
    round(fraction * total) entries are zeroed."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the pruned fraction must be in [0, 1], got {fraction}")
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    num_pruned = round(fraction * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat.abs(), stable=True)[:num_pruned]] = False
    pruned, offset = {}, 0
    for name, w in weights.items():
        mask = keep[offset : offset + w.numel()].view_as(w)
        pruned[name] = torch.where(mask, w, torch.zeros_like(w))
        offset += w.numel()
    return pruned


def mean_and_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max over seeds."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}
