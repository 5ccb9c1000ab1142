"""Shared machinery of the chaos suite.

- :class:`Member`: one elector's candidacies (``Leadership`` per election) whose
  leaders make fenced writes in a loop and report every step as an event dict.
  Used in-process by the tests and, one per OS process, by ``candidate.py``.
- :class:`CandidateProc`: one ``candidate.py`` child process, its JSON-lines
  stdout parsed into events by a reader thread, with pause/resume/kill.
- :class:`History`: every change under ``{prefix}/`` and ``{prefix}-fence/``, read
  from one etcd watch in revision order (the evidence).
- :func:`analyse`: replays that history: who led each election at each revision,
  and whether every fenced write landed while its own term led.
- :func:`check_intervals`: the in-process side: the leading periods that the
  candidates reported (on the one system-wide monotonic clock) never overlap.

Only stdlib, anyio and aioelect here: ``candidate.py`` imports this module too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from helpers import eventually

import aioelect
from aioelect._connection import KV, Connection, WatchBatch, WatchStream
from aioelect._exceptions import EtcdError
from aioelect._keys import prefix_range_end, split_key
from aioelect._term import add_on_end, session_of
from aioelect._term import ended as ended_reason

HERE = Path(__file__).resolve().parent
CANDIDATE = HERE / "candidate.py"

Event = dict[str, Any]
Emit = Callable[[Event], None]


def fence_root(prefix: str) -> str:
    """Where fenced writes of the elections under ``prefix`` go: ``{prefix}-fence/``."""
    return f"{prefix}-fence/"


def fence_key(prefix: str, election: str) -> bytes:
    """A fresh key for one fenced write: ``{prefix}-fence/{election}/{uuid}``."""
    return f"{fence_root(prefix)}{election}/{uuid.uuid4().hex}".encode()


# -- one elector's candidacies --------------------------------------------------------


@dataclass
class TermRecord:
    """What a member knows about one of its terms."""

    election: str
    token: int
    started: float
    ended: float | None = None  # when the term ended (capped at its valid_until)
    down: float | None = None  # when on_stepped_down was entered
    resign: float | None = None  # when this member asked the term to resign
    writes: int = 0


class Member:
    """Candidacies of one elector, each leader writing fenced keys in a loop.

    Every step is reported through ``emit`` as a dict with an ``event`` field:
    ``elected`` (t = the term's start), ``write`` (one fenced write acknowledged),
    ``fence_rejected`` (a fenced write refused with NotLeader), ``body_cancelled``,
    ``ended`` (t = when the term stopped being valid), ``stepped_down`` (on entry
    of on_stepped_down), ``probe`` (after an involuntary end: whether a fenced
    transaction and a raw guarded write were refused), ``run_failed`` /
    ``run_returned``.
    """

    def __init__(
        self,
        elector: aioelect.Elector,
        *,
        ident: str,
        emit: Emit,
        interval: float = 0.1,
        probe: bool = True,
        handover_barrier: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.elector = elector
        self.options = options or {}  # more keyword arguments of Elector.leadership()
        self.ident = ident
        self._emit = emit
        self.interval = interval
        self.probe = probe
        self.handover_barrier = handover_barrier
        self.leaderships: dict[str, aioelect.Leadership] = {}
        self.running: dict[str, bool] = {}
        self.failures: list[str] = []
        self.terms: dict[tuple[str, int], TermRecord] = {}
        self.current: dict[str, aioelect.Term] = {}
        self._stops: dict[str, anyio.Event] = {}
        self._done: dict[str, anyio.Event] = {}
        self.closing = False

    def emit(self, event: str, **fields: Any) -> None:
        self._emit({"event": event, "id": self.ident, "pid": os.getpid(), **fields})

    # -- control ---------------------------------------------------------------------

    def start(self, tg: anyio.abc.TaskGroup, name: str) -> None:
        """Create a Leadership in election ``name`` and run it in ``tg``."""
        if self.running.get(name):
            raise RuntimeError(f"{name} already runs")
        leadership = self.elector.leadership(
            name,
            f"{self.ident}",
            node_name=self.ident,
            on_elected=self._on_elected,
            on_stepped_down=self._on_stepped_down,
            handover_barrier=self.handover_barrier,
            **self.options,
        )
        self.leaderships[name] = leadership
        self._stops[name] = anyio.Event()
        self._done[name] = anyio.Event()
        self.running[name] = True
        tg.start_soon(self._run, name, leadership)

    async def _run(self, name: str, leadership: aioelect.Leadership) -> None:
        try:
            await leadership.run()
        except Exception as exc:
            self.failures.append(f"{name}: {exc!r}")
            self.emit("run_failed", election=name, error=repr(exc), tb=traceback.format_exc())
        except BaseException as exc:
            if not self.closing:
                # A cancellation nobody asked for: a task must never die silently.
                self.failures.append(f"{name}: unexpected {exc!r}")
                self.emit(
                    "run_failed",
                    election=name,
                    error=f"unexpected {exc!r}",
                    tb=traceback.format_exc(),
                )
            raise
        else:
            self.emit("run_returned", election=name, asked=self._stops[name].is_set())
        finally:
            self.running[name] = False
            self._done[name].set()

    async def stop(self, name: str) -> None:
        """Stop the Leadership of ``name`` gracefully and wait until run() returned."""
        stop = self._stops.get(name)
        if stop is None or not self.running.get(name):
            return
        term = self.current.get(name)
        if term is not None:
            self._resign_asked(term)
        stop.set()
        self.leaderships[name].stop()
        await self._done[name].wait()

    async def stop_all(self) -> None:
        """Stop every Leadership, concurrently."""
        async with anyio.create_task_group() as tg:
            for name in list(self.leaderships):
                tg.start_soon(self.stop, name)

    async def resign(self, name: str) -> bool:
        """Resign the current term of ``name`` (``Term.resign()``); False when not leading."""
        term = self.current.get(name)
        if term is None or not term.is_valid:
            return False
        self._resign_asked(term)
        await term.resign()
        return True

    def _resign_asked(self, term: aioelect.Term) -> None:
        rec = self.terms.get((term.name, term.token))
        if rec is not None and rec.resign is None:
            rec.resign = time.monotonic()
            self.emit("resign_asked", election=term.name, token=term.token, t=rec.resign)

    # -- callbacks ---------------------------------------------------------------------

    def _ended_hook(self, rec: TermRecord) -> Callable[[aioelect.Term, str], None]:
        def ended(term: aioelect.Term, reason: str) -> None:
            # Called synchronously by the term when it ends; a term past its renew
            # deadline stopped being valid at that deadline, not when we noticed.
            now = time.monotonic()
            rec.ended = min(now, session_of(term).valid_until)
            self.emit(
                "ended",
                election=rec.election,
                token=rec.token,
                t=rec.ended,
                noticed=now,
                reason=reason,
            )

        return ended

    async def _on_elected(self, term: aioelect.Term) -> bool | None:
        name, token = term.name, term.token
        rec = TermRecord(name, token, term.started_at)
        self.terms[(name, token)] = rec
        self.current[name] = term
        hook = self._ended_hook(rec)
        add_on_end(term, hook)
        self.emit(
            "elected",
            election=name,
            token=token,
            lease=term.lease_id,
            t=term.started_at,
            t_cb=time.monotonic(),
        )
        reason = ended_reason(term)
        if reason is not None:  # it ended before we could hook it: report it now
            hook(term, reason)
        client = self.elector.client
        stop = self._stops[name]
        value = json.dumps({"token": token, "id": self.ident}).encode()
        try:
            while not stop.is_set():
                key = fence_key(self.elector.prefix, name)
                try:
                    await term.transaction(success=[client.transactions.put(key, value)])
                except aioelect.NotLeader as exc:
                    self.emit(
                        "fence_rejected",
                        election=name,
                        token=token,
                        is_valid=term.is_valid,
                        error=str(exc),
                        t=time.monotonic(),
                    )
                    return None
                except aioelect.EtcdError as exc:
                    # The write may or may not have landed: etcd's history tells.
                    self.emit("write_unknown", election=name, token=token, error=str(exc))
                else:
                    rec.writes += 1
                    self.emit(
                        "write", election=name, token=token, key=key.decode(), t=time.monotonic()
                    )
                with anyio.move_on_after(self.interval):
                    await stop.wait()
            return None
        except anyio.get_cancelled_exc_class():
            self.emit(
                "body_cancelled",
                election=name,
                token=token,
                is_valid=term.is_valid,
                t=time.monotonic(),
            )
            raise

    async def _on_stepped_down(self, term: aioelect.Term) -> None:
        name, token = term.name, term.token
        now = time.monotonic()
        rec = self.terms.get((name, token))
        if rec is not None:
            rec.down = now
        if self.current.get(name) is term:
            del self.current[name]
        info: Event = {
            "election": name,
            "token": token,
            "t": now,
            "is_valid": term.is_valid,
            "reason": term.end_reason,
            "writes": rec.writes if rec else None,
        }
        # Reported on entry: a pause or a slow etcd may cut the probe below short (the
        # Leadership bounds on_stepped_down by the TTL).
        self.emit("stepped_down", **info)
        if self.probe and not term.is_valid:
            # After an involuntary end: the term refuses to write, and etcd would
            # refuse the same guarded write even if the term did not check itself.
            client = self.elector.client
            key = fence_key(self.elector.prefix, name)
            value = json.dumps({"token": token, "id": self.ident, "probe": True}).encode()
            try:
                await term.transaction(success=[client.transactions.put(key, value)])
                info["post_txn"] = "accepted"
            except aioelect.NotLeader:
                info["post_txn"] = "NotLeader"
            except Exception as exc:
                info["post_txn"] = repr(exc)
            try:
                ok, _ = await client.transaction(
                    compare=[client.transactions.create(term.key) == token],
                    success=[client.transactions.put(key, value)],
                    failure=[],
                )
                info["etcd_refused"] = not ok
            except Exception as exc:  # etcd unreachable: the history tells
                info["etcd_refused"] = None
                info["probe_error"] = repr(exc)
            self.emit("probe", **info)

    def stats(self) -> Event:
        """The elector's statistics and the state of every run() task."""
        return {
            "stats": dataclasses.asdict(self.elector.statistics()),
            "running": dict(self.running),
            "failures": list(self.failures),
        }


class EventLog:
    """Events of in-process members, in one list, with bounded waits."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def find(self, event: str, **match: Any) -> list[Event]:
        return [e for e in self.events if e["event"] == event and _matches(e, match)]

    async def wait(
        self, event: str, timeout: float = 15.0, what: str | None = None, **match: Any
    ) -> Event:
        """The first event of kind ``event`` matching ``match`` (waiting up to ``timeout``)."""
        found = await eventually(
            lambda: self.find(event, **match), timeout, what or f"an event {event} {match}"
        )
        return found[0]


def _matches(event: Event, match: dict[str, Any]) -> bool:
    for k, v in match.items():
        if callable(v):
            if k not in event or not v(event[k]):
                return False
        elif event.get(k) != v:
            return False
    return True


# -- candidate processes ----------------------------------------------------------------


class CandidateProc:
    """One ``candidate.py`` process; its stdout events are collected by a thread."""

    def __init__(
        self,
        *,
        ident: str,
        endpoints: Iterable[str],
        prefix: str,
        elections: Iterable[str],
        ttl: int,
        log_dir: Path,
        interval: float = 0.1,
        extra: Iterable[str] = (),
        wrapper: Iterable[str] = (),
    ) -> None:
        self.ident = ident
        self.stderr_path = log_dir / f"{ident}-{uuid.uuid4().hex[:6]}.stderr"
        cmd = [
            *wrapper,  # e.g. ``ip netns exec NS`` (it execs: the pid stays the candidate's)
            sys.executable,
            str(CANDIDATE),
            "--id", ident,
            "--endpoints", ",".join(endpoints),
            "--prefix", prefix,
            "--elections", ",".join(elections),
            "--ttl", str(ttl),
            "--interval", str(interval),
            *extra,
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=HERE
            )
        self.events: list[Event] = []
        self.killed_at: float | None = None
        self.paused_at: float | None = None
        self.pauses: list[tuple[float, float]] = []  # (SIGSTOP, SIGCONT) instants
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"stdout {ident}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.decode(errors="replace")}
            with self._lock:
                self.events.append(event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def find(self, event: str, **match: Any) -> list[Event]:
        return [e for e in self.snapshot() if e["event"] == event and _matches(e, match)]

    def stderr_tail(self, n: int = 30) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no stderr)"
        return "\n".join(lines[-n:])

    async def wait(self, event: str, timeout: float = 15.0, **match: Any) -> Event:
        """The first event of kind ``event`` matching ``match``, within ``timeout``."""

        def found() -> list[Event]:
            events = self.find(event, **match)
            if not events and not self.alive and self.killed_at is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._reader.join(1)  # what it wrote before exiting
                events = self.find(event, **match)
                if not events:
                    raise AssertionError(
                        f"{self.ident} exited ({self.proc.returncode}) before {event} {match}:\n"
                        f"{self.stderr_tail()}"
                    )
            return events

        events = await eventually(
            found,
            timeout,
            lambda: f"{self.ident}: {event} {match}; stderr:\n{self.stderr_tail()}",
        )
        return events[0]

    def send(self, command: str) -> None:
        """Write one command line to the process's stdin."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()

    def pause(self) -> None:
        """SIGSTOP: a GC pause that lasts until :meth:`resume`."""
        self.paused_at = time.monotonic()
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        if self.paused_at is not None:
            self.pauses.append((self.paused_at, time.monotonic()))
        self.paused_at = None

    def last_alive(self) -> float | None:
        """When a killed process last ran (None if it was not killed).

        The kill instant, unless the kill came right after a pause from which
        the process was never seen waking up (its watchdog reports ``woke``
        within 50 ms of running again): it then last ran when it was paused.
        """
        if self.killed_at is None:
            return None
        woke = [float(e["t"]) for e in self.find("woke")]
        return last_alive(self.killed_at, self.paused_at, self.pauses, woke)

    def kill(self) -> float:
        """SIGKILL the process, reap it, and return when it was killed (monotonic)."""
        if self.alive:
            self.killed_at = time.monotonic()
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        return self.killed_at or time.monotonic()

    def exit(self, timeout: float = 20.0) -> int:
        """Ask the process to exit gracefully (stdin EOF); kill it after ``timeout``."""
        if self.alive:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGCONT)
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Kill the process if it still runs and close its pipes."""
        if self.alive:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def last_alive(
    killed_at: float,
    paused_at: float | None,
    pauses: list[tuple[float, float]],
    woke: list[float],
) -> float:
    """When a process killed at ``killed_at`` last ran (see :meth:`CandidateProc.last_alive`):
    ``paused_at`` if it was killed while paused, the start of its last pause if it was
    killed within 50 ms of that pause's end without reporting ``woke`` after it, else
    ``killed_at``."""
    if paused_at is not None:
        return paused_at
    if pauses:
        paused, resumed = pauses[-1]
        if not any(t >= resumed for t in woke) and 0 <= killed_at - resumed < 0.05:
            return paused
    return killed_at


class Procs:
    """Spawns candidate processes and kills every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: list[CandidateProc] = []

    def spawn(self, **kwargs: Any) -> CandidateProc:
        proc = CandidateProc(log_dir=self.log_dir, **kwargs)
        self.all.append(proc)
        return proc

    def events(self) -> list[Event]:
        """Every event of every process (each tagged with its process object's index)."""
        out: list[Event] = []
        for i, p in enumerate(self.all):
            for e in p.snapshot():
                out.append({**e, "_proc": i})
        return out

    def cleanup(self) -> None:
        for p in self.all:
            with contextlib.suppress(Exception):
                p.cleanup()
        # Kept for post-mortems (pytest keeps the last few tmp_path folders).
        with contextlib.suppress(OSError), open(self.log_dir / "events.jsonl", "w") as f:
            for e in self.events():
                f.write(json.dumps(e) + "\n")


# -- etcd's side of the story -------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One watch event."""

    revision: int
    is_put: bool
    kv: KV


class History:
    """Every change under ``{prefix}/`` and ``{prefix}-fence/`` from one watch, in order.

    Start it before the candidates (``async with History(conn, prefix)``): it reads
    the current state, then follows a watch from the next revision, re-opening
    it after errors (never across a compaction: the history would have a hole).
    Leaving the block writes a sentinel key and waits until the watch has
    delivered everything up to it.
    """

    def __init__(self, conn: Connection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        # [prefix + "-", prefix + "0") covers {prefix}-fence/..., {prefix}-~end and {prefix}/...
        self.low = (prefix + "-").encode()
        self.high = (prefix + "0").encode()
        self.initial: list[KV] = []
        self.start_revision = 0
        self.changes: list[Change] = []
        self.revision = 0
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> History:
        root = (self.prefix + "/").encode()
        result = await self.conn.range(root, prefix_range_end(root))
        self.initial = result.kvs
        self.start_revision = self.revision = result.revision
        # Return only once etcd has created the watch: from then on, a compaction
        # cannot take the revisions it still has to deliver.
        stream = self._open()
        try:
            with anyio.fail_after(15):
                while not (await self._read(stream)).created:
                    pass
        except BaseException:
            stream.close()
            raise
        self._task = asyncio.get_running_loop().create_task(self._follow(stream))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                await self.finish()
        finally:
            await self._stop()

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def finish(self, timeout: float = 30.0) -> None:
        """Write a sentinel and wait until the watch delivered it."""
        sentinel = (self.prefix + "-~end").encode()

        async def put_sentinel() -> int:
            resp = await self.conn.txn([], [self.conn.op_put(sentinel, b"end")])
            return int(resp.header.revision)

        target = await eventually(
            put_sentinel, timeout, "the sentinel written", retry_on=EtcdError, interval=0.1
        )

        def delivered() -> bool:
            if self._error is not None:
                raise AssertionError("the history watch failed") from self._error
            return self.revision >= target

        await eventually(delivered, timeout, f"the history watch at {target}")

    def _open(self) -> WatchStream:
        return self.conn.watch_stream(self.low, self.high, self.revision + 1)

    async def _read(self, stream: WatchStream) -> WatchBatch:
        """The next response of ``stream``, its events recorded."""
        batch = await stream.read()
        if batch.compact_revision or batch.canceled:
            raise AssertionError(
                f"history watch at {self.revision + 1} was compacted "
                f"({batch.compact_revision}) or cancelled: evidence lost"
            )
        for is_put, kv in batch.events:
            self.changes.append(Change(kv.mod_revision, is_put, kv))
            self.revision = max(self.revision, kv.mod_revision)
        return batch

    async def _follow(self, stream: WatchStream) -> None:
        """Read ``stream`` (created by __aenter__), then a new one after each error."""
        try:
            while True:
                try:
                    while True:
                        await self._read(stream)
                except EtcdError:
                    self.reconnects += 1
                    await anyio.sleep(0.1)
                finally:
                    stream.close()
                stream = self._open()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            raise


@dataclass
class TermSpan:
    """One term as etcd saw it: its leader key led from begin to end (revisions)."""

    election: str
    token: int
    key: bytes
    lease: int
    begin: int
    end: int | None = None
    writes: list[int] = field(default_factory=list)
    writers: set[str] = field(default_factory=set)


@dataclass
class Analysis:
    """What the history shows."""

    terms: dict[str, list[TermSpan]]
    writes: int
    write_keys: dict[bytes, int]  # fence key -> token, for every fenced write that landed
    violations: list[str]
    # For each pair of consecutive terms: next term's begin - last write of the older one.
    margins: list[int]

    def tokens(self, election: str) -> list[int]:
        return [t.token for t in self.terms.get(election, [])]

    def summary(self) -> str:
        n_terms = sum(len(v) for v in self.terms.values())
        return (
            f"{len(self.terms)} elections, {n_terms} terms, {self.writes} fenced writes, "
            f"min margin {min(self.margins) if self.margins else None} revisions"
        )


def analyse(history: History) -> Analysis:
    """Replay the history: who led when, and whether each fenced write landed in its term.

    The leader of an election at a revision is its live candidate key with the
    lowest create revision. A fenced write is a put under ``{prefix}-fence/``
    whose value names the writer's token; it must land while the term with that
    token leads. Consequently, for consecutive terms, every write of the older
    one has a lower revision than the one at which the newer term began.
    """
    root = (history.prefix + "/").encode()
    froot = fence_root(history.prefix).encode()
    live: dict[str, dict[bytes, KV]] = {}
    for kv in history.initial:
        name = split_key(root, kv.key)
        if name is not None:
            live.setdefault(name, {})[kv.key] = kv
    current: dict[str, TermSpan | None] = {}
    terms: dict[str, list[TermSpan]] = {}
    violations: list[str] = []
    write_keys: dict[bytes, int] = {}
    writes = 0

    def leader_of(name: str) -> KV | None:
        kvs = live.get(name)
        return min(kvs.values(), key=lambda kv: kv.create_revision) if kvs else None

    def update(name: str, revision: int) -> None:
        head = leader_of(name)
        cur = current.get(name)
        token = head.create_revision if head is not None else None
        if cur is not None and cur.token == token:
            return
        if cur is not None:
            cur.end = revision
        if head is None:
            current[name] = None
            return
        if cur is not None and head.create_revision < cur.token:
            violations.append(f"{name}: token went down from {cur.token} to {token} at {revision}")
        span = TermSpan(name, head.create_revision, head.key, head.lease, revision)
        current[name] = span
        terms.setdefault(name, []).append(span)

    for name in list(live):
        update(name, history.start_revision)
    for revision, group in itertools.groupby(history.changes, key=lambda c: c.revision):
        touched: set[str] = set()
        fenced: list[Change] = []
        for change in group:
            kv = change.kv
            name = split_key(root, kv.key)
            if name is not None:
                kvs = live.setdefault(name, {})
                if change.is_put:
                    kvs[kv.key] = kv
                else:
                    kvs.pop(kv.key, None)
                touched.add(name)
            elif kv.key.startswith(froot) and change.is_put:
                fenced.append(change)
        for name in sorted(touched):
            update(name, revision)
        for change in fenced:
            election = change.kv.key[len(froot) :].split(b"/", 1)[0].decode()
            try:
                claim = json.loads(change.kv.value)
                token = int(claim["token"])
            except (ValueError, KeyError, TypeError):
                violations.append(f"unreadable fenced write {change.kv.key!r}")
                continue
            writes += 1
            write_keys[change.kv.key] = token
            span = current.get(election)
            if span is None or span.token != token:
                violations.append(
                    f"{election}: a write of term {token} landed at revision {revision} while "
                    f"{'no term' if span is None else f'term {span.token}'} led"
                )
            else:
                span.writes.append(revision)
                span.writers.add(str(claim.get("id")))
    margins: list[int] = []
    for name, spans in terms.items():
        for older, newer in itertools.pairwise(spans):
            if newer.token <= older.token:
                violations.append(f"{name}: token {newer.token} after {older.token}")
            if older.writes:
                last = max(older.writes)
                margins.append(newer.begin - last)
                if last >= newer.begin:
                    violations.append(
                        f"{name}: term {older.token} wrote at {last}, after term {newer.token} "
                        f"began at {newer.begin}"
                    )
    return Analysis(terms, writes, write_keys, violations, margins)


def check_logs_against_history(events: Iterable[Event], analysis: Analysis) -> list[str]:
    """Every term a candidate believed it won led in etcd, and every write it
    reported as acknowledged landed in etcd with its token."""
    problems: list[str] = []
    tokens = {(name, t.token) for name, spans in analysis.terms.items() for t in spans}
    for e in events:
        if e["event"] == "elected" and (e["election"], e["token"]) not in tokens:
            problems.append(f"{e['id']} believed it won term {e['token']} of {e['election']}")
        if e["event"] == "write" and analysis.write_keys.get(e["key"].encode()) != e["token"]:
            problems.append(f"{e['id']}: acknowledged write {e['key']} is not in etcd's history")
    return problems


@dataclass(frozen=True)
class Period:
    """A leading period as a candidate reported it (monotonic clock, shared by processes)."""

    election: str
    token: int
    who: str
    start: float
    end: float


def leading_periods(
    events: Iterable[Event], kill_times: dict[int, float] | None = None
) -> tuple[list[Period], list[str]]:
    """Leading periods from the events of members (``_proc`` tags a process).

    A period starts when the term started and ends at the first of: the term
    ended (capped at its renew deadline), its holder entered on_stepped_down or
    asked it to resign, its process was killed, or its process woke from a pause
    to find it invalid (then at its renew deadline, which the ``woke`` event
    reports: a SIGCONT and SIGKILL in one round may let a paused process run for
    a millisecond, long enough to report, not to end its terms). Returns the
    periods and the terms without an end (every term of a living process must end).
    """
    starts: dict[tuple[Any, str, int], Event] = {}
    ends: dict[tuple[Any, str, int], float] = {}
    for e in events:
        kind = e["event"]
        if kind == "woke":
            for t in e.get("terms", ()):
                if not t["is_valid"] and "valid_until" in t:
                    k = (e.get("_proc"), t["election"], t["token"])
                    ends[k] = min(ends.get(k, float("inf")), float(t["valid_until"]))
            continue
        if kind not in ("elected", "ended", "stepped_down", "resign_asked"):
            continue
        k = (e.get("_proc"), e["election"], e["token"])
        if kind == "elected":
            starts[k] = e
        else:
            ends[k] = min(ends.get(k, float("inf")), float(e["t"]))
    periods: list[Period] = []
    open_terms: list[str] = []
    for k, e in starts.items():
        end = ends.get(k)
        killed = (kill_times or {}).get(k[0]) if k[0] is not None else None
        if killed is not None:
            end = killed if end is None else min(end, killed)
        if end is None:
            open_terms.append(f"{e['id']}: term {e['token']} of {e['election']} never ended")
            continue
        periods.append(Period(e["election"], e["token"], e["id"], float(e["t"]), end))
    return periods, open_terms


def check_intervals(periods: Iterable[Period]) -> list[str]:
    """At most one leading period per election at any instant."""
    problems: list[str] = []
    by_election: dict[str, list[Period]] = {}
    for p in periods:
        by_election.setdefault(p.election, []).append(p)
    for name, ps in by_election.items():
        ps.sort(key=lambda p: p.start)
        latest: Period | None = None
        for p in ps:
            if latest is not None and p.start < latest.end:
                problems.append(
                    f"{name}: {p.who} term {p.token} started {latest.end - p.start:.3f} s before "
                    f"{latest.who} term {latest.token} ended"
                )
            if latest is None or p.end > latest.end:
                latest = p
    return problems


def explain_overlaps(
    problems: list[str],
    events: list[Event],
    timeline: list[dict[str, Any]],
    history: History | None = None,
    limit: int = 3,
) -> str:
    """The story behind overlapping periods (see :func:`check_intervals`): every event of
    the terms involved, the chaos actions on their processes around that time, and
    etcd's changes of the election's keys, on one time line."""
    out: list[str] = []
    for problem in problems[:limit]:
        m = re.match(r"(\S+): (\S+) term (\d+) started .* before (\S+) term (\d+) ended", problem)
        if m is None:
            continue
        name, who_new, new, who_old, old = m.groups()
        tokens = {int(new), int(old)}
        trail = [e for e in events if e.get("election") == name and e.get("token") in tokens]
        times = [float(e["t"]) for e in trail if "t" in e]
        lo, hi = (min(times) - 3.0, max(times) + 1.0) if times else (0.0, float("inf"))
        ids = {who_new, who_old}
        trail += [
            {"event": f"chaos {a['action']}", **a}
            for a in timeline
            if a["id"] in ids and lo <= float(a["t"]) <= hi
        ]
        trail += [
            {"event": e["event"], "id": e["id"], "t": e["t"], "detail": e}
            for e in events
            if e["event"] == "woke" and e["id"] in ids and lo <= float(e["t"]) <= hi
        ]
        out.append(f"--- {problem}")
        for e in sorted(trail, key=lambda e: float(e.get("t", 0.0))):
            fields = {k: v for k, v in e.items() if k not in ("event", "id", "t", "pid")}
            out.append(f"{float(e.get('t', 0.0)):.3f} {e['id']:>6} {e['event']:<16} {fields}")
        if history is not None:
            prefix = f"{history.prefix}/{name}/".encode()
            keys = {
                c.kv.key
                for c in history.changes
                if c.is_put and c.kv.key.startswith(prefix) and c.kv.create_revision in tokens
            }
            for c in history.changes:
                if c.kv.key in keys:
                    kind = "put" if c.is_put else "delete"
                    out.append(
                        f"  etcd rev {c.revision}: {kind} {c.kv.key.decode()} "
                        f"create_rev {c.kv.create_revision} lease {c.kv.lease:x}"
                    )
    return "\n".join(out)


def unmatched_elections(events: Iterable[Event], killed: set[Any]) -> list[str]:
    """Terms whose 'elected' has no 'stepped_down' (processes in ``killed`` excepted)."""
    elected: dict[tuple[Any, str, int], Event] = {}
    down: set[tuple[Any, str, int]] = set()
    for e in events:
        k = (e.get("_proc"), e.get("election"), e.get("token"))
        if e["event"] == "elected":
            elected[k] = e
        elif e["event"] == "stepped_down":
            down.add(k)
    return [
        f"{e['id']}: term {e['token']} of {e['election']} has no on_stepped_down"
        for k, e in elected.items()
        if k not in down and k[0] not in killed
    ]


# -- small etcd helpers --------------------------------------------------------------------


async def raft_leader(endpoints: Iterable[str]) -> str | None:
    """The endpoint of the member that is the raft leader (asked by Status RPC), or None."""
    for ep in endpoints:
        conn = Connection.create(ep, timeout=1.0)
        try:
            await conn.connect()
            status = await conn.member_status(1.0)
            if status.leader and status.leader == status.member_id:
                return ep
        except EtcdError:
            continue
        finally:
            await conn.close()
    return None


async def defragment(conn: Connection) -> None:
    await conn.defragment(10.0)


def fmt_times(values: Iterable[float]) -> str:
    vs = sorted(values)
    if not vs:
        return "n/a"
    return f"n={len(vs)} min={vs[0]:.3f} median={vs[len(vs) // 2]:.3f} max={vs[-1]:.3f} s"


@contextlib.contextmanager
def report(title: str) -> Iterator[list[str]]:
    """Collect lines to print (shown with ``-s`` or ``-rA``) under a title."""
    lines: list[str] = []
    try:
        yield lines
    finally:
        sys.stdout.write(f"\n[chaos] {title}\n" + "".join(f"  {x}\n" for x in lines))
