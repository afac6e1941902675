"""Where a result came from: the command, the git commit and the date, for every result file."""

from __future__ import annotations

import datetime
import platform
import resource
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def peak_rss_mb() -> float:
    """The most memory this process has held so far, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """The architecture, the processor and the vector instructions torch's kernels use, the
    thread count and torch's version: together they decide a run's floating-point path, so a run
    repeats bit for bit only where they are the same."""
    return (f"{platform.machine()}, {_processor()}, {torch.backends.cpu.get_cpu_capability()} kernels, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


@lru_cache(maxsize=None)
def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown processor"


def provenance() -> dict:
    commit = _git("rev-parse", "HEAD")
    # Changed result files do not make the code dirty (a run may overwrite its own result file).
    if commit and _git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)results"):
        commit += "-dirty"
    program = Path(sys.argv[0]).name
    program = "miracle" if program == "__main__.py" else program  # python -m miracle
    argv = [program, *sys.argv[1:]]
    return {
        "command": shlex.join(argv),
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
