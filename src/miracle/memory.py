"""Keep the memory a training step frees for the next step.

Every training step allocates and frees the same large buffers (activations, their gradients,
the hashed weights). glibc's malloc serves a large request with a fresh ``mmap`` and hands it
back to the system when it is freed, or trims the freed top of its heap; the next step then
touches the same amount of memory anew, one page fault per 4 KB. Where page faults are dear
(virtual machines, sandboxes) that is seen here as thousands of faults per LeNet-5 step and
stretches of steps up to 1.3x slower, at random. Keeping requests up to 32 MB on the heap
and never trimming less than 1 GB makes the faults stop after the first steps: the process
keeps, at most, the memory its largest step needed.

``keep_freed_memory()`` sets that, once per process, with glibc's ``mallopt``; other C
libraries are left alone. ``python benchmarks/training.py`` measures the steps with it.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest; its default (dynamic) starts at 128 KB
_TRIM_THRESHOLD_BYTES = 2**30
_done = False


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (glibc only); returns whether malloc's settings are so."""
    global _done
    if not _done and platform.libc_ver()[0] == "glibc":
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # mallopt returns 1 on success; order matters: a fixed mmap threshold first.
        _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    return _done
