"""The docs say what the code does: metrics, CLI, log messages, links, and no placeholders.

The site itself (build, links, rendering in a browser) is tested in test_docs_site.py,
the code blocks in test_doc_snippets.py, the tutorial in test_docs_tutorial.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def exported_metrics() -> dict[str, set[str]]:
    """Every metric name the Prometheus collector exports (with suffixes), and its labels."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    import aioelect
    import aioelect.prometheus

    elector = aioelect.Elector(endpoints="127.0.0.1:1", prefix="/docs")  # never entered
    collector = aioelect.prometheus.ElectorCollector(elector)
    CollectorRegistry().register(collector)
    metrics: dict[str, set[str]] = {}
    for family in collector.describe():
        labels = set(family._labelnames) if hasattr(family, "_labelnames") else set()
        names = {family.name}
        if family.type == "counter":
            names = {family.name + "_total"}
        elif family.type == "summary":
            names = {family.name, family.name + "_count", family.name + "_sum"}
        for name in names:
            metrics[name] = labels
    return metrics


def test_readme_quick_start_commands() -> None:
    """The README's two quick-start commands are the ones CI and the demo rely on."""
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pip install -e '.[demo]' && .venv/bin/aioelect demo" in readme
    assert ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -n 2" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "TEST_CMD=(.venv/bin/python -m pytest -n 2)" in ci


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


def test_readme_links_into_the_docs() -> None:
    """The README is the front door: it links to the tutorial and the other kinds of pages."""
    readme = (ROOT / "README.md").read_text()
    for target in ("docs/tutorial.md", "docs/how-to/", "docs/explanation/", "docs/reference/"):
        assert f"]({target}" in readme, target


def test_every_page_is_in_the_nav() -> None:
    """mkdocs.yml's nav lists every page under docs/ and nothing else."""
    nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav == pages


def test_no_placeholder_urls() -> None:
    """Nothing points to a placeholder host (example.invalid) in the site or the metadata."""
    files = [ROOT / "mkdocs.yml", ROOT / "pyproject.toml", ROOT / "README.md"]
    files += list(DOCS.rglob("*.md"))
    for f in files:
        assert "example.invalid" not in f.read_text(), f


def test_metrics_reference_matches_the_collector() -> None:
    """The metrics table lists exactly the collector's metrics, with their labels."""
    metrics = exported_metrics()
    table = {}
    for m in re.finditer(
        r"^\| `(aioelect_\w+)` \| (\w+) \| ([^|]*) \|", page("reference/metrics.md"), re.M
    ):
        table[m[1]] = set(re.findall(r"`(\w+)`", m[3]))
    documented = {n for n in metrics if not re.search(r"_(count|sum)$", n) or n[:-4] in metrics}
    base = {n for n in documented if not (n.endswith(("_count", "_sum")))}
    assert set(table) == base
    for name, labels in table.items():
        assert labels == metrics[name], name


def test_cli_reference_lists_every_option() -> None:
    """Every option of every subcommand, its variable and every exit code are in the CLI page."""
    import argparse

    from aioelect import cli

    text = page("reference/cli.md")
    parser = cli.build_parser()
    seen = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                assert f"`{name}" in text, name
                seen += [
                    o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")
                ]
        else:
            seen += [o for o in action.option_strings if o not in ("-h", "--help")]
    for option in seen:
        assert f"`{option}" in text, option
    source = (ROOT / "aioelect" / "cli.py").read_text()
    for var in set(re.findall(r'_env\("(\w+)"', source)):
        assert f"AIOELECT_{var}" in text, var
    assert "AIOELECT_TOKEN" in text
    for code in (cli.EXIT_LOST, cli.EXIT_UNAVAILABLE, cli.EXIT_USAGE, 127, 1):
        assert f"\n| {code} |" in text, code


def _log_messages() -> list[tuple[str, str]]:
    """(level, format string) of every log call in the library."""
    found = []
    for path in sorted((ROOT / "aioelect").rglob("*.py")):
        if "testing" in path.parts or path.name == "_demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warning", "error", "exception")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append((node.func.attr, str(node.args[0].value)))
    return found


def test_troubleshooting_explains_every_log_message() -> None:
    """Each log message the library can write is on the troubleshooting page."""
    text = page("troubleshooting.md")
    messages = _log_messages()
    assert len(messages) > 30
    missing = [f"{level}: {msg}" for level, msg in messages if f"`{msg}`" not in text]
    assert not missing, "\n".join(missing)


def test_exception_tree_page_names_every_exception() -> None:
    """The exceptions page shows every public exception class."""
    import aioelect

    text = page("reference/exceptions.md")
    for name in aioelect.__all__:
        obj = getattr(aioelect, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert f"::: aioelect.{name}" in text, name
            assert re.search(rf"[├└]── {name}\b|^{name}$", text, re.M), name


def test_api_reference_shows_every_public_name() -> None:
    """Every name in aioelect.__all__ is rendered on a reference page."""
    import aioelect

    text = "".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    for name in aioelect.__all__:
        assert f"::: aioelect.{name}\n" in text, name
