"""An aiohttp service whose background job runs on the elected leader only.

The same service as ``fastapi_app.py``, on aiohttp: a ``cleanup_ctx`` enters
the :class:`aioelect.Elector` for the app's lifetime, and a background task
campaigns with ``elector.hold()`` in a loop (the block style)::

    while True:
        async with elector.hold(election, node) as term:   # wait to be elected
            await job.run(term)                             # cancelled when the term ends

Run two copies against one etcd::

    export AIOELECT_ENDPOINTS=127.0.0.1:2379
    python examples/aiohttp_app.py --port 8001 --node-name a &
    python examples/aiohttp_app.py --port 8002 --node-name b &
    curl -s localhost:8001/leader; curl -s localhost:8002/healthz
    kill %1          # SIGTERM: 'a' resigns on its way out, 'b' leads at once

Endpoints: ``GET /leader`` (the current leader's value and token, or null)
and ``GET /healthz`` (this copy's state; status 503 until its session is live).

Settings (option / environment variable, default):
    ``--endpoints`` / ``AIOELECT_ENDPOINTS`` (required),
    ``--prefix`` / ``AIOELECT_PREFIX`` (``/aioelect-examples``),
    ``--election`` / ``AIOELECT_ELECTION`` (``counter``),
    ``--node-name`` / ``NODE_NAME`` (``{hostname}-{pid}``),
    ``--ttl`` / ``AIOELECT_TTL`` (10 s).

Needs ``pip install 'aioelect[examples]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import aioelect
from aioelect import health

log = logging.getLogger("examples.aiohttp_app")


@dataclass(frozen=True)
class Settings:
    """Where to find etcd, which election to join, and as whom."""

    endpoints: str | None
    prefix: str
    election: str
    node: str
    ttl: int

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment, with the defaults above."""
        return cls(
            endpoints=os.environ.get("AIOELECT_ENDPOINTS"),
            prefix=os.environ.get("AIOELECT_PREFIX", "/aioelect-examples"),
            election=os.environ.get("AIOELECT_ELECTION", "counter"),
            node=os.environ.get("NODE_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            ttl=int(os.environ.get("AIOELECT_TTL", "10")),
        )


class CounterJob:
    """The leader-only job: a counter in etcd, incremented every 0.1 s by fenced writes."""

    def __init__(self, elector: aioelect.Elector, settings: Settings) -> None:
        self.elector = elector
        self.node = settings.node
        base = f"{settings.prefix}-data/{settings.election}"
        self.counter_key = f"{base}/counter".encode()
        self.writer_key = f"{base}/writer".encode()
        self.running = False
        self.writes = 0

    async def run(self, term: aioelect.Term) -> None:
        """Count while ``term`` leads; return if a write finds the term ended."""
        tx = self.elector.client.transactions
        count: int | None = None
        self.running = True
        try:
            while True:
                try:
                    if count is None:  # a fenced read of where the last leader stopped
                        _, [found] = await term.transaction(success=[tx.get(self.counter_key)])
                        count = int(found[0][0]) if found else 0
                    await term.transaction(
                        success=[
                            tx.put(self.counter_key, str(count + 1).encode()),
                            tx.put(self.writer_key, f"{self.node} {term.token}".encode()),
                        ]
                    )
                except aioelect.NotLeader:
                    return  # the term ended: etcd applied nothing
                except aioelect.EtcdUnavailable as exc:
                    log.warning("etcd did not answer, retrying: %s", exc)
                    count = None  # the write may or may not have landed: read again
                else:
                    count += 1
                    self.writes += 1
                await asyncio.sleep(0.1)
        finally:
            self.running = False


SETTINGS = web.AppKey("settings", Settings)
ELECTOR = web.AppKey("elector", aioelect.Elector)
JOB = web.AppKey("job", CounterJob)


async def lead_forever(elector: aioelect.Elector, settings: Settings, job: CounterJob) -> None:
    """Campaign, run the job while leading, and campaign again, until cancelled."""
    while True:
        try:
            async with elector.hold(settings.election, settings.node) as term:
                log.info("elected (token %d)", term.token)
                await job.run(term)
        except aioelect.LeadershipLost as exc:
            # The lease was not renewed in time, or the key was deleted: the
            # job was cancelled. Campaign again (at the back of the queue).
            log.warning("%s; campaigning again", exc)


async def elector_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context: the elector and the campaign live as long as the app."""
    settings = app[SETTINGS]
    async with aioelect.Elector(
        endpoints=settings.endpoints, prefix=settings.prefix, ttl=settings.ttl
    ) as elector:
        job = CounterJob(elector, settings)
        app[ELECTOR], app[JOB] = elector, job
        task = asyncio.create_task(lead_forever(elector, settings, job), name="lead")
        task.add_done_callback(log_failure)
        log.info("node %s campaigns in %r", settings.node, settings.election)
        yield
        # On shutdown: cancelling the block resigns at once (the next copy
        # takes over now); leaving the elector revokes its session lease.
        task.cancel()
        await asyncio.wait([task])


def log_failure(task: asyncio.Task[None]) -> None:
    """Log the campaign task's error, if it failed (this copy then never leads again)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the campaign task failed", exc_info=task.exception())


def leader_dict(info: aioelect.LeaderInfo | None) -> dict[str, Any] | None:
    """A LeaderInfo as JSON (lease ids in hex: they do not fit a JavaScript number)."""
    if info is None:
        return None
    return {
        "name": info.name,
        "value": info.value.decode(errors="replace"),
        "token": info.token,
        "key": info.key.decode(errors="replace"),
        "lease_id": f"{info.lease_id:x}",
    }


async def get_leader(request: web.Request) -> web.Response:
    """The current leader of the election, or null when vacant."""
    app = request.app
    return web.json_response(leader_dict(await app[ELECTOR].leader(app[SETTINGS].election)))


async def healthz(request: web.Request) -> web.Response:
    """This copy's state; status 503 while its etcd session is not live."""
    app = request.app
    settings, job = app[SETTINGS], app[JOB]
    report = health(app[ELECTOR])
    body = {
        "node": settings.node,
        "election": settings.election,
        "is_leader": any(t["name"] == settings.election for t in report["terms"]),
        "job": {"running": job.running, "writes": job.writes},
        "health": report,
    }
    return web.json_response(body, status=200 if report["ready"] else 503)


def create_app(settings: Settings | None = None) -> web.Application:
    """The aiohttp app (settings from the environment when not given)."""
    app = web.Application()
    app[SETTINGS] = settings or Settings.from_env()
    app.cleanup_ctx.append(elector_ctx)
    app.router.add_get("/leader", get_leader)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve the app until SIGTERM or SIGINT."""
    env = Settings.from_env()
    p = argparse.ArgumentParser(description="aiohttp app with a leader-only job.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoints", default=env.endpoints, help="etcd endpoints")
    p.add_argument("--prefix", default=env.prefix)
    p.add_argument("--election", default=env.election)
    p.add_argument("--node-name", default=env.node, help="this copy's value in the election")
    p.add_argument("--ttl", type=int, default=env.ttl, help="session lease TTL in seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings(args.endpoints, args.prefix, args.election, args.node_name, args.ttl)
    web.run_app(create_app(settings), host=args.host, port=args.port, shutdown_timeout=5)


if __name__ == "__main__":
    main()
