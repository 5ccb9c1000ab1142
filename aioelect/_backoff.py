"""Capped, jittered exponential back-off for retry loops."""

from __future__ import annotations

import random

__all__ = ("Backoff",)


class Backoff:
    """Delays that double from ``initial`` up to ``cap``, each jittered to 50-100 %."""

    def __init__(self, initial: float = 0.05, cap: float = 2.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        """Return the next delay and double the one after it (up to the cap)."""
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from ``initial``."""
        self._next = self.initial
