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
    """The long soak runs only when asked for: ``pytest tests/chaos -m slow``.

    A plain ``pytest`` runs the short soak instead (the ``slow`` marker is
    otherwise only a way to deselect tests, so without this hook the default
    run would include the long soak).
    """
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    if any("[long]" in arg for arg in config.args):  # asked for by node id
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("slow") is not None and here in Path(item.path).parents:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
