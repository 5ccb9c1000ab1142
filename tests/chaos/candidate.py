"""A candidate process for the chaos tests.

Runs one ``aioelect.Elector`` with a ``Leadership`` per election; while it leads
an election it makes fenced writes in a loop (see ``_support.Member``). Every
step is one JSON line on stdout, e.g.::

    {"event": "elected", "election": "job", "token": 42, "t": 1234.5, ...}
    {"event": "stepped_down", "election": "job", "token": 42, "is_valid": false, ...}

``t`` values are ``time.monotonic()``: one clock for every process of the machine.

Commands, one per line on stdin: ``resign NAME`` (Term.resign()), ``stop NAME``
(Leadership.stop(), wait for run() to return), ``start NAME`` (a new
Leadership), ``priority NAME N`` (Leadership.set_priority(N)), ``stats``
(prints the elector's statistics and whether each run() task still runs),
``exit``. End of stdin means ``exit`` too, so the process never outlives the test that started it.

A watchdog reports ``woke`` when the event loop did not run for a while (the
process was paused): with the validity of every term it believed it held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

# _support, and tests/helpers.py that it imports.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import Member

import aioelect
from aioelect._term import session_of


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def watchdog(member: Member, tick: float = 0.05, threshold: float = 1.0) -> None:
    last = time.monotonic()
    while True:
        await anyio.sleep(tick)
        now = time.monotonic()
        if now - last > threshold:
            member.emit(
                "woke",
                gap=now - last,
                t=now,
                terms=[
                    {
                        "election": name,
                        "token": term.token,
                        "is_valid": term.is_valid,
                        # The latest deadline (renewals only push it later): the
                        # term was valid at no instant after it.
                        "valid_until": session_of(term).valid_until,
                    }
                    for name, term in member.current.items()
                ],
            )
        last = now


async def commands(member: Member, tg: anyio.abc.TaskGroup) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "exit":
                return
            verb, _, arg = line.partition(" ")
            if verb == "resign":
                tg.start_soon(member.resign, arg)
            elif verb == "stop":
                tg.start_soon(member.stop, arg)
            elif verb == "start":
                if not member.running.get(arg):
                    member.start(tg, arg)
            elif verb == "priority":
                name, _, value = arg.partition(" ")
                member.leaderships[name].set_priority(int(value))
                member.emit("priority", election=name, priority=int(value), t=time.monotonic())
            elif verb == "stats":
                member.emit("stats", t=time.monotonic(), **member.stats())
            else:
                member.emit("bad_command", line=line)
    finally:
        transport.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--elections", required=True, help="comma-separated names")
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.1, help="between fenced writes")
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--priority", type=int, default=None)
    parser.add_argument("--min-term", type=float, default=None)
    parser.add_argument("--settle", type=float, default=None)
    parser.add_argument(
        "--health-file", default=None, help="a health check that fails while this file exists"
    )
    parser.add_argument("--health-interval", type=float, default=0.1)
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.priority is not None:
        options["priority"] = args.priority
    if args.min_term is not None:
        options["min_term"] = args.min_term
    if args.settle is not None:
        options["settle"] = args.settle
    if args.health_file is not None:
        sick = Path(args.health_file)

        async def check() -> bool:
            ok = not await anyio.Path(sick).exists()
            emit({"event": "health", "id": args.id, "ok": ok, "t": time.monotonic()})
            return ok

        options.update(
            health_check=check,
            health_interval=args.health_interval,
            health_timeout=1.0,
            unhealthy_after=2,
            healthy_after=3,
        )

    async with aioelect.Elector(
        endpoints=args.endpoints, prefix=args.prefix, ttl=args.ttl
    ) as elector:
        member = Member(
            elector,
            ident=args.id,
            emit=emit,
            interval=args.interval,
            probe=not args.no_probe,
            options=options,
        )
        member.emit("ready", lease=elector.statistics().lease_id, t=time.monotonic())
        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog, member)
            for name in args.elections.split(","):
                member.start(tg, name)
            await commands(member, tg)
            member.closing = True
            await member.stop_all()
            member.emit("stats", t=time.monotonic(), **member.stats())
            tg.cancel_scope.cancel()
    member.emit("exit", t=time.monotonic())


if __name__ == "__main__":
    asyncio.run(main())
