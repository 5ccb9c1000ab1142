"""Render ``results.json`` as ``RESULTS.md`` and ``results.png`` (used by ``bench/run.py``)."""

from __future__ import annotations

import contextlib
import math
import statistics
from pathlib import Path
from typing import Any

from _common import summary

KIB = 1024


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ms(samples: list[float]) -> dict[str, float]:
    s = summary(samples)
    return {k: (v * 1e3 if k not in ("n",) else v) for k, v in s.items()}


def _row(label: str, samples: list[float], unit: str = "ms", digits: int = 2) -> str:
    s = _ms(samples) if unit == "ms" else summary(samples)
    return (
        f"| {label} | {int(s['n'])} | {_f(s['p50'], digits)} | {_f(s['p90'], digits)} "
        f"| {_f(s['p99'], digits)} | {_f(s['max'], digits)} |"
    )


def _header(unit: str) -> list[str]:
    return [
        f"| | trials | p50 ({unit}) | p90 ({unit}) | p99 ({unit}) | max ({unit}) |",
        "|---|--:|--:|--:|--:|--:|",
    ]


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**missed**")


def _load(sec: dict[str, Any]) -> str:
    lb, la = sec.get("load_before"), sec.get("load_after")
    return f"load average (1/5/15 min) before {lb}, after {la}; {sec.get('seconds', 0):.0f} s"


def render(res: dict[str, Any], out: Path) -> None:
    secs = res.get("sections", {})
    goals: list[tuple[str, str, bool | None]] = []
    md: list[str] = []
    m = res.get("machine", {})
    start_digest = res.get("source", {}).get("digest")
    changed = [
        name
        for name, sec in secs.items()
        if start_digest and sec.get("source_digest") not in (None, start_digest)
    ]
    md += [
        "# aioelect benchmarks",
        "",
        "Every figure below comes from one run of `bench/run.py` against one embedded etcd, "
        "each next to its baseline measured in the same run. Benchmarks are not tests: "
        "nothing here passes or fails a build.",
        "",
        f"- command: `{res.get('command')}` ({'quick' if res.get('quick') else 'full'} mode, "
        f"{_f(res.get('seconds', 0) / 60, 1)} min, {res.get('started')} to {res.get('finished')})",
        f"- machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), "
        f"{m.get('mem_total_gib')} GiB RAM, {m.get('platform')}",
        f"- Python {m.get('python')}; {m.get('etcd')}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()),
        f"- aioelect: commit {res.get('source', {}).get('commit', '?')}, sources digest "
        f"{res.get('source', {}).get('digest', '?')}"
        + (
            "; **aioelect's sources changed during the run** (sections after: "
            + ", ".join(changed)
            + ")"
            if changed
            else ""
        ),
        f"- etcd: one member on loopback, data on local disk, {res.get('etcd_flags')}",
        f"- load average (1/5/15 min): {res.get('load_start')} at the start, "
        f"{res.get('load_end')} at the end"
        + (
            "; **the machine was shared with other jobs: timings are noisy**"
            if max((res.get("load_start") or [0])[:1] + (res.get("load_end") or [0])[:1]) > 0.5
            else ""
        ),
        "- p50/p90/p99: linear interpolation between the closest ranks; with 100 trials the "
        "p99 is close to the maximum, so the max is shown too.",
        "",
    ]

    # 1. floor
    f = secs.get("floor")
    if f and "samples" in f:
        s = f["samples"]
        md += [
            "## 1. The floor: one etcd request, raw aetcd/gRPC",
            "",
            f"Two raw aetcd clients. *Cold*: the first call after {100} ms idle; *hot*: "
            "the next three calls, back to back. Delete-to-watch-event: one client "
            "deletes a key, the other's watch delivers the event (cold: after 100 ms idle; "
            "hot: right after a put and its event). " + _load(f),
            "",
            *_header("ms"),
            _row("get, cold", s["get_cold"]),
            _row("get, hot", s["get_hot"]),
            _row("txn (create if absent), cold", s["txn_cold"]),
            _row("txn (create if absent), hot", s["txn_hot"]),
            _row("delete -> watch event, cold", s["watch_cold"]),
            _row("delete -> watch event, hot", s["watch_hot"]),
            "",
        ]

    # 2. in-process
    ip = secs.get("inproc")
    if ip and "samples" in ip:
        s = ip["samples"]
        a50, n50 = summary(s["aioelect"])["p50"], summary(s["naive"])["p50"]
        ratio = a50 / n50 if n50 else math.nan
        ok = ratio <= 1.2
        goals.append(("2. in-process handover p50 within 1.2x naive", f"{ratio:.2f}x", ok))
        md += [
            "## 2. Graceful handover in one process",
            "",
            "aioelect: two Electors (two connections) in one process, one election; the "
            "leader leaves its `async with elector.hold(...)` block, timed until the "
            "successor's block body starts. Naive: two raw aetcd clients; the leader deletes "
            "its key, the follower (watching it) creates its own in a txn. Trials "
            f"interleaved, each after {100} ms idle. " + _load(ip),
            "",
            *_header("ms"),
            _row("aioelect: hold exit -> successor's body", s["aioelect"]),
            _row("naive raw aetcd: delete -> follower's txn done", s["naive"]),
            _row("(naive: delete -> follower sees the event)", s["naive_event"]),
            "",
            f"p50 ratio aioelect / naive: **{ratio:.2f}x** (goal <= 1.2x: {_met(ok)}).",
            "",
        ]
        bd = ip.get("breakdown") or []
        if bd:
            keys = list(bd[0])
            md += [
                f"Where the time goes in an aioelect handover ({len(bd)} more trials with a "
                "timestamp at each step; medians, ms):",
                "",
                "| step | p50 (ms) | p90 (ms) |",
                "|---|--:|--:|",
            ]
            for k in keys:
                vals = [b[k] for b in bd]
                sm = summary(vals)
                md.append(f"| {k} | {_f(sm['p50'], 3)} | {_f(sm['p90'], 3)} |")
            md.append("")

    # 3. cross-process
    xp = secs.get("xproc")
    if xp and "samples" in xp:
        s = xp["samples"]
        sa, sg = summary(s["aioelect"]), summary(s["etcdctl"])
        ok50, ok99 = sa["p50"] <= sg["p50"], sa["p99"] <= sg["p99"]
        goals.append(
            (
                "3. cross-process handover p50 and p99 no slower than etcdctl elect",
                f"p50 {ms_(sa['p50'])} vs {ms_(sg['p50'])} ms; "
                f"p99 {ms_(sa['p99'])} vs {ms_(sg['p99'])} ms",
                ok50 and ok99,
            )
        )
        md += [
            "## 3. Graceful handover across processes",
            "",
            "Two candidate processes per election: SIGINT to the leader process, timed until "
            "the successor process prints that it leads (its stdout line read by the bench). "
            "aioelect: `bench/_candidate.py signal` (an Elector and a `hold`); Go: "
            "`etcdctl elect` (etcd's `concurrency.Election`). The two kinds alternate trial "
            f"by trial, each after {300} ms idle. " + _load(xp),
            "",
            *_header("ms"),
            _row("aioelect", s["aioelect"]),
            _row("etcdctl elect", s["etcdctl"]),
            _row("(aioelect, stamped in the successor)", s["aioelect_self"]),
        ]
        if s.get("aioelect_signal_to_exit"):
            md += [
                _row(
                    "(aioelect: SIGINT -> the leader leaves its block)",
                    s["aioelect_signal_to_exit"],
                ),
                _row(
                    "(aioelect: leader leaves its block -> successor's body)",
                    s["aioelect_exit_to_elected"],
                ),
            ]
        md += [
            "",
            f"Goal (aioelect p50 and p99 no slower than etcdctl): p50 {_met(ok50)}, "
            f"p99 {_met(ok99)}.",
            "",
        ]

    # 4. crash
    cr = secs.get("crash")
    if cr and "samples" in cr:
        s = cr["samples"]
        sa, sg = summary(s["aioelect"]), summary(s["etcdctl"])
        bound = 1.6
        ok = sa["p99"] <= bound and sa["p99"] <= sg["p99"]
        goals.append(
            (
                "4. crash failover p99 within TTL + 0.6 s and no slower than etcdctl lock",
                f"p99 {sa['p99']:.3f} s vs etcdctl {sg['p99']:.3f} s (bound {bound} s)",
                ok,
            )
        )
        md += [
            "## 4. Crash failover (TTL 1 s)",
            "",
            "SIGKILL of the leader process, timed until the successor process prints that it "
            "leads: the lease must expire first. aioelect: `_candidate.py signal --ttl 1` "
            "(keepalive every TTL/3, term valid for 2/3 TTL). Go: `etcdctl lock --ttl 1` "
            "(`etcdctl elect` has no TTL option: its session keeps the 60 s default). The "
            "kill lands 0.3-0.8 s (uniform) after the follower queued, i.e. at a random phase "
            "of the keepalives and of etcd's 0.5 s expiry scan. " + _load(cr),
            "",
            *_header("s"),
            _row("aioelect", s["aioelect"], unit="s", digits=3),
            _row("etcdctl lock --ttl 1", s["etcdctl"], unit="s", digits=3),
            "",
            f"Goal (p99 <= TTL + 0.6 s = {bound} s and <= etcdctl's p99): {_met(ok)}.",
            "",
        ]

    # 5. scale
    sc = secs.get("scale")
    if sc and "runs" in sc:
        runs = sc["runs"]
        traced = {(r["n"], r.get("mode")): r for r in sc.get("traced", [])}
        md += [
            "## 5. Scale of one process and one Elector",
            "",
            "`bench/_scale.py`, a fresh process per size: N elections on ONE Elector (one "
            "lease, one keepalive stream, one watch), each campaigned by a `hold` (which wins "
            "at once) and observed by an `observe`. *Start*: from spawning the 2N tasks "
            "until every hold body runs and every observer has seen its leader. *Memory*: "
            "RSS growth / N after `gc.collect()`, and GC-tracked objects / N (the Python "
            "heap under tracemalloc, hold-only and observe-only, is in the next table). "
            "*Idle CPU*: process CPU time (all threads) over an idle interval, TTL 10 s "
            "(a keepalive every 3.3 s), before and after `gc.freeze()`. *Handover*: one more "
            "election, handed back and forth between this process and a peer process "
            "(`_candidate.py control`, an Elector on the same prefix, so it mirrors the N "
            "elections too), both directions alternating, 100 ms idle before each; then the "
            "same after `gc.freeze()`. Each hold and each observe runs in an asyncio task "
            "(`loop.create_task`), with the garbage collector at its defaults; the largest "
            "size is also started with the GC paused and in anyio TaskGroup tasks (next "
            "table). " + _load(sc),
            "",
            "| N | start: holds (s) | start: all (s) | start CPU (s) | RSS / election (KiB) "
            "| GC objects / election | idle CPU (%) | idle CPU frozen (%) | handover p50 (ms) "
            "| handover p99 (ms) | frozen p50 (ms) | frozen p99 (ms) "
            "| max GC pause in start (ms) |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in runs:
            n = r["n"]
            if "error" in r:
                md.append(f"| {n:,} | **failed** (below) | | | | | | | | | | | |")
                continue
            h = r.get("handover", {}).get("all", {})
            hf = r.get("handover_frozen", {}).get("all", {})
            gcs = r.get("start_gc", {})
            gcmax = max(gcs.get(f"gen{g}_max_ms", 0.0) for g in range(3)) if gcs else None
            md.append(
                f"| {n:,} | {_f(r.get('start_held_s'), 3)} | {_f(r.get('start_all_s'), 3)} "
                f"| {_f(r.get('start_cpu_s'), 2)} | {_f(r['rss_per_election'] / KIB, 1)} "
                f"| {_f(r.get('gc_objects_per_election'), 0)} | {_f(r.get('idle_cpu_pct'), 2)} "
                f"| {_f(r.get('idle_frozen_cpu_pct'), 2)} "
                f"| {_f(h.get('p50', math.nan) * 1e3)} | {_f(h.get('p99', math.nan) * 1e3)} "
                f"| {_f(hf.get('p50', math.nan) * 1e3)} | {_f(hf.get('p99', math.nan) * 1e3)} "
                f"| {_f(gcmax, 0)} |"
            )
        md.append("")
        starts = _big_starts(sc)
        if len(starts) > 1:
            md += [
                f"Every start of {max(r['n'] for r in runs):,} elections at the GC's defaults "
                f"(the row above, then {len(starts) - 1} more in fresh processes, without "
                "handovers), all running after (s): "
                + ", ".join(f"{s:.3f}" for s in starts)
                + f"; median {statistics.median(starts):.3f}, worst {max(starts):.3f}.",
                "",
            ]
        variants = sc.get("variants", [])
        if variants:
            md += [
                "The largest size started other ways (20 handovers each): *gc paused*: "
                "`gc.disable()` while the elections start, then `gc.enable(); gc.freeze()` "
                "(what the README advises for mass starts); *anyio tasks*: each hold and "
                "observe in an anyio `TaskGroup.start_soon` task (about 4 KiB and 3 GC "
                "objects more per task than a bare asyncio task).",
                "",
                "| N | started | start: all (s) | start CPU (s) | RSS / election (KiB) "
                "| GC objects / election | idle CPU (%) | handover p99 (ms) |",
                "|--:|---|--:|--:|--:|--:|--:|--:|",
            ]
            for r in variants:
                if "error" in r:
                    md.append(f"| {r['n']:,} | {r['variant']} | **failed**: {r['error']} |||||")
                    continue
                h = r.get("handover", {}).get("all", {})
                md.append(
                    f"| {r['n']:,} | {r['variant']} | {_f(r.get('start_all_s'), 3)} "
                    f"| {_f(r.get('start_cpu_s'), 2)} | {_f(r['rss_per_election'] / KIB, 1)} "
                    f"| {_f(r.get('gc_objects_per_election'), 0)} "
                    f"| {_f(r.get('idle_cpu_pct'), 2)} | {_f(h.get('p99', math.nan) * 1e3)} |"
                )
            md.append("")
        failed = [r for r in [*runs, *traced.values()] if "error" in r]
        if failed:
            md += ["Failed runs:", ""]
            for r in failed:
                what = f"N={r['n']:,}" + (
                    f", {r['mode']} only, tracemalloc" if r.get("tracemalloc") else ""
                )
                tail = "; ".join(r.get("stderr", []))[-300:]
                md.append(f"- {what}: {r['error']}" + (f" (stderr: `{tail}`)" if tail else ""))
            md.append("")
        if traced:
            md += [
                "Python heap per election (tracemalloc; a separate process per row; one "
                "task per hold or observe, as an application has):",
                "",
                "| N | hold only (KiB) | GC objects | observe only (KiB) | GC objects |",
                "|--:|--:|--:|--:|--:|",
            ]
            for n in sorted({k[0] for k in traced}):
                cells = []
                for mode in ("hold", "observe"):
                    t = traced.get((n, mode), {})
                    if "traced_per_election" in t:
                        cells += [
                            _f(t["traced_per_election"] / KIB, 1),
                            _f(t.get("gc_objects_per_election"), 0),
                        ]
                    else:
                        cells += ["failed" if "error" in t else "-", "-"]
                md.append(f"| {n:,} | " + " | ".join(cells) + " |")
            md.append("")
        by_n = {r["n"]: r for r in runs}
        big = by_n.get(10000)
        one = by_n.get(1)
        if big is not None:
            starts = _big_starts(sc)
            failed_starts = [r for r in [big, *sc.get("restarts", [])] if "error" in r]
            ok_start = not failed_starts and bool(starts) and max(starts) <= 2.0
            paused = next(
                (v for v in sc.get("variants", []) if v.get("variant") == "gc paused"), None
            )
            if failed_starts:
                start_txt = "failed: " + failed_starts[0]["error"]
            elif len(starts) > 1:
                start_txt = (
                    f"worst {max(starts):.2f} s of {len(starts)} starts "
                    f"(median {statistics.median(starts):.2f} s)"
                )
            else:
                start_txt = f"{big['start_all_s']:.2f} s"
            if paused is not None and "error" not in paused:
                start_txt += f" ({paused['start_all_s']:.2f} s with the GC paused during the start)"
            goals.append(("5a. 10,000 elections running within 2 s of start", start_txt, ok_start))
            if "error" not in big:
                per = big["rss_per_election"] / KIB
                heaps = [
                    traced.get((10000, m), {}).get("traced_per_election")
                    for m in ("hold", "observe")
                ]
                heap_txt = ", ".join(
                    f"heap {m} only {h / KIB:.1f} KiB"
                    for m, h in zip(("hold", "observe"), heaps, strict=True)
                    if h
                )
                goals.append(
                    (
                        "5b. under 10 KiB per election (10,000; hold + observe)",
                        f"RSS {per:.1f} KiB" + (f"; {heap_txt}" if heap_txt else ""),
                        per < 10,
                    )
                )
                goals.append(
                    (
                        "5c. idle CPU under 2% of a core (10,000)",
                        f"{big['idle_cpu_pct']:.2f}% ({big['idle_frozen_cpu_pct']:.2f}% frozen)",
                        big["idle_cpu_pct"] < 2,
                    )
                )
                if one is not None and "error" not in one:
                    p1 = one["handover"]["all"]["p99"]
                    p10k = big["handover"]["all"]["p99"]
                    goals.append(
                        (
                            "5d. handover p99 at 10,000 <= 2x p99 at 1",
                            f"{p10k * 1e3:.2f} ms vs {p1 * 1e3:.2f} ms ({p10k / p1:.2f}x)",
                            p10k <= 2 * p1,
                        )
                    )
            else:
                for g in ("5b. under 10 KiB per election", "5c. idle CPU under 2%", "5d. handover"):
                    goals.append((g + " (10,000)", "not measured: the start failed", False))
        else:
            goals.append(("5. scale to 10,000 elections", "not run (quick mode)", None))
        gc_rows = [r for r in runs if "start_gc" in r]
        if gc_rows:
            md += [
                "Garbage collector during start (count / max pause ms per generation):",
                "",
                "| N | gen0 | gen1 | gen2 |",
                "|--:|--:|--:|--:|",
            ]
            for r in gc_rows:
                g = r["start_gc"]
                md.append(
                    f"| {r['n']:,} | "
                    + " | ".join(
                        f"{g[f'gen{i}_count']} / {g[f'gen{i}_max_ms']:.1f}" for i in range(3)
                    )
                    + " |"
                )
            md.append("")

    # 6. churn
    ch = secs.get("churn")
    if ch:
        md += ["## 6. Churn", ""]
        if "error" in ch:
            md += [f"**{ch['error']}**: `{'; '.join(ch.get('stderr', []))[-400:]}`", ""]
        else:
            h = ch["handover"]
            if not ch.get("all_started", True):
                md += [
                    f"**Only {ch.get('started')} of {ch['n']:,} elections had changed leader "
                    f"{ch.get('start_s', 0):.0f} s after the start**; the window was measured "
                    "anyway.",
                    "",
                ]
            md += [
                f"`bench/_churn.py`: {ch['n']:,} elections, each with two candidates, one on "
                "each of two Electors in one process. A leader holds for a random time "
                f"(uniform, mean {ch['hold_mean_s'] * 1e3:.0f} ms: more than the process can "
                "serve, so this is the sustained maximum), resigns by leaving its block and "
                "campaigns again at once. Requests are counted by wrapping aioelect's "
                "connection layer in that process. " + _load(ch),
                "",
                "| | |",
                "|---|--:|",
                f"| time until every election had changed leader once (s) "
                f"| {_f(ch.get('start_s'), 2)} |",
                f"| terms per second, sustained over {ch['window_s']:.0f} s "
                f"| **{ch['terms_per_s']:.0f}** |",
                f"| etcd requests per term | **{_f(ch['requests_per_term'], 2)}** |",
                f"| handover under churn p50 / p99 (ms; includes queueing) "
                f"| {_f(h['p50'] * 1e3, 1)} / {_f(h['p99'] * 1e3, 1)} |",
                f"| CPU of the process (% of one core) | {_f(ch['cpu_pct'], 0)} |",
                f"| CPU of etcd (% of one core) | {_f(ch.get('etcd_cpu_pct'), 0)} |",
                f"| sessions lost / watch streams re-created | {ch.get('sessions_lost')} / "
                f"{ch.get('watch_recreated', '-')} |",
                f"| GC gen2 passes / max pause (ms) | {ch['gc']['gen2_count']} / "
                f"{ch['gc']['gen2_max_ms']:.0f} |",
                "",
                "Requests in the window, by kind (two Electors: every watch event arrives twice):",
                "",
                "| request | count | per term |",
                "|---|--:|--:|",
            ]
            terms = ch["terms"] or 1
            for k, v in sorted(ch["requests"].items(), key=lambda kv: -kv[1]):
                md.append(f"| {k} | {v:,} | {v / terms:.2f} |")
            md.append("")

    # 7. issue 17's fleet sections (bench/_fleet_report.py)
    from _fleet_report import render_fleet

    fleet_md, fleet_goals = render_fleet(secs)
    md += fleet_md
    goals += fleet_goals

    # profiles
    pr = secs.get("profile")
    if pr:
        from _pyspy import markdown

        md += [
            "## Profiles (py-spy)",
            "",
            "`python bench/run.py --profile` samples the helper processes with py-spy "
            "(250 Hz, non-blocking); raw stacks in `bench/profile/`. Native time inside "
            "grpc's Cython is charged to the Python function that called it.",
            "",
        ]
        for label, p in pr.items():
            if not isinstance(p, dict):
                continue
            if "error" in p:
                md += [f"- {label}: {p['error']}", ""]
            elif "total" in p:
                md += [markdown(f"{label} (`{p['file']}`)", p), ""]

    # goals
    if goals:
        head = [
            "## Goals",
            "",
            "| goal | measured | |",
            "|---|---|---|",
            *[f"| {g} | {v} | {_met(ok)} |" for g, v, ok in goals],
            "",
        ]
        md = md[:12] + head + md[12:]

    md += ["![results](results.png)", ""]
    out.write_text("\n".join(md))
    with contextlib.suppress(ImportError):  # matplotlib is optional for the Markdown
        plot(res, out.with_name("results.png"))


def ms_(x: float) -> str:
    return f"{x * 1e3:.2f}"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = res.get("sections", {})
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle(
        f"aioelect benchmarks ({res['machine']['nproc']} CPUs, etcd "
        f"{res['machine']['etcd'].split()[-1]}, load {res.get('load_start')})",
        fontsize=12,
    )

    def cdf(ax: Any, samples: list[float], label: str, scale: float = 1e3, **kw: Any) -> None:
        if not samples:
            return
        xs = sorted(x * scale for x in samples)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        p50 = summary(samples)["p50"] * scale
        ax.step(xs, ys, where="post", label=f"{label} (p50 {p50:.2f})", **kw)

    ax = axes[0][0]
    f = secs.get("floor", {}).get("samples")
    if f:
        for k, lab in (
            ("get_cold", "get cold"),
            ("get_hot", "get hot"),
            ("txn_cold", "txn cold"),
            ("txn_hot", "txn hot"),
            ("watch_cold", "delete->event cold"),
            ("watch_hot", "delete->event hot"),
        ):
            cdf(ax, f[k], lab, ls="--" if "hot" in k else "-")
        allf = [x for v in f.values() for x in v]
        ax.set_xlim(0, max(1.0, summary(allf)["p99"] * 1.2e3))
    ax.set(title="1. floor: raw etcd requests", xlabel="ms", ylabel="fraction of trials")

    ax = axes[0][1]
    s = secs.get("inproc", {}).get("samples")
    if s:
        cdf(ax, s["aioelect"], "aioelect hold -> hold", lw=2)
        cdf(ax, s["naive"], "naive raw aetcd", lw=2)
        cdf(ax, s["naive_event"], "naive: delete -> event", ls=":")
        ax.set_xlim(0, max(1.0, summary(s["aioelect"] + s["naive"])["p99"] * 1.5e3))
    ax.set(title="2. graceful handover, one process", xlabel="ms", ylabel="fraction of trials")

    ax = axes[0][2]
    s = secs.get("xproc", {}).get("samples")
    if s:
        cdf(ax, s["aioelect"], "aioelect", lw=2)
        cdf(ax, s["etcdctl"], "etcdctl elect (Go)", lw=2)
        ax.set_xlim(0, max(1.0, summary(s["aioelect"] + s["etcdctl"])["p99"] * 1.5e3))
    ax.set(title="3. graceful handover, across processes", xlabel="ms", ylabel="fraction of trials")

    ax = axes[1][0]
    s = secs.get("crash", {}).get("samples")
    if s:
        cdf(ax, s["aioelect"], "aioelect ttl=1", scale=1.0, lw=2)
        cdf(ax, s["etcdctl"], "etcdctl lock --ttl 1", scale=1.0, lw=2)
        ax.axvline(1.6, color="grey", ls=":", label="goal: TTL + 0.6 s")
    ax.set(title="4. crash failover (SIGKILL)", xlabel="s", ylabel="fraction of trials")

    runs = [r for r in secs.get("scale", {}).get("runs", []) if "error" not in r]
    ax = axes[1][1]
    if runs:
        ns = [r["n"] for r in runs]
        ax.plot(ns, [r["start_all_s"] for r in runs], "o-", label="start, all running (s)")
        ax.axhline(2.0, color="grey", ls=":", label="goal at 10,000: 2 s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="elections in one Elector", ylabel="s")
        ax2 = ax.twinx()
        mem = [r for r in runs if r["n"] >= 100]  # one election is below the RSS noise
        ax2.plot(
            [r["n"] for r in mem], [r["rss_per_election"] / KIB for r in mem], "s--",
            color="C3", label="RSS per election (KiB)",
        )  # fmt: skip
        ax2.axhline(10, color="C3", ls=":", lw=0.8)
        ax2.set_ylabel("KiB per election", color="C3")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    failed = [r["n"] for r in secs.get("scale", {}).get("runs", []) if "error" in r]
    if failed:
        ax.text(
            0.98, 0.04, "failed to start: N = " + ", ".join(f"{n:,}" for n in failed),
            transform=ax.transAxes, ha="right", color="C3", fontsize=9,
        )  # fmt: skip
    ax.set_title("5. scale: start time and memory")

    ax = axes[1][2]
    if runs:
        ns = [r["n"] for r in runs]
        for key, lab, style in (
            ("handover", "handover", "-"),
            ("handover_frozen", "handover after gc.freeze()", "--"),
        ):
            ax.plot(ns, [r[key]["all"]["p50"] * 1e3 for r in runs], "o" + style, label=f"{lab} p50")
            ax.plot(ns, [r[key]["all"]["p99"] * 1e3 for r in runs], "^" + style, label=f"{lab} p99")
        ax.set_xscale("log")
        ax.set(xlabel="elections in one Elector", ylabel="ms")
        for r in runs:
            ax.annotate(
                f"idle {r['idle_cpu_pct']:.1f}% CPU",
                (r["n"], r["handover"]["all"]["p99"] * 1e3),
                textcoords="offset points",
                xytext=(0, 8),
                fontsize=7,
                ha="center",
            )
        ax.legend(fontsize=8)
    ax.set_title("5. scale: handover latency, idle CPU")

    for row in axes:
        for a in row:
            a.grid(True, alpha=0.3)
            if a.get_legend() is None and a.get_legend_handles_labels()[0]:
                a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _big_starts(sc: dict[str, Any]) -> list[float]:
    """Start times (s) of the largest size at the GC's defaults: the table's run and the
    repeated starts."""
    runs = sc.get("runs", [])
    if not runs:
        return []
    n = max(r["n"] for r in runs)
    rows = [r for r in runs if r["n"] == n] + list(sc.get("restarts", []))
    return [r["start_all_s"] for r in rows if "error" not in r and "start_all_s" in r]
