"""The testcontainers backend of the ``etcd`` fixture (placeholder: being written)."""

from __future__ import annotations

__all__ = ("DockerEtcd", "docker_engine_available")


def docker_engine_available() -> bool:
    """Whether a Docker engine answers."""
    return False


class DockerEtcd:
    """etcd in a container with host networking."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.endpoint = ""

    def start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass
