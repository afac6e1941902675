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
from . import distributed
from .batches import module_device
from .config import CompressConfig
from .errors import InvalidInput, MiracleError
from .fileformat import MrcContents, encode_mrc, model_fingerprint, read_mrc, write_mrc
from .models import create_model, default_group_sizes, is_registered
from .progressive import CodingConfig, code_progressively
from .threads import use_threads
from .training import Trainer, evaluate_posterior
from .variational import VariationalModel, select_parameters


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
    coding_seconds: float  # progressive coding with its retraining, and writing the file
    seconds: float
    before_coding: dict  # test accuracy of the trained posterior (mean and a sample), if asked
    uncoded_bytes: dict[str, int]  # what travels as float32, by tensor name
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
    return {name: value.detach().float().cpu().clone() for name, value in model.state_dict().items()
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
        prior_scales=vmodel.prior.scales().detach().float().cpu().clone(),
        indices=vmodel.coded_indices.cpu().clone(),
        uncoded=_uncoded_tensors(vmodel.model, set(layout.names)),
    )


def run_compression(trainer: Trainer, coding: CodingConfig, out, model_name: str = "",
                    progress: bool = True, start_from=None, test_data=None) -> CompressResult:
    """Train (resuming, or starting from the checkpoint ``start_from``), code progressively,
    write ``out`` atomically. With ``test_data``, the posterior is evaluated before coding."""
    check_writable(out)
    with trainer.exclusive():
        start = time.perf_counter()
        trainer.run(progress, start_from)
        train_seconds = trainer.seconds
        before = evaluate_posterior(trainer.vmodel, test_data, trainer.config.seed) if test_data is not None else {}
        coding_start = time.perf_counter()
        code_progressively(trainer, coding, progress)
        vmodel = trainer.vmodel
        contents = contents_of(vmodel, coding, model_name)
        if distributed.is_main():
            write_mrc(out, contents)
        distributed.barrier()  # the other ranks return once the file is there
    end = time.perf_counter()
    uncoded_bytes = {name: 4 * value.numel() for name, value in contents.uncoded.items()}
    return CompressResult(Path(out), Path(out).stat().st_size, vmodel.num_blocks * vmodel.config.bits_per_block,
                          vmodel.num_blocks, vmodel.config.bits_per_block, train_seconds,
                          end - coding_start, end - start, before, uncoded_bytes, vmodel)


def check_writable(out: str | os.PathLike) -> None:
    """Fail before any work, not after hours of it, when the output cannot be written."""
    folder = Path(out).parent
    if Path(out).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise MiracleError(f"cannot write the output file {out}: choose a path in an existing, writable folder")


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The device to train on: ``device``, else the one the model is on. Unavailable devices
    are refused here, before any work."""
    if device is None:
        return module_device(model)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: torch.backends.mps.is_available()}
    if device.type not in available or not available[device.type]():
        raise InvalidInput(f"device {device} is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInput(f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def build_trainer(model: nn.Module, train_data, config: CompressConfig, work_dir, *, model_name: str = "",
                  data_name: str = "", loss_fn=None, num_examples: int | None = None,
                  device: str | torch.device | None = None) -> Trainer:
    """The trainer of a run of ``config`` on ``model``: the budget turned into blocks for this
    model, the posterior on ``device`` (under torchrun, in this rank's process group)."""
    device = resolve_device(device, model)
    distributed.init_from_environment(device)
    default_hashing = default_group_sizes(model_name)
    index_bits = index_bits_for(config.budget_spec, model, bits_per_block=config.bits_per_block,
                                group_sizes=config.hashing(default_hashing), include=config.include,
                                exclude=config.exclude, seed=config.seed, model_name=model_name)
    vmodel = VariationalModel(model.cpu(), config.variational(index_bits, default_hashing)).to(device)
    return Trainer(vmodel, train_data, config.training(), work_dir,
                   {"model": model_name, "dataset": data_name, "config": config.to_dict()},
                   loss_fn=loss_fn, num_examples=num_examples)


def compress(
    model: nn.Module,
    train_data,
    budget: str | int | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: CompressConfig | None = None,
    preset: str | None = None,
    loss_fn=None,
    num_examples: int | None = None,
    test_data=None,
    device: str | torch.device | None = None,
    model_name: str = "",
    data_name: str = "",
    work_dir: str | os.PathLike | None = None,
    start_from: str | os.PathLike | None = None,
    threads: int | str | None = None,
    progress: bool = True,
    **options,
) -> CompressResult:
    """Compress ``model`` trained on ``train_data`` into the file ``out`` of at most ``budget``
    (e.g. "1.52KB"; 1 KB = 1000 bytes), everything included.

    ``train_data`` is a :class:`~miracle.data.Split`, a map-style ``Dataset`` or a
    ``DataLoader`` of ``(inputs, targets)`` batches (see :mod:`miracle.batches`; a loader whose
    dataset has no ``len()`` needs ``num_examples``). ``loss_fn(outputs, targets)`` is the mean
    loss of a batch (default: cross-entropy). The posterior's means start at the model's
    current weights: load trained weights into ``model`` first to compress them.

    The run's settings are ``config`` (a :class:`~miracle.config.CompressConfig`) or the
    keywords it has (``index_budget=``, ``steps=``, ``lr=``, ...), on top of ``preset``.
    ``model`` is trained in place of a copy: afterwards it holds the decoded weights. The
    checkpoint goes to ``work_dir`` (default: ``out`` + ".work"); running the same call again
    after an interruption resumes there and writes the same file. ``device`` trains there
    (default: where the model is); the coder runs on the CPU, so the file does not depend on
    it. Under ``torchrun`` the processes train data-parallel and rank 0 writes the file.
    ``threads`` sets torch's thread count (a number, or "auto": the cores idle at the start).
    """
    if out is None:
        raise InvalidInput("compress needs the output file: compress(model, data, budget, out)")
    if config is None:
        config = CompressConfig.from_options(preset, **({"budget": budget} if budget is not None else {}), **options)
    elif budget is not None or options or preset:
        raise InvalidInput("give the settings as config= or as keywords (and budget), not both")
    use_threads(threads)
    work = Path(work_dir) if work_dir is not None else work_dir_for(out)
    trainer = build_trainer(model, train_data, config, work, model_name=model_name, data_name=data_name,
                            loss_fn=loss_fn, num_examples=num_examples, device=device)
    result = run_compression(trainer, config.coding(), out, model_name, progress, start_from, test_data)
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
        if not is_registered(contents.model_name):
            # Never import what a file names: the user says which class to build.
            named = f" ({contents.model_name})" if contents.model_name else ""
            raise InvalidInput(f"{path} holds a user-defined model{named}: pass it, decompress(path, model=...) "
                               "or --model package.module:ClassName")
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
