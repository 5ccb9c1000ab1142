"""The README's recipe, run for real: an APScheduler 3 job once per tick across N workers.

examples/apscheduler_app.py under ``uvicorn --workers 3``, under gunicorn with uvicorn
workers, and under gunicorn with aiohttp workers. Each tick appends ``slot pid token`` to a
file; the checks read only that file (the jobs' own output) and the servers' logs. Faults:
SIGKILL of the leading worker, a frozen leader (SIGSTOP past the TTL, then SIGCONT), and a
SIGHUP reload. Every tick runs at most once; the gaps are printed (``-s``) for the notes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from aioelect._embedded import free_port
from aioelect.testing import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
TTL = 2
TICK = 0.25
T = TypeVar("T")

MISSING = [
    m for m in ("apscheduler", "gunicorn", "uvicorn_worker", "fastapi", "aiohttp", "uvicorn")
    if importlib.util.find_spec(m) is None
]  # fmt: skip
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install -e '.[test]'"
)

SERVERS: dict[str, list[str]] = {
    "uvicorn": ["-m", "uvicorn", "examples.apscheduler_app:app", "--workers", "3",
                "--host", "127.0.0.1", "--port", "{port}", "--timeout-graceful-shutdown", "10"],
    "gunicorn-uvicorn": ["-m", "gunicorn", "examples.apscheduler_app:app", "-w", "3",
                         "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:{port}",
                         "--graceful-timeout", "10", "--preload"],
    "gunicorn-aiohttp": ["-m", "gunicorn", "examples.apscheduler_app:aiohttp_app", "-w", "3",
                         "-k", "aiohttp.GunicornWebWorker", "-b", "127.0.0.1:{port}",
                         "--graceful-timeout", "10"],
}  # fmt: skip


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` (another process's output) until truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


@dataclass
class Tick:
    slot: float
    pid: int
    token: int


@dataclass
class Server:
    """A server started in its own process group, its tick file and its log."""

    proc: subprocess.Popen[bytes]
    ticks_path: Path
    log_path: Path
    marks: list[tuple[str, int]] = field(default_factory=list)

    def ticks(self) -> list[Tick]:
        text = self.ticks_path.read_text() if self.ticks_path.exists() else ""
        out = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                slot, pid, token = line.split()
                out.append(Tick(float(slot), int(pid), int(token)))
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the server exited:\n{self.log()[-3000:]}"

    def mark(self, what: str) -> None:
        """Remember how many ticks there were when a fault was injected."""
        self.marks.append((what, len(self.ticks())))

    def leader_pid(self) -> int:
        """The pid of the worker that ran the last tick, once ticks flow from it."""

        def steady() -> int | None:
            self.alive()
            last = self.ticks()[-3:]
            return last[0].pid if len(last) == 3 and len({t.pid for t in last}) == 1 else None

        return wait_for(steady, "ticks from one worker")

    def wait_ticks_from_other(self, pid: int, timeout: float = 30.0) -> int:
        """Wait until two ticks came from a worker other than ``pid``; return that worker."""
        start = len(self.ticks())

        def other() -> int | None:
            self.alive()
            new = [t.pid for t in self.ticks()[start:] if t.pid != pid]
            return new[-1] if len(new) >= 2 else None

        return wait_for(other, f"ticks from a worker other than {pid}", timeout)

    def workers(self) -> set[int]:
        """The master's worker processes (not multiprocessing's resource tracker)."""
        pids = set()
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        pids.add(int(pid))
        return pids


@pytest.fixture
def start_server(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """Start a server (a new process group); at the end, kill the group and check it is gone."""
    started: list[Server] = []

    def start(kind: str, **extra: str) -> Server:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
        env = dict(
            base,
            AIOELECT_ENDPOINTS=etcd.endpoint,
            AIOELECT_PREFIX=etcd_prefix,
            AIOELECT_TTL=str(TTL),
            TICK_SECONDS=str(TICK),
            TICK_FILE=str(tmp_path / f"{kind}.ticks"),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
            PYTHONUNBUFFERED="1",
            PYTHONWARNINGS="ignore::DeprecationWarning",
            **extra,
        )
        log_path = tmp_path / f"{kind}.log"
        args = [sys.executable, *(a.format(port=port) for a in SERVERS[kind])]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        server = Server(proc, tmp_path / f"{kind}.ticks", log_path)
        started.append(server)
        return server

    yield start
    for server in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGCONT)
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()

        def gone(pgid: int = server.proc.pid) -> bool:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, "every process of the server gone", 10)


def analyse(server: Server, name: str) -> dict[str, object]:
    """Duplicates, misses and gaps, overall and around each fault; printed for the notes."""
    ticks = server.ticks()
    counts = Counter(round(t.slot / TICK) for t in ticks)
    dups = sorted(s * TICK for s, n in counts.items() if n > 1)
    first, last = min(counts), max(counts)
    expected = last - first + 1
    faults = []
    for what, index in server.marks:
        before = ticks[max(0, index - 1)]
        end = next((i for i in range(index, len(ticks)) if ticks[i].pid != before.pid), None)
        if end is not None:
            span = ticks[max(0, index - 1) : end + 1]
            gap = max(b.slot - a.slot for a, b in itertools.pairwise(span))
            faults.append({"fault": what, "missed": round(gap / TICK) - 1, "gap_s": round(gap, 3)})
    summary = {
        "server": name,
        "ticks_expected": expected,
        "ticks_run": len(ticks),
        "duplicates": len(dups),
        "missed": expected - len(counts),
        "workers_that_led": len({t.pid for t in ticks}),
        "faults": faults,
    }
    print("RECIPE", json.dumps(summary))
    # Each worker campaigned as itself (node_identity() in the worker, even with --preload).
    campaigns = re.findall(r"pid=(\d+) aioelect INFO campaigning in election 'ticks' as '.*-(\d+)'",
                           server.log())  # fmt: skip
    assert campaigns
    assert all(pid == value for pid, value in campaigns), campaigns
    assert not dups, f"ticks run twice: {dups}\n{server.log()[-4000:]}"
    tokens = [t.token for t in ticks]
    assert tokens == sorted(tokens), "a tick of an older term after one of a newer term"
    return summary


@pytest.mark.parametrize("kind", list(SERVERS))
def test_apscheduler_tick_once_across_workers(
    kind: str, start_server: Callable[..., Server]
) -> None:
    """Every tick runs at most once across 3 workers, through SIGKILL of the leader, a frozen
    leader (SIGSTOP past the TTL, then SIGCONT) and a SIGHUP reload."""
    # gunicorn starts the new workers of a reload as it stops the old ones: the leader waits
    # up to 3 s for one to campaign (uvicorn starts each new worker before stopping an old one).
    server = start_server(kind, LEAVE_WAIT="3" if kind.startswith("gunicorn") else "0")
    leader = server.leader_pid()
    assert "won election 'ticks'" in server.log()

    # 1. SIGKILL of the leading worker: another one takes over once its lease expires.
    server.mark("SIGKILL")
    os.kill(leader, signal.SIGKILL)
    leader = server.wait_ticks_from_other(leader)

    # 2. A frozen leader: SIGSTOP until another worker ticks (past the TTL), then SIGCONT.
    server.mark("SIGSTOP")
    frozen = leader
    os.kill(frozen, signal.SIGSTOP)
    try:
        leader = server.wait_ticks_from_other(frozen)
    finally:
        os.kill(frozen, signal.SIGCONT)
    # The woken worker notices its term ended (its deadline passed) and runs no tick.
    # (uvicorn's supervisor may instead have replaced it, if its health check timed out.)
    noticed = f"pid={frozen} aioelect INFO lost election 'ticks'"
    wait_for(lambda: noticed in server.log() or frozen not in server.workers(),
             "the frozen worker noticing its term ended")  # fmt: skip
    steady = len(server.ticks())
    wait_for(lambda: len(server.ticks()) >= steady + 4, "ticks after the frozen worker woke")

    # 3. A graceful reload (SIGHUP): old workers leave, new ones take over.
    old = server.workers()
    assert leader in old
    server.mark("SIGHUP")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: server.ticks()[-1].pid not in old and len(server.ticks()[-2:]) == 2
             and server.ticks()[-2].pid not in old, "ticks from a new worker")  # fmt: skip
    wait_for(lambda: not (server.workers() & old), "the old workers gone")

    # Stop: SIGTERM to the master stops every worker gracefully.
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    summary = analyse(server, kind)
    assert summary["workers_that_led"] >= 4


def readme_block(heading: str, index: int) -> str:
    """The ``index``-th Python block of a README section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return section.split("```python\n")[index + 1].split("```")[0]


@pytest.mark.parametrize(
    ("index", "server"),
    [
        (0, ["-m", "uvicorn", "app:app", "--workers", "2", "--host", "127.0.0.1",
             "--port", "{port}"]),
        (1, ["-m", "gunicorn", "app:app", "-w", "2", "-k", "aiohttp.GunicornWebWorker",
             "-b", "127.0.0.1:{port}"]),
    ],
    ids=["fastapi", "aiohttp"],
)  # fmt: skip
def test_readme_web_snippets_are_complete_programs(
    index: int, server: list[str], etcd: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """The README's FastAPI and aiohttp programs run as they are (2 workers): one leads."""
    import httpx

    code = readme_block("## In a web service", index).replace('"/myapp"', repr(etcd_prefix))
    (tmp_path / "app.py").write_text(code)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
    env = dict(base, AIOELECT_ENDPOINTS=etcd.endpoint, PYTHONWARNINGS="ignore::DeprecationWarning")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *(a.format(port=port) for a in server)], stdout=out,
            stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:

        def leader_seen() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.TransportError:
                return False
            return resp.status_code == 200 and resp.json()["is_leader"] is True

        wait_for(leader_seen, "a worker answering that it leads")
        wait_for(lambda: "won election 'jobs'" in log_path.read_text(), "the log of the win")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
