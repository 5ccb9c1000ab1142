"""The tests' own poll helper (pure logic, no etcd)."""

from __future__ import annotations

import pytest
from helpers import eventually, eventually_blocking


@pytest.mark.asyncio
async def test_eventually_returns_the_first_truthy_result() -> None:
    """A plain or an async check is polled until truthy, and its result is returned."""
    calls: list[int] = []

    def check() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) == 3 else None

    async def acheck() -> str:
        return "ok"

    assert await eventually(check, interval=0) == [1, 1, 1]
    assert await eventually(acheck) == "ok"
    assert eventually_blocking(lambda: 7, interval=0) == 7


@pytest.mark.asyncio
async def test_eventually_retries_only_the_given_errors() -> None:
    """An error of ``retry_on`` is "not yet" and named in the failure; any other ends the poll."""

    def refuses() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"the thing not reached within 0.05 s .*refused"):
        await eventually(refuses, 0.05, "the thing", retry_on=ConnectionError)
    with pytest.raises(ConnectionError):
        await eventually(refuses, 5)
    with pytest.raises(AssertionError, match="details: 3"):
        eventually_blocking(lambda: False, 0.05, lambda: f"details: {1 + 2}", interval=0.01)
