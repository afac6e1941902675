"""Progressive coding (docs/method.md, "Progressive coding"): code a group of blocks, fix their weights
to the coded sample, retrain the rest, repeat.

The prior scales are frozen when coding starts (the receiver needs them). Under Mean-Var the
betas of the blocks not yet coded keep annealing; under Mean-KL nothing needs annealing.
Blocks are coded in their index order (a block already mixes weights of every layer).

Retraining has its own learning rate. It is not a detail: the blocks not yet coded learn to
work with the samples already fixed, and in our runs this took the decoded network from the
accuracy of a posterior sample to that of the posterior mean or beyond
(results/experiments/retraining.json). The rate may also decay on a cosine over the whole
coding, as training's does; at 3.03 KB that decoded worse than the constant rate
(results/experiments/retraining-3.03KB.json), which stays the default.

Every stage is resumable: the coded indices and samples live in the model's buffers, which
are in every checkpoint, and which retraining steps are due follows from the number of blocks
coded, so a run killed anywhere and started again ends with exactly the same indices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from . import coder, distributed
from .errors import InvalidInput
from .progress import bar as progress_bar
from .training import DEFAULT_RETRAIN_LR, LR_SCHEDULES, Trainer, cosine_rate


@dataclass
class CodingConfig:
    blocks_per_group: int = 10  # 1 reproduces MIRACLE
    retrain_steps: int = 100  # optimiser steps between groups (I)
    rule: str = "mrc"  # one of coder.RULES: how the sender picks a candidate
    coder_seed: int = 0  # the shared randomness (in the file)
    sender_seed: int = 0  # the sender's private choice among candidates (not in the file)
    retrain_lr: float | None = None  # Adam rate of retraining; None: DEFAULT_RETRAIN_LR of the posterior
    retrain_lr_schedule: str = "constant"  # or "cosine": from retrain_lr at the first group to the last

    def __post_init__(self) -> None:
        if self.rule not in coder.RULES:
            raise InvalidInput(f"unknown selection rule {self.rule!r}; choose one of {', '.join(coder.RULES)}")
        if self.blocks_per_group < 1 or self.retrain_steps < 0:
            raise InvalidInput("blocks per group must be at least 1 and retraining steps at least 0")
        if self.retrain_lr is not None and not 0 < self.retrain_lr < float("inf"):
            raise InvalidInput(f"the retraining learning rate must be a positive number, got {self.retrain_lr}")
        if self.retrain_lr_schedule not in LR_SCHEDULES:
            raise InvalidInput(f"unknown retraining learning-rate schedule {self.retrain_lr_schedule!r}; "
                               f"choose {' or '.join(LR_SCHEDULES)}")

    def retraining_rate(self, base_lr: float, num_blocks: int, first_step: int) -> float | Callable[[int], float]:
        """The retraining's learning rate: ``base_lr``, or a function of the trainer's step that
        decays it over all the retraining (which starts at ``first_step``)."""
        if self.retrain_lr_schedule == "constant":
            return base_lr
        total_steps = max((math.ceil(num_blocks / self.blocks_per_group) - 1) * self.retrain_steps, 1)
        return lambda step: cosine_rate(base_lr, (step - first_step) / total_steps)

    def to_dict(self) -> dict:
        return asdict(self)


def code_progressively(trainer: Trainer, config: CodingConfig, progress: bool = True) -> torch.Tensor:
    """Code every block of ``trainer.vmodel`` (trained for ``trainer.config.steps`` steps);
    returns the indices [B]. Retraining continues ``trainer``'s step count."""
    vmodel = trainer.vmodel
    vmodel.freeze_prior()
    first_retraining_step = trainer.config.steps
    retrain_lr = config.retraining_rate(
        config.retrain_lr if config.retrain_lr is not None else DEFAULT_RETRAIN_LR[vmodel.config.param],
        vmodel.num_blocks, first_retraining_step)
    bar = progress_bar(total=vmodel.num_blocks, initial=int(vmodel.coded.sum()), desc="coding", unit="block",
                       enabled=progress and distributed.is_main())
    try:
        while not bool(vmodel.coded.all()):
            groups_done = math.ceil(int(vmodel.coded.sum()) / config.blocks_per_group)
            retrained_until = first_retraining_step + groups_done * config.retrain_steps
            if groups_done and trainer.step < retrained_until:
                trainer.train_until(retrained_until, progress, desc="retraining", lr=retrain_lr, transient=True)
                trainer.save_checkpoint()
                continue
            block_ids = torch.nonzero(~vmodel.coded).flatten()[: config.blocks_per_group]
            vmodel.fix_blocks(block_ids, *_code_group(vmodel, block_ids, config))
            trainer.save_checkpoint()
            bar.update(len(block_ids))
    finally:
        bar.close()
    return vmodel.coded_indices.clone()


def _code_group(vmodel, block_ids: torch.Tensor, config: CodingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices and samples of these blocks. The coder runs on the CPU whatever device
    trains, so that the shared randomness and the choice are the same everywhere; with
    several processes rank 0 codes and the others receive its result."""
    device = vmodel.coded.device
    indices = torch.zeros(len(block_ids), dtype=torch.long, device=device)
    samples = torch.zeros(len(block_ids), vmodel.layout.block_dim, device=device)
    if distributed.is_main():
        with torch.no_grad():
            mu, sigma, s = (t[block_ids.to(device)].cpu() for t in vmodel.block_mean_std())
        coded, values = coder.encode(mu, sigma, s, vmodel.config.bits_per_block, config.coder_seed,
                                     block_ids=block_ids.cpu(), rule=config.rule, sender_seed=config.sender_seed)
        indices.copy_(coded)
        samples.copy_(values)
    return distributed.broadcast_from_main(indices), distributed.broadcast_from_main(samples)
