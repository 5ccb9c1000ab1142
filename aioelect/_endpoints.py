"""Endpoints and TLS: parsing and checking the user's settings (no I/O but name resolution).

:func:`parse_endpoints` turns ``host:port``, ``http://host:port`` and
``https://host:port`` (a str, a comma-separated str, or a list) into
:class:`Endpoint` values, refusing with a :class:`ConfigError` that names the
field what it cannot use; :class:`TLSConfig` checks its files at
construction and reads them when the channel is built. :func:`grpc_target`
makes the one gRPC target that fails over along several endpoints; it is
the only function here that may block (name resolution), and the connection
calls it in a worker thread on entry.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias, Union
from urllib.parse import urlsplit

import grpc

from ._exceptions import ConfigError

__all__ = (
    "Endpoint",
    "StrPath",
    "TLSConfig",
    "grpc_target",
    "needs_resolving",
    "parse_endpoints",
)

StrPath: TypeAlias = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for the connection to etcd.

    Attributes:
        ca_file: PEM file of the CA that signed etcd's server certificate;
            None uses the system's trust store.
        cert_file: PEM client certificate, for etcd's ``--client-cert-auth``.
        key_file: PEM private key of ``cert_file``; both or neither.
        server_name: the name to check the server certificate against, when
            it differs from the endpoint's host.
    """

    ca_file: StrPath | None = None
    cert_file: StrPath | None = None
    key_file: StrPath | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("tls", "cert_file and key_file must be given together")
        for field in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, field)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"tls.{field}", f"no such file: {os.fspath(path)!r}")

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files and build the gRPC channel credentials."""

        def read(path: StrPath | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class Endpoint:
    """One parsed etcd endpoint."""

    host: str
    port: int
    secure: bool | None  # True: https://, False: http://, None: no scheme

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = {True: "https://", False: "http://", None: ""}[self.secure]
        return f"{scheme}{host}:{self.port}"


def parse_endpoints(endpoints: object, field: str = "endpoints") -> tuple[Endpoint, ...]:
    """Parse ``host:port``, ``http://host:port`` or ``https://host:port`` (a str, a
    comma-separated str, or a list of str) into endpoints."""
    if isinstance(endpoints, str):
        items = [e.strip() for e in endpoints.split(",")]
    elif isinstance(endpoints, (list, tuple)):
        items = list(endpoints)
    else:
        raise ConfigError(field, f"must be a str or a list of str, not {type(endpoints).__name__}")
    if not items:
        raise ConfigError(field, "must name at least one endpoint")
    parsed: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(field, f"each endpoint must be a non-empty str, got {item!r}")
        if "@" in item:
            # Not echoed: it may hold a password.
            raise ConfigError(
                field,
                "an endpoint must not contain user info (user:password@); "
                "use username= and password=",
            )
        if any(c.isspace() for c in item):
            raise ConfigError(field, f"endpoint {item!r} must not contain whitespace")
        text = item if "://" in item else "//" + item
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(field, f"cannot parse endpoint {item!r}: {exc}") from None
        if parts.scheme not in ("", "http", "https"):
            raise ConfigError(
                field,
                f"endpoint {item!r}: scheme must be http:// or https://, not {parts.scheme!r}",
            )
        if not parts.hostname or port is None or port == 0:
            raise ConfigError(
                field, f"endpoint {item!r} must be host:port, http://host:port or https://host:port"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(field, f"endpoint {item!r} must not have a path or query")
        secure = {"": None, "http": False, "https": True}[parts.scheme]
        parsed.append(Endpoint(parts.hostname, port, secure))
    schemes = {e.secure for e in parsed if e.secure is not None}
    if len(schemes) > 1:
        raise ConfigError(field, "endpoints mix http:// and https://")
    return tuple(parsed)


def needs_resolving(endpoints: Sequence[Endpoint]) -> bool:
    """Whether :func:`grpc_target` must resolve host names (blocking) for these endpoints."""
    if len(endpoints) == 1:
        return False
    for e in endpoints:
        try:
            ipaddress.ip_address(e.host)
        except ValueError:
            return True
    return False


def grpc_target(endpoints: Sequence[Endpoint]) -> str:
    """One gRPC target for all endpoints: pick_first fails over along the list.

    Several endpoints make one ``ipv4:`` (or ``ipv6:``) target of addresses, so
    host names among them are resolved here with the blocking
    ``socket.getaddrinfo`` (when :func:`needs_resolving`): the connection calls
    this in a worker thread when it connects, never in a constructor.

    Raises:
        ConfigError: a host name cannot be resolved.
    """
    if len(endpoints) == 1:
        e = endpoints[0]
        host = f"[{e.host}]" if ":" in e.host else e.host
        return f"{host}:{e.port}"
    v4: list[str] = []
    v6: list[str] = []
    for e in endpoints:
        try:
            addr = ipaddress.ip_address(e.host)
            addrs = [(addr.version, str(addr))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(e.host, e.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ConfigError("endpoints", f"cannot resolve {e.host!r}: {exc}") from None
            addrs = [(6 if fam == socket.AF_INET6 else 4, str(sa[0])) for fam, *_, sa in infos]
        for version, a in addrs:
            (v4 if version == 4 else v6).append(
                f"{a}:{e.port}" if version == 4 else f"[{a}]:{e.port}"
            )
    if v4:
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    return "ipv6:" + ",".join(dict.fromkeys(v6))
