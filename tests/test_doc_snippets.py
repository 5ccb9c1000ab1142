"""Every code block of the docs and the README is run, type-checked or parsed (see doc_snippets)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from doc_snippets import ROOT, Snippet, all_snippets, as_module

from aioelect.testing import EtcdServer

SNIPPETS = all_snippets()
PYTHON = [s for s in SNIPPETS if s.lang == "python"]


def by_mode(*modes: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.mode in modes]


def params(snippets: list[Snippet]) -> list[object]:
    return [pytest.param(s, id=s.id) for s in snippets]


def test_every_block_has_a_known_mode() -> None:
    """Each fenced block has a mode that fits its language (a typo is an error, not a skip)."""
    bad = [f"{s.id}: {e}" for s in SNIPPETS for e in s.errors]
    assert not bad, "\n".join(bad)
    assert len(PYTHON) >= 25  # the parser found the blocks


def _mypy_lines(snippet: Snippet) -> int:
    """How many lines the module adds before the snippet's first line."""
    return len(as_module(snippet).splitlines()) - len(snippet.code.splitlines())


def test_python_snippets_type_check(tmp_path: Path) -> None:
    """mypy finds no error in any python block (so no page shows an undefined name)."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed (the 'dev' extra)")
    files = {}
    for s in PYTHON:
        f = tmp_path / f"{s.module_name}.py"
        f.write_text(as_module(s))
        files[f.name] = s
    result = subprocess.run(
        [
            mypy,
            "--no-error-summary",
            "--show-error-codes",
            "--check-untyped-defs",
            "--warn-unused-ignores",
            "--disable-error-code",
            "import-untyped",
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "doc-snippets"),
            "--config-file",
            os.devnull,
            *sorted(str(tmp_path / name) for name in files),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    errors = []
    for line in result.stdout.splitlines():
        m = re.match(r"^(?P<file>[^:]+\.py):(?P<line>\d+): (?P<msg>.*)$", line)
        if m is None or " note: " in f" {m['msg']}":
            continue
        s = files[Path(m["file"]).name]
        at = s.line + int(m["line"]) - _mypy_lines(s)
        errors.append(f"{s.path.relative_to(ROOT)}:{at}: {m['msg']}")
    assert result.returncode in (0, 1), result.stderr
    assert not errors, "\n".join(errors)
    assert result.returncode == 0, result.stdout + result.stderr


def _env(etcd: EtcdServer) -> dict[str, str]:
    env = dict(os.environ, AIOELECT_ENDPOINTS=etcd.endpoint, PYTHONUNBUFFERED="1")
    env.pop("AIOELECT_PREFIX", None)
    return env


@pytest.mark.parametrize("snippet", params(by_mode("run")))
def test_run_snippet(snippet: Snippet, etcd: EtcdServer, tmp_path: Path) -> None:
    """A 'run' block runs as written against a real etcd and exits 0."""
    env = _env(etcd)
    if "needs-etcdctl" in snippet.args:
        from aioelect._embedded import find_etcd_binary

        try:
            etcdctl = find_etcd_binary("etcdctl")
        except Exception as exc:
            pytest.skip(f"no etcdctl: {exc}")
        env["PATH"] = f"{Path(etcdctl).parent}{os.pathsep}{env['PATH']}"
    script = tmp_path / (snippet.title or "snippet.py")
    script.write_text(snippet.code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, f"{snippet.id} exited {result.returncode}:\n{result.stderr}"


@pytest.mark.parametrize("snippet", params(by_mode("pytest")))
def test_pytest_snippet(snippet: Snippet, etcd: EtcdServer, tmp_path: Path) -> None:
    """A 'pytest' block is a test file that passes with the plugin against the test etcd."""
    test_file = tmp_path / (snippet.title or "test_snippet.py")
    assert test_file.name.startswith("test_"), "a pytest block's title must be test_*.py"
    test_file.write_text(snippet.code)
    env = dict(_env(etcd), AIOELECT_TEST_ENDPOINTS=etcd.endpoint)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            "--aioelect-backend=env",
            str(test_file),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"{snippet.id}:\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout


def _cli_commands(code: str) -> list[list[str]]:
    """The argument lists of the ``aioelect`` commands in a shell block."""
    commands = []
    for raw in code.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word == "aioelect" or word.endswith("/aioelect"):
                commands.append(words[i + 1 :])
                break
    return commands


SHELL = by_mode("shell") + [s for s in by_mode("tutorial") if s.lang == "bash"]


@pytest.mark.parametrize("snippet", params(SHELL))
def test_shell_snippet(snippet: Snippet) -> None:
    """A shell block is valid bash, and each of its aioelect commands parses with the CLI."""
    from aioelect.cli import build_parser

    result = subprocess.run(["bash", "-n"], input=snippet.code, capture_output=True, text=True)
    assert result.returncode == 0, f"{snippet.id}: {result.stderr}"
    for argv in _cli_commands(snippet.code):
        if "--" in argv:
            argv = argv[: argv.index("--")]
        if argv and argv[0] == "run":
            argv = [*argv, "placeholder-for-cmd"]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{snippet.id}: 'aioelect {' '.join(argv)}' does not parse ({exc})")


@pytest.mark.parametrize("snippet", params(by_mode("yaml", "prometheus-rules")))
def test_yaml_snippet(snippet: Snippet) -> None:
    """A YAML block parses; alert rules use only metrics (and labels) the collector exports."""
    yaml = pytest.importorskip("yaml")

    docs = list(yaml.safe_load_all(snippet.code))
    assert docs and all(d is not None for d in docs), snippet.id
    if snippet.mode != "prometheus-rules":
        return
    from test_docs import exported_metrics

    metrics = exported_metrics()
    (doc,) = docs
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"]
        for name in re.findall(r"\baioelect_\w+", rule["expr"]):
            assert name in metrics, f"{rule['alert']}: no metric {name}"
            for labels in re.findall(r"by \(([^)]*)\)", rule["expr"]):
                for label in (x.strip() for x in labels.split(",")):
                    assert label in metrics[name], f"{rule['alert']}: {name} has no {label}"


@pytest.mark.parametrize("snippet", params(by_mode("toml")))
def test_toml_snippet(snippet: Snippet) -> None:
    """A TOML block parses."""
    tomllib = pytest.importorskip("tomllib")
    assert tomllib.loads(snippet.code), snippet.id


@pytest.mark.parametrize("snippet", params(by_mode("go")))
def test_go_snippet(snippet: Snippet) -> None:
    """Go blocks are fragments of a Go program: not compiled here."""
    pytest.skip("a Go fragment: not compiled (no Go toolchain in CI); its names are etcd's API")
