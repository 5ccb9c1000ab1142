"""The code blocks of the documentation (docs/**/*.md and README.md), and how each is tested.

A fenced block's mode comes from an HTML comment on the line just before it (invisible on
the site and on GitHub), else from its language:

    <!-- snippet: MODE [ARG...] -->

python modes:
  check               a complete module: type-checked (mypy), not run (a server, a loop)
  run [needs-etcdctl] a complete program: type-checked, then run against the test etcd
                      (AIOELECT_ENDPOINTS set), must exit 0
  fragment [NAME...]  statements: wrapped in ``async def`` with ``elector``, ``term``,
                      ``leadership``, ``runner`` (typed) and the NAMEs (``Any``) as
                      parameters, then type-checked: any other undefined name fails
  pytest              a test file: type-checked, then run by pytest against the test etcd
  tutorial            docs/tutorial.md's files and commands (python or bash): run by
                      test_docs_tutorial.py (python: type-checked; bash: as shell)
other languages (mode from the language, or given):
  shell    (bash, sh)  ``bash -n``; every ``aioelect ...`` command line parses with the CLI's parser
  yaml                 parses; ``prometheus-rules``: also every metric the rules use exists
  toml                 parses
  go                   not compiled (no Go toolchain in CI): reported as a skip
  output   (text, "")  a program's output, not code
  mermaid              a diagram: drawn and checked in the browser (tests/test_docs_site.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PYTHON_MODES = {"check", "run", "fragment", "pytest", "tutorial"}
OTHER_MODES = {"shell", "yaml", "prometheus-rules", "toml", "go", "output", "mermaid"}
DEFAULT_MODE = {
    "python": "check",
    "bash": "shell",
    "sh": "shell",
    "yaml": "yaml",
    "toml": "toml",
    "go": "go",
    "text": "output",
    "": "output",
    "mermaid": "mermaid",
}

_FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>```+)(?P<lang>[\w-]*)(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<spec>[^>]*?)\s*-->\s*$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass
class Snippet:
    """One fenced code block."""

    path: Path  # the Markdown file
    line: int  # 1-based line of the opening fence
    lang: str
    mode: str
    args: list[str]
    code: str
    title: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """``docs/how-to/fastapi.md:17`` (relative to the repository)."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def module_name(self) -> str:
        """A Python module name unique to this snippet."""
        stem = re.sub(r"\W", "_", str(self.path.relative_to(ROOT).with_suffix("")))
        return f"snippet_{stem}_{self.line}"


def doc_files() -> list[Path]:
    """The Markdown files whose code blocks are tested."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(path: Path) -> list[Snippet]:
    """The fenced blocks of one Markdown file, with their modes."""
    lines = path.read_text().splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, ticks = m["indent"], m["ticks"]
        lang, info = m["lang"], m["info"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].startswith(indent + ticks) and lines[i].strip() == ticks
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        errors: list[str] = []
        if marker is not None:
            mode, *args = marker["spec"].split()
        elif lang in DEFAULT_MODE:
            mode, args = DEFAULT_MODE[lang], []
        else:
            mode, args = "?", []
            errors.append(f"no snippet marker and no default mode for language {lang!r}")
        if mode not in PYTHON_MODES | OTHER_MODES:
            errors.append(f"unknown snippet mode {mode!r}")
        elif mode != "tutorial" and (mode in PYTHON_MODES) != (lang == "python"):
            errors.append(f"mode {mode!r} does not fit a {lang or 'plain'!r} block")
        title = _TITLE.search(info)
        snippets.append(
            Snippet(
                path=path,
                line=start + 1,
                lang=lang,
                mode=mode,
                args=args,
                code="\n".join(body) + "\n",
                title=title["title"] if title else None,
                errors=errors,
            )
        )
    return snippets


def all_snippets() -> list[Snippet]:
    """Every fenced block of the documentation."""
    return [s for path in doc_files() for s in parse(path)]


FRAGMENT_PARAMS = {
    "elector": "aioelect.Elector",
    "term": "aioelect.Term",
    "leadership": "aioelect.Leadership",
    "runner": "aioelect.LeadershipRunner",
}


def as_module(snippet: Snippet) -> str:
    """The Python module that is type-checked for a python snippet."""
    if snippet.mode != "fragment":
        return snippet.code
    params = [f"{name}: {ann}" for name, ann in FRAGMENT_PARAMS.items()]
    params += [f"{name}: Any" for name in snippet.args]
    body = "".join(f"    {line}\n" if line.strip() else "\n" for line in snippet.code.splitlines())
    return (
        "from typing import Any\n\nimport aioelect\n\n\n"
        f"async def _fragment({', '.join(params)}) -> None:\n{body}"
    )
