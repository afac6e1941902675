"""One configuration of a compression run: the posterior, the training, the coding.

:class:`CompressConfig` is built once, from ``compress()``'s keywords or the command line's
options (same names: ``steps`` is ``--steps``), optionally on top of a named preset, and is
what a checkpoint records as the run's identity. The posterior's, training's and coding's own
configurations are views of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .budget import Budget
from .errors import InvalidInput
from .presets import get_preset
from .progressive import CodingConfig
from .training import TrainConfig
from .variational import VariationalConfig


@dataclass(frozen=True)
class CompressConfig:
    # The budget: the whole file (e.g. "1.52KB"), or the indices alone; exactly one.
    budget: str | int | None = None
    index_budget: str | int | None = None
    # The posterior.
    param: str = VariationalConfig.param
    bits_per_block: int = VariationalConfig.bits_per_block
    group_sizes: dict[str, int] | None = None  # None: the registered model's hashing, else none
    include: tuple[str, ...] | None = None  # fnmatch patterns of the parameters to code
    exclude: tuple[str, ...] | None = None
    kl_bits: float | None = VariationalConfig.kl_bits
    mean_kl_form: str = VariationalConfig.mean_kl_form
    mean_share: float = VariationalConfig.mean_share
    beta_initial: float = VariationalConfig.beta_initial
    eps_beta: float = VariationalConfig.eps_beta
    # Training.
    steps: int = TrainConfig.steps
    batch_size: int = TrainConfig.batch_size
    lr: float | None = TrainConfig.lr
    lr_schedule: str = TrainConfig.lr_schedule
    weight_samples: int = TrainConfig.weight_samples
    kl_anneal_from: float = TrainConfig.kl_anneal_from
    kl_anneal_steps: int = TrainConfig.kl_anneal_steps
    random_shift_px: int = TrainConfig.random_shift_px
    precision: str = TrainConfig.precision
    checkpoint_every: int = TrainConfig.checkpoint_every
    # Coding.
    blocks_per_group: int = CodingConfig.blocks_per_group
    retrain_steps: int = CodingConfig.retrain_steps
    retrain_lr: float | None = CodingConfig.retrain_lr
    retrain_lr_schedule: str = CodingConfig.retrain_lr_schedule
    rule: str = CodingConfig.rule
    # Every random choice of the run (initialisation, batches, noise, layout, coder).
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.group_sizes is not None:
            object.__setattr__(self, "group_sizes", dict(self.group_sizes))
        if self.budget is not None or self.index_budget is not None:
            Budget.from_options(self.budget, self.index_budget)  # a run without one is refused when it starts
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInput("steps and the batch size must be at least 1")
        if self.seed < 0:
            raise InvalidInput(f"the seed must be 0 or more, got {self.seed}")
        for name, meaning in (("lr", "the learning rate"), ("kl_bits", "the KL per block")):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise InvalidInput(f"{meaning} ({name}) must be a positive number, got {value}")
        # The views validate the rest (unknown posterior, rule, schedule...).
        self.variational(budget_bits=self.bits_per_block)
        self.training()
        self.coding()

    @classmethod
    def from_options(cls, preset: str | None = None, **options) -> CompressConfig:
        """A preset's options (if any), then ``options`` on top: explicit options win."""
        names = set(CONFIG_FIELDS)
        unknown = set(options) - names
        if unknown:
            raise InvalidInput(f"unknown option(s) {', '.join(sorted(unknown))}; the options are {', '.join(sorted(names))}")
        return cls(**{**(get_preset(preset) if preset else {}), **options})

    def replace(self, **changes) -> CompressConfig:
        return dataclasses.replace(self, **changes)

    @property
    def budget_spec(self) -> Budget:
        return Budget.from_options(self.budget, self.index_budget)

    def hashing(self, default: dict[str, int] | None = None) -> dict[str, int]:
        """The group sizes of the run: the configuration's, else ``default`` (the registered
        model's hashing)."""
        return dict(self.group_sizes if self.group_sizes is not None else (default or {}))

    def variational(self, budget_bits: int, default_hashing: dict[str, int] | None = None) -> VariationalConfig:
        """The posterior's structure, once the budget is known in index bits."""
        return VariationalConfig(
            budget_bits=budget_bits, param=self.param, bits_per_block=self.bits_per_block,
            group_sizes=self.hashing(default_hashing), include=list(self.include) if self.include else None,
            exclude=list(self.exclude) if self.exclude else None, hash_seed=self.seed, partition_seed=self.seed,
            kl_bits=self.kl_bits, mean_kl_form=self.mean_kl_form, mean_share=self.mean_share,
            beta_initial=self.beta_initial,
            eps_beta=self.eps_beta,
        )

    def training(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, lr_schedule=self.lr_schedule,
                           seed=self.seed, weight_samples=self.weight_samples, kl_anneal_from=self.kl_anneal_from,
                           kl_anneal_steps=self.kl_anneal_steps, random_shift_px=self.random_shift_px,
                           precision=self.precision, checkpoint_every=self.checkpoint_every)

    def coding(self) -> CodingConfig:
        return CodingConfig(self.blocks_per_group, self.retrain_steps, self.rule, coder_seed=self.seed,
                            sender_seed=self.seed, retrain_lr=self.retrain_lr, retrain_lr_schedule=self.retrain_lr_schedule)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for name in ("include", "exclude"):
            if values[name] is not None:
                values[name] = list(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> CompressConfig:
        return cls.from_options(**values)


CONFIG_FIELDS = tuple(f.name for f in fields(CompressConfig))
# The options that may still change once training is over (``compress --from``).
CODING_FIELDS = ("blocks_per_group", "retrain_steps", "retrain_lr", "retrain_lr_schedule", "rule")
