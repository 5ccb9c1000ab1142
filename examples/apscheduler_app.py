"""An APScheduler 3 job that runs once per tick across all the workers of a web server.

Every worker process runs the same ``AsyncIOScheduler``; the job is wrapped in
:func:`aioelect.leader_only`, so only the worker that leads the election
``ticks`` runs it, and a worker that stops leading (crashed, frozen, cut off,
reloaded) stops at once::

    export AIOELECT_ENDPOINTS=127.0.0.1:2379
    uvicorn examples.apscheduler_app:app --workers 3
    gunicorn examples.apscheduler_app:app -w 3 -k uvicorn_worker.UvicornWorker
    gunicorn examples.apscheduler_app:aiohttp_app -w 3 -k aiohttp.GunicornWebWorker

The recipe, in the lifespan of the app (FastAPI here, aiohttp below)::

    async with aioelect.Elector(prefix="/myapp", ttl=10) as elector:
        async with aioelect.LeadershipRunner(elector, "ticks") as runner:
            scheduler.add_job(runner.leader_only(tick), "interval", seconds=10)
            scheduler.start()
            yield

Each tick appends ``{scheduled time} {pid} {token}`` to ``$TICK_FILE`` (the
tests count them: at most one line per scheduled time across the workers).
Every worker schedules the same times (one grid of ``$TICK_SECONDS`` from a
fixed start), and ``due=`` lets a new leader skip a tick that was due before
its term began (the previous leader may have run it just before leaving,
and this worker's timer fired late).

Endpoint: ``GET /healthz``: this worker's pid, whether it leads, and
:func:`aioelect.health` (status 503 while not ready).

Settings (environment): ``AIOELECT_ENDPOINTS`` (required), ``AIOELECT_PREFIX``
(``/aioelect-examples``), ``AIOELECT_TTL`` (10 s), ``TICK_SECONDS`` (1),
``TICK_FILE`` (``ticks.log``), ``LEAVE_WAIT`` (0: seconds a leaving leader
waits for a successor to hand over to), ``GRACEFUL_LEAVE`` (1; 0 resigns to
the next in line instead).

Needs ``pip install 'aioelect[examples]' 'apscheduler<4'`` (and ``gunicorn
uvicorn-worker`` for gunicorn).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI, Response

import aioelect

ELECTION = "ticks"
log = logging.getLogger("examples.apscheduler_app")


def configure_logging() -> None:
    """Show aioelect's INFO lines (terms won and lost) with the worker's pid.

    Web servers configure only their own loggers (``uvicorn.*``, ``gunicorn.*``):
    without this, leadership changes are invisible in a worker.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s pid=%(process)d %(name)s %(levelname)s %(message)s")
    )
    for name in ("aioelect", log.name):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def tick_seconds() -> float:
    """The tick period ($TICK_SECONDS)."""
    return float(os.environ.get("TICK_SECONDS", "1"))


async def tick(term: aioelect.Term, scheduled: float) -> None:
    """The leader-only job: note the scheduled time, this pid and the fencing token."""
    with open(os.environ.get("TICK_FILE", "ticks.log"), "a") as out:  # noqa: ASYNC230 (tiny)
        out.write(f"{scheduled:.3f} {os.getpid()} {term.token}\n")


@asynccontextmanager
async def leader_jobs() -> AsyncIterator[aioelect.LeadershipRunner]:
    """The elector, the runner and the scheduler, for the lifetime of the app."""
    configure_logging()
    period = tick_seconds()
    async with aioelect.Elector(
        prefix=os.environ.get("AIOELECT_PREFIX", "/aioelect-examples"),
        ttl=float(os.environ.get("AIOELECT_TTL", "10")),
    ) as elector:
        scheduler = AsyncIOScheduler()

        def scheduled() -> float:
            """When the tick that runs now was due (APScheduler 3 does not pass it)."""
            job = scheduler.get_job(ELECTION)
            if job is None or job.next_run_time is None:  # removed or paused meanwhile
                return time.time()
            return float(job.next_run_time.timestamp()) - period

        async def leader_tick(term: aioelect.Term) -> None:
            await tick(term, scheduled())

        try:
            async with aioelect.LeadershipRunner(
                elector,
                ELECTION,  # the value defaults to aioelect.node_identity(): host-pid
                graceful_leave=os.environ.get("GRACEFUL_LEAVE", "1") == "1",
                leave_wait=float(os.environ.get("LEAVE_WAIT", "0")),
            ) as runner:
                scheduler.add_job(
                    runner.leader_only(leader_tick, due=scheduled),
                    "interval",
                    id=ELECTION,
                    seconds=period,
                    # The same grid in every worker, so a tick has one scheduled time.
                    start_date=datetime(2020, 1, 1, tzinfo=timezone.utc),
                    coalesce=True,
                )
                scheduler.start()
                yield runner
                # Leaving the runner hands leadership over before the scheduler stops.
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)


def report(runner: aioelect.LeadershipRunner) -> tuple[dict[str, Any], bool]:
    """This worker's state as JSON, and whether it is ready."""
    health = aioelect.health(runner.elector, runner.leadership)
    body = {"pid": os.getpid(), "is_leader": runner.is_leader, "health": health}
    return body, bool(health["ready"])


# -- FastAPI ---------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the leader-only jobs for the app's lifetime."""
    async with leader_jobs() as runner:
        app.state.runner = runner
        yield


app = FastAPI(title="aioelect APScheduler recipe", lifespan=lifespan)


@app.get("/healthz")
async def healthz(response: Response) -> dict[str, Any]:
    """This worker's state; status 503 while not ready."""
    body, ready = report(app.state.runner)
    if not ready:
        response.status_code = 503
    return body


# -- aiohttp ---------------------------------------------------------------------------

RUNNER = web.AppKey("runner", aioelect.LeadershipRunner)


async def jobs_ctx(aio: web.Application) -> AsyncIterator[None]:
    """The aiohttp cleanup context: the leader-only jobs live as long as the app."""
    async with leader_jobs() as runner:
        aio[RUNNER] = runner
        yield


async def aiohttp_healthz(request: web.Request) -> web.Response:
    """This worker's state; status 503 while not ready."""
    body, ready = report(request.app[RUNNER])
    return web.json_response(body, status=200 if ready else 503)


async def aiohttp_app() -> web.Application:
    """The aiohttp app (a factory for ``gunicorn -k aiohttp.GunicornWebWorker``)."""
    aio = web.Application()
    aio.cleanup_ctx.append(jobs_ctx)
    aio.router.add_get("/healthz", aiohttp_healthz)
    return aio
