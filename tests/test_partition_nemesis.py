"""The partition nemesis itself (``aioelect.testing.Network``): which packets each fault lets
through, checked with UDP datagrams between processes in the namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aioelect.testing import Impairment, Network, netns_unavailable

_REASON = netns_unavailable()
pytestmark = [
    pytest.mark.partition,
    pytest.mark.skipif(_REASON is not None, reason=f"no network partitions: {_REASON}"),
]

PORT = 9999
#: Counts datagrams per source address until told (a line on stdin) that every sender
#: is done, then for as long as datagrams keep arriving.
RECEIVER = """
import collections, json, socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
print("ready", flush=True)
s.settimeout(0.2)
n = collections.Counter()
while True:
    try:
        n[s.recvfrom(100)[1][0]] += 1
    except TimeoutError:
        if done.is_set():
            break
print(json.dumps(n), flush=True)
"""
#: Sends ``count`` datagrams to each address given.
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    for addr in sys.argv[3:]:
        s.sendto(b"x", (addr, int(sys.argv[1])))
"""


@pytest.fixture
def net() -> Iterator[Network]:
    network = Network(["a", "b", "c"])
    network.create()
    try:
        yield network
    finally:
        network.close()


def traffic(net: Network, links: list[tuple[str, str]], count: int) -> dict[tuple[str, str], int]:
    """How many of ``count`` UDP datagrams sent over each directed link arrive."""
    receivers = {}
    try:
        for dst in sorted({d for _, d in links}):
            receivers[dst] = subprocess.Popen(
                [
                    *net.exec_prefix(dst),
                    sys.executable,
                    "-c",
                    RECEIVER,
                    net.address(dst),
                    str(PORT),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        for r in receivers.values():
            assert r.stdout is not None
            assert r.stdout.readline().strip() == "ready"
        senders = [
            subprocess.Popen(
                [
                    *net.exec_prefix(src),
                    sys.executable,
                    "-c",
                    SENDER,
                    str(PORT),
                    str(count),
                    *(net.address(d) for s, d in links if s == src),
                ]
            )
            for src in sorted({s for s, _ in links})
        ]
        for p in senders:
            assert p.wait(30) == 0
        for r in receivers.values():
            assert r.stdin is not None
            r.stdin.write("done\n")
            r.stdin.flush()
        got: dict[tuple[str, str], int] = {}
        for dst, r in receivers.items():
            assert r.stdout is not None
            counts = json.loads(r.stdout.readline())
            for src in net.nodes:
                if (src, dst) in links:
                    got[(src, dst)] = counts.get(net.address(src), 0)
        return got
    finally:
        for r in receivers.values():
            r.kill()
            r.wait()
            for pipe in (r.stdin, r.stdout):
                if pipe is not None:
                    pipe.close()


def delivered(net: Network, src: str, dst: str, count: int) -> int:
    """How many of ``count`` UDP datagrams from ``src`` reach ``dst``."""
    return traffic(net, [(src, dst)], count)[(src, dst)]


def reachability(net: Network) -> set[tuple[str, str]]:
    """The directed links that carry every datagram."""
    links = [(s, d) for s in net.nodes for d in net.nodes if s != d]
    return {link for link, n in traffic(net, links, 20).items() if n == 20}


ALL = {(s, d) for s in "abc" for d in "abc" if s != d}


def test_faults_cut_what_they_say(net: Network) -> None:
    """Healthy links carry everything; cut, one-way drop, isolate and bridge stop exactly
    their links (an isolated node talks to nobody; a bridge node to both sides); heal
    restores every link."""
    assert reachability(net) == ALL
    net.cut("a", "b")
    assert reachability(net) == ALL - {("a", "b"), ("b", "a")}
    net.heal()
    net.drop("a", "b")
    assert reachability(net) == ALL - {("a", "b")}
    net.isolate("c")
    assert reachability(net) == {("a", "b"), ("b", "a")}
    net.bridge({"a"}, {"c"}, via="b")
    assert reachability(net) == ALL - {("a", "c"), ("c", "a")}
    net.heal()
    assert reachability(net) == ALL


def test_loss_drops_a_share(net: Network) -> None:
    """Loss on a link drops about that share of its packets, one direction only with
    both_ways=False."""
    net.impair("a", "b", loss=0.5, both_ways=False)
    got = delivered(net, "a", "b", 400)
    assert 100 < got < 300, got  # 50 % of 400: outside this range with p < 1e-20
    assert delivered(net, "b", "a", 50) == 50
    net.heal()
    assert delivered(net, "a", "b", 50) == 50


def test_bad_arguments_are_refused() -> None:
    """Unknown nodes, bad names and out-of-range loss are refused with a clear error."""
    with pytest.raises(ValueError, match="1-8 letters"):
        Network(["a", "b-c"])
    with pytest.raises(ValueError, match="unique"):
        Network(["a", "a"])
    with pytest.raises(ValueError, match="loss must be between 0 and 1"):
        Impairment(loss=1.5)
    net = Network(["a", "b"])
    with pytest.raises(ValueError, match="unknown node 'z'"):
        net.address("z")
