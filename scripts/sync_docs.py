"""Write docs/guide.md from README.md (the guide is the README from "Hold leadership" on).

Run after editing the README: ``python scripts/sync_docs.py``; tests/test_docs.py fails
when the two drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "https://example.invalid/aioelect"


def guide_text() -> str:
    """The guide as generated from the README."""
    readme = (ROOT / "README.md").read_text()
    body = readme[readme.index("## Hold leadership for a block") :]
    body = body.replace("](examples/)", f"]({REPO}/tree/main/examples)")
    body = body.replace("](bench/RESULTS.md)", f"]({REPO}/blob/main/bench/RESULTS.md)")
    body = body.replace("](bench/results.png)", f"]({REPO}/blob/main/bench/results.png)")
    return "# Guide\n\n" + body


if __name__ == "__main__":
    (ROOT / "docs" / "guide.md").write_text(guide_text())
    sys.exit(0)
