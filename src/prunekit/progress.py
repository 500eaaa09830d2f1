"""Progress for long steps: a ``tqdm`` bar on a terminal, plain lines in a log.

A bar redraws with carriage returns, which fill a log file (or CI output) with hundreds of partial
lines. When stderr is not a terminal, :class:`LogProgress` prints one plain line at each 10% of the
work (and at the end) instead, with the same ``update`` / ``set_postfix`` / ``close`` methods.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LogProgress:
    """``tqdm``'s interface for a log: ``desc: 30/120 (25%) 4.1s loss=0.52`` at each ``every`` fraction."""

    def __init__(self, total: int | None, desc: str, stream: TextIO | None = None, every: float = 0.1):
        self.total, self.desc, self.stream = total, desc, stream if stream is not None else sys.stderr
        self.n, self.postfix, self.every, self.start = 0, "", every, time.perf_counter()
        self._next = every
        self._printed: int | None = None
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n / self.total + 1e-12 >= self._next:
            while self._next <= self.n / self.total + 1e-12:
                self._next += self.every
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self) -> None:
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {time.perf_counter() - self.start:.1f}s{tail}", file=self.stream, flush=True)
        self._printed = self.n

    def close(self) -> None:
        if not self._closed and self._printed != self.n:
            self._line()  # the final count, unless the last update already printed it
        self._closed = True


def progress_bar(total: int | None, enabled: bool, desc: str, stream: TextIO | None = None):
    """A ``tqdm`` bar on a terminal, a :class:`LogProgress` otherwise, or ``None`` when disabled
    (callers check)."""
    if not enabled:
        return None
    out = stream if stream is not None else sys.stderr
    if not (hasattr(out, "isatty") and out.isatty()):
        return LogProgress(total, desc, out)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return LogProgress(total, desc, out)
    return tqdm(total=total, desc=desc, leave=False, file=out)
