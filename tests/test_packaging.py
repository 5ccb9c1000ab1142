"""Packaging: one version source, the CLI's --version, the testing extra's message.

No etcd is needed here: these check the installed distribution and the import paths.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import aioelect

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_source() -> None:
    """The distribution's version is read from aioelect.__version__ (hatch's dynamic
    version), so the two can never disagree."""
    assert importlib.metadata.version("aioelect") == aioelect.__version__


def test_cli_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioelect", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"aioelect {aioelect.__version__}"


def test_testing_without_pytest_names_the_extra() -> None:
    """``import aioelect.testing`` where pytest is missing says which extra to install,
    instead of a bare ModuleNotFoundError deep inside the plugin."""
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # as if pytest were not installed\n"
        "try:\n"
        "    import aioelect.testing\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
        "    print('name=' + str(exc.name))\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'aioelect[testing]'" in out.stdout
    assert "name=pytest" in out.stdout


def test_license_metadata() -> None:
    """PEP 639 license metadata, and the license text itself ships with the package."""
    meta = importlib.metadata.metadata("aioelect")
    assert meta["License-Expression"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
