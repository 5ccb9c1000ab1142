"""Fixtures of the chaos suite: candidate processes that never outlive their test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Spawns ``candidate.py`` processes; every one is killed (SIGCONT, SIGKILL) at teardown."""
    spawner = Procs(tmp_path)
    try:
        yield spawner
    finally:
        spawner.cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long soak and the partition tests run only when asked for.

    ``pytest tests/chaos -m slow`` runs the long soak (a plain ``pytest`` runs the short
    soak instead); ``pytest -m partition`` runs the network-partition tests (Linux network
    namespaces, root: about 1.5 minutes, run once by CI rather than on every Python). A
    test asked for by node id always runs. Without this hook a marker is only a way to
    deselect tests, so the default run would include both.
    """
    markexpr = config.getoption("markexpr", "") or ""
    by_id = [arg for arg in config.args if "::" in arg]
    opt_in = {name for name in ("slow", "partition") if name in markexpr}
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    here = Path(__file__).parent
    for item in items:
        off = {
            name
            for name in ("slow", "partition")
            if name not in opt_in and item.get_closest_marker(name) is not None
        }
        asked = any(item.nodeid.endswith(arg.split("tests/", 1)[-1]) for arg in by_id)
        if off and here in Path(item.path).parents and not asked:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
