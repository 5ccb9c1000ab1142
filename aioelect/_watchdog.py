"""The dead-man switch of ``aioelect run``: a small process that starts CMD and kills it in time.

``aioelect run`` does not start CMD itself: it starts this watchdog (in a
session of its own), which starts CMD (in another new session, so CMD leads
its own process group) and then watches over it without any event loop:

- The wrapper keeps it fed, over a pipe, with the term's *hard* deadline: the
  earliest instant etcd may expire the lease (send time of the last
  successful keepalive + TTL), less a safety margin, as an absolute
  ``time.monotonic()`` value (CLOCK_MONOTONIC is system-wide on Linux, and
  so is macOS's).
- When that deadline passes without renewal (the wrapper is frozen, cut off
  from etcd, or stopped feeding at the end of the term), or the pipe reaches
  EOF (the wrapper died, even by SIGKILL, or closed it to kill at once), the
  watchdog SIGKILLs CMD's whole process group, grandchildren included.
- It exits once CMD has exited and its process group is empty (or soon after
  killing it), so it never outlives CMD for long. It is CMD's parent, so
  CMD's exit status reaches it, and on Linux CMD gets SIGKILL should the
  watchdog itself die (the parent-death signal).

Being in a group of its own, the watchdog survives the signals the wrapper
sends to CMD's group (SIGTERM at the end of a term), and keeps watching until
CMD is gone.

Only the standard library is used: the wrapper runs this file directly
(``python -I -S _watchdog.py``, without importing the aioelect package), so
it starts in a few tens of milliseconds.

The protocol, one ASCII line per message:

- feed (wrapper -> watchdog): ``D <deadline>`` (a new hard deadline),
  ``S <signum>`` (send the signal to CMD's group); EOF means kill now.
- status (watchdog's stdout -> wrapper): ``P <pid>`` (CMD started; its pid is
  its group's id), ``E <errno> <message>`` (CMD could not be started),
  ``L`` (the deadline had passed or the feed had ended before CMD could
  start: not started), ``X <code>`` (CMD exited; 128+N when killed by
  signal N).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ("die_with_parent", "main")

#: How long the watchdog waits, after SIGKILL, for CMD's group to be gone.
KILL_WAIT = 10.0
#: How often an exited CMD's group is checked for leftover processes.
GROUP_POLL = 0.02

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl() -> Callable[[int, int], int] | None:
    """Linux's prctl(option, arg) through ctypes, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return lambda option, arg: int(prctl(option, arg, 0, 0, 0))


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that makes the child get ``signum`` when ``parent`` dies.

    Also usable in the child itself (call the returned function). Returns
    None on other systems. Only for a single-threaded parent, or one whose
    forking thread lives as long as the parent: the signal follows the
    *thread* that forked.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum))
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signum)

    return arm


def _reap(pid: int) -> int | None:
    """Reap every exited child (orphans of CMD's group come to us as their subreaper);
    return CMD's exit code if CMD was one of them."""
    code = None
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if child == 0:
            return code
        if child == pid:
            rc = os.waitstatus_to_exitcode(status)
            code = rc if rc >= 0 else 128 - rc


class _Watchdog:
    def __init__(self, feed: int, deadline: float) -> None:
        self.feed = feed
        self.deadline = deadline
        self.eof = False
        self.buf = b""
        self.signals: list[int] = []
        self.stop = False

    def read_feed(self) -> None:
        """Read what the feed holds without blocking; note the deadline, signals, EOF."""
        while not self.eof:
            try:
                data = os.read(self.feed, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                kind, _, arg = line.partition(b" ")
                try:
                    if kind == b"D":
                        self.deadline = float(arg)
                    elif kind == b"S":
                        self.signals.append(int(arg))
                except ValueError:
                    pass

    def must_kill(self) -> bool:
        return self.eof or self.stop or time.monotonic() >= self.deadline


def _status(line: str) -> None:
    with contextlib.suppress(OSError):  # OSError: the wrapper is gone, nobody to tell
        os.write(1, line.encode() + b"\n")


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member we may not signal
        return True
    return True


def _parse(argv: Sequence[str]) -> tuple[int, int, float, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: _watchdog.py FEED_FD STDOUT_FD DEADLINE -- CMD [ARG...]")
    i = list(argv).index("--")
    feed, out, deadline = argv[:i]
    return int(feed), int(out), float(deadline), list(argv[i + 1 :])


def main(argv: Sequence[str] | None = None) -> int:
    """Start CMD, watch over it as described above; return CMD's exit code."""
    feed, out, deadline, cmd = _parse(sys.argv[1:] if argv is None else argv)
    wd = _Watchdog(feed, deadline)
    os.set_blocking(feed, False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def stop(signum: int, frame: object) -> None:
        wd.stop = True  # told to stop: kill CMD's group first, then exit

    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    prctl = _prctl()
    if prctl is not None:
        # Processes of CMD's group orphaned by their parent come to us, and we reap them
        # at once: a zombie would keep the group "alive" until init got to it.
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
    wd.read_feed()
    if wd.must_kill():
        _status("L")
        return 75
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=None,
            stdout=out if out >= 0 else subprocess.DEVNULL,
            stderr=None,
            close_fds=True,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )
    except OSError as exc:
        _status(f"E {exc.errno or 0} {exc.strerror or exc}")
        return 127
    finally:
        if out >= 0:
            os.close(out)
    pgid = proc.pid
    _status(f"P {pgid}")
    code: int | None = None
    killed_at: float | None = None
    while True:
        reaped = _reap(pgid)
        if reaped is not None and code is None:
            code = reaped
            proc.returncode = code  # reaped here, not by Popen
            _status(f"X {code}")
        if code is not None and not _group_alive(pgid):
            break
        for forwarded in wd.signals:
            _killpg(pgid, forwarded)
        wd.signals.clear()
        now = time.monotonic()
        if killed_at is None and wd.must_kill():
            _killpg(pgid, signal.SIGKILL)
            killed_at = now
        if killed_at is not None and now - killed_at > KILL_WAIT:
            break  # pragma: no cover - a process that SIGKILL does not end (stuck in D state)
        if killed_at is not None or code is not None:
            timeout = GROUP_POLL  # waiting for processes that are not our children
        else:
            timeout = max(0.0, wd.deadline - now)
        fds = [wake_r] if wd.eof else [wake_r, feed]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:  # pragma: no cover - retried by Python (PEP 475)
            ready = []
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):  # pragma: no cover
                    raise
        if feed in ready:
            wd.read_feed()
    return code if code is not None else 128 + signal.SIGKILL


if __name__ == "__main__":
    sys.exit(main())
