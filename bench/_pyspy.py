"""Summaries of py-spy's raw (collapsed) stack samples: self and inclusive time per function.

``python bench/_pyspy.py FILE [--top 25] [--match aioelect]``
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/pkg/mod.py:12)`` -> ``pkg/mod.py:func`` (no line: one row per function)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = m["file"].replace("\\", "/").split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else parts[0]
    return f"{tail}:{m['func']}"


#: Leaf frames that are waits, not work (py-spy does not always tell idle threads apart).
IDLE_LEAVES = ("selectors.py:EpollSelector.select", "threading.py:Thread.run")

#: Where a leaf frame's file lives -> the component its self time is charged to.
COMPONENTS = (
    ("grpc", "grpc (grpc.aio, Cython, C-core)"),
    ("aioelect/", "aioelect"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio event loop"),
    ("google/protobuf", "protobuf"),
    ("aetcd/", "aetcd"),
    ("bench/", "the benchmark itself"),
    ("_scale.py", "the benchmark itself"),
    ("_churn.py", "the benchmark itself"),
    ("_candidate.py", "the benchmark itself"),
    ("_common.py", "the benchmark itself"),
)


def _component(frame: str) -> str:
    for needle, name in COMPONENTS:
        if needle in frame:
            return name
    return "other (stdlib: contextlib, weakref, dataclasses ...)"


def load(path: str | Path) -> list[tuple[list[str], int, str]]:
    """(short frames root first, samples, component of the leaf) per stack; idle ones dropped."""
    stacks = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        short = [_short(f) for f in frames]
        if not short or short[-1] in IDLE_LEAVES:
            continue
        stacks.append((short, int(count), _component(frames[-1])))
    return stacks


def summarize(path: str | Path, top: int = 25, match: str = "") -> dict[str, object]:
    """Total samples, and the top functions by self and by inclusive samples."""
    stacks = load(path)
    total = sum(c for _, c, _ in stacks)
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    for frames, c, component in stacks:
        self_c[frames[-1]] += c
        comp[component] += c
        for f in set(frames):
            incl[f] += c
    incl_m = Counter({k: v for k, v in incl.items() if match in k}) if match else incl
    return {
        "total": total,
        "components": comp.most_common(),
        "self": self_c.most_common(top),
        "inclusive": incl_m.most_common(top),
    }


def markdown(title: str, s: dict[str, object], top: int = 15) -> str:
    total = int(s["total"]) or 1  # type: ignore[call-overload]
    lines = [f"#### {title} ({total} samples, idle waits excluded)", ""]
    comps = list(s.get("components", []))  # type: ignore[call-overload]
    if comps:
        lines.append(
            "Self time by component: "
            + ", ".join(f"{name} {100 * c / total:.0f}%" for name, c in comps)
            + "."
        )
        lines.append("")
    lines += ["| self % | function | | inclusive % | function |", "|--:|---|---|--:|---|"]
    selfs = list(s["self"])[:top]  # type: ignore[call-overload]
    incls = list(s["inclusive"])[:top]  # type: ignore[call-overload]
    for i in range(max(len(selfs), len(incls))):
        a = f"{100 * selfs[i][1] / total:.1f} | `{selfs[i][0]}`" if i < len(selfs) else " | "
        b = f"{100 * incls[i][1] / total:.1f} | `{incls[i][0]}`" if i < len(incls) else " | "
        lines.append(f"| {a} | | {b} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="inclusive list: only functions containing this")
    args = p.parse_args()
    s = summarize(args.file, args.top, args.match)
    total = int(s["total"]) or 1  # type: ignore[call-overload]
    print(f"{s['total']} samples\n-- components (self) --")
    for name, c in s["components"]:  # type: ignore[attr-defined]
        print(f"{100 * c / total:6.1f}%  {name}")
    print("-- self --")
    for name, c in s["self"]:  # type: ignore[attr-defined]
        print(f"{100 * c / total:6.1f}%  {name}")
    print("-- inclusive --")
    for name, c in s["inclusive"]:  # type: ignore[attr-defined]
        print(f"{100 * c / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
