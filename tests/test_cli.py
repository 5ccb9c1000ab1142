"""The aioelect CLI, run as real processes against a real etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import eventually_blocking

from aioelect.testing import EtcdServer


def _cli(etcd: EtcdServer, prefix: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "aioelect", "--endpoints", etcd.endpoint, "--prefix", prefix,
        "--ttl", "2", *args,
    ]  # fmt: skip


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    eventually_blocking(path.exists, timeout, f"{path} exists")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, killed at its end if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def _delete_election_keys(etcd: EtcdServer, prefix: str) -> None:
    """Delete every key of election 'job' with etcdctl, as an outside party would."""
    from aioelect._embedded import find_etcd_binary

    subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", etcd.endpoint, "del", "--prefix",
         f"{prefix}/job/"],
        check=True, capture_output=True,
    )  # fmt: skip


def _marker_cmd(marker: Path, exit_code: int = 0, wait_for: Path | None = None) -> list[str]:
    """A command that creates ``marker``, optionally waits for a file, then exits."""
    code = (
        "import pathlib, sys, time, os\n"
        f"pathlib.Path({str(marker)!r}).write_text(os.environ.get('AIOELECT_TOKEN', ''))\n"
    )
    if wait_for is not None:
        code += f"while not pathlib.Path({str(wait_for)!r}).exists(): time.sleep(0.02)\n"
    code += f"sys.exit({exit_code})\n"
    return [sys.executable, "-c", code]


def test_run_only_while_leading_and_exit_code(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Two 'run' processes: the second command starts only after the first one exits,
    and each CLI exits with its command's code."""
    first, second, release = tmp_path / "first", tmp_path / "second", tmp_path / "release"
    p1 = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", *_marker_cmd(first, 3, release))
    )
    procs.append(p1)
    _wait_for(first)
    assert int(first.read_text()) > 0  # the fencing token is handed to the command
    p2 = subprocess.Popen(_cli(etcd, etcd_prefix, "run", "job", "b", "--", *_marker_cmd(second)))
    procs.append(p2)
    out = subprocess.run(
        _cli(etcd, etcd_prefix, "candidates", "job", "--json"), capture_output=True, check=True
    )
    assert not second.exists()
    release.write_text("go")
    assert p1.wait(20) == 3
    assert p2.wait(20) == 0
    assert second.exists()
    assert int(second.read_text()) > int(first.read_text())
    assert json.loads(out.stdout.splitlines()[0])["value"] == "a"


def test_leader_and_candidates_commands(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """'leader' prints the value (exit 1 when vacant); 'candidates' lists them in order."""
    vacant = subprocess.run(_cli(etcd, etcd_prefix, "leader", "job"), capture_output=True)
    assert vacant.returncode == 1
    assert b"no leader" in vacant.stderr
    marker, release = tmp_path / "m", tmp_path / "r"
    p = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "node-1", "--", *_marker_cmd(marker, 0, release))
    )
    procs.append(p)
    _wait_for(marker)
    leader = subprocess.run(_cli(etcd, etcd_prefix, "leader", "job"), capture_output=True)
    assert (leader.returncode, leader.stdout) == (0, b"node-1\n")
    cands = subprocess.run(
        _cli(etcd, etcd_prefix, "candidates", "job"), capture_output=True, check=True
    )
    assert cands.stdout.startswith(b"node-1\ttoken=")
    release.write_text("go")
    assert p.wait(20) == 0


def test_sigterm_is_forwarded_and_leadership_freed(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """SIGTERM to the CLI reaches the command; the CLI exits with its code and resigns."""
    marker = tmp_path / "m"
    code = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(marker)!r}).write_text('x')\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", sys.executable, "-c", code)
    )
    procs.append(p)
    _wait_for(marker)
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 42
    leader = subprocess.run(_cli(etcd, etcd_prefix, "leader", "job"), capture_output=True)
    assert leader.returncode == 1  # resigned at once, not after the TTL


def test_sigterm_while_waiting_gives_up_without_key(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A 'run' still waiting to be elected exits on SIGTERM without running its command."""
    marker, release, never = tmp_path / "m", tmp_path / "r", tmp_path / "never"
    p1 = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", *_marker_cmd(marker, 0, release))
    )
    procs.append(p1)
    _wait_for(marker)
    p2 = subprocess.Popen(_cli(etcd, etcd_prefix, "run", "job", "b", "--", *_marker_cmd(never)))
    procs.append(p2)

    def two_candidates() -> bool:
        out = subprocess.run(
            _cli(etcd, etcd_prefix, "candidates", "job"), capture_output=True, check=True
        )
        return len(out.stdout.splitlines()) == 2

    eventually_blocking(two_candidates, 20, "b campaigns")
    p2.send_signal(signal.SIGTERM)
    assert p2.wait(20) == 128 + signal.SIGTERM
    out = subprocess.run(_cli(etcd, etcd_prefix, "candidates", "job"), capture_output=True)
    assert len(out.stdout.splitlines()) == 1
    release.write_text("go")
    assert p1.wait(20) == 0
    assert not never.exists()


def test_lost_leadership_stops_the_command(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """When the term ends (key deleted by someone), the command is stopped; exit code 75."""
    marker = tmp_path / "m"
    code = f"import pathlib, time\npathlib.Path({str(marker)!r}).write_text('x')\ntime.sleep(60)\n"
    p = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", sys.executable, "-c", code)
    )
    procs.append(p)
    _wait_for(marker)
    _delete_election_keys(etcd, etcd_prefix)  # someone else deletes the leader key
    assert p.wait(30) == 75


def test_bad_usage(etcd: EtcdServer, etcd_prefix: str) -> None:
    """A missing command, a bad name, or an unstartable command are clear errors."""
    no_cmd = subprocess.run(_cli(etcd, etcd_prefix, "run", "job", "a"), capture_output=True)
    assert no_cmd.returncode == 2
    assert b"cmd" in no_cmd.stderr
    bad_name = subprocess.run(
        _cli(etcd, etcd_prefix, "run", "a/b", "a", "--", "true"), capture_output=True
    )
    assert bad_name.returncode == 2
    assert b"name" in bad_name.stderr
    missing = subprocess.run(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", "/nonexistent/cmd"), capture_output=True
    )
    assert missing.returncode == 127
    assert b"cannot start" in missing.stderr


def test_unreachable_etcd_is_a_clear_error(tmp_path: Path) -> None:
    """With etcd unreachable, 'leader' fails with exit 69 naming the endpoint."""
    from aioelect._embedded import free_port

    ep = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, AIOELECT_ENDPOINTS=ep)
    out = subprocess.run(
        [sys.executable, "-m", "aioelect", "leader", "job"],
        capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    # Entering the elector retries for connect_timeout (10 s) before giving up.
    assert out.returncode == 69
    assert ep.encode() in out.stderr


def test_observe_prints_changes(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """'observe' prints the current leader, then each change, until SIGINT."""
    obs = subprocess.Popen(
        _cli(etcd, etcd_prefix, "observe", "job"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    procs.append(obs)
    assert obs.stdout is not None
    assert obs.stdout.readline() == b"vacant\n"
    marker, release = tmp_path / "m", tmp_path / "r"
    p = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "n1", "--", *_marker_cmd(marker, 0, release))
    )
    procs.append(p)
    assert obs.stdout.readline().startswith(b"leader n1 token=")
    release.write_text("go")
    assert p.wait(20) == 0
    assert obs.stdout.readline() == b"vacant\n"
    obs.send_signal(signal.SIGINT)
    assert obs.wait(20) == 0


def test_demo_runs_and_ends_by_itself() -> None:
    """'aioelect demo' shows a graceful handover and a crash failover, and exits 0."""
    out = subprocess.run(
        [sys.executable, "-m", "aioelect", "demo", "--plain"], capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "graceful handover" in text
    assert "crash failover" in text
    assert "demo done" in text


def test_no_wait_skips_when_someone_leads(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """'run --no-wait' exits 0 at once without running its command when another host leads."""
    marker, release, never = tmp_path / "m", tmp_path / "r", tmp_path / "never"
    p1 = subprocess.Popen(
        _cli(etcd, etcd_prefix, "run", "job", "a", "--", *_marker_cmd(marker, 0, release))
    )
    procs.append(p1)
    _wait_for(marker)
    skipped = subprocess.run(
        _cli(etcd, etcd_prefix, "run", "--no-wait", "job", "b", "--", *_marker_cmd(never)),
        capture_output=True,
        timeout=30,
    )
    assert skipped.returncode == 0
    assert b"not run" in skipped.stderr
    assert not never.exists()
    release.write_text("go")
    assert p1.wait(20) == 0


def test_lost_leadership_stops_the_whole_process_group(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A shell wrapper's children are stopped too when the term ends (the group is signalled)."""
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    p = subprocess.Popen(_cli(etcd, etcd_prefix, "run", "job", "a", "--", "sh", "-c", script))
    procs.append(p)
    _wait_for(pidfile)
    eventually_blocking(lambda: pidfile.read_text().strip(), 5, "the pid written")
    grandchild = int(pidfile.read_text())
    _delete_election_keys(etcd, etcd_prefix)  # someone else deletes the leader key
    assert p.wait(30) == 75

    def grandchild_gone() -> bool:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{grandchild}/stat")
        return stat.exists() and stat.read_text().split()[2] == "Z"  # a zombie: it died

    eventually_blocking(grandchild_gone, 5, "the grandchild stopped")
