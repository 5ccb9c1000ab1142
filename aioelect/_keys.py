"""The key layout, shared with etcd's Go ``concurrency.Election``.

A candidate of election ``name`` under ``prefix`` writes the key
``{prefix}/{name}/{lease id in lowercase hex}`` with its value, attached to its
session lease. The leader is the key under ``{prefix}/{name}/`` with the lowest
create revision. ``etcdctl elect {prefix}/{name} VALUE`` joins the same
election. Pure functions, no I/O.
"""

from __future__ import annotations

__all__ = (
    "PREFERENCE_MARK",
    "TRANSFER_SUFFIX",
    "candidate_key",
    "election_prefix",
    "prefix_range_end",
    "preference_key",
    "split_key",
    "split_preference_key",
    "split_transfer_key",
    "transfer_key",
)

#: aioelect's own transfer record of election ``name`` is ``{prefix}/{name}`` + this
#: suffix: outside ``{prefix}/{name}/`` (so Go candidates never see it) and
#: unambiguous, since names cannot contain NUL.
TRANSFER_SUFFIX = b"\x00transfer"


def election_prefix(prefix: str, name: str) -> bytes:
    """Return the key prefix of one election: ``{prefix}/{name}/``."""
    return f"{prefix}/{name}/".encode()


def candidate_key(prefix: str, name: str, lease_id: int) -> bytes:
    """Return the key a candidate with lease ``lease_id`` writes in election ``name``."""
    return f"{prefix}/{name}/{lease_id:x}".encode()


def prefix_range_end(prefix: bytes) -> bytes:
    """Return the ``range_end`` that makes a range cover every key starting with ``prefix``."""
    s = bytearray(prefix)
    for i in reversed(range(len(s))):
        if s[i] < 0xFF:
            s[i] += 1
            return bytes(s[: i + 1])
    return b"\x00"  # every key (etcd's convention)


def split_key(root: bytes, key: bytes) -> str | None:
    """Return the election name of ``key``, a key under ``root`` (``{prefix}/``).

    Keys with no ``/`` after the name are not candidate keys: None.
    """
    if not key.startswith(root):
        return None
    rest = key[len(root) :]
    slash = rest.find(b"/")
    if slash <= 0:
        return None
    try:
        return rest[:slash].decode()
    except UnicodeDecodeError:
        return None


def transfer_key(prefix: str, name: str) -> bytes:
    """The key of election ``name``'s transfer record (value: the target's candidate key)."""
    return f"{prefix}/{name}".encode() + TRANSFER_SUFFIX


def split_transfer_key(root: bytes, key: bytes) -> str | None:
    """The election name of a transfer record key under ``root``, else None."""
    if not key.startswith(root) or not key.endswith(TRANSFER_SUFFIX):
        return None
    name = key[len(root) : -len(TRANSFER_SUFFIX)]
    if not name or b"/" in name:
        return None
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


#: A candidate's preference record (priority, health) in election ``name`` is
#: ``{prefix}/{name}`` + this mark + ``{lease hex}``, attached to the candidate's
#: session lease: outside ``{prefix}/{name}/`` (Go candidates never see it).
PREFERENCE_MARK = b"\x00pref\x00"


def preference_key(prefix: str, name: str, lease_id: int) -> bytes:
    """The key of the preference record of the candidate with lease ``lease_id``."""
    return f"{prefix}/{name}".encode() + PREFERENCE_MARK + f"{lease_id:x}".encode()


def split_preference_key(root: bytes, key: bytes) -> str | None:
    """The election name of a preference record key under ``root``, else None."""
    if not key.startswith(root):
        return None
    head, mark, lease = key[len(root) :].partition(PREFERENCE_MARK)
    if not mark or not head or not lease or b"/" in head or b"\x00" in lease:
        return None
    try:
        return head.decode()
    except UnicodeDecodeError:
        return None
