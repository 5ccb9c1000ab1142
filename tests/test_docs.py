"""The docs stay in step with the README and the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_guide_matches_readme() -> None:
    """docs/guide.md is generated from README.md (run scripts/sync_docs.py after editing)."""
    spec = importlib.util.spec_from_file_location("sync_docs", ROOT / "scripts" / "sync_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "guide.md").read_text() == module.guide_text()


def test_readme_quick_start_commands() -> None:
    """The README's two quick-start commands are the ones CI and the demo rely on."""
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pip install -e '.[demo]' && .venv/bin/aioelect demo" in readme
    assert ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "TEST_CMD=(.venv/bin/python -m pytest)" in ci


def test_every_supported_python_is_tested() -> None:
    """CI, nox and the package metadata name the same Pythons, from requires-python's
    3.10 on."""
    ci = (ROOT / ".ci" / "run").read_text()
    ci_pythons = re.search(r"^SUPPORTED=\(([^)]*)\)", ci, re.MULTILINE)
    assert ci_pythons is not None
    nox_pythons = re.search(r"^PYTHONS = \[([^\]]*)\]", (ROOT / "noxfile.py").read_text(), re.M)
    assert nox_pythons is not None
    pyproject = (ROOT / "pyproject.toml").read_text()
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    expected = ["3.10", "3.11", "3.12", "3.13"]
    assert ci_pythons.group(1).split() == expected
    assert re.findall(r'"([\d.]+)"', nox_pythons.group(1)) == expected
    assert classifiers == expected
    assert 'requires-python = ">=3.10"' in pyproject
