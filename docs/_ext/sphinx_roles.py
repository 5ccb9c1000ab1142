"""A griffe extension: Sphinx roles and reST markers in docstrings, made Markdown for the site.

The docstrings use ``:class:`Term``` and the like (read by ``help()`` and IDEs). On
the site, a role whose target is a public name (``aioelect.X``,
``aioelect.X.member``, ``aioelect.prometheus.X``, ``aioelect.testing.X``, or a
member of the class or public module being documented) becomes a mkdocstrings
cross-reference; any other target (a private helper) becomes plain code, without its
private module path. No
raw role is left on a page (tests/test_docs_site.py checks).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|exc|data|mod|obj|const):`(~?)([^`]+)`")
PUBLIC_MODULES = ("aioelect", "aioelect.prometheus", "aioelect.testing")


def _exists(path: str) -> bool:
    """Whether the dotted path names a public object (no private component)."""
    parts = path.split(".")
    if parts[0] != "aioelect" or any(p.startswith("_") for p in parts):
        return False
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _public_class(obj: griffe.Object) -> str | None:
    """The public path of the class this object is a member of (or is)."""
    cls = obj if obj.is_class else obj.parent
    if cls is None or not cls.is_class:
        return None
    for module in PUBLIC_MODULES:
        if _exists(f"{module}.{cls.name}"):
            return f"{module}.{cls.name}"
    return None


def convert(text: str, obj: griffe.Object) -> str:
    """The docstring text with each role replaced."""
    scopes: list[str] = []
    if (cls := _public_class(obj)) is not None:
        scopes.append(cls)
    module = obj.module.path
    if not any(p.startswith("_") for p in module.split(".")):
        scopes.append(module)
    scopes.extend(PUBLIC_MODULES)

    def replace(match: re.Match[str]) -> str:
        role, short, target = match.groups()
        target = target.strip()
        private = any(part.startswith("_") for part in target.split("."))
        label = target.rsplit(".", 1)[-1] if short or private else target
        if role in ("meth", "func"):
            label += "()"
        candidates = [target] if target.startswith("aioelect.") else []
        candidates += [f"{scope}.{target}" for scope in scopes]
        for path in candidates:
            if _exists(path):
                return f"[`{label}`][{path}]"
        return f"`{label}`"

    text = ROLE.sub(replace, text)
    # reST literal-block markers: "Usage::" reads "Usage:"; a "::" line alone goes.
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.M)
    return re.sub(r"^[ \t]*::[ \t]*\n", "", text, flags=re.M)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring's Sphinx roles (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj)
