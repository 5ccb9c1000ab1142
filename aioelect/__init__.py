"""aioelect: asyncio-native leader election on etcd v3.

Everything public is re-exported here; the modules behind it are private.
"""

from ._config import Duration as Duration
from ._config import ElectorConfig as ElectorConfig
from ._elector import Elector as Elector
from ._embedded import EmbeddedEtcd as EmbeddedEtcd
from ._endpoints import TLSConfig as TLSConfig
from ._exceptions import AioelectError as AioelectError
from ._exceptions import AuthenticationFailed as AuthenticationFailed
from ._exceptions import ConfigError as ConfigError
from ._exceptions import ElectorClosed as ElectorClosed
from ._exceptions import EtcdError as EtcdError
from ._exceptions import EtcdUnavailable as EtcdUnavailable
from ._exceptions import LeadershipLost as LeadershipLost
from ._exceptions import NoSuchCandidate as NoSuchCandidate
from ._exceptions import NotLeader as NotLeader
from ._exceptions import PermissionDenied as PermissionDenied
from ._exceptions import RequestTooLarge as RequestTooLarge
from ._health import Health as Health
from ._health import health as health
from ._identity import node_identity as node_identity
from ._jobs import LeaderOnly as LeaderOnly
from ._jobs import LeaderOnlyStatistics as LeaderOnlyStatistics
from ._jobs import leader_only as leader_only
from ._leadership import Leadership as Leadership
from ._lease import LeaderLease as LeaderLease
from ._models import CandidateInfo as CandidateInfo
from ._models import ElectorStatistics as ElectorStatistics
from ._models import LeaderInfo as LeaderInfo
from ._preference import version_priority as version_priority
from ._runner import LeadershipRunner as LeadershipRunner
from ._shardinfo import Shard as Shard
from ._shardinfo import ShardEvent as ShardEvent
from ._shardinfo import ShardGroupStatistics as ShardGroupStatistics
from ._shards import ShardGroup as ShardGroup
from ._term import Term as Term

__version__ = "0.1.0.dev0"

__all__ = (
    "AioelectError",
    "AuthenticationFailed",
    "CandidateInfo",
    "ConfigError",
    "Duration",
    "Elector",
    "ElectorClosed",
    "ElectorConfig",
    "ElectorStatistics",
    "EmbeddedEtcd",
    "EtcdError",
    "EtcdUnavailable",
    "Health",
    "LeaderInfo",
    "LeaderLease",
    "LeaderOnly",
    "LeaderOnlyStatistics",
    "Leadership",
    "LeadershipLost",
    "LeadershipRunner",
    "NoSuchCandidate",
    "NotLeader",
    "PermissionDenied",
    "RequestTooLarge",
    "Shard",
    "ShardEvent",
    "ShardGroup",
    "ShardGroupStatistics",
    "TLSConfig",
    "Term",
    "health",
    "leader_only",
    "node_identity",
    "version_priority",
)
