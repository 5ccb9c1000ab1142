"""The docker (testcontainers) backend of the ``etcd`` fixture.

These run only with ``--aioelect-backend=docker`` (CI starts a private Docker
engine and builds the image with ``scripts/``); otherwise they are skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from aioelect._connection import Connection
from aioelect._exceptions import AioelectError
from aioelect.testing._docker import DockerEtcd
from aioelect.testing._plugin import EtcdServer

pytestmark = pytest.mark.docker


# Session scope: it runs before the session-scoped ``etcd`` fixture, so that a
# skipped module starts no etcd at all.
@pytest.fixture(scope="session", autouse=True)
def _docker_backend_only(request: pytest.FixtureRequest) -> None:
    backend = request.config.getoption("--aioelect-backend")
    if backend != "docker":
        pytest.skip(f"docker backend tests need --aioelect-backend=docker (backend is {backend!r})")


@pytest.fixture
def image(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--aioelect-etcd-image"))


def _containers_named(name: str) -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on PATH to list containers")
    out = subprocess.run(
        [docker, "ps", "-a", "--quiet", "--filter", f"name=^{name}$"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return out.split()


def _port_open(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def test_etcd_fixture_uses_the_docker_backend(etcd: EtcdServer) -> None:
    """With --aioelect-backend=docker the etcd fixture is one container on a loopback port."""
    assert etcd.backend == "docker"
    assert etcd.process is None
    assert len(etcd.endpoints) == 1
    host, _, port = etcd.endpoint.rpartition(":")
    assert host == "127.0.0.1"
    assert 0 < int(port) < 65536


@pytest.mark.asyncio
async def test_etcd_fixture_serves_requests(etcd: EtcdServer) -> None:
    """The container's etcd answers a real Status request."""
    conn = Connection.create(etcd.endpoint)
    try:
        await conn.connect()
        revision = await conn.status()
    finally:
        await conn.close()
    assert revision >= 1


@pytest.mark.asyncio
async def test_cleanup_removes_the_container(image: str) -> None:
    """DockerEtcd serves after start(); cleanup() leaves no container and no open port."""
    server = DockerEtcd(image)
    try:
        server.start()
        endpoint = server.endpoint
        assert _containers_named(server.name), "the container should exist while running"
        conn = Connection.create(endpoint)
        try:
            await conn.connect()
            assert await conn.status() >= 1
        finally:
            await conn.close()
    finally:
        server.cleanup()
    assert _containers_named(server.name) == []
    assert not _port_open(endpoint)
    server.cleanup()  # idempotent


def test_missing_image_fails_clearly() -> None:
    """start() with an unavailable image raises AioelectError naming it and leaves no container."""
    server = DockerEtcd("aioelect/no-such-image:0")
    with pytest.raises(AioelectError, match=r"no-such-image.*docker-etcd-image\.sh"):
        server.start()
    assert _containers_named(server.name) == []
