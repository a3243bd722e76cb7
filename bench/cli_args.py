"""Argument types the bench scripts share: a bad value is argparse's one-line error naming the flag,
not a traceback from deep inside a run."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def counted(least: int) -> Callable[[str], int]:
    """An int type that is at least `least` (a count of runs, pods, seeds...)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value

    parse.__name__ = "count"
    return parse


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def counts(text: str) -> list[int]:
    """A comma-separated list of whole numbers, each 1 or more (`100,1000,5000`)."""
    count = counted(1)
    try:
        return [count(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
