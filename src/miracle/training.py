"""Variational training: the ELBO, Adam, progress, JSON-lines metrics, crash-safe checkpoints.

The loss is the negative ELBO *per training example*:

    loss = loss_fn(outputs, targets) + sum_b beta_b KL_b (nats) / N_train

where ``loss_fn`` is the batch's mean negative log-likelihood (default: cross-entropy), so
beta_b = 1 is the exact ELBO. Mean-KL has a constant KL (the term has no gradient and no beta);
Mean-Var anneals its betas after every step (:class:`miracle.posteriors.MeanVar`).

Every random choice is derived from ``seed``: the batches of epoch e from (seed, e) (see
:mod:`miracle.batches` for a user's own DataLoader), the weight noise and the images' random
shifts of step t from (seed, t). A run resumed from a checkpoint therefore continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from . import distributed, files, memory
from .augmentation import random_shift
from .batches import accuracy, to_device, training_batches
from .errors import InvalidInput, MiracleError
from .progress import bar as progress_bar
from .randomness import derived_generator
from .posteriors import LN2
from .variational import VariationalConfig, VariationalModel

# Both train far better at 1e-2 than at MIRACLE's 1e-3 in our short schedules: on both LeNet-5
# parts of the study, Mean-Var's trials chose 1e-2 on the validation split
# (results/study-full/lenet5-relu-*/json/annealing.json); every shipped Mean-KL result was made
# at 1e-2.
DEFAULT_LR = {"mean-kl": 1e-2, "mean-var": 1e-2}
# Retraining between coded groups is what turns a noisy posterior sample into an accurate
# network (results/experiments/retraining.json): Mean-KL gained most at 1e-2, Mean-Var at 1e-3.
# Mean-KL at 3.03 KB on the demo preset: 1e-2 again, against 3e-3 and 2e-2
# (results/experiments/retraining-3.03KB.json).
DEFAULT_RETRAIN_LR = {"mean-kl": 1e-2, "mean-var": 1e-3}
CHECKPOINT_NAME = "checkpoint.pt"
OVER_BUDGET_TOLERANCE_BITS = 1e-3  # rounding: Mean-KL blocks sit at their budget
METRICS_NAME = "metrics.jsonl"


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingDiverged(MiracleError):
    pass


LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def autocast(precision: str, device: torch.device):
    """The arithmetic of a training step's forward pass: in ``precision`` "bfloat16" the
    network's convolutions and matrix products run in bfloat16 (``torch.autocast``); the
    weights, their posterior, the KL and the optimiser stay in float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of the parameterisation
    seed: int = 0
    lr_schedule: str = "cosine"  # "cosine": decays to final_lr_fraction * lr at `steps`; or "constant"
    final_lr_fraction: float = 0.05
    checkpoint_every: int = 500
    block_kl_every: int = 100  # how often the metrics carry every block's KL
    # The batch is split into this many parts, each seeing its own weight sample: the same
    # arithmetic, less gradient noise from the weights (wide posteriors at these budgets).
    weight_samples: int = 1
    # KL annealing: every block's budget starts kl_anneal_from times wider and narrows
    # geometrically to the real budget at step kl_anneal_steps (MIRACLE trained first without
    # the KL, then with it; for Mean-KL this is the way to start from a less noisy network).
    kl_anneal_from: float = 1.0
    kl_anneal_steps: int = 0
    random_shift_px: int = 0  # training images moved by up to this many pixels (miracle.augmentation)
    # "bfloat16" trains and retrains faster where the hardware has bfloat16 arithmetic (recent
    # x86 CPUs with AVX-512 BF16 or AMX, recent GPUs) and much slower where it is emulated.
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidInput(f"unknown learning-rate schedule {self.lr_schedule!r}; choose {' or '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"unknown precision {self.precision!r}; choose {' or '.join(PRECISIONS)}")
        if not (self.kl_anneal_from >= 1 and 0 <= self.kl_anneal_steps < self.steps):
            raise MiracleError("KL annealing must start at a budget scale of at least 1 and end before the last step")
        if self.checkpoint_every < 1:
            raise InvalidInput(f"checkpoints are taken every checkpoint_every steps, at least 1; got {self.checkpoint_every}")
        if self.random_shift_px < 0:
            raise InvalidInput(f"random shifts must be 0 pixels or more, got {self.random_shift_px}")
        if not 1 <= self.weight_samples <= self.batch_size:
            raise MiracleError(f"weight samples per step must be between 1 and the batch size, got {self.weight_samples}")

    def budget_scale(self, step: int) -> float:
        """How much wider than the real budget every block's KL may be at ``step``."""
        if step >= self.kl_anneal_steps:
            return 1.0
        return self.kl_anneal_from ** (1 - step / self.kl_anneal_steps)

    def learning_rate(self, param: str, step: int = 0) -> float:
        """The learning rate of optimiser step ``step`` (a function of the step, so resumable)."""
        base = self.lr if self.lr is not None else DEFAULT_LR[param]
        if self.lr_schedule == "constant":
            return base
        return cosine_rate(base, step / self.steps, self.final_lr_fraction)


def cosine_rate(base: float, progress: float, final_fraction: float = TrainConfig.final_lr_fraction) -> float:
    """``base`` decayed on a half cosine to ``final_fraction * base`` at ``progress`` 1 (and after)."""
    final = base * final_fraction
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def evaluate_posterior(vmodel: VariationalModel, data, seed: int = 0) -> dict:
    """Test accuracy of the posterior mean and of one posterior sample (drawn from ``seed``)."""
    return {
        "test_accuracy_mean": accuracy(vmodel, data, use_mean=True),
        "test_accuracy_sample": accuracy(vmodel, data, generator=derived_generator(seed, 3)),
    }


def _trainable(vmodel: VariationalModel) -> list[nn.Parameter]:
    return [p for p in vmodel.parameters() if p.requires_grad]


class Trainer:
    """Trains a :class:`VariationalModel`; with ``out_dir`` it checkpoints and resumes."""

    def __init__(self, vmodel: VariationalModel, train_data, config: TrainConfig,
                 out_dir: str | os.PathLike | None = None, run_info: dict | None = None, *,
                 loss_fn: LossFn | None = None, num_examples: int | None = None) -> None:
        """``train_data``: a Split, a map-style Dataset or a DataLoader (see
        :mod:`miracle.batches`); ``loss_fn(outputs, targets)`` is the mean loss of a batch
        (default: cross-entropy). The trainer works on the device ``vmodel`` is on."""
        self.vmodel, self.config = vmodel, config
        memory.keep_freed_memory()  # the steps reuse each other's buffers without page faults
        self.batches = training_batches(train_data, config.batch_size, config.seed, num_examples=num_examples,
                                        rank=distributed.rank(), world_size=distributed.world_size())
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        self.classification = loss_fn is None  # the metrics then carry the batch's accuracy
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_info = run_info or {}  # what else identifies the run (model, dataset)
        self.optimizer = torch.optim.Adam(_trainable(vmodel), lr=config.learning_rate(vmodel.config.param))
        self.step = 0
        self.seconds = 0.0

    @property
    def num_examples(self) -> int:
        return self.batches.num_examples

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (one process, or rank 0 of several)."""
        return self.out_dir is not None and distributed.is_main()

    def exclusive(self):
        """Hold the run's directory while it trains and codes: a second run on it is refused."""
        return files.exclusive(self.out_dir if self.writes else None)

    # -- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"variational": self.vmodel.config.to_dict(), "train": asdict(self.config), **self.run_info}

    def _comparable_identity(self, identity: dict) -> dict:
        # More steps may be asked of a finished run; everything else must match.
        from .config import CompressConfig  # it is built on this module's TrainConfig

        comparable = {**identity, "variational": with_unrecorded_settings(identity["variational"], VariationalConfig),
                      "train": with_unrecorded_settings(identity["train"], TrainConfig, drop="steps")}
        if "config" in identity:
            comparable["config"] = with_unrecorded_settings(identity["config"], CompressConfig, drop="steps")
        return comparable

    def save_checkpoint(self) -> None:
        if not self.writes:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files.save_torch(
            {"identity": self._identity(), "step": self.step, "seconds": self.seconds,
             "threads": torch.get_num_threads(),
             "vmodel": self.vmodel.state_dict(), "optimizer": self.optimizer.state_dict()},
            self.out_dir / CHECKPOINT_NAME,
        )

    def resume(self, start_from: str | os.PathLike | None = None) -> bool:
        """Continue from the checkpoint in ``out_dir`` if there is one, else from the
        checkpoint ``start_from`` of a run of the same model (``miracle compress --from``)."""
        path = self.out_dir / CHECKPOINT_NAME if self.out_dir else None
        if path is not None and path.exists():
            state = load_checkpoint(path)
            if self._comparable_identity(state["identity"]) != self._comparable_identity(self._identity()):
                raise MiracleError(
                    f"{self.out_dir} holds a run with other settings; choose another output directory "
                    "or delete it to start over"
                )
        elif start_from is not None:
            path = Path(start_from)
            state = load_checkpoint(path)
            recorded = state["identity"]
            # A checkpoint written through the Python API may name no model or dataset: unknown, not other.
            if any(recorded.get(k) not in ("", self._identity().get(k)) for k in ("model", "dataset")) or \
                    recorded.get("variational") != self._identity().get("variational"):
                raise MiracleError(f"{start_from} is a checkpoint of another model or setting")
        else:
            return False
        try:
            self.vmodel.load_state_dict(state["vmodel"])
        except RuntimeError:  # shapes of another network
            raise MiracleError(f"{path} is a checkpoint of another model") from None
        if state["vmodel"]["coded"].any():
            self.vmodel.freeze_prior()  # coding had started: the scales are in the file
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = state["step"], state["seconds"]
        if "threads" in state:  # the sums of a step depend on it: continue as the run began
            torch.set_num_threads(state["threads"])
        if self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(self.out_dir / METRICS_NAME, self.step)
        return True

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self, lr: float | None = None) -> dict:
        """One optimiser step, at ``lr`` or else at the schedule's rate for this step."""
        vm, cfg = self.vmodel, self.config
        device = vm.coded.device
        inputs, targets = (to_device(t, device) for t in self.batches.batch(self.step))
        if cfg.random_shift_px:
            inputs = random_shift(inputs, cfg.random_shift_px, derived_generator(cfg.seed, 6, distributed.rank(), self.step))
        budget_scale = cfg.budget_scale(self.step)
        mean_std = vm.block_mean_std(budget_scale)  # once per step: Mean-KL's Lambert W is not cheap
        with autocast(cfg.precision, device):
            outputs = torch.cat([
                vm(part, generator=self._noise_generator(sample), mean_std=mean_std)
                for sample, part in enumerate(inputs.chunk(cfg.weight_samples))
            ])
        if cfg.precision != "float32":
            outputs = outputs.float()  # the loss in float32, like everything after the network
        nll = self.loss_fn(outputs, targets)
        if not (isinstance(nll, torch.Tensor) and nll.dim() == 0):
            raise InvalidInput("loss_fn(outputs, targets) must return the mean loss of the batch as a scalar "
                               f"tensor, got {type(nll).__name__} {tuple(getattr(nll, 'shape', ()))}")
        with torch.set_grad_enabled(vm.posterior.kl_has_gradient):
            kl_nats = vm.kl_nats_per_block(mean_std)
        # Coded blocks are weights now: their KL is paid and no longer part of the objective.
        kl_term = vm.posterior.kl_loss_term(torch.where(vm.coded, 0.0, kl_nats))
        loss = nll + kl_term.float().to(device) / self.num_examples
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged at step {self.step} (loss is {loss.item()}); lower the "
                "learning rate (--lr) or, for Mean-Var, the annealing rate (--eps-beta)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.optimizer.param_groups[0]["params"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr if lr is not None else cfg.learning_rate(vm.config.param, self.step)
        self.optimizer.step()
        kl_bits = kl_nats.detach() / LN2
        vm.posterior.after_step(kl_bits, budget_scale)
        record = {
            "step": self.step + 1,
            "loss": loss.item(),
            "nll": nll.item(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "kl_bits_total": kl_bits.sum().item(),
            "kl_bits_per_block_min": kl_bits.min().item(),
            "kl_bits_per_block_max": kl_bits.max().item(),
            "blocks_over_budget": int((kl_bits > vm.config.bits_per_block + OVER_BUDGET_TOLERANCE_BITS).sum()),
            "blocks_coded": int(vm.coded.sum()),
        }
        if self.classification:
            record["batch_accuracy"] = (outputs.argmax(1) == targets).float().mean().item()
        if cfg.block_kl_every and (self.step + 1) % cfg.block_kl_every == 0:
            record["kl_bits_per_block"] = [round(v, 5) for v in kl_bits.tolist()]
        self.step += 1
        return record

    def _noise_generator(self, sample: int) -> torch.Generator:
        # One process (rank 0) keeps the generators a run has always used, so earlier runs
        # reproduce; other ranks draw their own weight noise for their share of the batch.
        if distributed.rank():
            return derived_generator(self.config.seed, 4, distributed.rank(), self.step, sample)
        return derived_generator(self.config.seed, 2, self.step, *([sample] if sample else []))

    def train_until(self, target_step: int, progress: bool = True, desc: str = "training",
                    lr: float | Callable[[int], float] | None = None, transient: bool = False) -> None:
        """Train until ``target_step`` steps are done in all (at ``lr``, a rate or a function of
        the step, if given, else on the schedule); checkpoints on the way. A ``transient`` run
        shows progress only on a terminal."""
        if self.step >= target_step:
            return
        metrics = files.LineLog(self.out_dir / METRICS_NAME) if self.writes else None
        bar = progress_bar(total=target_step, initial=self.step, desc=desc, enabled=progress and distributed.is_main(),
                           transient=transient)
        try:
            while self.step < target_step:
                start = time.perf_counter()
                record = self.train_step(lr(self.step) if callable(lr) else lr)
                self.seconds += time.perf_counter() - start
                record["seconds"] = round(self.seconds, 3)
                if metrics:
                    metrics.write(json.dumps(record))
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['kl_bits_total']:.0f}b", refresh=False)
                if self.step % self.config.checkpoint_every == 0:
                    if metrics:
                        metrics.flush()
                    self.save_checkpoint()
        finally:
            bar.close()
            if metrics:
                metrics.close()

    def start(self, start_from=None) -> None:
        """Resume from the checkpoint if there is one, else start a fresh metrics file."""
        if not self.resume(start_from) and self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            files.write_text(self.out_dir / METRICS_NAME, "")

    def run(self, progress: bool = True, start_from=None) -> None:
        """Train up to ``config.steps`` steps, resuming from the checkpoint if there is one."""
        self.start(start_from)
        self.train_until(self.config.steps, progress)
        self.save_checkpoint()

    def step_ms(self) -> float:
        return 1000 * self.seconds / max(self.step, 1)


# What a checkpoint written before a setting existed was trained with, where that is no longer
# the setting's default.
UNRECORDED_VALUES = {"mean_share": 0.95}


def with_unrecorded_settings(settings: dict, config_class, drop: str | None = None) -> dict:
    """Settings recorded by a checkpoint or a result, with those added since it was written at
    the values it was made with (their defaults, or ``UNRECORDED_VALUES``); ``drop`` leaves one
    setting out of the comparison."""
    defaults = {f.name: UNRECORDED_VALUES.get(f.name, f.default) for f in fields(config_class)
                if f.default is not MISSING}
    return {k: v for k, v in {**defaults, **settings}.items() if k != drop}


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by :class:`Trainer`; a clear error for anything else."""
    try:
        # The safe loader: tensors and plain containers only, never code.
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise MiracleError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise MiracleError(f"{path} is not a miracle checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "identity" not in state or "vmodel" not in state:
        raise MiracleError(f"{path} is not a miracle training checkpoint")
    return state


def _truncate_metrics(path: Path, steps_kept: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    # A crash may have cut the last line short.
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and line.endswith("\n") and json.loads(line)["step"] <= steps_kept]
    files.write_text(path, "".join(kept))


__all__ = ["TrainConfig", "Trainer", "accuracy", "evaluate_posterior", "load_checkpoint", "TrainingDiverged"]
