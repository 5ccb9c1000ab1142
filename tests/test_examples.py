"""The programs in examples/, run for real as processes against the test etcd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from helpers import eventually_blocking

from aioelect._embedded import find_etcd_binary, free_port
from aioelect.testing import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The apps' default TTL: a graceful handover must take far less.
APP_TTL = 10.0

T = TypeVar("T")
Spawn = Callable[..., subprocess.Popen[bytes]]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """:func:`helpers.eventually_blocking` with the apps' bound (they start slowly)."""
    return eventually_blocking(check, timeout, what)


@pytest.fixture
def env(etcd: EtcdServer, etcd_prefix: str) -> dict[str, str]:
    """The environment of the examples: the test etcd, a fresh prefix, this venv first on PATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
    return dict(
        base,
        AIOELECT_ENDPOINTS=etcd.endpoint,
        AIOELECT_PREFIX=etcd_prefix,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )


@pytest.fixture
def spawn(tmp_path: Path, env: dict[str, str]) -> Iterator[Spawn]:
    """Start processes (stdout and stderr to files); kill their process groups at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        with (
            open(tmp_path / f"{name}.out", "wb") as out,
            open(tmp_path / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                args, stdout=out, stderr=err, env=dict(env, **extra_env), cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the process and any children it left
        proc.wait()


def output(tmp_path: Path, name: str) -> str:
    """What a spawned process wrote so far, stdout then stderr."""
    return "".join((tmp_path / f"{name}.{s}").read_text(errors="replace") for s in ("out", "err"))


def etcd_get(env: dict[str, str], key: str) -> str | None:
    """Read one key with etcdctl (None when absent)."""
    out = subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", env["AIOELECT_ENDPOINTS"], "get", key,
         "--print-value-only"],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    return out.stdout.decode().strip() or None


def etcd_keys(env: dict[str, str], prefix: str) -> list[str]:
    """The keys under ``prefix``, read with etcdctl."""
    out = subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", env["AIOELECT_ENDPOINTS"], "get", prefix,
         "--prefix", "--keys-only"],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    return out.stdout.decode().split()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the aioelect CLI (global options from env)."""
    return subprocess.run(
        [sys.executable, "-m", "aioelect", *args], env=env, capture_output=True, timeout=30
    )


# -- web apps --------------------------------------------------------------------------


def get_json(port: int, path: str) -> Any:
    """GET a JSON document from a local app (a new connection each time)."""
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).json()


def wait_ready(proc: subprocess.Popen[bytes], port: int, tmp_path: Path, name: str) -> Any:
    """Wait until the app answers /healthz with 200; return the report."""

    def ready() -> Any:
        assert proc.poll() is None, f"{name} exited:\n{output(tmp_path, name)}"
        try:
            resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        except httpx.TransportError:
            return None
        return resp.json() if resp.status_code == 200 else None

    return wait_for(ready, f"{name} ready")


@pytest.mark.parametrize("app", ["fastapi_app.py", "aiohttp_app.py"])
def test_web_app_one_leader_and_graceful_handover(
    app: str, spawn: Spawn, env: dict[str, str], tmp_path: Path
) -> None:
    """Two copies of a web app: one leads and runs the job; SIGTERM to it hands over at once."""
    ports = {"a": free_port(), "b": free_port()}
    procs = {
        node: spawn(
            [sys.executable, str(EXAMPLES / app), "--port", str(port), "--node-name", node], node
        )
        for node, port in ports.items()
    }
    wait_ready(procs["a"], ports["a"], tmp_path, "a")
    wait_ready(procs["b"], ports["b"], tmp_path, "b")
    # Both report the same leader; exactly one says it leads, and only its job runs.
    leader = wait_for(lambda: get_json(ports["a"], "/leader"), "a leader")
    assert get_json(ports["b"], "/leader") == leader
    first, second = ("a", "b") if leader["value"] == "a" else ("b", "a")
    wait_for(lambda: get_json(ports[first], "/healthz")["job"]["writes"] >= 3, "leader's job")
    h1, h2 = get_json(ports[first], "/healthz"), get_json(ports[second], "/healthz")
    assert (h1["is_leader"], h2["is_leader"]) == (True, False)
    assert h1["health"]["ready"] and h2["health"]["ready"]
    assert [t["token"] for t in h1["health"]["terms"]] == [leader["token"]]
    assert h2["health"]["terms"] == []
    assert h1["health"]["session"]["lease_id"] == leader["lease_id"]
    assert h2["job"] == {"running": False, "writes": 0}
    data = f"{env['AIOELECT_PREFIX']}-data/counter"
    assert (etcd_get(env, f"{data}/writer") or "").startswith(f"{first} {leader['token']}")
    if app == "fastapi_app.py":
        metrics = httpx.get(f"http://127.0.0.1:{ports[first]}/metrics", timeout=5).text
        assert f'aioelect_leader{{election="counter",prefix="{env["AIOELECT_PREFIX"]}"}} 1.0' in (
            metrics
        )
    # Graceful stop of the leader: it resigns on its way out, the other takes over.
    sent = time.monotonic()
    procs[first].send_signal(signal.SIGTERM)
    wait_for(lambda: get_json(ports[second], "/healthz")["is_leader"], "takeover", APP_TTL)
    took = time.monotonic() - sent
    assert took < APP_TTL / 3, f"graceful handover took {took:.2f} s"
    # uvicorn re-raises SIGTERM after its graceful shutdown; aiohttp exits 0.
    assert procs[first].wait(10) in (0, -signal.SIGTERM), output(tmp_path, first)
    assert "resigned election 'counter'" in output(tmp_path, first)
    new = get_json(ports[second], "/leader")
    assert new["value"] == second and new["token"] > leader["token"]
    # The new leader's job goes on from where the counter was.
    count = int(etcd_get(env, f"{data}/counter") or 0)
    assert count >= 3
    wait_for(lambda: int(etcd_get(env, f"{data}/counter") or 0) > count, "counter goes on")
    assert (etcd_get(env, f"{data}/writer") or "").startswith(f"{second} {new['token']}")


# -- worker processes ------------------------------------------------------------------


def events(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines a workers.py run printed so far."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_workers_one_scheduler_all_work(spawn: Spawn, env: dict[str, str], tmp_path: Path) -> None:
    """Three workers all do jobs while one schedules; SIGTERM to it moves the scheduler on."""
    sup = spawn([sys.executable, str(EXAMPLES / "workers.py"), "--workers", "3"], "workers")
    log = tmp_path / "workers.out"

    def all_working() -> list[dict[str, Any]] | None:
        assert sup.poll() is None, output(tmp_path, "workers")
        ev = events(log)
        return (
            ev if {e["worker"] for e in ev if e["event"] == "done"} == {"w1", "w2", "w3"} else None
        )

    ev = wait_for(all_working, "every worker doing jobs")
    starts = [e for e in ev if e["event"] == "scheduler-start"]
    assert len(starts) == 1
    old = starts[0]
    assert {e["scheduled_by"] for e in ev if e["event"] == "done"} == {old["worker"]}
    # Stop the scheduling worker: another one schedules within well under the TTL.
    sent = time.monotonic()
    os.kill(old["pid"], signal.SIGTERM)

    def new_scheduler() -> dict[str, Any] | None:
        starts = [e for e in events(log) if e["event"] == "scheduler-start"]
        return next((e for e in starts if e["worker"] != old["worker"]), None)

    new = wait_for(new_scheduler, "a new scheduler", APP_TTL)
    assert time.monotonic() - sent < APP_TTL / 3
    assert new["token"] > old["token"]
    wait_for(
        lambda: any(e["event"] == "done" and e["token"] == new["token"] for e in events(log)),
        "jobs of the new scheduler done",
    )
    ev = events(log)
    assert any(e["event"] == "exit" and e["worker"] == old["worker"] for e in ev)
    # The old scheduler stopped (and said so) before the new one started.
    sched = [(e["event"], e["worker"]) for e in ev if e["event"].startswith("scheduler-")]
    assert sched == [
        ("scheduler-start", old["worker"]),
        ("scheduler-stop", old["worker"]),
        ("scheduler-start", new["worker"]),
    ]
    # SIGTERM to the supervisor stops every worker gracefully: the election is vacant.
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(20) == 0, output(tmp_path, "workers")
    assert {e["worker"] for e in events(log) if e["event"] == "exit"} == {"w1", "w2", "w3"}
    assert cli(env, "leader", "scheduler").returncode == 1


# -- cron ------------------------------------------------------------------------------


def _job(log: Path, release: Path | None = None) -> list[str]:
    """A command that logs its start (with the fencing token), waits, and logs its end."""
    wait = f'while [ ! -e "{release}" ]; do sleep 0.02; done' if release else "sleep 0.3"
    script = (
        f'echo "start $AIOELECT_TOKEN" >> "{log}"; {wait}; echo "end $AIOELECT_TOKEN" >> "{log}"'
    )
    return ["sh", "-c", script]


def test_cron_once_runs_the_job_once(spawn: Spawn, env: dict[str, str], tmp_path: Path) -> None:
    """Two concurrent cron_once.sh: one runs the command while the other waits, then skips."""
    log, release, stamps = tmp_path / "log", tmp_path / "release", tmp_path / "stamps"
    stamps.mkdir()
    cron = ["sh", str(EXAMPLES / "cron_once.sh"), *_job(log, release)]
    extra = {"CRON_JOB_NAME": "report", "CRON_STAMP_DIR": str(stamps), "CRON_PERIOD": "p1"}
    runs = [spawn(cron, f"cron{i}", **extra) for i in (1, 2)]
    wait_for(lambda: log.exists() and log.read_text().startswith("start "), "the job started")
    wait_for(lambda: len(etcd_keys(env, f"{env['AIOELECT_PREFIX']}/report/")) == 2, "both campaign")
    assert len(log.read_text().splitlines()) == 1  # the other host waits
    release.touch()
    assert [p.wait(30) for p in runs] == [0, 0]
    token = log.read_text().split()[1]
    assert log.read_text().splitlines() == [f"start {token}", f"end {token}"]
    assert (stamps / "report.p1.done").exists()
    skipped = [output(tmp_path, f"cron{i}") for i in (1, 2)]
    assert sum("skipping" in text for text in skipped) == 1


def test_cron_once_without_stamps_one_at_a_time(
    spawn: Spawn, env: dict[str, str], tmp_path: Path
) -> None:
    """Without stamps both runs happen, one after the other, never overlapping."""
    log = tmp_path / "log"
    cron = ["sh", str(EXAMPLES / "cron_once.sh"), *_job(log)]
    runs = [spawn(cron, f"cron{i}", CRON_JOB_NAME="report") for i in (1, 2)]
    assert [p.wait(30) for p in runs] == [0, 0]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [word for word, _ in lines] == ["start", "end", "start", "end"]
    assert lines[0][1] == lines[1][1] < lines[2][1] == lines[3][1]


def test_cron_once_stops_the_job_when_leadership_is_lost(
    spawn: Spawn, env: dict[str, str], tmp_path: Path
) -> None:
    """When the leader key is deleted, the job itself (not only its shell) gets SIGTERM."""
    marker, stopped = tmp_path / "started", tmp_path / "stopped"
    job = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(stopped)!r}).touch(), "
        "sys.exit(0)))\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    cron = ["sh", str(EXAMPLES / "cron_once.sh"), sys.executable, "-c", job]
    run = spawn(cron, "cron", CRON_JOB_NAME="report")
    wait_for(marker.exists, "the job started")
    subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", env["AIOELECT_ENDPOINTS"], "del",
         "--prefix", f"{env['AIOELECT_PREFIX']}/report/"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    assert run.wait(30) == 75
    assert stopped.exists()


# -- the Go package's callback style ---------------------------------------------------


def test_seed_style_demo(env: dict[str, str]) -> None:
    """The callback demo: a transfer to the last candidate, every node leads, no overlap."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "seed_style.py")], env=env, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    calls = [line.split() for line in lines if line.startswith(("elected ", "stepped-down "))]
    assert len(calls) == 8  # 3 nodes; the first leader leads again after its transfer
    for (e, e_node, e_token), (s, s_node, s_token) in zip(calls[::2], calls[1::2], strict=True):
        assert (e, s) == ("elected", "stepped-down")  # the handover barrier held
        assert (e_node, e_token) == (s_node, s_token)
    tokens = [int(token.removeprefix("token=")) for _, _, token in calls[::2]]
    assert tokens == sorted(set(tokens))
    [transfer] = [line.split() for line in lines if line.startswith("transfer ")]
    assert transfer[1] == calls[0][1]  # the first leader transferred ...
    assert calls[2][1] == transfer[3]  # ... to the node that led next
    assert {node for _, node, _ in calls} == {"n1", "n2", "n3"}
    changes = {line.split()[1] for line in lines if line.startswith("leader-change ")}
    assert {"n1", "n2", "n3"} <= changes
    assert not [line for line in lines if line.startswith("flush skipped")]
    assert lines[-1] == "done: 4 terms"


def test_example_test_of_a_users_code(etcd: EtcdServer, tmp_path: Path) -> None:
    """examples/testing/test_my_service.py, the README's example of testing your own code
    with the plugin, passes when run by pytest as a user's project would run it (its own
    rootdir and config; the plugin pointed at this session's etcd)."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
    env["AIOELECT_TEST_ENDPOINTS"] = etcd.endpoint
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "--aioelect-backend=env",
            "-q",
            str(EXAMPLES / "testing" / "test_my_service.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
