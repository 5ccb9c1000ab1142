"""A candidate value unique per process: ``{host name}-{pid}``."""

from __future__ import annotations

import os
import socket

__all__ = ("node_identity",)


def node_identity() -> str:
    """This process's identity as a candidate: ``"{host name}-{pid}"``.

    Computed on every call, so call it when the campaign starts (the lifespan
    runner and :func:`leader_only`'s users do), never at import: a module
    imported by a ``gunicorn --preload`` master, or by a parent before
    ``fork()``, would otherwise give every worker the parent's PID. Unique
    among the processes of one host, and across hosts with distinct names
    (containers get their own host name).
    """
    return f"{socket.gethostname()}-{os.getpid()}"
