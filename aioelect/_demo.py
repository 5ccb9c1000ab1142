"""``aioelect demo``: three candidate processes on an embedded etcd, a handover and a crash.

Each candidate is ``aioelect run demo node-N -- <sleep>`` in its own process,
which dies with the demo (and its command with it, by ``run``'s watchdog).
The demo watches the election, asks the first leader to leave (SIGTERM: a
graceful handover), then SIGKILLs the next one (a crash: its lease must
expire), and shows each failover with its measured time. It ends by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import anyio
import anyio.abc

from ._elector import Elector
from ._embedded import EmbeddedEtcd
from ._models import CandidateInfo, LeaderInfo

__all__ = ("run_demo",)

TTL = 1
NODES = 3


class _View:
    """What the demo shows: candidates, leader, and a log of events."""

    def __init__(self, endpoint: str, render: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self.started = time.monotonic()
        self.leader: LeaderInfo | None = None
        self.candidates: list[CandidateInfo] = []
        self.events: list[str] = []
        self.render = render

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.2f}s  {text}")
        self.render()


def _rich_renderer(view: _View) -> tuple[Callable[[], None], object]:
    from rich.console import Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table

    def build() -> Group:
        table = Table(
            title=f"election 'demo' on embedded etcd {view.endpoint} (TTL {TTL} s)",
            min_width=72,
        )
        table.add_column("candidate")
        table.add_column("token", justify="right")
        table.add_column("role")
        for c in view.candidates:
            lead = view.leader is not None and c.key == view.leader.key
            table.add_row(
                c.value.decode(), str(c.token), "[bold green]LEADER[/]" if lead else "waiting"
            )
        log = "\n".join(view.events[-12:]) or "starting..."
        return Group(table, Panel(log, title="events"))

    live = Live(build(), refresh_per_second=10, transient=False)
    return (lambda: live.update(build())), live


async def run_demo(plain: bool = False) -> int:
    """Run the demo; return 0 on success."""
    printed = 0

    def render_plain() -> None:
        nonlocal printed
        for line in view.events[printed:]:
            print(line, flush=True)
        printed = len(view.events)

    use_rich = not plain and sys.stdout.isatty()
    if use_rich:
        try:
            import rich  # noqa: F401
        except ImportError:
            use_rich = False
    async with EmbeddedEtcd(heartbeat_interval=0.01, election_timeout=0.1) as etcd:
        view = _View(etcd.endpoint, render_plain)
        live = None
        if use_rich:
            view.render, live = _rich_renderer(view)
            live.__enter__()  # type: ignore[attr-defined]
        try:
            with anyio.fail_after(55):
                async with anyio.create_task_group() as tg:
                    # SIGTERM/SIGINT end the demo cleanly: candidates and etcd are stopped.
                    tg.start_soon(_stop_on_signal, tg.cancel_scope)
                    await _scenario(etcd, view)
                    tg.cancel_scope.cancel()
        finally:
            if live is not None:
                live.__exit__(None, None, None)  # type: ignore[attr-defined]
    return 0


async def _scenario(etcd: EmbeddedEtcd, view: _View) -> None:
    procs: dict[bytes, anyio.abc.Process] = {}
    view.event(f"embedded etcd serving on {etcd.endpoint}")
    try:
        async with Elector(endpoints=etcd.endpoint, prefix="/demo", ttl=TTL) as elector:
            changes: list[tuple[float, LeaderInfo | None]] = []
            changed = anyio.Event()

            async def follow() -> None:
                nonlocal changed
                async with elector.observe("demo") as leaders:
                    async for info in leaders:
                        changes.append((time.monotonic(), info))
                        view.leader = info
                        view.candidates = await elector.candidates("demo")
                        view.render()
                        changed.set()
                        changed = anyio.Event()

            async def next_leader(after: float, not_key: bytes | None) -> tuple[LeaderInfo, float]:
                while True:
                    for at, info in changes:
                        if at >= after and info is not None and info.key != not_key:
                            return info, at
                    await changed.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                for i in range(1, NODES + 1):
                    value = f"node-{i}".encode()
                    procs[value] = await _spawn(etcd.endpoint, value.decode())
                    view.event(f"started candidate node-{i} (pid {procs[value].pid})")
                first, _ = await next_leader(0.0, None)
                view.event(f"{first.value.decode()} leads (token {first.token})")
                while len(view.candidates) < NODES:  # the others queue up behind
                    await anyio.sleep(0.05)
                    view.candidates = await elector.candidates("demo")
                    view.render()
                await anyio.sleep(1.0)

                view.event(f"SIGTERM -> {first.value.decode()}: graceful step-down")
                t0 = time.monotonic()
                _signal(procs[first.value], signal.SIGTERM)
                second, at = await next_leader(t0, first.key)
                view.event(
                    f"{second.value.decode()} leads after {1000 * (at - t0):.1f} ms "
                    "(graceful handover)"
                )
                await anyio.sleep(1.0)

                view.event(f"SIGKILL -> {second.value.decode()}: crash, no resign")
                t1 = time.monotonic()
                _signal(procs[second.value], signal.SIGKILL)
                third, at = await next_leader(t1, second.key)
                view.event(
                    f"{third.value.decode()} leads after {1000 * (at - t1):.0f} ms "
                    f"(crash failover: the lease expired, TTL {TTL} s)"
                )
                await anyio.sleep(1.0)
                view.event("demo done")
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for proc in procs.values():
                if proc.returncode is None:
                    _signal(proc, signal.SIGTERM)
            for proc in procs.values():
                with anyio.move_on_after(3):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.aclose()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


#: How a candidate process starts: it dies with the demo (on Linux by the parent-death
#: signal, elsewhere when its stdin, a pipe from the demo, ends), and its command's
#: watchdog then kills the command.
_NODE = """\
import os, signal, sys, threading
from aioelect._watchdog import die_with_parent
arm = die_with_parent({parent})
if arm is not None:
    arm()
def lifeline():
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=lifeline, daemon=True).start()
from aioelect.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def _spawn(endpoint: str, value: str) -> anyio.abc.Process:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    cmd = [
        sys.executable, "-c", _NODE.format(parent=os.getpid()), "--endpoints", endpoint,
        "--prefix", "/demo", "--ttl", str(TTL), "run", "demo", value, "--grace", "1", "--",
        *sleeper,
    ]  # fmt: skip
    return await anyio.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _signal(proc: anyio.abc.Process, signum: signal.Signals) -> None:
    """Signal a candidate process; one that already exited (a term lost on a starved
    machine ends ``aioelect run``) is left alone: the demo goes on with the others."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)
