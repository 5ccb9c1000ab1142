"""``aioelect run`` under process faults: the first host's CMD is dead before the next one starts.

Two ``aioelect run`` wrappers (real processes) campaign for one election
against the real etcd fixture. Each CMD is a ticker that writes the wall-clock
time every 10 ms to a file (flushed), and starts a grandchild that does the
same, so the evidence is the children's own output: every tick of the first
host's CMD and grandchild comes before the first tick of the second host's
CMD. Then every process of the first host is checked gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioelect.testing import EtcdServer, FaultProxy

TTL = 1

TICKER = """\
import os, signal, subprocess, sys, time
out, ignore_term = sys.argv[1], sys.argv[2] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = None
if not out.endswith(".gc"):  # the grandchild: same ticker, its own file, same group
    child = subprocess.Popen([sys.executable, __file__, out + ".gc", sys.argv[2]])
with open(out, "a") as f:
    f.write(f"pids {os.getpid()} {os.getppid()} {child.pid if child else 0}\\n")
    f.flush()
    while True:
        f.write(f"{time.time()!r}\\n")
        f.flush()
        time.sleep(0.01)
"""


class Host:
    """One ``aioelect run`` wrapper and the output of its CMD."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc = proc
        self.out = out

    def ticks(self, suffix: str = "") -> list[float]:
        path = Path(str(self.out) + suffix)
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [float(line) for line in lines[1:] if line and not line.startswith("pids")]

    def pids(self) -> tuple[int, int, int]:
        """CMD's pid, its parent's (the watchdog), and the grandchild's."""
        first = self.out.read_text().splitlines()[0].split()
        return int(first[1]), int(first[2]), int(first[3])


def cli(endpoint: str, prefix: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "aioelect", "--endpoints", endpoint, "--prefix", prefix,
        "--ttl", str(TTL), *args,
    ]  # fmt: skip


def poll(check: object, what: str, timeout: float = 20.0) -> None:
    """Wait for ``check()`` (external state: files, processes) to hold, at most ``timeout``."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (exited; a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return not stat.parent.exists() if sys.platform.startswith("linux") else False


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    """The hosts a test started; at its end each wrapper still running is SIGKILLed, and
    every process of every host's CMD must be gone (the watchdog's doing)."""
    started: list[Host] = []
    yield started
    for h in started:
        if h.proc.poll() is None:
            os.kill(h.proc.pid, signal.SIGCONT)
            h.proc.kill()
        h.proc.wait()
    for h in started:
        if h.out.exists():
            pids = h.pids()
            poll(lambda p=pids: all(gone(x) for x in p if x), f"every process of {h.out} gone")


def start(hosts: list[Host], endpoint: str, prefix: str, tmp: Path, name: str, **kw: str) -> Host:
    out = tmp / name
    ignore = kw.get("ignore_term", "0")
    script = tmp / "ticker.py"
    if not script.exists():
        script.write_text(TICKER)
    argv = cli(endpoint, prefix, "run", "job", name, "--", sys.executable, str(script), str(out))
    host = Host(subprocess.Popen([*argv, ignore]), out)
    hosts.append(host)
    return host


def candidates(etcd: EtcdServer, prefix: str) -> int:
    out = subprocess.run(
        cli(etcd.endpoint, prefix, "candidates", "job"), capture_output=True, check=True
    )
    return len(out.stdout.splitlines())


def check_handover(first: Host, second: Host) -> float:
    """Every tick of the first CMD (and its grandchild) before the second CMD's first tick;
    every process of the first host's CMD gone. Returns the gap in seconds."""
    poll(lambda: len(second.ticks()) > 0, "the second host's CMD started", timeout=30)
    cmd, watchdog, grandchild = first.pids()
    poll(lambda: gone(cmd) and gone(grandchild) and gone(watchdog), "first host's CMD gone")
    last = max(first.ticks() + first.ticks(".gc"))
    start_second = second.ticks()[0]
    assert last < start_second, f"overlap of {last - start_second:.3f} s"
    return start_second - last


def test_cmd_runs_on_while_the_wrapper_feeds_its_watchdog(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, hosts: list[Host]
) -> None:
    """A healthy wrapper moves the watchdog's deadline at every keepalive: CMD runs for
    many TTLs, then exits by SIGTERM with its own code."""
    a = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "a")
    poll(lambda: len(a.ticks()) > 0, "CMD ticks")
    poll(lambda: a.ticks()[-1] - a.ticks()[0] > 4 * TTL, "CMD ran for 4 TTLs")
    assert a.proc.poll() is None
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(20) == 128 + signal.SIGTERM


def test_wrapper_sigkilled(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, hosts: list[Host]
) -> None:
    """SIGKILL of the wrapper: its watchdog sees the feed end and kills CMD's group at once."""
    a = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "a")
    poll(lambda: len(a.ticks(".gc")) > 0, "the first CMD ticks")
    b = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "b")
    poll(lambda: candidates(etcd, etcd_prefix) == 2, "the second host waits")
    a.proc.kill()
    cmd, _, _ = a.pids()
    poll(lambda: gone(cmd), "CMD killed with its wrapper", timeout=5)
    check_handover(a, b)


def test_wrapper_sigstopped_past_the_ttl(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, hosts: list[Host]
) -> None:
    """A frozen wrapper feeds nothing: the watchdog kills CMD at the hard deadline, before
    the lease can expire; woken, the wrapper exits 75 (leadership lost)."""
    a = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "a")
    poll(lambda: len(a.ticks(".gc")) > 0, "the first CMD ticks")
    b = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "b")
    poll(lambda: candidates(etcd, etcd_prefix) == 2, "the second host waits")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        check_handover(a, b)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert a.proc.wait(30) == 75


def test_wrapper_cut_off_while_cmd_ignores_sigterm(
    etcd: EtcdServer,
    fault_proxy: FaultProxy,
    etcd_prefix: str,
    tmp_path: Path,
    hosts: list[Host],
) -> None:
    """Cut off from etcd, the wrapper's term ends and CMD gets SIGTERM, which it ignores;
    SIGKILL comes at the hard deadline, not after the default --grace (10 s)."""
    a = start(hosts, fault_proxy.endpoint, etcd_prefix, tmp_path, "a", ignore_term="1")
    poll(lambda: len(a.ticks(".gc")) > 0, "the first CMD ticks")
    b = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "b")
    poll(lambda: candidates(etcd, etcd_prefix) == 2, "the second host waits")
    fault_proxy.blackhole()
    cut = time.time()
    check_handover(a, b)
    last = max(a.ticks() + a.ticks(".gc"))
    assert last < cut + TTL  # killed within the lease, though --grace is 10 s
    fault_proxy.heal()
    assert a.proc.wait(30) == 75


def test_watchdog_sigkilled(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, hosts: list[Host]
) -> None:
    """The watchdog killed from outside: CMD dies with it (the parent-death signal on Linux,
    the wrapper otherwise), the wrapper kills what is left of the group, exits 137, resigns."""
    a = start(hosts, etcd.endpoint, etcd_prefix, tmp_path, "a")
    poll(lambda: len(a.ticks(".gc")) > 0, "the first CMD ticks")
    cmd, watchdog, grandchild = a.pids()
    os.kill(watchdog, signal.SIGKILL)
    assert a.proc.wait(20) == 128 + signal.SIGKILL
    poll(lambda: gone(cmd) and gone(grandchild), "CMD and its grandchild gone")
    assert candidates(etcd, etcd_prefix) == 0


def test_what_cmd_leaves_in_its_group_is_stopped_before_resigning(
    etcd: EtcdServer, etcd_prefix: str, tmp_path: Path, hosts: list[Host]
) -> None:
    """CMD exits, leaving a process in its group: that one gets SIGTERM, and the wrapper
    exits with CMD's code once the group is empty (nothing of the term outlives it)."""
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exit 3"
    p = subprocess.Popen(
        cli(etcd.endpoint, etcd_prefix, "run", "job", "a", "--", "sh", "-c", script)
    )
    hosts.append(Host(p, tmp_path / "none"))
    assert p.wait(20) == 3
    leftover = int(pidfile.read_text())
    poll(lambda: gone(leftover), "the leftover process gone", timeout=5)
    assert candidates(etcd, etcd_prefix) == 0


# -- the demo ---------------------------------------------------------------------------


def descendants(root: int) -> set[int]:
    """Every process below ``root`` now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@linux_only
@pytest.mark.parametrize("kill_demo", [False, True], ids=["ends-by-itself", "demo-sigkilled"])
def test_demo_leaves_no_process(kill_demo: bool) -> None:
    """Every process the demo started (etcd, the candidates, their watchdogs and commands)
    is gone when it ends, or when it is SIGKILLed once the first leader's command runs."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "aioelect", "demo", "--plain"], stdout=subprocess.PIPE
    )
    seen: set[int] = set()
    try:
        assert demo.stdout is not None
        for raw in demo.stdout:
            seen |= descendants(demo.pid)
            line = raw.decode()
            if kill_demo and " leads (token" in line:
                poll(lambda: len(descendants(demo.pid)) >= 6, "etcd, 3 nodes, a watchdog, CMD")
                seen |= descendants(demo.pid)
                demo.kill()
                break
        assert demo.wait(60) == (-signal.SIGKILL if kill_demo else 0)
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()
    assert len(seen) >= 6
    poll(lambda: all(gone(p) for p in seen), "every process of the demo gone")
