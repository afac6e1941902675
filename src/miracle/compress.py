"""The product: a model goes in, a ``.mrc`` file comes out, and the file turns back into the model.

Data flows one way::

    nn.Module --VariationalModel--> train --code_progressively--> indices --write_mrc--> file
    file --read_mrc--> indices --coder.decode--> blocks --BlockLayout--> nn.Module

The reported size is the file's size in bytes: header, side information (group sizes, prior
scales, uncoded tensors) and the indices, nothing left out.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import coder
from .blocks import BlockLayout
from .budget import Budget
from .data import Split
from .errors import InvalidInput, MiracleError
from .fileformat import MrcContents, encode_mrc, model_fingerprint, read_mrc, write_mrc
from .models import create_model
from .progressive import CodingConfig, code_progressively
from .threads import use_threads
from .training import TrainConfig, Trainer, evaluate_posterior
from .variational import VariationalConfig, VariationalModel, select_parameters


class FingerprintMismatch(MiracleError):
    pass


@dataclass
class CompressResult:
    path: Path
    size_bytes: int
    index_bits: int
    num_blocks: int
    bits_per_block: int
    train_seconds: float
    seconds: float
    before_coding: dict  # test accuracy of the trained posterior (mean and a sample), if asked
    vmodel: VariationalModel  # with every block fixed to its coded sample

    def decoded_model(self) -> nn.Module:
        """The network the receiver will get (the coded samples in the user's model)."""
        return self.vmodel.export(use_mean=True)


def work_dir_for(out: str | os.PathLike) -> Path:
    """Where a compress run keeps its checkpoint and metrics: beside the output file."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def _uncoded_tensors(model: nn.Module, coded_names: set[str]) -> dict[str, torch.Tensor]:
    # Floating-point parameters and buffers that are not coded travel as float32 (e.g. a
    # BatchNorm's affine weights and running statistics); integer counters are not needed.
    return {name: value.detach().float().clone() for name, value in model.state_dict().items()
            if name not in coded_names and value.is_floating_point()}


def index_bits_for(budget: Budget, model: nn.Module, *, bits_per_block: int, group_sizes: dict[str, int],
                   include=None, exclude=None, seed: int = 0, model_name: str = "") -> int:
    """The index bits (a whole number of blocks) that ``budget`` leaves for ``model`` coded
    with these settings; the seeds and the model's name are in the file's header."""
    selected = select_parameters(model, include, exclude)
    shapes = [(name, tuple(p.shape)) for name, p in selected.items()]
    groups = [int(group_sizes.get(name, 1)) for name in selected]
    num_free = sum(math.ceil(math.prod(shape) / g) for (_, shape), g in zip(shapes, groups))
    uncoded = _uncoded_tensors(model, set(selected))

    def file_bytes_for(num_blocks: int) -> int:
        return len(encode_mrc(MrcContents(
            model_name=model_name, fingerprint=model_fingerprint(shapes),
            generator_version=coder.CANDIDATE_GENERATOR_VERSION, coder_seed=seed, hash_seed=seed,
            partition_seed=seed, bits_per_block=bits_per_block, num_blocks=num_blocks,
            block_dim=math.ceil(num_free / num_blocks), group_sizes=groups,
            prior_scales=torch.ones(len(groups)), indices=torch.zeros(num_blocks, dtype=torch.long),
            uncoded=uncoded,
        )))

    return budget.num_blocks(bits_per_block, file_bytes_for, max_blocks=num_free) * bits_per_block


def contents_of(vmodel: VariationalModel, coding: CodingConfig, model_name: str = "") -> MrcContents:
    """What the file holds for a fully coded ``vmodel``."""
    if not bool(vmodel.coded.all()):
        raise MiracleError("not every block is coded yet")
    layout, config = vmodel.layout, vmodel.config
    return MrcContents(
        model_name=model_name,
        fingerprint=model_fingerprint([(t.name, t.shape) for t in layout.tensors]),
        generator_version=coder.CANDIDATE_GENERATOR_VERSION,
        coder_seed=coding.coder_seed,
        hash_seed=config.hash_seed,
        partition_seed=config.partition_seed,
        bits_per_block=config.bits_per_block,
        num_blocks=layout.num_blocks,
        block_dim=layout.block_dim,
        group_sizes=[t.group_size for t in layout.tensors],
        prior_scales=vmodel.prior.scales().detach().float().clone(),
        indices=vmodel.coded_indices.clone(),
        uncoded=_uncoded_tensors(vmodel.model, set(layout.names)),
    )


def run_compression(trainer: Trainer, coding: CodingConfig, out, model_name: str = "",
                    progress: bool = True, start_from=None, test_data: Split | None = None) -> CompressResult:
    """Train (resuming, or starting from the checkpoint ``start_from``), code progressively,
    write ``out`` atomically. With ``test_data``, the posterior is evaluated before coding."""
    check_writable(out)
    start = time.perf_counter()
    trainer.run(progress, start_from)
    train_seconds = trainer.seconds
    before = evaluate_posterior(trainer.vmodel, test_data, trainer.config.seed) if test_data is not None else {}
    code_progressively(trainer, coding, progress)
    vmodel = trainer.vmodel
    size_bytes = write_mrc(out, contents_of(vmodel, coding, model_name))
    return CompressResult(Path(out), size_bytes, vmodel.num_blocks * vmodel.config.bits_per_block,
                          vmodel.num_blocks, vmodel.config.bits_per_block, train_seconds,
                          time.perf_counter() - start, before, vmodel)


def check_writable(out: str | os.PathLike) -> None:
    """Fail before any work, not after hours of it, when the output cannot be written."""
    folder = Path(out).parent
    if Path(out).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise MiracleError(f"cannot write the output file {out}: choose a path in an existing, writable folder")


def compress(
    model: nn.Module,
    train_data: Split,
    budget: str | int | None,
    out: str | os.PathLike,
    *,
    index_budget: str | int | None = None,
    param: str = "mean-kl",
    bits_per_block: int = 16,
    group_sizes: dict[str, int] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    kl_bits: float | None = None,
    mean_kl_form: str = VariationalConfig.mean_kl_form,
    beta_initial: float = VariationalConfig.beta_initial,
    eps_beta: float = VariationalConfig.eps_beta,
    steps: int = TrainConfig.steps,
    batch_size: int = TrainConfig.batch_size,
    lr: float | None = None,
    lr_schedule: str = TrainConfig.lr_schedule,
    weight_samples: int = TrainConfig.weight_samples,
    kl_anneal_from: float = TrainConfig.kl_anneal_from,
    kl_anneal_steps: int = TrainConfig.kl_anneal_steps,
    blocks_per_group: int = CodingConfig.blocks_per_group,
    retrain_steps: int = CodingConfig.retrain_steps,
    retrain_lr: float | None = CodingConfig.retrain_lr,
    rule: str = CodingConfig.rule,
    seed: int = 0,
    model_name: str = "",
    work_dir: str | os.PathLike | None = None,
    threads: int | str | None = None,
    progress: bool = True,
) -> CompressResult:
    """Compress ``model`` (any nn.Module with Linear/Conv layers) trained on ``train_data``
    into the file ``out`` of at most ``budget`` (e.g. "1.52KB"; 1 KB = 1000 bytes), everything
    included. ``index_budget`` instead counts the indices alone (give one of the two).

    ``model`` is trained in place of a copy: afterwards it holds the decoded weights. The
    checkpoint goes to ``work_dir`` (default: ``out`` + ".work"); running the same call again
    after an interruption resumes there and writes the same file. ``threads`` sets torch's
    thread count for the run (a number, or "auto": the cores idle at the start; default: leave it).
    """
    use_threads(threads)
    group_sizes = dict(group_sizes or {})
    index_bits = index_bits_for(Budget.from_options(budget, index_budget), model, bits_per_block=bits_per_block,
                                group_sizes=group_sizes, include=include, exclude=exclude, seed=seed,
                                model_name=model_name)
    vconfig = VariationalConfig(
        budget_bits=index_bits, param=param, bits_per_block=bits_per_block,
        group_sizes=group_sizes, include=include, exclude=exclude, hash_seed=seed,
        partition_seed=seed, kl_bits=kl_bits, mean_kl_form=mean_kl_form, beta_initial=beta_initial,
        eps_beta=eps_beta,
    )
    coding = CodingConfig(blocks_per_group, retrain_steps, rule, coder_seed=seed, sender_seed=seed,
                          retrain_lr=retrain_lr)
    tconfig = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, seed=seed,
                          weight_samples=weight_samples, kl_anneal_from=kl_anneal_from,
                          kl_anneal_steps=kl_anneal_steps)
    work = Path(work_dir) if work_dir is not None else work_dir_for(out)
    trainer = Trainer(VariationalModel(model, vconfig), train_data, tconfig, work,
                      {"model": model_name, "coding": coding.to_dict()})
    result = run_compression(trainer, coding, out, model_name, progress)
    result.decoded_model()  # leaves the decoded weights in the user's model
    return result


def decompress(path: str | os.PathLike, model: nn.Module | None = None, *,
               include: list[str] | None = None, exclude: list[str] | None = None) -> nn.Module:
    """The network in the file ``path``: a registered model built by name, or ``model``
    (checked against the file's fingerprint) filled with the decoded weights."""
    contents = read_mrc(path)
    if contents.generator_version != coder.CANDIDATE_GENERATOR_VERSION:
        raise MiracleError(
            f"{path} was coded with candidate generator version {contents.generator_version}; this "
            f"miracle has version {coder.CANDIDATE_GENERATOR_VERSION}: use the miracle release that wrote it"
        )
    if model is None:
        if not contents.model_name:
            raise InvalidInput(f"{path} holds a user-defined model: pass the model, decompress(path, model=...)")
        model = create_model(contents.model_name)
    selected = select_parameters(model, include, exclude)
    shapes = [(name, tuple(p.shape)) for name, p in selected.items()]
    if model_fingerprint(shapes) != contents.fingerprint:
        raise FingerprintMismatch(
            f"{path} was made for another architecture (its fingerprint does not match this model's "
            f"parameter names and shapes{'' if not contents.model_name else ', file model: ' + contents.model_name})"
        )
    layout = BlockLayout(dict(shapes), dict(zip(selected, contents.group_sizes)), contents.num_blocks,
                         contents.hash_seed, contents.partition_seed)
    if layout.block_dim != contents.block_dim:
        raise FingerprintMismatch(f"{path}: block dimension {contents.block_dim} does not match the model's")
    blocks = coder.decode(layout.per_slot(contents.prior_scales), contents.indices, contents.bits_per_block,
                          contents.coder_seed, block_ids=torch.arange(contents.num_blocks))
    state = model.state_dict()
    with torch.no_grad():
        for name, value in {**layout.blocks_to_tensors(blocks), **contents.uncoded}.items():
            if name not in state or state[name].shape != value.shape:
                raise FingerprintMismatch(f"{path}: tensor {name} does not fit the model")
            state[name].copy_(value)
    return model
