"""One member of a shard group, as an OS process, for the chaos suite.

Prints one JSON event per line (the format ``_support.leading_periods`` and
``check_logs_against_history`` read): ``elected`` when a shard is assigned (at
the term's start: when its campaign won, not when ``on_assigned`` ran),
``write`` for each fenced write acknowledged by etcd (one every ``--interval``
per owned shard, guarded by the shard's term), ``ended`` when it is revoked
(at the first of now, the term's renew deadline and the instant the term
ended, from its end callback: a session lost early, e.g. when a resign
failed, ends its terms before the renew deadline), ``woke`` after a pause.
Closing stdin makes it leave the group gracefully and exit 0. Dies with its
parent (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio

# _support, and tests/helpers.py that it imports.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import fence_key

import aioelect
from aioelect._shards import held_shards
from aioelect._term import add_on_end, session_of


def emit(**event: Any) -> None:
    event.setdefault("t", time.monotonic())
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def main(args: argparse.Namespace) -> None:
    ident = args.id
    # When each term ended, taken in the term's own end callback (synchronous: the instant
    # its session was lost, or it resigned), capped at its renew deadline.
    term_ended: dict[tuple[str, int], float] = {}

    def on_end(term: aioelect.Term, reason: str) -> None:
        now = time.monotonic()
        term_ended[(term.name, term.token)] = min(now, session_of(term).valid_until)

    async def assigned(shard: aioelect.Shard) -> None:
        term = shard.term
        add_on_end(term, on_end)
        # The term's own start (taken when the campaign won), not now: a process stopped
        # between the win and this line would report a start after the term's end.
        emit(
            event="elected",
            id=ident,
            election=shard.name,
            token=term.token,
            t=term.started_at,
            t_cb=time.monotonic(),
        )
        put = elector.client.transactions.put
        while True:
            key = fence_key(args.prefix, shard.name)
            value = json.dumps({"token": term.token, "id": ident}).encode()
            try:
                await term.transaction(success=[put(key, value)])
            except aioelect.NotLeader:
                return
            except aioelect.EtcdError:
                await anyio.sleep(args.interval)
                continue
            emit(event="write", id=ident, election=shard.name, token=term.token, key=key.decode())
            await anyio.sleep(args.interval)

    async def revoked(shard: aioelect.Shard) -> None:
        term = shard.term
        until = session_of(term).valid_until
        emit(
            event="ended",
            id=ident,
            election=shard.name,
            token=term.token,
            t=min(time.monotonic(), until, term_ended.get((term.name, term.token), until)),
            reason=term.end_reason or "handover",
        )

    async def watchdog() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.02)
            now = time.monotonic()
            if now - last > 0.5:
                terms = [
                    {
                        "election": s.name,
                        "token": s.term.token,
                        "is_valid": s.term.is_valid,
                        "valid_until": session_of(s.term).valid_until,
                    }
                    for s in held_shards(group)
                ]
                emit(event="woke", id=ident, slept=now - last, terms=terms)
            last = now

    async def stdin_closed() -> None:
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    async with aioelect.Elector(
        endpoints=args.endpoints, prefix=args.prefix, ttl=args.ttl
    ) as elector:
        group = elector.shards(
            args.group,
            size=args.size,
            value=ident,
            member_id=ident,
            on_assigned=assigned,
            on_revoked=revoked,
        )
        done = anyio.Event()

        async def serve() -> None:
            await group.run()
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog)
            tg.start_soon(serve)
            emit(event="started", id=ident)
            await stdin_closed()
            group.stop()
            await done.wait()
            tg.cancel_scope.cancel()
    emit(event="left", id=ident)


if __name__ == "__main__":
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", default="jobs")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.2)
    asyncio.run(main(parser.parse_args()))
