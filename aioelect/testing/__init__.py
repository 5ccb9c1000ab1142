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
- ``etcd_partition_cluster``: a :class:`PartitionCluster`: 3 members and 3
  client slots, each in a Linux network namespace of its own, whose links
  its :class:`Network` cuts (isolate, split, bridge, one-way drop), loses or
  delays; skipped where namespaces cannot be made (not root, no ``ip``/``nft``).
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
from ._netns import NetnsError as NetnsError
from ._netns import netem_unavailable as netem_unavailable
from ._netns import netns_unavailable as netns_unavailable
from ._network import Impairment as Impairment
from ._network import Network as Network
from ._partition import PartitionCluster as PartitionCluster
from ._plugin import EtcdServer as EtcdServer
from ._proxy import FaultProxy as FaultProxy

__all__ = (
    "EtcdCluster",
    "EtcdServer",
    "FaultProxy",
    "Impairment",
    "NetnsError",
    "Network",
    "PartitionCluster",
    "netem_unavailable",
    "netns_unavailable",
)
