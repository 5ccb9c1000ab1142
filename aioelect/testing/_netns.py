"""Linux network namespaces: whether they can be made here, and the commands that make them.

The primitives under :mod:`._network`: running ``ip``/``tc``/``nft`` (a failure
is a :class:`NetnsError`), probing once per process whether namespaces,
nftables on a bridge and netem work on this host, naming namespaces after the
owner's pid (so that parallel runs never collide) and removing those of runs
whose owner is gone (SIGKILLed), and moving one thread into a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import subprocess
import sys

from .._exceptions import AioelectError

__all__ = (
    "NetnsError",
    "enter_netns",
    "netem_unavailable",
    "netns_unavailable",
    "new_tag",
    "run",
    "sweep_stale",
)

_PREFIX = "aioe"  # namespace names: aioe<pid>x<n>-<node>
_serial = itertools.count()
_probe_result: dict[str, str | None] = {}


def new_tag() -> str:
    """A name prefix for a new set of namespaces: ``aioe<pid>x<n>`` (unique in this run)."""
    return f"{_PREFIX}{os.getpid()}x{next(_serial)}"


class NetnsError(AioelectError):
    """An ``ip`` or ``tc`` command failed."""


def run(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        shown = " ".join(cmd) + (f" <<{stdin.strip()[:400]!r}" if stdin else "")
        raise NetnsError(f"{shown}: exit {proc.returncode}: {proc.stderr.strip()[:400]}")
    return proc.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces with partitions cannot be made here (None: they can).

    Tries once per process: Linux, root, ``ip`` (iproute2) and ``nft``
    (nftables) on PATH, and a throwaway namespace with a veth pair, a bridge
    and an nftables rule.
    """
    if "netns" not in _probe_result:
        _probe_result["netns"] = _probe()
    return _probe_result["netns"]


def netem_unavailable() -> str | None:
    """Why links cannot be delayed here (None: they can): ``tc`` or the kernel's netem."""
    if "netem" not in _probe_result:
        reason = netns_unavailable()
        if reason is None and shutil.which("tc") is None:
            reason = "no 'tc' on PATH (iproute2)"
        if reason is None:
            reason = _in_probe_ns(
                [("tc", "qdisc", "add", "dev", "pa", "root", "netem", "delay", "1ms")],
                "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): links cannot be delayed",
            )
        _probe_result["netem"] = reason
    return _probe_result["netem"]


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no 'ip' on PATH (apt-get install iproute2)"
    if shutil.which("nft") is None:
        return "no 'nft' on PATH (apt-get install nftables)"
    return _in_probe_ns(
        [
            ("ip", "link", "add", "name", "br0", "type", "bridge"),
            (
                "nft",
                "add table bridge probe; add chain bridge probe c { type filter hook "
                "forward priority 0; policy accept; }; add rule bridge probe c "
                "ip saddr 10.0.0.1 numgen random mod 100 < 5 drop",
            ),
        ],
        "nftables cannot filter a bridge in a network namespace",
    )


def _in_probe_ns(commands: list[tuple[str, ...]], what: str) -> str | None:
    ns = f"{new_tag()}-probe"
    try:
        run("ip", "netns", "add", ns)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        run("ip", "-n", ns, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb")
        for cmd in commands:
            run("ip", "netns", "exec", ns, *cmd)
    except NetnsError as exc:
        return f"{what}: {exc}"
    finally:
        with contextlib.suppress(NetnsError):
            run("ip", "netns", "del", ns)
    return None


def sweep_stale() -> None:
    """Remove the namespaces of runs whose process is gone (SIGKILLed owners)."""
    with contextlib.suppress(NetnsError):
        for line in run("ip", "netns", "list").splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.fullmatch(rf"{_PREFIX}(\d+)x\d+-\w+", name)
            if m is None:
                continue
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(NetnsError):
                    run("ip", "netns", "del", name)
            except PermissionError:
                pass


_CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into the network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if sys.version_info >= (3, 12):
            os.setns(fd, os.CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
