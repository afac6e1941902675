"""A Gaussian posterior over the selected parameters of any ``nn.Module``.

:class:`VariationalModel` wraps the user's model without changing it: the model keeps its
class, its ``state_dict`` keys and its own ``forward``. At every call the wrapper builds the
selected weights from the posterior (a reparameterised sample, or the mean) and runs the
model with them through :func:`torch.func.functional_call`. (``torch.nn.utils.parametrize``
was the other candidate; it renames the keys to ``...parametrizations.weight.original``.)
Parameters that are not selected stay the model's own and are trained as usual.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .blocks import BlockLayout, num_blocks_for
from .errors import InvalidInput
from .posteriors import LN2, POSTERIORS, CodingDistribution, MeanKL, MeanVar, kl_nats

CODED_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Their few affine parameters rescale activations: cheap to send exactly, costly to get wrong.
NORMALISATION_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
                       nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# Other parameters smaller than this (a temperature, a per-channel scale) travel as float32.
MIN_CODED_NUMEL = 16


@dataclass
class VariationalConfig:
    """Everything that defines the posterior's structure; saved with every checkpoint."""

    budget_bits: int
    param: str = "mean-kl"
    bits_per_block: int = 16
    group_sizes: dict[str, int] = field(default_factory=dict)  # hashing; absent names use 1
    include: list[str] | None = None  # fnmatch patterns over parameter names
    exclude: list[str] | None = None
    hash_seed: int = 0
    partition_seed: int = 0
    kl_bits: float | None = None  # Mean-KL: KL per block (default: bits_per_block)
    mean_kl_form: str = "free-mean"  # Mean-KL: "free-mean" or "bounded-mean" (see posteriors)
    mean_share: float = 0.5  # Mean-KL free-mean: the largest share of a block's KL its means may take
    beta_initial: float = 1.0  # Mean-Var: initial beta; 1 is the exact ELBO (see training)
    eps_beta: float = 3e-3  # Mean-Var: annealing rate per step; the study tunes it per model on a validation split
    initial_std_ratio: float = 0.1  # Mean-Var: initial sigma / s

    def __post_init__(self) -> None:
        if self.param not in POSTERIORS:
            raise InvalidInput(f"unknown parameterisation {self.param!r}; choose one of {', '.join(POSTERIORS)}")
        if self.mean_kl_form not in MeanKL.FORMS:
            raise InvalidInput(f"unknown Mean-KL form {self.mean_kl_form!r}; choose one of {', '.join(MeanKL.FORMS)}")
        if not 0 < self.mean_share < 1:
            raise InvalidInput(f"the means' share of a block's KL (mean_share) must be in (0, 1), got {self.mean_share}")
        if not 0 < self.beta_initial < math.inf:
            raise InvalidInput(f"Mean-Var's initial beta (beta_initial) must be a positive number, got {self.beta_initial}")
        if not 0 <= self.eps_beta < math.inf:
            raise InvalidInput(f"Mean-Var's annealing rate (eps_beta) must be 0 or more, got {self.eps_beta}")
        if self.kl_bits is not None and not 0 < self.kl_bits <= self.bits_per_block:
            raise InvalidInput(f"the KL per block (kl_bits) must be in (0, {self.bits_per_block}], the bits per "
                               f"block; got {self.kl_bits}")

    def to_dict(self) -> dict:
        return asdict(self)


def select_parameters(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Parameter]:
    """The parameters to code. Default: every floating-point parameter that is a weight of the
    computation: the weight and bias of Linear and Conv layers, and any other parameter of at
    least MIN_CODED_NUMEL elements (attention projections, embeddings, recurrent weights, bare
    ``nn.Parameter``s); not the parameters of normalisation layers, nor small bare ones, which
    travel uncoded with the buffers. ``include`` replaces the default with the parameters whose
    names match any pattern; ``exclude`` removes matches."""
    if include:
        chosen = {n: p for n, p in model.named_parameters() if any(fnmatch.fnmatch(n, pat) for pat in include)}
    else:
        chosen, seen = {}, set()
        for prefix, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen or not p.is_floating_point():
                    continue  # a tied parameter is coded once, under its first name
                seen.add(id(p))
                if _coded_by_default(module, name, p):
                    chosen[f"{prefix}.{name}" if prefix else name] = p
    if exclude:
        chosen = {n: p for n, p in chosen.items() if not any(fnmatch.fnmatch(n, pat) for pat in exclude)}
    if not chosen:
        raise InvalidInput(
            "no parameters are selected for coding: the model has no weights to code, or "
            "include/exclude removed them all; name parameters with include=[...]"
        )
    return chosen


def _coded_by_default(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    if isinstance(module, NORMALISATION_TYPES):
        return False
    if isinstance(module, CODED_LAYER_TYPES) and name in ("weight", "bias"):
        return True
    return parameter.numel() >= MIN_CODED_NUMEL


def _spread(tensor: torch.Tensor) -> torch.Tensor:
    # A single number (a one-output bias) has no spread: its size stands in for it.
    return tensor.std() if tensor.numel() > 1 else tensor.abs().reshape(())


class VariationalModel(nn.Module):
    def __init__(self, model: nn.Module, config: VariationalConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        selected = select_parameters(model, config.include, config.exclude)
        unknown = set(config.group_sizes) - set(selected)
        if unknown:
            raise InvalidInput(f"group sizes given for parameters that are not coded: {sorted(unknown)}")
        for p in selected.values():
            p.requires_grad_(False)  # replaced by the posterior in every forward
        self.layout = BlockLayout(
            {n: tuple(p.shape) for n, p in selected.items()},
            config.group_sizes,
            num_blocks_for(config.budget_bits, config.bits_per_block),
            config.hash_seed,
            config.partition_seed,
        )
        # The coding distribution starts at each tensor's spread (biases that are all zero
        # get a small floor), and Q at the model's current weights, projected onto the hashing.
        initial_scales = torch.stack([_spread(p.detach().float()).clamp_min(1e-2) for p in selected.values()])
        self.prior = CodingDistribution(self.layout, initial_scales)
        initial_mean = self.layout.tensors_to_blocks(selected)
        s = self.layout.per_slot(initial_scales)
        if config.param == MeanVar.name:
            self.posterior = MeanVar(
                self.layout, config.bits_per_block, initial_mean, config.initial_std_ratio * s,
                config.beta_initial, config.eps_beta,
            )
        else:
            self.posterior = MeanKL(self.layout, config.bits_per_block, initial_mean, s, config.kl_bits,
                                    config.mean_kl_form, config.mean_share)
        # Progressive coding: blocks already coded are fixed to their coded sample.
        B, D = self.layout.num_blocks, self.layout.block_dim
        self.register_buffer("coded", torch.zeros(B, dtype=torch.bool))
        self.register_buffer("coded_indices", torch.full((B,), -1, dtype=torch.long))
        self.register_buffer("coded_values", torch.zeros(B, D))

    def _apply(self, fn, recurse: bool = True):
        # .to(device) and friends: the layout's index tensors travel with the parameters.
        super()._apply(fn, recurse)
        self.layout.to(self.coded.device)
        return self

    @torch.no_grad()
    def fix_blocks(self, block_ids: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Fix blocks to their coded samples: from now on they are weights, not distributions."""
        block_ids, indices, values = (t.to(self.coded.device) for t in (block_ids, indices, values))
        self.coded[block_ids] = True
        self.coded_indices[block_ids] = indices
        self.coded_values[block_ids] = values
        self.posterior.freeze_blocks(block_ids)

    def freeze_prior(self) -> None:
        """The receiver needs the prior scales: once coding starts they must not move."""
        self.prior.log_scale.requires_grad_(False)

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    def block_mean_std(self, budget_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, sigma, s), each [B, D]: the block view the coder consumes (at budget_scale 1)."""
        s = self.prior.slot_scales()
        mu, sigma = self.posterior.mean_std(s, budget_scale)
        return mu, sigma, s

    def kl_nats_per_block(self, mean_std=None) -> torch.Tensor:
        """KL of every block in nats; ``mean_std`` is a :meth:`block_mean_std` already computed."""
        mu, sigma, s = mean_std if mean_std is not None else self.block_mean_std()
        return kl_nats(mu.double(), sigma.double(), s.double()).sum(1)

    def sample_blocks(self, generator: torch.Generator | None = None, use_mean: bool = False,
                      mean_std=None) -> torch.Tensor:
        mu, sigma, _ = mean_std if mean_std is not None else self.block_mean_std()
        if use_mean:
            values = mu
        else:
            # Drawn where the generator lives (the CPU for training's seeded generators) and
            # moved: the same noise whatever device trains.
            noise_device = generator.device if generator is not None else mu.device
            noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=noise_device)
            values = mu + sigma * noise.to(mu.device)
        return torch.where(self.coded[:, None], self.coded_values, values)

    def weights(self, generator: torch.Generator | None = None, use_mean: bool = False,
                mean_std=None) -> dict[str, torch.Tensor]:
        """The coded parameters of the model, by name: a posterior sample, or the mean."""
        return self.layout.blocks_to_tensors(self.sample_blocks(generator, use_mean, mean_std))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, use_mean: bool = False,
                mean_std=None):
        weights = self.weights(generator, use_mean, mean_std)
        return functional_call(self.model, self._laid_out_as_parameters(weights), (x,))

    def _laid_out_as_parameters(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each weight in the memory layout of the parameter it stands in for: the blocks give
        every tensor the default layout, a model kept in channels_last (the built-in LeNet-5)
        trains faster in it, and a model that relies on the default layout
        (``weight.view(...)``) keeps it."""
        params = dict(self.model.named_parameters())
        return {name: value if value.stride() == params[name].stride()
                else torch.empty_like(params[name], dtype=value.dtype, device=value.device).copy_(value)
                for name, value in weights.items()}

    @torch.no_grad()
    def export(self, generator: torch.Generator | None = None, use_mean: bool = True) -> nn.Module:
        """Write the posterior mean (or a sample) into the wrapped model and return it."""
        params = dict(self.model.named_parameters())
        for name, value in self.weights(generator, use_mean).items():
            params[name].copy_(value)
        return self.model

    def kl_summary(self) -> dict:
        with torch.no_grad():
            kl_bits = self.kl_nats_per_block() / LN2
        return {
            "kl_bits_total": float(kl_bits.sum()),
            "kl_bits_per_block_min": float(kl_bits.min()),
            "kl_bits_per_block_max": float(kl_bits.max()),
            "blocks": self.layout.num_blocks,
            "bits_per_block": self.config.bits_per_block,
        }


__all__ = ["VariationalConfig", "VariationalModel", "select_parameters", "MeanKL", "MeanVar"]
