"""``aioelect run`` under process faults: the gap between two hosts' commands (never a test).

``python bench/_run_faults.py [--runs 5] [--ttl 1]`` starts an embedded etcd
and a fault proxy, then for each fault, ``--runs`` times: two ``aioelect run``
wrappers campaign for one election, each running a ticker that writes the
wall-clock time every 10 ms (flushed) and starts a grandchild that does the
same; once the second waits, the first wrapper is hit by the fault:

- ``sigkill``: the wrapper is SIGKILLed;
- ``sigstop``: the wrapper is SIGSTOPped (SIGCONT once the second CMD runs);
- ``blackhole``: the wrapper's connection to etcd is blackholed (it goes
  through the proxy) while its CMD ignores SIGTERM (default ``--grace``, 10 s).

The gap is the second CMD's first tick minus the last tick of the first CMD
or its grandchild: positive means the two never ran at once. Also reported:
the takeover (fault to the second CMD's first tick). Prints a table, then
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aioelect._embedded import EtcdProcess
from aioelect.testing import FaultProxy

TICKER = """\
import os, signal, subprocess, sys, time
out, ignore_term = sys.argv[1], sys.argv[2] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if not out.endswith(".gc"):
    subprocess.Popen([sys.executable, __file__, out + ".gc", sys.argv[2]])
with open(out, "a") as f:
    while True:
        f.write(f"{time.time()!r}\\n")
        f.flush()
        time.sleep(0.01)
"""


def _ticks(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def one_run(
    fault: str, etcd: EtcdProcess, proxy: FaultProxy, tmp: Path, i: int, ttl: int
) -> dict[str, float]:
    prefix = f"/bench-run-faults/{fault}{i}"
    ticker = tmp / "ticker.py"
    ticker.write_text(TICKER)

    def cli(endpoint: str, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "aioelect", "--endpoints", endpoint, "--prefix", prefix,
            "--ttl", str(ttl), *args,
        ]  # fmt: skip

    def run(endpoint: str, out: Path, ignore_term: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(ticker), str(out), ignore_term]
        return subprocess.Popen(cli(endpoint, "run", "job", out.name, "--", *cmd))

    a_out, b_out = tmp / f"{fault}{i}a", tmp / f"{fault}{i}b"
    a_ep = proxy.endpoint if fault == "blackhole" else etcd.endpoint
    a = run(a_ep, a_out, "1" if fault == "blackhole" else "0")
    b: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _ticks(Path(str(a_out) + ".gc")), "first CMD ticks")
        b = run(etcd.endpoint, b_out, "0")

        def waiting() -> bool:
            out = subprocess.run(cli(etcd.endpoint, "candidates", "job"), capture_output=True)
            return len(out.stdout.splitlines()) == 2

        _wait(waiting, "second host waits")
        at = time.time()
        if fault == "sigkill":
            a.kill()
        elif fault == "sigstop":
            os.kill(a.pid, signal.SIGSTOP)
        else:
            proxy.blackhole()
        _wait(lambda: _ticks(b_out), "second CMD ticks")
        time.sleep(0.2)  # let a late tick of the first CMD show, if there is one
        first = max(_ticks(a_out) + _ticks(Path(str(a_out) + ".gc")))
        second = _ticks(b_out)[0]
        return {"gap": second - first, "takeover": second - at}
    finally:
        if fault == "sigstop":
            os.kill(a.pid, signal.SIGCONT)
        proxy.heal()
        for p in (a, b):
            if p is not None:
                p.kill()
                p.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=int, default=1)
    parser.add_argument("--faults", default="sigkill,sigstop,blackhole")
    args = parser.parse_args()
    etcd = EtcdProcess(heartbeat_ms=10, election_ms=100)
    results: dict[str, Any] = {"ttl": args.ttl, "runs": args.runs}
    try:
        etcd.start()
        host, _, port = etcd.endpoint.rpartition(":")
        with FaultProxy(host, int(port)) as proxy, tempfile.TemporaryDirectory() as tmp:
            print(f"{'fault':10} {'gap min':>8} {'median':>8} {'max':>8} {'takeover median':>16}")
            for fault in args.faults.split(","):
                runs = [
                    one_run(fault, etcd, proxy, Path(tmp), i, args.ttl) for i in range(args.runs)
                ]
                gaps = [r["gap"] for r in runs]
                take = [r["takeover"] for r in runs]
                results[fault] = {"gaps": gaps, "takeovers": take}
                print(
                    f"{fault:10} {min(gaps):8.3f} {statistics.median(gaps):8.3f} "
                    f"{max(gaps):8.3f} {statistics.median(take):16.3f}",
                    flush=True,
                )
    finally:
        etcd.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
