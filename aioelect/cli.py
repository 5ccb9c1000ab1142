"""The ``aioelect`` command line: run a command on exactly one host, and look at elections.

::

    aioelect [global options] run NAME VALUE [--grace S] -- CMD [ARG...]
    aioelect [global options] observe NAME [--json]
    aioelect [global options] leader NAME
    aioelect [global options] candidates NAME [--json]
    aioelect demo

Global options come before the subcommand; each has an ``AIOELECT_*`` env var
(``--endpoints`` / ``AIOELECT_ENDPOINTS`` and so on). ``python -m aioelect`` is
the same program.

``run`` starts CMD under a watchdog process (``aioelect/_watchdog.py``) that
SIGKILLs CMD's process group by the term's hard deadline (the last keepalive's
send time + TTL, less :data:`KILL_MARGIN`) unless fed a later one, or at once
if this wrapper dies: CMD never runs beside the next leader's, even if the
wrapper is SIGKILLed, frozen or cut off from etcd. ``--grace`` is capped by
that deadline.

Exit codes: ``run`` exits with CMD's code; 75 when leadership was lost while
CMD ran (CMD's process group was stopped); 128+N when stopped by signal N
before being elected; 0 without running CMD under ``--no-wait`` when another
candidate was first. ``leader`` exits 1 when the election is vacant. 2 means bad usage,
69 that etcd was unreachable.

Size: over 400 lines because it is the argument parser and the handler of
each subcommand, one idea (the command line) with the run wrapper's
signal and watchdog handling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from . import __version__, _watchdog
from ._config import check_name
from ._elector import Elector
from ._endpoints import TLSConfig
from ._exceptions import (
    AioelectError,
    ConfigError,
    EtcdUnavailable,
    LeadershipLost,
    NotLeader,
)
from ._models import LeaderInfo
from ._term import Term, hard_deadline, on_renewed

__all__ = ("main",)

EXIT_LOST = 75
EXIT_UNAVAILABLE = 69
EXIT_USAGE = 2

#: The watchdog kills CMD's group at least this long before the earliest instant etcd
#: may expire the lease (the last keepalive's send time + TTL).
KILL_MARGIN = 0.1

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"AIOELECT_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options, then a subcommand)."""
    p = argparse.ArgumentParser(
        prog="aioelect",
        description="Leader election on etcd: run a command on exactly one host, "
        "or look at who leads.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--endpoints",
        default=_env("ENDPOINTS", "127.0.0.1:2379"),
        help="etcd endpoints, comma-separated (env AIOELECT_ENDPOINTS; default %(default)s)",
    )
    p.add_argument(
        "--prefix",
        default=_env("PREFIX", "/aioelect"),
        help="key prefix of the elections (env AIOELECT_PREFIX; default %(default)s)",
    )
    p.add_argument(
        "--ttl",
        type=int,
        default=int(_env("TTL", "10") or 10),
        help="session lease TTL in seconds (env AIOELECT_TTL; default %(default)s)",
    )
    p.add_argument("--cacert", default=_env("CACERT"), help="CA file for TLS (env AIOELECT_CACERT)")
    p.add_argument("--cert", default=_env("CERT"), help="client certificate (env AIOELECT_CERT)")
    p.add_argument("--key", default=_env("KEY"), help="client key (env AIOELECT_KEY)")
    p.add_argument("--user", default=_env("USER_NAME"), help="etcd user (env AIOELECT_USER_NAME)")
    p.add_argument(
        "--password", default=_env("PASSWORD"), help="etcd password (env AIOELECT_PASSWORD)"
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "WARNING"),
        help="log level of the 'aioelect' logger (env AIOELECT_LOG_LEVEL; default %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run CMD only while leading NAME")
    run.add_argument("name")
    run.add_argument("value")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="if another candidate leads or waits first, exit 0 at once without running CMD",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when CMD must stop (default %(default)s); "
        "capped by the lease: SIGKILL comes by the term's hard deadline (the last keepalive's "
        "send time + TTL - 0.1 s) if that is earlier, so CMD never runs beside the next "
        "leader's. CMD runs under a watchdog process that also SIGKILLs its process group at "
        "that deadline if this wrapper freezes or dies",
    )
    run.add_argument("cmd", nargs="*", metavar="-- CMD [ARG...]", help="the command to run")

    obs = sub.add_parser("observe", help="print every change of NAME's leader until stopped")
    obs.add_argument("name")
    obs.add_argument("--json", action="store_true", help="one JSON object per line")

    lead = sub.add_parser("leader", help="print the leader's value (exit 1 when vacant)")
    lead.add_argument("name")

    cands = sub.add_parser("candidates", help="list the candidates, leader first")
    cands.add_argument("name")
    cands.add_argument("--json", action="store_true", help="one JSON object per line")

    shards = sub.add_parser(
        "shards", help="list the members of shard group GROUP and who owns what"
    )
    shards.add_argument("group")
    shards.add_argument("--json", action="store_true", help="one JSON object per shard")

    demo = sub.add_parser("demo", help="three candidates on an embedded etcd, with failovers")
    demo.add_argument("--plain", action="store_true", help="plain lines, no live view")
    return p


def _elector(args: argparse.Namespace) -> Elector:
    tls: TLSConfig | None = None
    if args.cacert or args.cert or args.key:
        tls = TLSConfig(ca_file=args.cacert, cert_file=args.cert, key_file=args.key)
    return Elector(
        endpoints=args.endpoints,
        prefix=args.prefix,
        ttl=args.ttl,
        tls=tls,
        username=args.user,
        password=args.password,
    )


def _info_dict(info: LeaderInfo | Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "value": info.value.decode(errors="replace"),
        "token": info.token,
        "key": info.key.decode(errors="replace"),
        "lease": f"{info.lease_id:x}",
    }


async def _cmd_leader(args: argparse.Namespace) -> int:
    async with _elector(args) as elector:
        info = await elector.leader(args.name)
    if info is None:
        print(f"election {args.name!r} has no leader", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(info.value + b"\n")
    return 0


async def _cmd_candidates(args: argparse.Namespace) -> int:
    async with _elector(args) as elector:
        for c in await elector.candidates(args.name):
            if args.json:
                print(json.dumps({**_info_dict(c), "priority": c.priority, "healthy": c.healthy}))
            else:
                health = "" if c.healthy is None else f"\thealthy={'yes' if c.healthy else 'no'}"
                print(
                    f"{c.value.decode(errors='replace')}\ttoken={c.token}\t{c.key.decode()}"
                    f"\tpriority={c.priority}{health}"
                )
    return 0


async def _cmd_shards(args: argparse.Namespace) -> int:
    from ._core import core_of
    from ._shardinfo import read_shards

    async with _elector(args) as elector:
        members, owners = await read_shards(core_of(elector), args.group)
    if args.json:
        for o in owners:
            print(
                json.dumps(
                    {
                        "shard": o.index,
                        "member": o.member,
                        "token": o.token,
                        "value": o.value.decode(errors="replace"),
                        "queued": o.queued,
                    }
                )
            )
        return 0
    for member in sorted(members):
        mine = [o.index for o in owners if o.member == member]
        print(
            f"{member}\t{members[member].decode(errors='replace')}\t{len(mine)} shards\t"
            f"{','.join(map(str, mine))}"
        )
    orphans = [o.index for o in owners if o.member is None]
    if orphans:
        print(f"(no live member)\t\t{len(orphans)} shards\t{','.join(map(str, orphans))}")
    return 0


async def _stop_on_signal(scope: anyio.CancelScope, got: list[int]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            got.append(int(signum))
            scope.cancel()
            return


async def _cmd_observe(args: argparse.Namespace) -> int:
    got: list[int] = []
    async with _elector(args) as elector, anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope, got)
        async with elector.observe(args.name) as leaders:
            async for info in leaders:
                if args.json:
                    print(json.dumps(_info_dict(info) if info else None), flush=True)
                elif info is None:
                    print("vacant", flush=True)
                else:
                    value = info.value.decode(errors="replace")
                    print(f"leader {value} token={info.token}", flush=True)
        tg.cancel_scope.cancel()
    return 0


class _Child:
    """CMD under its watchdog (``aioelect/_watchdog.py``), as the wrapper sees it.

    The watchdog is the process the wrapper starts; it starts CMD, signals
    CMD's group when told to (``S``), SIGKILLs it when the fed hard deadline
    passes or the feed ends, and exits once CMD's group is empty. Its status
    lines arrive on its stdout.
    """

    def __init__(self, proc: anyio.abc.Process, feed: int, deadline: float) -> None:
        self.proc = proc
        self._feed: int | None = feed
        self._status = BufferedByteReceiveStream(proc.stdout) if proc.stdout else None
        self.deadline = deadline
        self.pid: int | None = None
        self.code: int | None = None
        self.error: str | None = None
        self.not_started = False
        self.gone = False  # the watchdog's stdout ended: it exited, CMD's group is empty

    def _send(self, line: str) -> None:
        if self._feed is None:
            return
        try:
            os.write(self._feed, line.encode())
        except BlockingIOError:  # pragma: no cover - 64 KiB of unread feed: it is stopped
            pass
        except OSError:  # the watchdog is gone
            self.kill()

    def feed(self, deadline: float) -> None:
        """Move the instant at which the watchdog kills CMD's group."""
        self.deadline = deadline
        self._send(f"D {deadline!r}\n")

    def signal(self, signum: int) -> None:
        """Have the watchdog send ``signum`` to CMD's process group."""
        self._send(f"S {int(signum)}\n")

    def kill(self) -> None:
        """End the feed: the watchdog SIGKILLs CMD's group at once."""
        if self._feed is not None:
            feed, self._feed = self._feed, None
            os.close(feed)

    async def _next(self) -> None:
        """Read one status line (or the end of them)."""
        if self.gone or self._status is None:
            self.gone = True
            return
        try:
            line = await self._status.receive_until(b"\n", 4096)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            self.gone = True
            return
        kind, _, arg = line.decode(errors="replace").partition(" ")
        if kind == "P":
            self.pid = int(arg)
        elif kind == "X":
            self.code = int(arg)
        elif kind == "E":
            self.error = arg.partition(" ")[2] or arg
        elif kind == "L":
            self.not_started = True

    async def wait_started(self) -> None:
        while self.pid is None and self.error is None and not self.not_started and not self.gone:
            await self._next()

    async def wait_exited(self) -> None:
        while self.code is None and not self.gone:
            await self._next()

    async def wait_gone(self) -> None:
        while not self.gone:
            await self._next()

    async def stop(self, grace: float) -> None:
        """SIGTERM to CMD's group; SIGKILL after ``grace`` s (the watchdog kills at the
        fed hard deadline if that comes first); return once the group is empty."""
        if not self.gone:
            self.signal(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self.wait_gone()
            self.kill()
            await self.wait_gone()
        self.kill()
        await self.proc.wait()
        if self.code is None and self.pid is not None:
            # The watchdog itself died (killed from outside): finish its job.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


class _RunState:
    """What the signal handler of ``run`` needs: the child, or the scope of the wait."""

    def __init__(self) -> None:
        self.proc: _Child | None = None
        self.scope = anyio.CancelScope()
        self.signals: list[int] = []


async def _handle_signals(state: _RunState) -> None:
    """Before CMD runs, a signal gives up the campaign; while it runs, it goes to CMD."""
    with anyio.open_signal_receiver(*_FORWARDED) as signals:
        async for signum in signals:
            state.signals.append(int(signum))
            if state.proc is None:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    state.scope.cancel()
            else:
                state.proc.signal(signum)


async def _cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if not cmd:
        raise ConfigError("cmd", "give the command to run after '--'")
    name = check_name(args.name)
    log = logging.getLogger("aioelect")
    state = _RunState()
    code = EXIT_LOST
    async with _elector(args) as elector, anyio.create_task_group() as tg:
        tg.start_soon(_handle_signals, state)
        with state.scope:
            try:
                async with elector.hold(name, args.value, wait=not args.no_wait) as term:
                    log.info("leading %r (token %d): starting %s", name, term.token, cmd)
                    code = await _supervise(cmd, args.grace, term, state)
            except NotLeader as exc:
                print(f"aioelect: not run: {exc}", file=sys.stderr)
                code = 0
            except LeadershipLost as exc:
                print(f"aioelect: {exc}; command stopped", file=sys.stderr)
                code = EXIT_LOST
        tg.cancel_scope.cancel()
    if state.scope.cancelled_caught and state.proc is None:
        return 128 + (state.signals[0] if state.signals else int(signal.SIGTERM))
    return code


async def _supervise(cmd: list[str], grace: float, term: Term, state: _RunState) -> int:
    """Run CMD under its watchdog while ``term`` leads; return CMD's exit code."""
    env = dict(os.environ, AIOELECT_TOKEN=str(term.token))
    feed_r, feed_w = os.pipe()
    try:
        out = os.dup(1)
    except OSError:  # no stdout: CMD gets /dev/null
        out = -1
    deadline = hard_deadline(term) - KILL_MARGIN
    watchdog = [
        sys.executable, "-I", "-S", _watchdog.__file__, str(feed_r), str(out), repr(deadline),
        "--", *cmd,
    ]  # fmt: skip
    try:
        proc = await anyio.open_process(
            watchdog,
            stdin=None,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            start_new_session=True,
            pass_fds=(feed_r,) if out < 0 else (feed_r, out),
        )
    except BaseException:
        os.close(feed_w)
        raise
    finally:
        os.close(feed_r)
        if out >= 0:
            os.close(out)
    os.set_blocking(feed_w, False)
    child = _Child(proc, feed_w, deadline)
    state.proc = child

    def renewed(hard_deadline: float) -> None:
        if term.is_valid:  # once the term ends, the last deadline fed stands
            child.feed(hard_deadline - KILL_MARGIN)

    unsubscribe = on_renewed(term, renewed)
    try:
        await child.wait_started()
        if child.error is not None:
            print(f"aioelect: cannot start {cmd[0]!r}: {child.error}", file=sys.stderr)
            return 127
        if child.pid is None:
            return EXIT_LOST  # the term was over before CMD could start
        await child.wait_exited()
    finally:
        # Fed while the term lasts (what CMD left in its group gets --grace then),
        # no longer once it ended: the last deadline fed stands.
        with anyio.CancelScope(shield=True):
            try:
                await child.stop(grace)
            finally:
                unsubscribe()
                await proc.aclose()
    return child.code if child.code is not None else 128 + int(signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is CMD, verbatim (its own options included).
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1 :]
    args = parser.parse_args(argv)
    if args.command == "run":
        args.cmd = [*args.cmd, *cmd]
    elif cmd:
        parser.error(f"'{args.command}' takes no command after '--'")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    commands = {
        "run": _cmd_run,
        "observe": _cmd_observe,
        "leader": _cmd_leader,
        "candidates": _cmd_candidates,
        "shards": _cmd_shards,
    }
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return anyio.run(run_demo, args.plain)
        return anyio.run(commands[args.command], args)
    except ConfigError as exc:
        print(f"aioelect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EtcdUnavailable as exc:
        print(f"aioelect: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except AioelectError as exc:
        print(f"aioelect: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
