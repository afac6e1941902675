"""Data-parallel training with ``torch.distributed``, as launched by ``torchrun``.

Every rank holds the same posterior: it starts from the same seeded model, sees its share of
each global batch, and applies the same averaged gradients. Rank 0 alone writes checkpoints,
metrics and the file, and codes; the coded indices and samples are broadcast to the others.
Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) all of this is a no-op.
"""

from __future__ import annotations

import datetime

import os

import torch
import torch.distributed as dist

from .errors import InvalidInput


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device: torch.device) -> None:
    """Join the process group ``torchrun`` set up (gloo on CPUs, nccl on GPUs), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise InvalidInput("this torch build has no torch.distributed; run one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks (one all-reduce of them all, flattened)."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (in place)."""
    if active():
        dist.broadcast(tensor, src=0)
    return tensor


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one. Under gloo the ranks first wait for
    each other (a minute at most): gloo aborts a process whose peer tears the connection down
    while it still holds it, which a test saw once as a SIGABRT at the end of a run."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            except RuntimeError:  # a peer that died or never came: leave anyway
                pass
        dist.destroy_process_group()
