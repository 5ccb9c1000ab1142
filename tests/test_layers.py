"""The layer contract of aioelect's modules (scripts/import_graph.py; docs/explanation)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_aioelect_import_graph", ROOT / "scripts" / "import_graph.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_a_layer_above_and_there_is_no_cycle() -> None:
    """Every aioelect module is in one layer and imports (even for type hints) only its
    own layer and the layers below it, without a cycle."""
    script = _script()
    assert script.violations(script.graph(ROOT / "aioelect")) == []


def test_the_check_finds_an_upward_type_checking_import_and_a_cycle(tmp_path: Path) -> None:
    """An import of the facade under TYPE_CHECKING from the core, and the cycle it closes,
    are reported; a module in no layer too."""
    pkg = tmp_path / "aioelect"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_elector.py").write_text("from ._core import Core\n")
    (pkg / "_core.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._elector import Elector\n"
    )
    (pkg / "_stray.py").write_text("")
    script = _script()
    g = script.graph(pkg)
    assert g["aioelect._core"] == {"aioelect._elector": "t"}
    found = script.violations(g)
    assert any("aioelect._core (core) imports aioelect._elector (facade)" in v for v in found)
    assert "import cycle: aioelect._core -> aioelect._elector" in found
    assert any(v.startswith("aioelect._stray is in no layer") for v in found)
