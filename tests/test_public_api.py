"""The public surface: __all__ matches what the package exports, and nothing drifts."""

from __future__ import annotations

import aioelect
import aioelect.testing


def _public_names(module: object) -> set[str]:
    return {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("aioelect")
    }


def test_all_is_a_sorted_tuple() -> None:
    """__all__ is a tuple, sorted, without duplicates."""
    assert isinstance(aioelect.__all__, tuple)
    assert list(aioelect.__all__) == sorted(set(aioelect.__all__))


def test_all_matches_exports() -> None:
    """Every public name the package defines is in __all__, and every __all__ name exists."""
    aliases = {"Duration"}  # type aliases carry no __module__ of ours
    assert _public_names(aioelect) | aliases == set(aioelect.__all__)
    for name in set(aioelect.__all__) - aliases:
        assert getattr(aioelect, name).__module__.startswith("aioelect._"), name


def test_testing_all_matches_exports() -> None:
    """aioelect.testing re-exports exactly its __all__."""
    assert _public_names(aioelect.testing) == set(aioelect.testing.__all__)


def test_public_names_are_documented() -> None:
    """Every public name has a docstring."""
    for name in set(aioelect.__all__) - {"Duration"}:
        assert (getattr(aioelect, name).__doc__ or "").strip(), name


def test_exception_tree() -> None:
    """Every error is an AioelectError; ConfigError is also a ValueError."""
    for name in (
        "LeadershipLost",
        "NotLeader",
        "NoSuchCandidate",
        "ElectorClosed",
        "EtcdUnavailable",
        "ConfigError",
        "EtcdError",
    ):
        assert issubclass(getattr(aioelect, name), aioelect.AioelectError)
    assert issubclass(aioelect.ConfigError, ValueError)
    assert issubclass(aioelect.EtcdUnavailable, aioelect.EtcdError)
