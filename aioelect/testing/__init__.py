"""Test helpers for code that uses aioelect: a pytest plugin and fault injection.

The plugin is registered through the ``pytest11`` entry point, so installing
``aioelect[testing]`` makes these fixtures available:

- ``etcd``: an :class:`EtcdServer` (endpoint of a running etcd) for the whole
  session: the ``AIOELECT_TEST_ENDPOINTS`` env var, else a testcontainers
  container when a Docker engine answers, else the embedded binary. Choose
  with ``--aioelect-backend=env|docker|embedded``.
- ``etcd_process``: a fresh embedded etcd for one test that the test may stop,
  kill, pause and restart.
- ``etcd_cluster``: an :class:`EtcdCluster` of 3 members on loopback.
- ``fault_proxy``: a :class:`FaultProxy` in front of ``etcd`` that delays,
  blackholes or resets traffic.
- ``etcd_prefix``: a key prefix unique to the test.
"""

try:
    import pytest  # noqa: F401  (the plugin and its fixtures need it)
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a venv without pytest
    raise ModuleNotFoundError(
        "aioelect.testing needs pytest and pytest-asyncio: "
        "pip install 'aioelect[testing]' (adds pytest, pytest-asyncio, testcontainers and "
        "the embedded etcd binary)",
        name=exc.name,
    ) from exc

from ._cluster import EtcdCluster as EtcdCluster
from ._plugin import EtcdServer as EtcdServer
from ._proxy import FaultProxy as FaultProxy

__all__ = ("EtcdCluster", "EtcdServer", "FaultProxy")
