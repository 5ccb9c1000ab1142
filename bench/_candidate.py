"""Candidates for the benchmarks (never a test): in-process, or a process of its own.

As a process (``python bench/_candidate.py MODE ...``):

- ``signal``: campaign once; print ``elected <monotonic ns>`` when the hold body
  starts; on SIGINT/SIGTERM leave the block (resign), print ``exit <ns>`` (stamped
  when the signal arrived, before the resign) and exit. SIGKILL it for a crash.
- ``control``: obey lines on stdin: ``join`` campaigns (and prints ``elected <ns>``
  once leading), ``release`` leaves the hold block (prints ``exit <ns>``, stamped
  just before leaving), ``quit`` exits. One election, one hold at a time.

Timestamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for every
process of the machine), so the bench can subtract them across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

import aioelect

Emit = Callable[[str, int], None]


class Candidate:
    """One candidate of one election that joins and releases on command.

    ``commands`` yields ``"join"``, ``"release"`` or ``"quit"``; ``emit(kind, ns)``
    reports ``elected`` (the hold body started) and ``exit`` (stamped just
    before the body returns, i.e. before the resign is sent).
    """

    def __init__(self, elector: aioelect.Elector, name: str, value: str, emit: Emit) -> None:
        self.elector = elector
        self.name = name
        self.value = value
        self.emit = emit

    async def run(self, commands: Callable[[], Awaitable[str]]) -> None:
        while True:
            cmd = await commands()
            if cmd == "quit":
                return
            if cmd != "join":
                raise RuntimeError(f"unexpected command {cmd!r} while not campaigning")
            exit_ns = 0
            async with self.elector.hold(self.name, self.value):
                self.emit("elected", time.monotonic_ns())
                cmd = await commands()
                exit_ns = time.monotonic_ns()
            self.emit("exit", exit_ns)
            if cmd == "quit":
                return


class LocalCandidate:
    """A :class:`Candidate` in this process, driven through a memory stream."""

    def __init__(self, elector: aioelect.Elector, name: str, value: str) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[str](16)
        self.events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.candidate = Candidate(elector, name, value, self._emit)

    def _emit(self, kind: str, ns: int) -> None:
        self.events.put_nowait((kind, ns))

    async def _next(self) -> str:
        return await self._recv.receive()

    async def run(self) -> None:
        await self.candidate.run(self._next)

    def command(self, cmd: str) -> None:
        self._send.send_nowait(cmd)

    async def wait(self, kind: str) -> int:
        got, ns = await self.events.get()
        if got != kind:
            raise RuntimeError(f"expected {kind!r}, got {got!r}")
        return ns


def _emit_stdout(kind: str, ns: int) -> None:
    sys.stdout.write(f"{kind} {ns}\n")
    sys.stdout.flush()


async def _signal_mode(args: argparse.Namespace) -> None:
    async with aioelect.Elector(
        endpoints=args.endpoints, prefix=args.prefix, ttl=args.ttl
    ) as elector:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            exit_ns = 0
            async with elector.hold(args.name, args.value):
                _emit_stdout("elected", time.monotonic_ns())
                async for _ in signals:
                    break
                exit_ns = time.monotonic_ns()  # the signal arrived: leave the block (resign)
            _emit_stdout("exit", exit_ns)


async def _control_mode(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> str:
        line = await reader.readline()
        return line.decode().strip() or "quit"

    async with aioelect.Elector(
        endpoints=args.endpoints, prefix=args.prefix, ttl=args.ttl
    ) as elector:
        _emit_stdout("ready", time.monotonic_ns())
        await Candidate(elector, args.name, args.value, _emit_stdout).run(commands)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["signal", "control"])
    p.add_argument("--endpoints", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--ttl", type=int, default=10)
    args = p.parse_args()
    anyio.run(_signal_mode if args.mode == "signal" else _control_mode, args)


if __name__ == "__main__":
    main()
