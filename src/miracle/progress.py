"""Progress of long work: a live bar on a terminal, a short plain line every few percent elsewhere.

Redirected to a file or read by CI, a live bar's carriage returns and escape sequences turn a log
into noise; there the same progress is a line such as ``training: 40% (8000/20000 steps, 3m12s)``.
A transient bar (retraining between two coding groups) shows only on a terminal: in a log its
many short runs would bury the lines that matter.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_PERCENT = 10


def bar(total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True,
        transient: bool = False, stream: TextIO | None = None):
    """An object with ``update(n)``, ``set_postfix(**values)`` and ``close()``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Silent()
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=not transient,
                    file=stream)
    if transient:
        return _Silent()
    return _Lines(total, initial, desc, unit, stream)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    def __init__(self, total: int, initial: int, desc: str, unit: str, stream: TextIO):
        self.total, self.n, self.desc, self.unit, self.stream = max(total, 1), initial, desc, unit, stream
        self.started = time.monotonic()
        self.postfix = ""
        self.marks_printed = self._marks_passed()

    def _marks_passed(self) -> int:
        return 100 * self.n // self.total // LINE_EVERY_PERCENT

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._marks_passed() > self.marks_printed:
            self.marks_printed = self._marks_passed()
            self._print()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        # ``refresh`` is tqdm's (redraw now); a line is printed only every tenth anyway.
        self.postfix = "".join(f", {key} {value}" for key, value in values.items())

    def _print(self) -> None:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        print(f"{self.desc}: {100 * self.n // self.total}% ({self.n}/{self.total} {self.unit}s{self.postfix}, "
              f"{minutes}m{seconds:02d}s)", file=self.stream, flush=True)

    def close(self) -> None:
        pass
