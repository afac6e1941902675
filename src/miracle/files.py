"""How every file of a run reaches the disk, and one run per output at a time.

A file is written whole or not at all: its bytes go to a temporary file in the same folder,
which is fsynced and renamed over the target, so a reader (or the next run after a crash)
sees the previous version or the complete new one, never a truncated file. A failure (a full
disk, no permission) is one :class:`WriteError` naming the path and, for a full disk, the
space needed; the previous version stays and no temporary file is left. Files get the
permissions the user's umask gives, as ``open()`` would.

A run's work directory (its checkpoint and metrics) belongs to one process at a time:
:func:`exclusive` holds an advisory lock on it, so a second run started on the same output
is refused instead of racing the first on the checkpoint. The operating system drops the lock
when the process ends, however it ends, so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import MiracleError
from .units import format_bytes

LOCK_NAME = "lock"


class WriteError(MiracleError, OSError):
    """A file cannot be written (a full disk, no permission, a missing folder)."""


class OutputLocked(MiracleError):
    """Another run is using the same work directory."""


def _permissions() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""
    path = Path(path)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _permissions())  # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_folder(path.parent)
    except OSError as e:
        raise WriteError(explain_write_error(path, e, len(data))) from e
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return len(data)


def write_text(path: str | os.PathLike, text: str) -> int:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> int:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_torch(obj, path: str | os.PathLike) -> int:
    """``torch.save`` atomically: serialised in memory first, so that a full disk is met by
    :func:`write_bytes` (with its clear error) rather than inside torch's serializer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def explain_write_error(path: Path, error: OSError, size_bytes: int) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {format_bytes(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = ""
        return (f"cannot write {path}: no space left on the device ({format_bytes(size_bytes)} needed{free}); "
                "free some space and run the same command again")
    return f"cannot write {path}: {error.strerror or error}"


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the OS allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_folder(path: str | os.PathLike) -> None:
    """Create ``path`` and its parents if needed; a :class:`WriteError` if that fails."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(explain_write_error(Path(path), e, 0)) from e


@contextmanager
def exclusive(directory: str | os.PathLike | None) -> Iterator[None]:
    """Hold ``directory`` (created if needed) for this process; :class:`OutputLocked` if
    another process holds it. ``None``: nothing to hold."""
    if directory is None:
        yield
        return
    directory = Path(directory)
    make_folder(directory)
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, _permissions())
    except OSError as e:
        raise WriteError(explain_write_error(directory / LOCK_NAME, e, 0)) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputLocked(f"another miracle run (process {holder}) is using {directory}; wait for it "
                               "to finish, or write to another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class LineLog:
    """Lines appended to a file as they come (a run's metrics); a failed write is a
    :class:`WriteError`. After a crash the file may end in a partial line, which the
    trainer drops when it resumes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = self._do(lambda: open(self.path, "a"), 0)

    def _do(self, action, size_bytes: int):
        try:
            return action()
        except OSError as e:
            raise WriteError(explain_write_error(self.path, e, size_bytes)) from e

    def write(self, line: str) -> None:
        self._do(lambda: self._file.write(line + "\n"), len(line) + 1)

    def flush(self) -> None:
        self._do(self._file.flush, 0)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a failed flush on close was or will be reported by write/flush
