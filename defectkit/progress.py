"""One progress display for every long loop outside the training loop.

``track(iterable, total, desc)`` wraps an iterable: on a terminal it is a tqdm bar with
rate and ETA (the same library as the training bar); when stdout is not a terminal
(CI logs, ``nohup``, a pipe) it prints a plain line every ``every_s`` seconds and at
the end, e.g. ``test: 120/400 (30%) 12.1 s elapsed, ETA 0:00:28``. Lines go to stderr
so that a tool's stdout (tables, JSON) stays clean. ``DEFECTKIT_PROGRESS=0`` turns
both off.

This module sits below ``models/``, ``engine/`` and ``tools/`` (it imports nothing of
defectkit), so a model's own loop (PaDiM's fit) and a tool may both use it.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def enabled() -> bool:
    return os.environ.get("DEFECTKIT_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          every_s: float = 10.0, stream=None) -> Iterator[T]:
    """Yield from ``iterable`` while showing progress (tqdm on a TTY, plain lines otherwise).

    ``total`` defaults to ``len(iterable)`` when it has one; ``unit`` names one item
    (``"img"``, ``"batch"``). Plain lines are written to ``stream`` (default stderr).
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled():
        yield from iterable
        return
    stream = stream or sys.stderr
    if sys.stdout.isatty() and stream is sys.stderr:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
            return
    t0 = last = time.perf_counter()
    n = 0
    for item in iterable:
        yield item
        n += 1
        now = time.perf_counter()
        if now - last >= every_s and (total is None or n < total):
            last = now
            stream.write(_line(desc, n, total, now - t0, unit) + "\n")
            stream.flush()
    if n and time.perf_counter() - t0 >= every_s:
        stream.write(_line(desc, n, total, time.perf_counter() - t0, unit) + " done\n")
        stream.flush()


def _line(desc: str, n: int, total: int | None, elapsed: float, unit: str) -> str:
    head = f"{desc}: " if desc else ""
    if total:
        eta = elapsed / n * (total - n) if n else math.inf
        return (f"{head}{n}/{total} {unit} ({100.0 * n / total:.0f}%) {elapsed:.1f} s elapsed, "
                f"ETA {_eta(eta)}")
    return f"{head}{n} {unit} {elapsed:.1f} s elapsed"
