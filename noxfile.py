"""Nox sessions: ``nox -s lint``, ``nox -s typing``, ``nox -s tests`` (all Pythons) or
``nox -s tests-3.12``, ``nox -s examples``. Arguments after ``--`` go to pytest.

The interpreters are found on PATH or through pyenv (any installed 3.10-3.13);
a missing one makes its session fail (``nox --no-error-on-missing-interpreters``
skips it instead)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "docs", "tests", "examples"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
ROOT = Path(__file__).resolve().parent


def _use_pyenv_pythons() -> None:
    """Let nox find every pyenv-installed Python of PYTHONS, not only pyenv's global one.

    pyenv's shims answer only for the active versions: make the latest
    installed patch of each wanted minor active too (after the global ones, so
    ``python3`` is unchanged), and append their bin folders to PATH for a
    shell without the shims. Does nothing without pyenv or with PYENV_VERSION set.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions = root / "versions"
    if "PYENV_VERSION" in os.environ or not versions.is_dir():
        return
    installed = sorted(
        (d.name for d in versions.iterdir() if re.fullmatch(r"\d+\.\d+\.\d+", d.name)),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    picks = [
        [v for v in installed if v.startswith(f"{minor}.")][-1]
        for minor in PYTHONS
        if any(v.startswith(f"{minor}.") for v in installed)
    ]
    if not picks:
        return
    try:
        active = (root / "version").read_text().split()
    except OSError:
        active = ["system"]
    os.environ["PYENV_ROOT"] = str(root)
    os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys([*active, *picks]))
    bins = [str(versions / v / "bin") for v in picks]
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *bins])


_use_pyenv_pythons()


def _pyproject() -> dict[str, Any]:
    """pyproject.toml as a dict (empty when nox runs on Python 3.10, without tomllib)."""
    if sys.version_info >= (3, 11):
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)
    return {}


def _extras_with(*extras: str) -> str:
    """``.[extras]`` keeping only the extras that pyproject.toml defines."""
    defined = _pyproject().get("project", {}).get("optional-dependencies")
    wanted = [e for e in extras if defined is None or e in defined]
    return f".[{','.join(wanted)}]" if wanted else "."


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the layer contract of the package's modules."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # No import of a layer above, not even for type hints, and no cycle
    # (docs/explanation/architecture.md).
    session.run("python", "scripts/import_graph.py", "--check")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict and pyright (standard) on the package (settings in pyproject.toml)."""
    # nox: pyright also reads this file.
    session.install(
        "-e", ".[test]", "mypy>=1.11", "pyright[nodejs]>=1.1.400", "exceptiongroup>=1.2", "nox"
    )
    # The configured paths that exist (mypy stops on a missing one).
    files = _pyproject().get("tool", {}).get("mypy", {}).get("files", [])
    paths = [p for p in files if (ROOT / p).exists()]
    session.run("mypy", *(session.posargs or paths))
    # The session's venv is the environment pyright resolves imports in.
    python = Path(session.bin) / ("python.exe" if os.name == "nt" else "python")
    session.run("pyright", "--pythonpath", str(python), *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The site (mkdocs-material + mkdocstrings), warnings as errors; then the doc tests
    (code blocks, tutorial, links, rendering in headless Chromium) via scripts/docs-check.sh."""
    session.install("-e", ".[docs,test]", "mypy")
    session.run("mkdocs", "build", "--strict", "-d", str(ROOT / "site"))
    session.run("bash", "scripts/docs-check.sh", env={"PY": session.bin + "/python"}, external=True)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on one Python version (two pytest-xdist workers unless arguments
    are given: ``nox -s tests -- tests/test_x.py`` runs those serially)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-n", "2"]))


EXAMPLES_TESTS = ROOT / "tests" / "test_examples.py"


# No venv to make when there is nothing to run.
@nox.session(venv_backend="venv" if EXAMPLES_TESTS.exists() else "none")
def examples(session: nox.Session) -> None:
    """The tests that run the examples (and the recipes), when they exist."""
    test_file = EXAMPLES_TESTS
    if not test_file.exists():
        session.skip(f"{test_file.relative_to(ROOT)} does not exist yet")
    session.install("-e", _extras_with("test", "examples"))
    recipes = ROOT / "tests" / "test_recipes.py"
    session.run("python", "-m", "pytest", str(test_file), str(recipes), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks (not a test): ``nox -s bench``, or ``nox -s bench -- --quick``.

    Writes bench/RESULTS.md, bench/results.json and bench/results.png; arguments
    after ``--`` go to bench/run.py (``--quick``, ``--profile``, ``--only floor,...``).
    """
    session.install("-e", _extras_with("test"), "matplotlib>=3.7", "py-spy>=0.3")
    session.run("python", "bench/run.py", *session.posargs)
