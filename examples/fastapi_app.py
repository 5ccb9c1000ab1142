"""A FastAPI service whose background job runs on the elected leader only.

Run two copies against one etcd; one leads, and when it stops the other takes
over within milliseconds::

    export AIOELECT_ENDPOINTS=127.0.0.1:2379
    python examples/fastapi_app.py --port 8001 --node-name a &
    python examples/fastapi_app.py --port 8002 --node-name b &
    curl -s localhost:8001/leader; curl -s localhost:8002/healthz
    kill %1          # SIGTERM: 'a' resigns on its way out, 'b' leads at once

or ``uvicorn examples.fastapi_app:app`` (settings from the environment only).

The app's lifespan enters an :class:`aioelect.Elector` (one etcd session for
the process) and an :class:`aioelect.LeadershipRunner`, which campaigns in the
background, restarts the campaign if it fails (logged, never taking the
server down), and on shutdown hands leadership over to the youngest other
copy.
While this copy leads, the job increments a counter in etcd every 0.1 s. Each
write is a :meth:`aioelect.Term.transaction`, guarded by the term's fencing
token: a copy that lost leadership (paused, cut off) cannot write any more. An
unexpected error in the job does not take the copy out of the election: the
Leadership logs it, resigns, backs off and campaigns again (``restart_on_error``,
the default), and ``/healthz`` shows it as ``last_error``.

Endpoints:
    ``GET /leader``: the current leader's value and token, or null.
    ``GET /healthz``: this copy's state (status 503 until its session is live, and
    once its leadership's ``run()`` has ended).
    ``GET /metrics``: Prometheus metrics of the elector.

Settings (option / environment variable, default):
    ``--endpoints`` / ``AIOELECT_ENDPOINTS`` (required),
    ``--prefix`` / ``AIOELECT_PREFIX`` (``/aioelect-examples``),
    ``--election`` / ``AIOELECT_ELECTION`` (``counter``),
    ``--node-name`` / ``NODE_NAME`` (:func:`aioelect.node_identity`,
    ``{hostname}-{pid}``, computed when the campaign starts: each worker of
    ``uvicorn --workers`` or ``gunicorn --preload`` gets its own),
    ``--ttl`` / ``AIOELECT_TTL`` (10 s).

Needs ``pip install 'aioelect[examples]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import aioelect
import aioelect.prometheus
from aioelect import health

log = logging.getLogger("examples.fastapi_app")


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
    """The leader-only job: a counter in etcd, incremented every 0.1 s by fenced writes.

    The counter lives outside the election's keys, at ``{prefix}-data/{election}/``.
    """

    def __init__(self, elector: aioelect.Elector, settings: Settings) -> None:
        self.elector = elector
        self.node = settings.node or aioelect.node_identity()  # in the worker, not at import
        base = f"{settings.prefix}-data/{settings.election}"
        self.counter_key = f"{base}/counter".encode()
        self.writer_key = f"{base}/writer".encode()
        self.running = False
        self.writes = 0

    async def run(self, term: aioelect.Term) -> None:
        """Count while ``term`` leads (the Leadership cancels this when the term ends)."""
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
            log.info("stopped counting at %s", count)


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


def configure_logging() -> None:
    """Show aioelect's INFO lines (terms won and lost) in every worker.

    ``uvicorn --workers`` and gunicorn configure only their own loggers.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s pid=%(process)d %(name)s %(message)s"))
    for name in ("aioelect", log.name):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Enter the elector and campaign in the background for the app's lifetime."""
    configure_logging()
    settings: Settings = app.state.settings
    async with aioelect.Elector(
        endpoints=settings.endpoints, prefix=settings.prefix, ttl=settings.ttl
    ) as elector:
        job = CounterJob(elector, settings)
        async with aioelect.LeadershipRunner(
            elector, settings.election, job.node, on_elected=job.run
        ) as runner:
            registry = CollectorRegistry()
            aioelect.prometheus.register(elector, runner.leadership, registry=registry)
            app.state.elector, app.state.runner = elector, runner
            app.state.job, app.state.registry = job, registry
            try:
                yield
            finally:
                aioelect.prometheus.unregister(elector, registry)
        # Leaving the runner handed leadership over to the youngest other copy (or
        # resigned): another copy took over at once. Leaving the elector revoked its lease.


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app (settings from the environment when not given)."""
    app = FastAPI(title="aioelect FastAPI example", lifespan=lifespan)
    app.state.settings = settings or Settings.from_env()

    @app.get("/leader")
    async def get_leader(request: Request) -> dict[str, Any] | None:
        """The current leader of the election, or null when vacant."""
        elector: aioelect.Elector = request.app.state.elector
        return leader_dict(await elector.leader(request.app.state.settings.election))

    @app.get("/healthz")
    async def healthz(request: Request, response: Response) -> dict[str, Any]:
        """This copy's state; status 503 while its etcd session is not live or its
        leadership's run() has ended."""
        state = request.app.state
        runner: aioelect.LeadershipRunner = state.runner
        report = health(state.elector, runner.leadership)
        if not report["ready"]:
            response.status_code = 503
        return {
            "node": state.job.node,
            "election": state.settings.election,
            "is_leader": runner.is_leader,
            "job": {"running": state.job.running, "writes": state.job.writes},
            "health": report,
        }

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of the elector."""
        data = generate_latest(request.app.state.registry)
        return Response(content=data, media_type=CONTENT_TYPE_LATEST)

    return app


#: For ``uvicorn examples.fastapi_app:app`` (reads the settings when it starts).
app = create_app()


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve the app with uvicorn until SIGTERM or SIGINT."""
    env = Settings.from_env()
    p = argparse.ArgumentParser(description="FastAPI app with a leader-only job.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoints", default=env.endpoints, help="etcd endpoints")
    p.add_argument("--prefix", default=env.prefix)
    p.add_argument("--election", default=env.election)
    p.add_argument("--node-name", default=env.node, help="this copy's value (default host-pid)")
    p.add_argument("--ttl", type=int, default=env.ttl, help="session lease TTL in seconds")
    args = p.parse_args(argv)
    settings = Settings(args.endpoints, args.prefix, args.election, args.node_name, args.ttl)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
