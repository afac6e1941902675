"""From a model's parameters to blocks of free variables, and back.

Data flow (left to right when training and coding, right to left when decoding)::

    parameters --hashing--> free variables --partition--> blocks [B, D]

*Hashing* (Chen et al. 2015): a tensor with group size g has ceil(numel / g) free variables;
each is shared by g positions of the flattened tensor, chosen by a seeded permutation, each
position with a fixed seeded random sign. With g = 1 a tensor is used as it is.

*Partition*: the N free variables of the whole model are spread over B = ceil(C / C_loc)
blocks by one seeded permutation: the i-th variable of the permutation goes to block
i mod B, slot i // B. So every block holds floor(N / B) or ceil(N / B) variables, at most one
slot per block is padding, and no block is ever empty (a naive fill of ceil(N / B) per
block can leave whole blocks empty). Padding slots carry no variable: the posteriors keep
them equal to the coding distribution, so they cost no bits.

Only the two seeds, the group sizes and B are needed to rebuild the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as nn_functional

from .errors import InvalidInput
from .randomness import STREAM_HASHING, STREAM_PARTITION, random_permutation, random_signs

MIN_BITS_PER_BLOCK, MAX_BITS_PER_BLOCK = 1, 24


class _InjectiveGather(torch.autograd.Function):
    """``source[index]`` for an index without repeats, whose gradient is again a gather.

    Autograd's own backward of a gather is a scatter-add (``index_put_`` with accumulation),
    several times slower on the CPU. Without repeats every source element receives at most one
    gradient value, so the backward reads it through the inverse map, where ``inverse[i]`` is
    the output position of source element i, or ``len(index)`` (a zero) if it is not gathered.
    The result is exact, the same bits as the scatter-add's. Both ways use ``index_select``,
    about four times faster on the CPU than advanced indexing ``source[index]``.
    """

    @staticmethod
    def forward(ctx, source, index, inverse):
        ctx.save_for_backward(inverse)
        return source.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return _read_through_inverse(grad, inverse), None, None


class _HashExpand(torch.autograd.Function):
    """Free variables [F] -> a hashed tensor's positions: ``values[index // g] * sign``.

    The same numbers as repeating every variable g times and gathering the repeats by the
    permutation ``index``, without materialising the repeats. The backward is that route's
    backward, in the same order of operations (so the same bits): the signed gradient read
    back through the inverse permutation, then summed over each variable's g positions; a
    fixed order, where autograd's scatter-add of a gather with repeats sums in an order
    that depends on the threads.
    """

    @staticmethod
    def forward(ctx, values, source, inverse, sign, group_size):
        ctx.save_for_backward(inverse, sign)
        ctx.group_size = group_size
        return values.index_select(0, source) * sign

    @staticmethod
    def backward(ctx, grad):
        inverse, sign = ctx.saved_tensors
        repeated = _read_through_inverse(grad * sign, inverse)
        return repeated.view(-1, ctx.group_size).sum(1), None, None, None, None


def _read_through_inverse(grad: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """The gradient of a gather's source: ``grad[inverse]``, zero where nothing was gathered
    (``inverse`` = len(grad)); a permutation needs no zero appended."""
    if len(inverse) > len(grad):
        grad = torch.cat([grad, grad.new_zeros(1)])
    return grad.index_select(0, inverse)


def _inverse_of(index: torch.Tensor, source_size: int) -> torch.Tensor:
    inverse = torch.full((source_size,), len(index), dtype=torch.long)
    inverse[index] = torch.arange(len(index))
    return inverse


@dataclass(frozen=True)
class TensorEntry:
    """One coded tensor: where its free variables start in the model's free-variable vector."""

    name: str
    shape: tuple[int, ...]
    group_size: int
    num_free: int
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def check_bits_per_block(bits_per_block: int) -> None:
    if not MIN_BITS_PER_BLOCK <= bits_per_block <= MAX_BITS_PER_BLOCK:
        raise InvalidInput(
            f"bits per block must be between {MIN_BITS_PER_BLOCK} and {MAX_BITS_PER_BLOCK}, "
            f"got {bits_per_block}"
        )


def num_blocks_for(budget_bits: int, bits_per_block: int) -> int:
    check_bits_per_block(bits_per_block)
    if budget_bits < bits_per_block:
        raise InvalidInput(
            f"the budget ({budget_bits} bits) is smaller than one block ({bits_per_block} bits); "
            "raise the budget or lower the bits per block"
        )
    return math.ceil(budget_bits / bits_per_block)


class BlockLayout:
    """The fixed, seeded map between named parameter tensors and blocks of free variables."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        group_sizes: dict[str, int],
        num_blocks: int,
        hash_seed: int = 0,
        partition_seed: int = 0,
    ) -> None:
        if not shapes:
            raise InvalidInput("no parameters are selected for coding; check include/exclude")
        self.hash_seed, self.partition_seed = int(hash_seed), int(partition_seed)
        self.tensors: list[TensorEntry] = []
        # Per tensor: position -> its rank among the g * num_free repeated variables, and sign.
        self._hash_index: list[torch.Tensor] = []
        self._hash_sign: list[torch.Tensor] = []
        offset = 0
        for tensor_id, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            group = int(group_sizes.get(name, 1))
            if not 1 <= group <= numel:
                raise InvalidInput(f"group size of {name} must be in 1..{numel}, got {group}")
            entry = TensorEntry(name, tuple(shape), group, math.ceil(numel / group), offset)
            self.tensors.append(entry)
            index, sign = self._hashing(entry, tensor_id)
            self._hash_index.append(index)
            self._hash_sign.append(sign)
            offset += entry.num_free
        self.num_free = offset
        if num_blocks > self.num_free:
            raise InvalidInput(
                f"{num_blocks} blocks but only {self.num_free} free variables: every block "
                "needs at least one; lower the budget or raise the bits per block"
            )
        self.num_blocks = num_blocks
        self.block_dim = math.ceil(self.num_free / num_blocks)
        order = random_permutation(self.num_free, self.partition_seed, STREAM_PARTITION, 0)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.num_free)
        # free variable v sits at flat slot (block, position) = (rank % B, rank // B)
        self.slot_of_free = (rank % num_blocks) * self.block_dim + rank // num_blocks
        is_real = torch.zeros(num_blocks * self.block_dim, dtype=torch.bool)
        is_real[self.slot_of_free] = True
        self.is_real = is_real.view(num_blocks, self.block_dim)
        tensor_of_free = torch.repeat_interleave(
            torch.arange(len(self.tensors)), torch.tensor([t.num_free for t in self.tensors])
        )
        tensor_of_slot = torch.zeros(num_blocks * self.block_dim, dtype=torch.long)
        tensor_of_slot[self.slot_of_free] = tensor_of_free
        self.tensor_of_slot = tensor_of_slot.view(num_blocks, self.block_dim)
        self._slot_one_hot: torch.Tensor | None = None
        self._free_of_slot = _inverse_of(self.slot_of_free, num_blocks * self.block_dim)
        # Position p of a hashed tensor holds free variable source[p] = index[p] // g.
        self._hash_source = [index // t.group_size for t, index in zip(self.tensors, self._hash_index)]
        self._hash_inverse = [_inverse_of(index, t.num_free * t.group_size)
                              for t, index in zip(self.tensors, self._hash_index)]

    def _hashing(self, entry: TensorEntry, tensor_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if entry.group_size == 1:
            return torch.arange(entry.numel), torch.ones(entry.numel)
        # Position p holds the (order[p] // g)-th free variable: each is used g times.
        order = random_permutation(entry.numel, self.hash_seed, STREAM_HASHING, 2 * tensor_id)
        return order, random_signs(entry.numel, self.hash_seed, STREAM_HASHING, 2 * tensor_id + 1)

    def to(self, device: torch.device) -> BlockLayout:
        """Move the index tensors the forward pass uses to ``device`` (in place)."""
        for name in ("slot_of_free", "is_real", "tensor_of_slot", "_free_of_slot", "_slot_one_hot"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        for name in ("_hash_index", "_hash_source", "_hash_sign", "_hash_inverse"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def per_slot(self, per_tensor: torch.Tensor, padding_value: float = 1.0) -> torch.Tensor:
        """Broadcast one value per tensor (e.g. prior scales) to the [B, D] slots."""
        # A one-hot product, not per_tensor[tensor_of_slot]: the backward of a gather with
        # repeated indices sums in a thread-dependent order, and a resumed run must repeat
        # the uninterrupted one bit for bit. Each slot's value is exact (x * 1 + 0s).
        if self._slot_one_hot is None:
            self._slot_one_hot = nn_functional.one_hot(self.tensor_of_slot, len(self.tensors)).float()
        values = self._slot_one_hot.to(per_tensor.dtype) @ per_tensor
        return torch.where(self.is_real, values, torch.full_like(values, padding_value))

    def blocks_to_tensors(self, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Block values [B, D] -> the model's parameter tensors (hashing expanded)."""
        free = _InjectiveGather.apply(blocks.reshape(-1), self.slot_of_free, self._free_of_slot)
        out = {}
        for entry, source, inverse, sign in zip(self.tensors, self._hash_source, self._hash_inverse,
                                                self._hash_sign):
            values = free[entry.offset : entry.offset + entry.num_free]
            if entry.group_size > 1:
                values = _HashExpand.apply(values, source, inverse, sign.to(values.dtype), entry.group_size)
            out[entry.name] = values.view(entry.shape)
        return out

    def tensors_to_blocks(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Parameter tensors -> block values [B, D]: the least-squares projection onto the
        hashed space (each free variable is the mean of its signed positions); padding is 0."""
        free = torch.zeros(self.num_free, dtype=torch.float32)
        for entry, variable, sign in zip(self.tensors, self._hash_source, self._hash_sign):
            flat = tensors[entry.name].detach().reshape(-1).float()
            sums = torch.zeros(entry.num_free).index_add_(0, variable, flat * sign)
            counts = torch.zeros(entry.num_free).index_add_(0, variable, torch.ones_like(flat))
            free[entry.offset : entry.offset + entry.num_free] = sums / counts
        blocks = torch.zeros(self.num_blocks * self.block_dim)
        blocks[self.slot_of_free] = free
        return blocks.view(self.num_blocks, self.block_dim)

    def describe(self) -> dict:
        return {
            "num_free": self.num_free,
            "num_blocks": self.num_blocks,
            "block_dim": self.block_dim,
            "padding_slots": self.num_blocks * self.block_dim - self.num_free,
            "group_sizes": {t.name: t.group_size for t in self.tensors},
        }
