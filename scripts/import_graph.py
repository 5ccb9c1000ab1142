"""Print the import graph inside the ``aioelect`` package and its cycles; check its layers.

Usage (from the repository root)::

    python scripts/import_graph.py [--check] [package_dir]

One line per module: the package modules it imports, at any depth of the
file (``TYPE_CHECKING`` blocks and function bodies included; those are
marked ``[t]`` and ``[f]``), then every cycle (strongly connected component
of more than one module). It reads the source with ``ast`` and imports
nothing, so it runs without the package's dependencies.

``--check`` also checks the layer contract (:data:`LAYERS`, top to bottom;
docs/explanation/architecture.md explains it): a module imports only modules of its own
layer or of the layers below, never one above (not even for type hints),
every module is in exactly one layer, and there is no cycle. It exits 1 on
a violation. ``nox -s lint`` and ``tests/test_layers.py`` run it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The layers of ``aioelect``, top to bottom: a module may import modules of its own
#: layer (without a cycle) and of the layers below it, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "facade",
        (
            "aioelect",
            "aioelect.__main__",
            "aioelect.cli",
            "aioelect._demo",
            "aioelect._elector",
            "aioelect._health",
            "aioelect._runner",
            "aioelect.prometheus",
            "aioelect.testing",
            "aioelect.testing._cluster",
            "aioelect.testing._docker",
            "aioelect.testing._netns",
            "aioelect.testing._network",
            "aioelect.testing._partition",
            "aioelect.testing._plugin",
            "aioelect.testing._proxy",
        ),
    ),
    (
        "blocks",
        (
            "aioelect._callbacks",
            "aioelect._candidacy",
            "aioelect._hold",
            "aioelect._jobs",
            "aioelect._leadership",
            "aioelect._lease",
            "aioelect._shardinfo",
            "aioelect._shards",
        ),
    ),
    ("campaign", ("aioelect._campaign",)),
    ("term", ("aioelect._term",)),
    (
        "core",
        (
            "aioelect._batch",
            "aioelect._core",
            "aioelect._healthgate",
            "aioelect._mirror",
            "aioelect._observe",
            "aioelect._preference",
            "aioelect._session",
            "aioelect._view",
        ),
    ),
    (
        "connection",
        (
            "aioelect._aetcd",
            "aioelect._connection",
            "aioelect._embedded",
            "aioelect._endpoints",
            "aioelect._errors",
            "aioelect._ops",
            "aioelect._watchdog",
        ),
    ),
    (
        "pure",
        (
            "aioelect._backoff",
            "aioelect._config",
            "aioelect._exceptions",
            "aioelect._few",
            "aioelect._identity",
            "aioelect._keys",
            "aioelect._models",
            "aioelect._shardplan",
        ),
    ),
)


def module_name(path: Path, pkg_dir: Path) -> str:
    rel = path.relative_to(pkg_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    if not is_pkg:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, name: str, modules: set[str]) -> dict[str, str]:
    """The package modules that ``path`` imports, each with a kind: '' (module
    level), 't' (under TYPE_CHECKING) or 'f' (inside a function)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: dict[str, str] = {}

    def add(target: str, kind: str) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if not target or target == name:
            return
        old = found.get(target)
        if old is None or (old and (kind == "" or (kind == "t" and old == "f"))):
            found[target] = kind

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            k = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not kind:
                k = "f"
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.body:
                    visit_stmt(sub, "t")
                for sub in child.orelse:
                    visit_stmt(sub, kind)
                continue
            visit_stmt(child, k)

    def visit_stmt(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mod = _resolve(name, is_pkg, node.level, node.module)
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "aioelect":
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    add(sub if sub in modules else mod, kind)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aioelect":
                    add(alias.name, kind)
        visit(node, kind)

    visit(tree, "")
    return found


def graph(pkg_dir: Path) -> dict[str, dict[str, str]]:
    paths = {module_name(p, pkg_dir): p for p in sorted(pkg_dir.rglob("*.py"))}
    modules = set(paths)
    return {name: imports_of(path, name, modules) for name, path in sorted(paths.items())}


def cycles(g: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            strong(v)
    return sorted(out)


def violations(g: dict[str, dict[str, str]]) -> list[str]:
    """What breaks the layer contract in graph ``g`` (empty when it holds)."""
    level: dict[str, int] = {}
    found: list[str] = []
    for i, (_, modules) in enumerate(LAYERS):
        for m in modules:
            if m in level:
                found.append(f"{m} is in two layers")
            level[m] = i
    for m in g:
        if m not in level:
            found.append(f"{m} is in no layer: add it to LAYERS in scripts/import_graph.py")
    for m, deps in g.items():
        for d, kind in deps.items():
            if m in level and d in level and level[d] < level[m]:
                how = {"t": " (under TYPE_CHECKING)", "f": " (in a function)"}.get(kind, "")
                found.append(
                    f"{m} ({LAYERS[level[m]][0]}) imports {d} ({LAYERS[level[d]][0]}), "
                    f"a layer above{how}"
                )
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]
    return found


def main() -> int:
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    pkg_dir = Path(args[0]) if args else ROOT / "aioelect"
    g = graph(pkg_dir.resolve())
    if check:
        found = violations(g)
        for v in found:
            print(f"layers: {v}", file=sys.stderr)
        if found:
            return 1
        print(f"layers: {len(g)} modules in {len(LAYERS)} layers, no upward import, no cycle")
        return 0
    for name, deps in g.items():
        shown = " ".join(f"{d}[{k}]" if k else d for d, k in sorted(deps.items()))
        print(f"{name}: {shown}")
    found = cycles(g)
    print()
    if not found:
        print("cycles: none")
    for comp in found:
        print(f"cycle ({len(comp)} modules): {' '.join(comp)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
