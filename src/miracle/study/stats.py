"""Statistics of the study: tails of a distribution of weights, pruning in three orders, spread over seeds."""

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


def prune_by_score(weights: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                   fraction: float) -> dict[str, torch.Tensor]:
    """Global pruning: zero the ``fraction`` of all entries (over every tensor together) with
    the lowest score; ties are broken by position, so exactly round(fraction * total) entries
    are zeroed. ``scores`` has a tensor of the same shape for every weight tensor."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the pruned fraction must be in [0, 1], got {fraction}")
    flat = torch.cat([scores[name].detach().flatten() for name in weights])
    num_pruned = round(fraction * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:num_pruned]] = False
    pruned, offset = {}, 0
    for name, w in weights.items():
        mask = keep[offset : offset + w.numel()].view_as(w)
        pruned[name] = torch.where(mask, w, torch.zeros_like(w))
        offset += w.numel()
    return pruned


def prune_by_magnitude(weights: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: the smallest |w| first."""
    return prune_by_score(weights, {name: w.abs() for name, w in weights.items()}, fraction)


def prune_by_signal_to_noise(weights: dict[str, torch.Tensor], mu: dict[str, torch.Tensor],
                             sigma: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Pruning by the posterior's signal-to-noise ratio: the lowest |mu| / sigma first, i.e. the
    weights the posterior itself is least sure of. If sigma ranks weights by importance, this
    order loses less accuracy than magnitude or a random order."""
    return prune_by_score(weights, {name: mu[name].abs() / sigma[name].abs() for name in weights}, fraction)


def prune_at_random(weights: dict[str, torch.Tensor], fraction: float, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
    """The baseline order: a seeded random permutation of all entries."""
    scores = {name: torch.rand(w.shape, generator=generator) for name, w in weights.items()}
    return prune_by_score(weights, scores, fraction)


def mean_and_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max over seeds."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}
