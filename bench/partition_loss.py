"""At which packet loss on a leader's link do its terms start ending?

Needs root, ``ip`` and ``nft`` (Linux network namespaces, see
``aioelect.testing.PartitionCluster``). For each loss level and TTL: a 3-member
cluster, candidate ``a`` (leading) in one client namespace and ``b`` in another;
every link of ``a``'s namespace loses that share of its packets (both ways) for
``--window`` seconds; counts ``a``'s terms that ended and the leader changes.

    sudo .venv/bin/python bench/partition_loss.py [--window 20] [--ttl 2 5] [--delay 0.05 0.2]

Measured 2026-12-02 (2-core VM, etcd 3.5.1, other test runs alongside, one 20 s
window per row; "ended" counts a's terms that ended, then b was elected each time):

    loss      10 %  20 %  30 %  40 %  50 %  60 %
    ttl 2 s      0     0     1     1     1     1    a's fenced writes/s: 6.8 5.0 0.5 0.1 ...
    ttl 5 s      0     0     1     1     1     1    a's fenced writes/s: 6.5 3.4 0.9 0.0 ...

Terms start ending between 20 % and 30 % loss on every link of the leader (both
ways), for TTL 2 s and 5 s alike: TCP's retransmission back-off (0.2, 0.4, 0.8,
1.6 s...) on a connection losing 30 % each way outgrows a 1.3-3.3 s renew deadline.

With latency too (``--delay 0.05 0.2``; this kernel has no netem, so the delay is
added by userspace relays in a's namespace, each way: a round trip gains 100 or
400 ms), measured 2026-12-02 on the same VM, 20 s windows; "ended" is a's terms
that ended per run (every one "lease not renewed before renew_deadline", then b
elected), over 3 runs for TTL 2 s and 1 run for TTL 5 s:

    ttl   delay   0 %   10 %    20 %    30 %
    2 s   50 ms   0     0 0 0   1 1 0   1
    2 s  200 ms   0     1 0 1   1 1 1   1
    5 s   50 ms   -     0       0       1
    5 s  200 ms   -     0       0       0

With TTL 5 s (renew deadline 3.3 s) no term ended at 50 or 200 ms with 10-20 %
loss; with TTL 2 s (1.3 s) they do: at 200 ms and 10 % loss in 2 of 3 runs, at
50 ms and 20 % in 2 of 3. The relays delay above TCP, so the lossy connection's
own round trip (and retransmission timeout) stays short: netem, which delays the
packets themselves, would be harsher.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # helpers, which _support imports
sys.path.insert(0, str(HERE.parent / "tests" / "chaos"))

from _support import Procs  # noqa: E402

from aioelect.testing import PartitionCluster, netem_unavailable, netns_unavailable  # noqa: E402


async def one(loss: float, delay: float, ttl: int, window: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, PartitionCluster(3, clients=2) as cluster:
        procs = Procs(Path(tmp))
        try:
            prefix = f"/bench-loss-{int(loss * 100)}-{int(delay * 1000)}-{ttl}"

            def spawn(ident: str, client: str, endpoints: list[str]) -> object:
                return procs.spawn(
                    ident=ident,
                    endpoints=endpoints,
                    prefix=prefix,
                    elections=["job"],
                    ttl=ttl,
                    interval=0.1,
                    wrapper=cluster.exec_prefix(client),
                )

            relayed = bool(delay) and netem_unavailable() is not None
            a = spawn("a", "c0", cluster.relayed_endpoints("c0") if relayed else cluster.endpoints)
            await a.wait("elected", timeout=30)  # type: ignore[attr-defined]
            b = spawn("b", "c1", cluster.endpoints)
            await b.wait("ready", timeout=30)  # type: ignore[attr-defined]
            for m in cluster.member_names:
                cluster.network.impair("c0", m, loss=loss, delay=delay)
            start = time.monotonic()
            await asyncio.sleep(window)
            cluster.heal()
            ended = [e for e in a.find("ended") if e["t"] >= start]  # type: ignore[attr-defined]
            won = [e for e in a.find("elected") if e["t"] >= start]  # type: ignore[attr-defined]
            writes = [e for e in a.find("write") if e["t"] >= start]  # type: ignore[attr-defined]
            b_won = [e for e in b.find("elected") if e["t"] >= start]  # type: ignore[attr-defined]
            return {
                "a_terms_ended": len(ended),
                "a_elected_again": len(won),
                "b_elected": len(b_won),
                "a_writes_per_s": len(writes) / window,
                "reasons": ", ".join(sorted({str(e["reason"]) for e in ended})),
            }
        finally:
            procs.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--ttl", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--loss", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument(
        "--delay", type=float, nargs="+", default=[0.0], help="seconds added each way"
    )
    args = parser.parse_args()
    reason = netns_unavailable()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    how = "netem" if netem_unavailable() is None else "userspace relays (no netem)"
    print(f"window {args.window:g} s per row; a's link loses packets both ways; delay: {how}")
    print("ttl  delay  loss  a_terms_ended  b_elected  a_writes/s  why a's terms ended")
    for ttl in args.ttl:
        for delay in args.delay:
            for loss in args.loss:
                r = await one(loss, delay, ttl, args.window)
                print(
                    f"{ttl:>3}  {delay * 1000:>3.0f}ms  {loss:>4.0%}  {r['a_terms_ended']:>13.0f}"
                    f"  {r['b_elected']:>9.0f}  {r['a_writes_per_s']:>10.1f}  {r['reasons']}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
