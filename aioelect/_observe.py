"""The async iterator that :meth:`Elector.observe` hands out."""

from __future__ import annotations

import asyncio

from ._models import LeaderInfo

__all__ = ("Observer",)

_UNSET = object()


class Observer:
    """Leader changes of one election, queued for one consumer.

    Fed synchronously by the elector's mirror (no task of its own); consecutive
    duplicates are dropped. Iteration ends when the observer is closed. Small
    on purpose (one process may observe thousands of elections): a future is
    only made while the consumer waits.
    """

    __slots__ = ("_closed", "_head", "_items", "_last", "_waiter")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Empty and open (again)."""
        self._items: list[LeaderInfo | None] | None = None  # made while items wait
        self._head = 0  # items before it were consumed
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._last: object = _UNSET

    def leader_changed(self, info: LeaderInfo | None) -> None:
        if self._closed or info == self._last:
            return
        self._last = info
        if self._items is None:
            self._items = [info]
        else:
            self._items.append(info)
        self._wake()

    def pending(self) -> int:
        """How many leader changes are queued and not consumed yet."""
        return 0 if self._items is None else len(self._items) - self._head

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> Observer:
        return self

    async def __anext__(self) -> LeaderInfo | None:
        while self._items is None:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        items = self._items
        item = items[self._head]
        self._head += 1
        if self._head == len(items):
            self._items = None
            self._head = 0
        elif self._head >= 64 and self._head * 2 > len(items):
            del items[: self._head]  # a consumer lagging behind: drop what it consumed
            self._head = 0
        return item
