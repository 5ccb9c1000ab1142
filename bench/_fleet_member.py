"""One process of issue 17's fleet benchmarks (never a test): run by ``bench/_fleet.py``.

Public API only (``aioelect.Elector`` and what it returns), so the same script
measures the library before and after a rewrite of its internals. Every mode
dies with its parent (``PR_SET_PDEATHSIG`` on Linux, armed here at start), and
reads commands from stdin, one per line; end of input is ``quit``. It writes
``ready <monotonic ns>`` once set up, then answers on stdout.

Modes:

- ``idle --hold a,b --observe c``: one Elector holding and observing those
  elections, doing nothing else.
- ``churn --n N``: N elections with two candidates each, one on each of two
  Electors; a leader holds for a random time (mean ``--hold-mean``), leaves its
  block and campaigns again at once. ``mark`` prints ``mark <terms> <ns>``.
- ``control --name X --value V``: one candidate that obeys ``join`` /
  ``release`` (prints ``elected <ns>`` / ``exit <ns>``, as ``_candidate.py``).
- ``enter --name X``: measure entry: build an Elector, enter it, win ``X``;
  print one JSON line (seconds, RSS) and exit.
- ``fleet --index p --procs P --per E --candidates k``: campaigns, through
  ``Elector.leadership`` (with ``on_leader_change``), in the elections owned by
  processes p, p-1, ... p-k+1 (E each, so every election has k candidates on k
  processes); ``ready`` once each of them has reported a leader. ``churn R``
  resigns a random term of its own R times a second; ``idle`` stops that;
  ``stats`` prints ``stats <resigns> <elected> <leader changes seen>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from typing import Any

import anyio
from _candidate import Candidate

import aioelect

PAGE = os.sysconf("SC_PAGE_SIZE")


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies (Linux; elsewhere the parent cleans up)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Commands:
    """Lines of stdin, as an async iterator of stripped strings (``quit`` at EOF)."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        protocol = asyncio.StreamReaderProtocol(self.reader)
        await loop.connect_read_pipe(lambda: protocol, sys.stdin)

    async def next(self) -> str:
        line = await self.reader.readline()
        return line.decode().strip() or "quit"


def _names(csv: str) -> list[str]:
    return [n for n in csv.split(",") if n]


async def idle_mode(args: argparse.Namespace, cmds: Commands) -> None:
    holds, observes = _names(args.hold), _names(args.observe)
    pending = len(holds) + len(observes)
    ready = anyio.Event()

    def one_ready() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            ready.set()

    async with aioelect.Elector(
        endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl
    ) as elector:

        async def hold(name: str) -> None:
            async with elector.hold(name, f"idle-{os.getpid()}"):
                one_ready()
                await anyio.sleep_forever()

        async def observe(name: str) -> None:
            async with elector.observe(name) as leaders:
                first = True
                async for _ in leaders:
                    if first:
                        one_ready()
                        first = False

        async with anyio.create_task_group() as tg:
            for name in holds:
                tg.start_soon(hold, name)
            for name in observes:
                tg.start_soon(observe, name)
            if pending == 0:
                ready.set()
            await ready.wait()
            say("ready", time.monotonic_ns())
            while await cmds.next() != "quit":
                pass
            tg.cancel_scope.cancel()


async def churn_mode(args: argparse.Namespace, cmds: Commands) -> None:
    rng = random.Random(args.seed)
    terms = 0
    led: set[int] = set()
    all_led = anyio.Event()
    stop = False

    async with (
        aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl) as ea,
        aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl) as eb,
    ):

        async def candidate(elector: aioelect.Elector, i: int) -> None:
            nonlocal terms
            while not stop:
                async with elector.hold(f"c{i}", "x"):
                    terms += 1
                    if i not in led:
                        led.add(i)
                        if len(led) == args.n:
                            all_led.set()
                    await anyio.sleep(rng.uniform(0, 2 * args.hold_mean))

        async with anyio.create_task_group() as tg:
            for i in range(args.n):
                tg.start_soon(candidate, ea, i)
                tg.start_soon(candidate, eb, i)
            with anyio.move_on_after(args.start_timeout):
                await all_led.wait()
            say("ready", time.monotonic_ns(), len(led))
            while (cmd := await cmds.next()) != "quit":
                if cmd == "mark":
                    say("mark", terms, time.monotonic_ns())
            stop = True
            tg.cancel_scope.cancel()  # every hold resigns; leaving the Electors revokes


async def control_mode(args: argparse.Namespace, cmds: Commands) -> None:
    async with aioelect.Elector(
        endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl
    ) as elector:
        say("ready", time.monotonic_ns())
        await Candidate(elector, args.name, args.value, lambda k, ns: say(k, ns)).run(cmds.next)


async def enter_mode(args: argparse.Namespace) -> None:
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    elector = aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl)
    async with elector:
        t1 = time.perf_counter()
        async with elector.hold(args.name, "entry"):
            t2 = time.perf_counter()
            rss1 = rss_bytes()
            stats = elector.statistics()
        res = {
            "enter_s": t1 - t0,
            "win_s": t2 - t1,
            "total_s": t2 - t0,
            "rss_before": rss0,
            "rss_after": rss1,
            "rss_growth": rss1 - rss0,
            "lease_id": stats.lease_id,
        }
    say(json.dumps(res))


async def fleet_mode(args: argparse.Namespace, cmds: Commands) -> None:
    p, procs, per, k = args.index, args.procs, args.per, args.candidates
    owners = [(p - j) % procs for j in range(k)]
    names = [f"f{o}-{i}" for o in owners for i in range(per)]
    unseen = set(names)
    ready = anyio.Event()
    counts = {"resigns": 0, "elected": 0, "changes": 0}
    rng = random.Random(p)
    value = f"p{p}"

    async with aioelect.Elector(
        endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl
    ) as elector:

        def on_change_of(name: str) -> Any:
            async def on_change(info: aioelect.LeaderInfo | None) -> None:
                counts["changes"] += 1
                if info is not None and name in unseen:
                    unseen.discard(name)
                    if not unseen:
                        ready.set()

            return on_change

        async def on_elected(_term: aioelect.Term) -> None:
            counts["elected"] += 1

        async def churn(rate: float) -> None:
            while True:
                await anyio.sleep(rng.expovariate(rate))
                terms = elector.terms()
                if terms:
                    counts["resigns"] += 1
                    await rng.choice(terms).resign()

        async with anyio.create_task_group() as tg:
            for name in names:
                lead = elector.leadership(
                    name, value, on_elected=on_elected, on_leader_change=on_change_of(name)
                )
                tg.start_soon(lead.run)
            await ready.wait()
            say("ready", time.monotonic_ns())
            churner: anyio.CancelScope | None = None
            while (cmd := await cmds.next()) != "quit":
                word, *rest = cmd.split()
                if word == "churn":
                    if churner is not None:
                        churner.cancel()
                    churner = anyio.CancelScope()

                    async def churning(scope: anyio.CancelScope, rate: float) -> None:
                        with scope:
                            await churn(rate)

                    tg.start_soon(churning, churner, float(rest[0]))
                elif word == "idle" and churner is not None:
                    churner.cancel()
                    churner = None
                elif word == "stats":
                    say("stats", counts["resigns"], counts["elected"], counts["changes"])
            tg.cancel_scope.cancel()


async def main(args: argparse.Namespace) -> None:
    if args.mode == "enter":
        await enter_mode(args)
        return
    cmds = Commands()
    await cmds.start()
    modes = {"idle": idle_mode, "churn": churn_mode, "control": control_mode, "fleet": fleet_mode}
    await modes[args.mode](args, cmds)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["idle", "churn", "control", "enter", "fleet"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--parent", type=int, default=0, help="the pid to die with")
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--hold", default="", help="idle: elections to hold (comma-separated)")
    p.add_argument("--observe", default="", help="idle: elections to observe")
    p.add_argument("--n", type=int, default=1000, help="churn: elections")
    p.add_argument("--hold-mean", type=float, default=0.05, help="churn: mean hold time (s)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--name", default="x", help="control, enter: the election")
    p.add_argument("--value", default="v", help="control: the candidate's value")
    p.add_argument("--index", type=int, default=0, help="fleet: this process's number")
    p.add_argument("--procs", type=int, default=1, help="fleet: processes in the fleet")
    p.add_argument("--per", type=int, default=1, help="fleet: elections owned per process")
    p.add_argument("--candidates", type=int, default=2, help="fleet: candidates per election")
    args = p.parse_args()
    die_with_parent(args.parent)
    anyio.run(main, args)


if __name__ == "__main__":
    cli()
