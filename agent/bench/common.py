"""What both bench tools share: progress lines, the summary table, stats, and cleanup on SIGTERM."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """One line per event on stderr, so stdout stays clean for the table or --json."""

    def __init__(self, tool: str, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.tool = tool
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        raise_if_interrupted()
        if not self.quiet:
            print(f"[{self.tool}] {message}", file=self.stream, flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (what latency tools report)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Interrupted(BaseException):
    """SIGTERM arrived; raised so every `finally` runs its cleanup (a BaseException, as KeyboardInterrupt
    is, so no library's `except Exception` swallows it)."""


_pending_signal: int | None = None


def raise_if_interrupted() -> None:
    """A signal whose exception landed where it was swallowed (an at-fork hook) is raised again here."""
    if _pending_signal is not None:
        raise Interrupted(f"signal {_pending_signal}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration (Ctrl-C already is one: KeyboardInterrupt).

    Forked helpers (pyroute2 forks to create a namespace, the measurement
    workers) inherit the handler; in them SIGTERM just ends the process, so
    only the tool itself runs the cleanup. The signal is also remembered, and
    the tools' waits and progress lines check it; a second signal does not
    cut the cleanup short.
    """
    global _pending_signal
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        global _pending_signal
        if os.getpid() != owner:
            os._exit(128 + signum)
        if _pending_signal is not None:
            return
        _pending_signal = signum
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending_signal = None


PR_SET_PDEATHSIG = 1


def run_as_child(parent: int, target: Callable[..., object], *args: object) -> None:
    """A forked worker's entry: it dies with the tool (SIGKILL on parent exit), so none outlives a cleanup."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    target(*args)
