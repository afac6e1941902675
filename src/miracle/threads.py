"""How many threads a run computes with: chosen once, when the run starts.

On a two-core machine two threads make a training step about 1.4x faster than one, but only
while both cores are free. When another process keeps one core busy, every parallel operation
waits for the thread that shares its core with that process, and a step with two threads costs
far more than one with one thread (``benchmarks/training.py --busy --threads 2`` shows it).
So ``"auto"`` counts the cores that are idle when the run starts and uses that many threads,
at least one.

A run keeps its count to the end, and a resumed run takes it from its checkpoint: the
floating-point sums of a step, and therefore the file, depend on the number of threads.
"""

from __future__ import annotations

import os
import time

import torch

from .errors import InvalidInput

AUTO = "auto"
_IDLE_SAMPLE_SECONDS = 0.3
# A core counts as taken when other processes used more than this share of one core.
_BUSY_CORE_SHARE = 0.5


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(sample_seconds: float = _IDLE_SAMPLE_SECONDS) -> int:
    """The cores of this process that no other process is using, measured over a short sleep
    (this process sleeps meanwhile, so what is busy is someone else's work)."""
    cores = available_cores()
    before = _busy_jiffies()
    if before is None:
        return cores
    time.sleep(sample_seconds)
    after = _busy_jiffies()
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return cores
    machine_cores = os.cpu_count() or cores
    busy_cores = machine_cores * busy / total
    taken = int(busy_cores + 1 - _BUSY_CORE_SHARE)
    return max(1, min(cores, machine_cores - taken))


def parse_threads(value: int | str | None) -> int | str | None:
    """A thread count given by the user: a positive integer, "auto", or None (leave torch's)."""
    if value is None or value == AUTO:
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise InvalidInput(f"--threads must be a positive number or auto, got {value!r}")
    return count


def use_threads(value: int | str | None) -> int:
    """Set torch's intra-op thread count (None leaves it); returns the count in use."""
    value = parse_threads(value)
    if value == AUTO:
        value = idle_cores()
    if value is not None:
        torch.set_num_threads(value)
    return torch.get_num_threads()
