"""An aiohttp service whose background job runs on the elected leader only.

The same service as ``fastapi_app.py``, on aiohttp: a ``cleanup_ctx`` enters
the :class:`aioelect.Elector` and an :class:`aioelect.LeadershipRunner` for the
app's lifetime::

    async with aioelect.Elector(...) as elector:
        async with aioelect.LeadershipRunner(elector, election, on_elected=job.run):
            yield   # the job runs while this copy leads, cancelled when the term ends

The runner campaigns in the background, restarts the campaign if it fails
(logged, never taking the server down), and on shutdown hands leadership
over to the youngest other copy.

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
    ``--node-name`` / ``NODE_NAME`` (:func:`aioelect.node_identity`,
    ``{hostname}-{pid}``, computed when the campaign starts),
    ``--ttl`` / ``AIOELECT_TTL`` (10 s).

Needs ``pip install 'aioelect[examples]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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
    node: str | None
    ttl: int

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment, with the defaults above."""
        return cls(
            endpoints=os.environ.get("AIOELECT_ENDPOINTS"),
            prefix=os.environ.get("AIOELECT_PREFIX", "/aioelect-examples"),
            election=os.environ.get("AIOELECT_ELECTION", "counter"),
            node=os.environ.get("NODE_NAME") or None,  # None: aioelect.node_identity()
            ttl=int(os.environ.get("AIOELECT_TTL", "10")),
        )


class CounterJob:
    """The leader-only job: a counter in etcd, incremented every 0.1 s by fenced writes."""

    def __init__(self, elector: aioelect.Elector, settings: Settings) -> None:
        self.elector = elector
        self.node = settings.node or aioelect.node_identity()  # in the worker, not at import
        base = f"{settings.prefix}-data/{settings.election}"
        self.counter_key = f"{base}/counter".encode()
        self.writer_key = f"{base}/writer".encode()
        self.running = False
        self.writes = 0

    async def run(self, term: aioelect.Term) -> None:
        """Count while ``term`` leads; return if a write finds the term ended."""
        tx = self.elector.client.transactions
        count: int | None = None
        log.info("elected (token %d)", term.token)
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


RUNNER = web.AppKey("runner", aioelect.LeadershipRunner)


def configure_logging() -> None:
    """Show aioelect's INFO lines (terms won and lost), whatever runs the app."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s pid=%(process)d %(name)s %(message)s"))
    for name in ("aioelect", log.name):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


async def elector_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context: the elector and the campaign live as long as the app."""
    configure_logging()
    settings = app[SETTINGS]
    async with aioelect.Elector(
        endpoints=settings.endpoints, prefix=settings.prefix, ttl=settings.ttl
    ) as elector:
        job = CounterJob(elector, settings)
        async with aioelect.LeadershipRunner(
            elector, settings.election, job.node, on_elected=job.run
        ) as runner:
            app[ELECTOR], app[JOB], app[RUNNER] = elector, job, runner
            yield
        # On shutdown the runner handed leadership over to the youngest other copy
        # (or resigned): it takes over now. Leaving the elector revoked its lease.


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
    settings, job, runner = app[SETTINGS], app[JOB], app[RUNNER]
    report = health(app[ELECTOR], runner.leadership)
    body = {
        "node": job.node,
        "election": settings.election,
        "is_leader": runner.is_leader,
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
    p.add_argument("--node-name", default=env.node, help="this copy's value (default host-pid)")
    p.add_argument("--ttl", type=int, default=env.ttl, help="session lease TTL in seconds")
    args = p.parse_args(argv)
    settings = Settings(args.endpoints, args.prefix, args.election, args.node_name, args.ttl)
    web.run_app(create_app(settings), host=args.host, port=args.port, shutdown_timeout=5)


if __name__ == "__main__":
    main()
