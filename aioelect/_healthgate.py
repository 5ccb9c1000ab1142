"""Health-gated candidacy: a user's async health check, polled, with hysteresis.

The check runs every ``interval`` seconds, each call bounded by ``timeout``.
A call fails when it raises, returns ``False`` or does not answer in time (a
hung check is cancelled at its timeout). After ``unhealthy_after``
consecutive failures the candidate turns unhealthy (a leader steps down at
once, resigning its key; a waiting candidate withdraws its key); after
``healthy_after`` consecutive successes it turns healthy again and
campaigns. A candidate starts healthy.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio

from ._config import Duration, duration
from ._exceptions import ConfigError

__all__ = ("HealthCheck", "HealthGate", "HealthOptions", "health_options")

#: ``async () -> bool | None``: False (or an exception, or no answer in time) is a failure.
HealthCheck = Callable[[], Awaitable[Any]]

log = logging.getLogger("aioelect")


@dataclass(frozen=True)
class HealthOptions:
    """A validated health check and its polling settings."""

    check: HealthCheck
    interval: float
    timeout: float
    unhealthy_after: int
    healthy_after: int


def _count(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(field, f"must be an int >= 1 (consecutive checks), got {value!r}")
    return value


def health_options(
    check: object,
    *,
    interval: Duration,
    timeout: Duration,
    unhealthy_after: int,
    healthy_after: int,
) -> HealthOptions | None:
    """Validate the health options (ConfigError naming the field); None without a check.

    The other options are validated even without a check, so a typo fails early.
    """
    seconds = duration("health_interval", interval)
    bound = duration("health_timeout", timeout)
    after_bad = _count("unhealthy_after", unhealthy_after)
    after_good = _count("healthy_after", healthy_after)
    if check is None:
        return None
    if not callable(check) or not (
        inspect.iscoroutinefunction(check)
        or inspect.iscoroutinefunction(getattr(check, "__call__", None))  # noqa: B004
    ):
        raise ConfigError(
            "health_check", f"must be an async function () -> bool | None, not {check!r}"
        )
    return HealthOptions(cast(HealthCheck, check), seconds, bound, after_bad, after_good)


class HealthGate:
    """Polls one health check and tells ``on_change(healthy, reason)`` when its state flips."""

    def __init__(
        self, options: HealthOptions, label: str, on_change: Callable[[bool, str], None]
    ) -> None:
        self.options = options
        self._label = label
        self._on_change = on_change
        self.healthy = True
        self.failures = 0  # consecutive
        self.successes = 0  # consecutive
        self.checks = 0
        self.checks_failed = 0
        self.last_failure: str | None = None
        self.changed_at = time.monotonic()
        self._healthy_event: anyio.Event | None = None

    async def wait_healthy(self) -> None:
        """Wait until the gate is healthy."""
        while not self.healthy:
            if self._healthy_event is None:
                self._healthy_event = anyio.Event()
            await self._healthy_event.wait()

    async def probe(self) -> str | None:
        """Call the check once; None if it passed, else why it failed."""
        options = self.options
        try:
            with anyio.fail_after(options.timeout):
                result = await options.check()
        except TimeoutError:
            return f"health check did not answer within {options.timeout:g} s"
        except Exception as exc:
            return f"health check raised {type(exc).__name__}: {exc}"
        if result is False:
            return "health check returned False"
        return None

    async def run(self) -> None:
        """Poll forever (until cancelled)."""
        options = self.options
        while True:
            failure = await self.probe()
            self.checks += 1
            if failure is None:
                self.failures = 0
                self.successes += 1
                if not self.healthy and self.successes >= options.healthy_after:
                    self._flip(True, f"{self.successes} health checks in a row passed")
            else:
                self.checks_failed += 1
                self.successes = 0
                self.failures += 1
                self.last_failure = failure
                if self.healthy and self.failures >= options.unhealthy_after:
                    self._flip(False, f"{self.failures} health checks in a row failed ({failure})")
            await anyio.sleep(options.interval)

    def _flip(self, healthy: bool, reason: str) -> None:
        self.healthy = healthy
        self.changed_at = time.monotonic()
        log.info(
            "%s: health check now %s: %s", self._label, "passes" if healthy else "fails", reason
        )
        if healthy and self._healthy_event is not None:
            self._healthy_event.set()
            self._healthy_event = None
        self._on_change(healthy, reason)
