"""The async iterator that :meth:`Elector.observe` hands out."""

from __future__ import annotations

from collections import deque

import anyio

from ._models import LeaderInfo

__all__ = ("Observer",)

_UNSET = object()


class Observer:
    """Leader changes of one election, queued for one consumer.

    Fed synchronously by the elector's mirror (no task of its own); consecutive
    duplicates are dropped. Iteration ends when the observer is closed.
    """

    def __init__(self) -> None:
        self._items: deque[LeaderInfo | None] = deque()
        self._event = anyio.Event()
        self._closed = False
        self._last: object = _UNSET

    def leader_changed(self, info: LeaderInfo | None) -> None:
        if self._closed or info == self._last:
            return
        self._last = info
        self._items.append(info)
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def __aiter__(self) -> Observer:
        return self

    async def __anext__(self) -> LeaderInfo | None:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._event = anyio.Event()
            await self._event.wait()
        return self._items.popleft()
