"""The coding distribution P and the two posterior parameterisations of Q, over blocks [B, D].

Every free variable i has Q_i = N(mu_i, sigma_i^2) and P_i = N(0, s_i^2), with one learnable
scale s per parameter tensor (:class:`CodingDistribution`). KL(Q_i || P_i) in nats is
``ln(s/sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2``; a block costs the sum over its slots.

Both parameterisations share one interface (:class:`Posterior`): ``mean_std(s)`` gives
(mu, sigma) per slot, ``kl_loss_term`` is what the KL adds to the loss, and ``after_step``
lets a parameterisation adapt after every optimiser step. Both take a ``budget_scale``: while
training anneals the KL, every block's budget is that many times wider (Mean-KL costs exactly
the widened budget, Mean-Var anneals towards it). Padding slots are kept at mu = 0, sigma = s
(Q = P): they cost nothing and the coder ignores them.

* :class:`MeanVar` (MIRACLE): free (mu, log sigma); one beta per block, annealed after every
  step: beta_b *= 1 + eps_beta when KL_b exceeds the block's budget, /= 1 + eps_beta otherwise.
* :class:`MeanKL` (Lin, Flamich & Hernandez-Lobato 2023): Q is parameterised by its mean and
  its KL, so every block costs exactly its budget by construction and nothing is annealed.
  The paper's split of a block's budget over its weights could not be read; *both forms
  below are our reconstructions*. A weight's KL is what its mean costs plus what its
  narrowing costs:

      KL_i = mu_i^2 / (2 s_i^2) + (x_i - 1 - ln x_i) / 2,    x_i = sigma_i^2 / s_i^2 <= 1

  and given the second term e_i, x_i = -W0(-exp(-(1 + 2 e_i))): W0 is the principal Lambert W
  branch (sigma <= s; the other branch gives sigma > s and wastes bits).

  - "free-mean" (the default): the means mu are free parameters. If a block's means cost
    more than ``mean_share`` of its budget K they are scaled down to that share; what is
    left, L = K - sum_i mu_i^2 / (2 s_i^2), narrows the weights: e_i = L * softmax(lambda)_i.
    An optimiser moves a mean as it would under Mean-Var; its price is paid in noise.
  - "bounded-mean" (the first form, used by the study in ``results/study``): each weight gets
    kappa_i = K * softmax(lambda)_i and mu_i = (1 - eps) s_i sqrt(2 kappa_i) tanh(nu_i), so
    e_i = kappa_i - mu_i^2 / (2 s_i^2). A mean is bounded by its weight's share of the KL,
    and moving the share moves the mean. In our runs its posterior samples were worse, its
    decoded files as good (``results/experiments/mean-kl-forms.json``).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from .blocks import BlockLayout
from .errors import InvalidInput
from .lambertw import FLOAT64_HALLEY_STEPS
from .lambertw import solve as lambertw_solve

LN2 = math.log(2.0)


def kl_nats(mu: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, s^2)) elementwise, in nats."""
    return torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5


def narrowing_to_std(extra_nats: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sigma <= s (in s's dtype) whose narrowing costs ``extra_nats`` = (x - 1 - ln x) / 2,
    x = sigma^2 / s^2. Computed in float64: for a small cost, 1 - x is the square root of a
    tiny number."""
    return _NarrowingToStd.apply(extra_nats.double(), s)


# Two Halley steps give sigma to within one float32 step of the full solve, for costs from
# 1e-14 to 40 nats (tests/test_posteriors.py); a float64 sigma takes the full solve.
_FLOAT32_HALLEY_STEPS = 2


class _NarrowingToStd(torch.autograd.Function):
    """x = -W0(-exp(-1 - 2 e)), sigma = s sqrt(x), as one operation of the training step.

    The gradient in closed form: from e = (x - 1 - ln x) / 2, de/dx = (x - 1) / (2 x), so
    d sigma / d e = sigma / (x - 1) and d sigma / d s = sqrt(x); the same derivative as
    differentiating through W0, without a graph of the solver's many small operations.
    """

    @staticmethod
    def forward(ctx, extra_nats, s):
        z = -torch.exp(-1.0 - 2 * extra_nats)
        steps = FLOAT64_HALLEY_STEPS if s.dtype == torch.float64 else _FLOAT32_HALLEY_STEPS
        x = -lambertw_solve(z, steps)
        root = torch.sqrt(x)
        sigma = s.double() * root
        ctx.save_for_backward(sigma, x, root)
        return sigma.to(s.dtype)

    @staticmethod
    def backward(ctx, grad_sigma):
        sigma, x, root = ctx.saved_tensors
        grad = grad_sigma.double()
        return grad * sigma / (x - 1), (grad * root).to(grad_sigma.dtype)


def mean_kl_to_mean_std(
    kappa_nats: torch.Tensor, bound_fraction: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kappa, mu / (s sqrt(2 kappa)), s) -> (mu, sigma) with KL(Q||P) = kappa exactly.

    ``bound_fraction`` must lie in (-1, 1).
    """
    kappa, r, s64 = kappa_nats.double(), bound_fraction.double(), s.double()
    mu = s64 * torch.sqrt(2 * kappa) * r
    extra = kappa * (1 - r * r)  # kappa - mu^2 / (2 s^2) >= 0, without cancellation
    return mu.to(s.dtype), narrowing_to_std(extra, s)


def free_mean_to_mean_std(
    mean: torch.Tensor, split_logits: torch.Tensor, budget_nats: float, s: torch.Tensor,
    is_real: torch.Tensor, mean_share: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks [B, D] of free means and split logits -> (mu, sigma), every block's KL equal to
    ``budget_nats``: means scaled down to cost at most ``mean_share`` of it, the rest narrows."""
    s64 = s.double()
    mu = torch.where(is_real, mean.double(), 0.0)
    mean_cost = ((mu / s64) ** 2 / 2).sum(1, keepdim=True)
    scale = torch.sqrt((mean_share * budget_nats / mean_cost.clamp_min(1e-300)).clamp(max=1.0))
    left = budget_nats - mean_cost * scale**2
    extra = left * torch.softmax(split_logits.double().masked_fill(~is_real, float("-inf")), dim=1)
    # Padding (no narrowing) would sit on W0's branch point, whose infinite gradient turns
    # into NaN even where masked out; it gets a harmless stand-in, replaced by (0, s) later.
    extra = torch.where(is_real, extra, 1.0)
    return (mu * scale).to(s.dtype), narrowing_to_std(extra, s)


class CodingDistribution(nn.Module):
    """P = N(0, s^2) with one learnable scale per coded tensor; frozen once coding starts."""

    def __init__(self, layout: BlockLayout, initial_scales: torch.Tensor) -> None:
        super().__init__()
        self.layout = layout
        self.log_scale = nn.Parameter(initial_scales.float().log())

    def scales(self) -> torch.Tensor:
        """s per tensor, in the order of ``layout.tensors``."""
        return self.log_scale.exp()

    def slot_scales(self) -> torch.Tensor:
        """s per slot [B, D]; padding slots get 1."""
        return self.layout.per_slot(self.scales())


class Posterior(nn.Module, abc.ABC):
    """Q over the blocks of a :class:`BlockLayout`; subclasses define (mu, sigma)."""

    name: str
    # Whether the KL's gradient reaches the loss; if not, training computes it as a metric only.
    kl_has_gradient: bool = True

    def __init__(self, layout: BlockLayout, bits_per_block: int) -> None:
        super().__init__()
        self.layout = layout
        self.bits_per_block = bits_per_block
        self.register_buffer("is_real", layout.is_real.clone(), persistent=False)

    def mean_std(self, s: torch.Tensor, budget_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) [B, D] given the slot scales s [B, D]; padding slots are (0, s).
        ``budget_scale`` > 1 widens every block's budget for a while (training's KL annealing)."""
        mu, sigma = self._mean_std(s, budget_scale)
        return torch.where(self.is_real, mu, torch.zeros_like(mu)), torch.where(self.is_real, sigma, s)

    @abc.abstractmethod
    def _mean_std(self, s: torch.Tensor, budget_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of every slot, padding included (it is masked by mean_std)."""

    @abc.abstractmethod
    def kl_loss_term(self, kl_nats_per_block: torch.Tensor) -> torch.Tensor:
        """What the KL adds to the training loss (before division by the dataset size)."""

    def after_step(self, kl_bits_per_block: torch.Tensor, budget_scale: float = 1.0) -> None:
        """Adapt after an optimiser step (Mean-Var anneals beta); default: nothing."""

    def freeze_blocks(self, block_ids: torch.Tensor) -> None:
        """These blocks are coded: stop adapting them; default: nothing."""


class MeanVar(Posterior):
    """Free (mu, log sigma); the budget is enforced by annealing one beta per block."""

    name = "mean-var"

    def __init__(
        self,
        layout: BlockLayout,
        bits_per_block: int,
        initial_mean: torch.Tensor,
        initial_std: torch.Tensor,
        beta_initial: float = 1.0,
        eps_beta: float = 3e-3,
    ) -> None:
        super().__init__(layout, bits_per_block)
        self.mu = nn.Parameter(initial_mean.clone().float())
        self.log_sigma = nn.Parameter(initial_std.float().log())
        self.eps_beta = eps_beta
        self.register_buffer("beta", torch.full((layout.num_blocks,), float(beta_initial)))
        # Blocks whose beta keeps annealing; progressive coding switches coded blocks off.
        self.register_buffer("annealing", torch.ones(layout.num_blocks, dtype=torch.bool))

    def _mean_std(self, s, budget_scale):
        return self.mu, self.log_sigma.exp()  # the budget is the annealing's target, not a bound

    def kl_loss_term(self, kl_nats_per_block):
        return (self.beta * kl_nats_per_block).sum()

    @torch.no_grad()
    def after_step(self, kl_bits_per_block, budget_scale=1.0):
        over = kl_bits_per_block > self.bits_per_block * budget_scale
        factor = torch.where(over, 1 + self.eps_beta, 1 / (1 + self.eps_beta))
        self.beta.copy_(torch.where(self.annealing, self.beta * factor, self.beta))

    def freeze_blocks(self, block_ids):
        self.annealing[block_ids] = False


class MeanKL(Posterior):
    """(mu, KL) parameterisation: every block's KL is ``kl_bits`` by construction.

    ``kl_bits`` defaults to the bits per block; a smaller value leaves the coder a margin
    below log K (less bias at a small cost in information). ``form`` is "free-mean" or
    "bounded-mean" (see the module's docstring).
    """

    name = "mean-kl"
    kl_has_gradient = False
    FORMS = ("free-mean", "bounded-mean")

    def __init__(
        self,
        layout: BlockLayout,
        bits_per_block: int,
        initial_mean: torch.Tensor,
        initial_scales: torch.Tensor,
        kl_bits: float | None = None,
        form: str = "free-mean",
        mean_share: float = 0.5,
        mean_bound_margin: float = 1e-3,
    ) -> None:
        super().__init__(layout, bits_per_block)
        self.kl_bits = float(bits_per_block if kl_bits is None else kl_bits)
        if not 0 < self.kl_bits <= bits_per_block:
            raise InvalidInput(f"kl_bits must be in (0, {bits_per_block}], got {kl_bits}")
        if form not in self.FORMS:
            raise InvalidInput(f"unknown Mean-KL form {form!r}; choose one of {', '.join(self.FORMS)}")
        self.form, self.mean_share, self.mean_bound_margin = form, mean_share, mean_bound_margin
        self.kl_logits = nn.Parameter(torch.zeros(layout.num_blocks, layout.block_dim))
        if form == "free-mean":
            self.mean = nn.Parameter(initial_mean.clone().float())
            return
        # Bounded: start from the given means where the equal split's bound allows it.
        counts = layout.is_real.sum(1, keepdim=True)
        kappa = self.kl_bits * LN2 / counts
        fraction = initial_mean / (initial_scales * torch.sqrt(2 * kappa))
        fraction = fraction.clamp(-0.9, 0.9) / (1 - mean_bound_margin)
        self.mean_logits = nn.Parameter(torch.atanh(fraction).float())

    def _mean_std(self, s, budget_scale):
        budget_nats = self.kl_bits * budget_scale * LN2
        if self.form == "free-mean":
            return free_mean_to_mean_std(self.mean, self.kl_logits, budget_nats, s, self.is_real,
                                         self.mean_share)
        fraction = (1 - self.mean_bound_margin) * torch.tanh(self.mean_logits)
        split = torch.softmax(self.kl_logits.masked_fill(~self.is_real, float("-inf")), dim=1)
        # Padding (kappa = 0) would sit on W0's branch point: a stand-in, as above.
        kappa = torch.where(self.is_real, budget_nats * split, 1.0).clamp_min(1e-12)
        return mean_kl_to_mean_std(kappa, fraction, s)

    def kl_loss_term(self, kl_nats_per_block):
        # Constant by construction: the KL needs no weight and no annealing.
        return kl_nats_per_block.new_zeros(())


POSTERIORS = {MeanVar.name: MeanVar, MeanKL.name: MeanKL}
