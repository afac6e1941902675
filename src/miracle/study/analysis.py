"""What one run of the study measures: its objective over training, the tails of its posterior,
and the decoded network's accuracy as its weights are pruned in three orders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..posteriors import LN2, kl_nats
from ..randomness import derived_generator
from ..training import METRICS_NAME, accuracy
from ..variational import VariationalModel
from .stats import prune_at_random, prune_by_magnitude, prune_by_signal_to_noise, tail_summary


def objective_curve(run_dir: Path, num_examples: int, eval_every: int) -> list[dict]:
    """The training objective averaged over each window of ``eval_every`` steps: the loss
    optimised (Mean-Var's includes its betas) and the negative ELBO per example (beta = 1)."""
    rows = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if line.strip()]
    windows: dict[int, list[dict]] = {}
    for row in rows:
        windows.setdefault((row["step"] - 1) // eval_every, []).append(row)
    out = []
    for index, window in sorted(windows.items()):
        n = len(window)
        out.append({
            "step": window[-1]["step"], "seconds": window[-1]["seconds"],
            "loss": sum(r["loss"] for r in window) / n,
            "negative_elbo": sum(r["nll"] + r["kl_bits_total"] * LN2 / num_examples for r in window) / n,
            "blocks_over_budget": window[-1]["blocks_over_budget"],
        })
    return out


def posterior_tails(vmodel: VariationalModel) -> dict:
    """Tails of the trained posterior, per free variable: mu / s, sigma / s, KL in bits."""
    real = vmodel.layout.is_real
    with torch.no_grad():
        mu, sigma, s = vmodel.block_mean_std()
        kl_bits = kl_nats(mu.double(), sigma.double(), s.double()) / LN2
    return {"mu_over_s": tail_summary((mu / s)[real]), "sigma_over_s": tail_summary((sigma / s)[real]),
            "kl_bits": tail_summary(kl_bits[real])}


def pruning_curves(model: torch.nn.Module, vmodel: VariationalModel, test, fractions, seed: int) -> dict:
    """Test accuracy after global pruning of the coded weight tensors (not biases), no
    retraining, in three orders: smallest magnitude first, lowest posterior signal-to-noise
    |mu| / sigma first (each block's posterior as it was coded), and a seeded random order."""
    with torch.no_grad():
        mu, sigma, _ = (vmodel.layout.blocks_to_tensors(t) for t in vmodel.block_mean_std())
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().clone() for n in mu if params[n].dim() > 1}
    orders = {
        "magnitude": lambda f: prune_by_magnitude(weights, f),
        "signal_to_noise": lambda f: prune_by_signal_to_noise(weights, mu, sigma, f),
        # The same permutation at every fraction (purpose 5; 1 to 4 are training's), so the
        # pruned sets are nested as the other orders' are.
        "random": lambda f: prune_at_random(weights, f, derived_generator(seed, 5)),
    }
    curves = {}
    for order, prune in orders.items():
        curves[order] = []
        for fraction in fractions:
            with torch.no_grad():
                for name, value in prune(fraction).items():
                    params[name].copy_(value)
            curves[order].append({"fraction": fraction, "test_accuracy": accuracy(model, test)})
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return curves
