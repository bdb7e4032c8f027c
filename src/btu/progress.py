"""Progress on long work: a tqdm bar on a terminal, plain lines every `every` seconds when stderr is a file or
a pipe (a log full of carriage returns is unreadable)."""

from __future__ import annotations

import sys
import time


class PlainProgress:
    """tqdm's update / set_postfix / close, written as one line per interval and one at the end."""

    def __init__(self, total, desc: str, unit: str, every: float = 30.0, stream=None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.n, self.postfix = 0, {}
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def set_postfix(self, ordered_dict=None, refresh=True, **kw) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def _line(self, final: bool = False) -> None:
        secs = time.perf_counter() - self.start
        rate = self.n / secs if secs > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        end = " done" if final else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} in {secs:.0f} s ({rate:.1f} {self.unit}/s{extra}){end}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self._line(final=True)


def progress_bar(total, desc: str, unit: str = "it", enabled: bool = True):
    """A progress object (update, set_postfix, close), or None when disabled."""
    if not enabled:
        return None
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, dynamic_ncols=True, leave=False)
