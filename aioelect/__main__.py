"""``python -m aioelect``: the same program as the ``aioelect`` command."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ("main",)

if __name__ == "__main__":
    sys.exit(main())
