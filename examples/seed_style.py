"""The Go election package's callback style, in aioelect (a self-contained demo).

The Go package (matrixcube's prophet ``election``) is used like this::

    elector, _ := election.NewElector(client,
        election.WithPrefix("/app"),
        election.WithLeaderLeaseSeconds(10),
        election.WithLockIfBecomeLeader(true))
    ls := elector.CreateLeadship("scheduler", nodeName, nodeValue, true,
        becomeLeader, becomeFollower)
    go ls.ElectionLoop(ctx)

The same in aioelect is ``Elector(...)``, ``elector.leadership(...)`` and
``await leadership.run()``; every call below names its Go counterpart.

The demo runs three nodes in one process, each with its own Elector (its own
etcd session, as if on three hosts), plus an observer that never campaigns.
The first leader hands leadership to the last candidate
(``change_leader_to``); every later leader does a little fenced work and
steps down (``stop``). With the handover barrier (``WithLockIfBecomeLeader``)
a successor's ``on_elected`` starts only after its predecessor's
``on_stepped_down`` returned: the demo checks that and exits 1 if it breaks.
It ends by itself once every node has led.

::

    AIOELECT_ENDPOINTS=127.0.0.1:2379 python examples/seed_style.py
    python examples/seed_style.py      # no etcd given: starts an embedded one

Output: one line per callback, e.g. ``elected n2 token=812``.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import AsyncExitStack

import anyio
import anyio.abc

import aioelect

ELECTION = "scheduler"  # Go: the "purpose" of CreateLeadship


class Demo:
    """What the nodes share: the settings and a record to check the handover barrier."""

    def __init__(self, endpoints: str, prefix: str, nodes: int) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        self.leading: str | None = None  # the node between on_elected and on_stepped_down
        self.terms = 0
        self.failures: list[str] = []
        self.transferred = False

    def say(self, line: str) -> None:
        """Print one line of output."""
        print(line, flush=True)

    def check(self, ok: bool, failure: str) -> None:
        """Record a failure unless ``ok``."""
        if not ok:
            self.failures.append(failure)


async def node(demo: Demo, name: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """One node: an Elector (Go: NewElector) and a Leadership (Go: CreateLeadship)."""
    # Go: NewElector(client, WithPrefix(prefix), WithLeaderLeaseSeconds(10)). Give
    # client=an_aetcd_client to share one (Go: Elector.Client() is elector.client).
    async with (
        aioelect.Elector(endpoints=demo.endpoints, prefix=demo.prefix, ttl=10) as elector,
        anyio.create_task_group() as tg,
    ):
        tx = elector.client.transactions

        # Go: becomeLeader func(string) bool. Return False to decline the term
        # (it resigns and campaigns again after a back-off); None or True keep it.
        async def on_elected(term: aioelect.Term) -> bool:
            demo.check(demo.leading is None, f"{name} elected while {demo.leading} leads")
            demo.leading = name
            demo.terms += 1
            demo.say(f"elected {name} token={term.token}")

            # Go: Check() and GetLease(); LeaderLease.IsExpired() and Close().
            lease = leadership.get_lease()
            demo.check(leadership.check(), f"{name}: check() is False in on_elected")
            demo.check(lease is not None and not lease.is_expired(), f"{name}: no lease")

            # Go: CurrentLeader() (string, int64, error) -> (value, token) or None.
            current = await leadership.current_leader()
            demo.check(current == (term.value, term.token), f"{name}: leader is {current}")

            # Go: DoIfLeader(conditions, ops...): a write that etcd applies only
            # while this node's leader key exists (guarded by its token).
            await leadership.do_if_leader(
                success=[tx.put(f"{demo.prefix}-data/last-leader".encode(), name.encode())]
            )

            if not demo.transferred:
                # Go: ChangeLeaderTo(newLeader): hand over to the last candidate.
                # It waits for this step-down, so it must run outside on_elected.
                demo.transferred = True
                # Wait for every node to campaign (polling etcd: no event tells).
                while len(candidates := await elector.candidates(ELECTION)) < len(demo.names):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                target = candidates[-1].value.decode()
                demo.say(f"transfer {name} -> {target}")
                tg.start_soon(leadership.change_leader_to, target)
            else:
                # Go: Stop(): step down gracefully; run() then returns.
                leadership.stop()
            return True

        # Go: becomeFollower func(string) bool: called once at the end of every term.
        async def on_stepped_down(term: aioelect.Term) -> None:
            # Clean up before the successor starts. With the handover barrier
            # the term still holds during a graceful step-down, so a last
            # fenced write (a flush of state) still lands.
            try:
                await term.transaction(
                    success=[tx.put(f"{demo.prefix}-data/flushed-by".encode(), name.encode())]
                )
            except aioelect.NotLeader:
                demo.say(f"flush skipped {name}: the term already ended")
            await anyio.sleep(0.1)  # the rest of the clean-up takes a while
            demo.say(f"stepped-down {name} token={term.token}")
            demo.leading = None

        # Go: CreateLeadship(purpose, nodeName, nodeValue, allowCampaign=true,
        # becomeLeader, becomeFollower), with WithLockIfBecomeLeader(true) as
        # handover_barrier=True (the default).
        leadership = elector.leadership(
            ELECTION,
            name,  # nodeValue: what leader() and current_leader() report
            node_name=name,  # nodeName: a label for logs
            campaign=True,  # allowCampaign
            on_elected=on_elected,
            on_stepped_down=on_stepped_down,
            handover_barrier=True,
        )
        task_status.started()
        # Go: go ls.ElectionLoop(ctx). Campaigns, leads, steps down and campaigns
        # again until stop(); cancelling it (Go: cancelling ctx) steps down too.
        await leadership.run()
        tg.cancel_scope.cancel()


async def observer(demo: Demo, *, task_status: anyio.abc.TaskStatus[aioelect.Leadership]) -> None:
    """A node that never campaigns (Go: allowCampaign=false) and reports every leader."""
    async with aioelect.Elector(endpoints=demo.endpoints, prefix=demo.prefix) as elector:

        async def on_leader_change(info: aioelect.LeaderInfo | None) -> None:
            demo.say("vacant" if info is None else f"leader-change {info.value.decode()}")

        watcher = elector.leadership(
            ELECTION, "observer", campaign=False, on_leader_change=on_leader_change
        )
        task_status.started(watcher)
        await watcher.run()  # returns on watcher.stop()


async def main(endpoints: str | None, prefix: str, nodes: int) -> int:
    """Run the demo; return 0 when the handover barrier held and every node led."""
    async with AsyncExitStack() as stack:
        if not endpoints:
            etcd = await stack.enter_async_context(aioelect.EmbeddedEtcd())
            endpoints = etcd.endpoint
        demo = Demo(endpoints, prefix, nodes)
        async with anyio.create_task_group() as tg:
            watcher = await tg.start(observer, demo)
            async with anyio.create_task_group() as nodes_tg:
                for name in demo.names:
                    await nodes_tg.start(node, demo, name)
            watcher.stop()
    if demo.terms < nodes:
        demo.failures.append(f"only {demo.terms} terms for {nodes} nodes")
    for failure in demo.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    demo.say(f"done: {demo.terms} terms")
    return 1 if demo.failures else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="The Go package's callback style in aioelect.")
    p.add_argument("--endpoints", default=os.environ.get("AIOELECT_ENDPOINTS"))
    p.add_argument("--prefix", default=os.environ.get("AIOELECT_PREFIX", "/aioelect-seed"))
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args()
    sys.exit(anyio.run(main, args.endpoints, args.prefix, args.nodes))
