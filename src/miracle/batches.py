"""Where batches come from: an in-memory :class:`~miracle.data.Split`, a map-style
``torch.utils.data.Dataset`` or a ``DataLoader``; and evaluation over any of them.

A batch is ``(inputs, targets)``: tensors of any shape and dtype, examples along dim 0.

Training asks for the batch of a given step, so that a resumed run sees the batches the
uninterrupted run would have seen:

* a ``Split`` or a ``Dataset`` is drawn from by miracle itself: epoch e is a permutation
  seeded by (seed, e), so every batch is a function of the step, bit for bit. Under
  ``torch.distributed`` every rank takes its share of the same global batch.
* a ``DataLoader`` is the user's: miracle takes its batches in order, calls
  ``sampler.set_epoch(e)`` at each pass when the sampler has it (as ``DistributedSampler``
  does), and on resume starts the pass again and skips the batches already used. This is
  exact when each pass of the loader is reproducible: a seeded sampler (or shuffling by a
  seeded generator, re-seeded per epoch), deterministic transforms and workers. Under
  ``torch.distributed`` the loader must shard itself (a ``DistributedSampler``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from .data import Split
from .errors import InvalidInput
from .randomness import derived_generator

Batch = tuple[Any, Any]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> torch.Tensor:
    """The example indices of training step ``step``: epochs of a seeded permutation."""
    per_epoch = num_examples // batch_size
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(num_examples, seed, epoch)[position * batch_size : (position + 1) * batch_size]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    # Drawn once per epoch, not once per step (a permutation of 60,000 costs about a millisecond).
    return torch.randperm(num_examples, generator=derived_generator(seed, 1, epoch))


def _sized(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _take(data: Split | Dataset, index: torch.Tensor) -> Batch:
    if isinstance(data, Split):
        return data.images[index], data.labels[index]
    return _as_pair(default_collate([data[i] for i in index.tolist()]))


def _as_pair(batch) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise InvalidInput("every batch must be a pair (inputs, targets); make the dataset return (input, target)")
    return batch[0], batch[1]


class IndexedBatches:
    """Seeded batches of a ``Split`` or a map-style ``Dataset``; ``rank`` of ``world_size``
    takes its contiguous share of every global batch."""

    def __init__(self, data: Split | Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_examples = len(data)
        if batch_size > self.num_examples:
            raise InvalidInput(f"batch size {batch_size} exceeds the {self.num_examples} training examples")
        if batch_size % world_size:
            raise InvalidInput(f"batch size {batch_size} does not split evenly over {world_size} processes; "
                               "choose a multiple of the number of processes")

    def batch(self, step: int) -> Batch:
        index = batch_indices(step, self.num_examples, self.batch_size, self.seed)
        return _take(self.data, index.tensor_split(self.world_size)[self.rank])


class LoaderBatches:
    """The batches of a user's ``DataLoader``, pass after pass (see the module's docstring)."""

    def __init__(self, loader: DataLoader, num_examples: int):
        self.loader, self.num_examples = loader, num_examples
        self._passes = _sized(loader)  # batches per pass, when the loader knows it
        self._iterator: Iterator | None = None
        self._next_step = 0
        self._epoch = 0

    def _start_pass(self, epoch: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self._epoch, self._iterator = epoch, iter(self.loader)

    def _next(self) -> Batch:
        for _ in range(2):  # a pass that ends is followed by the next one
            try:
                return _as_pair(next(self._iterator))
            except StopIteration:
                self._start_pass(self._epoch + 1)
        raise InvalidInput("the DataLoader yields no batches")

    def batch(self, step: int) -> Batch:
        if self._iterator is None or step != self._next_step:
            # A resume (or a first call): go to the pass holding ``step`` and skip what it used.
            epoch, skip = divmod(step, self._passes) if self._passes else (0, step)
            self._start_pass(epoch)
            for _ in range(skip):
                self._next()
        self._next_step = step + 1
        return self._next()


def training_batches(data, batch_size: int, seed: int, *, num_examples: int | None = None,
                     rank: int = 0, world_size: int = 1) -> IndexedBatches | LoaderBatches:
    """The training batches of ``data`` (a Split, a map-style Dataset or a DataLoader)."""
    if isinstance(data, DataLoader):
        count = num_examples if num_examples is not None else _sized(data.dataset)
        if not count:
            raise InvalidInput(
                "the number of training examples is unknown (the DataLoader's dataset has no len()); "
                "pass num_examples=N, the ELBO needs it")
        return LoaderBatches(data, count)
    if not isinstance(data, Split) and (
            isinstance(data, IterableDataset) or _sized(data) is None or not hasattr(data, "__getitem__")):
        raise InvalidInput(
            "training data must be a miracle Split, a map-style Dataset (with len() and indexing) or a "
            "DataLoader; wrap an iterable in a DataLoader and pass num_examples=N")
    if num_examples is not None and num_examples != len(data):
        raise InvalidInput(f"num_examples={num_examples} contradicts len(data)={len(data)}; leave it out")
    return IndexedBatches(data, batch_size, seed, rank, world_size)


def evaluation_batches(data, batch_size: int = 1000) -> Iterator[Batch]:
    """Every example of ``data`` once, in order."""
    if isinstance(data, DataLoader):
        yield from (_as_pair(batch) for batch in data)
        return
    if not isinstance(data, Split) and (isinstance(data, IterableDataset) or _sized(data) is None):
        raise InvalidInput("evaluation data must be a Split, a map-style Dataset or a DataLoader")
    for start in range(0, len(data), batch_size):
        yield _take(data, torch.arange(start, min(start + batch_size, len(data))))


def to_device(value, device: torch.device):
    """``value`` (a tensor, or a tuple, list or dict of them) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def module_device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), torch.empty(0))
    return tensor.device


def accuracy_metric(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The fraction of examples whose highest output is the target class."""
    return (outputs.argmax(-1) == targets).float().mean()


@torch.no_grad()
def evaluate(model: nn.Module, data, metric: Metric = accuracy_metric, batch_size: int = 1000,
             **forward_kwargs) -> float:
    """The mean of ``metric(outputs, targets)`` over every example of ``data``, batches weighted
    by their size; ``forward_kwargs`` go to ``model``."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    total, count = 0.0, 0
    try:
        for inputs, targets in evaluation_batches(data, batch_size):
            outputs = model(to_device(inputs, device), **forward_kwargs)
            n = len(targets)
            total += float(metric(outputs, to_device(targets, device))) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidInput("the evaluation data holds no examples")
    return total / count


def accuracy(model: nn.Module, data, batch_size: int = 1000, **forward_kwargs) -> float:
    """Fraction of ``data`` classified correctly; ``forward_kwargs`` go to ``model``."""
    return evaluate(model, data, accuracy_metric, batch_size, **forward_kwargs)
