"""Retry delays for the daemons' reconnect loops: one doubling, capped, optionally jittered series."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays in seconds: `initial_s`, then each times `factor`, capped at `max_s`; `reset()` after a
    success starts over. `jitter` 0.2 spreads each delay uniformly over +-20% (many clients that lost
    one server do not come back in step). Raises ValueError for a non-positive or inverted range."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = random.uniform
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                "backoff: need 0 < initial_s <= max_s, factor >= 1, 0 <= jitter < 1; "
                f"got {self.initial_s}, {self.max_s}, {self.factor}, {self.jitter}"
            )
        self._next = self.initial_s

    def reset(self) -> None:
        self._next = self.initial_s

    def next_delay(self) -> float:
        """The delay to wait now; the one after it grows."""
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        if self.jitter:
            delay *= self.uniform(1 - self.jitter, 1 + self.jitter)
        return delay
