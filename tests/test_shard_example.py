"""examples/shard_workers.py, run for real against the test etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aioelect.testing import EtcdServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shard_workers.py"


def test_shard_workers_process_every_item_once_in_order(etcd: EtcdServer, etcd_prefix: str) -> None:
    """3 workers, 16 partitions, one worker leaving half-way: every item is processed exactly
    once, in order within its partition, and a partition's tokens only grow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELECT_")}
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--endpoints", etcd.endpoint, "--prefix", etcd_prefix,
         "--ttl", "2", "--workers", "3", "--partitions", "16", "--items", "6"],
        capture_output=True, env=env, timeout=90, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["processed"] == summary["items"] == 96
    done = [e for e in events if e["event"] == "processed"]
    for p in range(16):
        mine = [e for e in done if e["partition"] == p]
        assert [e["item"] for e in mine] == list(range(6)), p
        tokens = [e["token"] for e in mine]
        assert tokens == sorted(tokens)
    # the worker that left handed its partitions over: it was revoked, others assigned them
    left = next(e for e in events if e["event"] == "left")
    revoked = {
        e["partition"] for e in events if e["event"] == "revoked" and e["worker"] == left["worker"]
    }
    assert revoked
