"""Render ``results.json`` as ``RESULTS.md`` and ``results.png`` (used by ``bench/run.py``)."""

from __future__ import annotations

import contextlib
import math
import re
import statistics
from pathlib import Path
from string import Template
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


#: The report's prose: named blocks of ``RESULTS.template.md`` (``string.Template``s).
TEMPLATE = Path(__file__).with_name("RESULTS.template.md")
_BLOCK = re.compile(r"<!-- block: (\w+) -->")


def load_blocks(path: Path = TEMPLATE) -> dict[str, Template]:
    """The blocks of the template file, by name (text before the first block is a comment)."""
    blocks: dict[str, Template] = {}
    name: str | None = None
    lines: list[str] = []
    for line in [*path.read_text().split("\n"), "<!-- block: _end -->"]:
        m = _BLOCK.fullmatch(line)
        if m is None:
            lines.append(line)
            continue
        if name is not None:
            blocks[name] = Template("\n".join(lines).strip("\n"))
        name, lines = m.group(1), []
    return blocks


class _Prose:
    """Fills the template's blocks: ``text(name, ...)`` is one string, ``lines(name, ...)``
    the report lines of a block followed by a blank line."""

    def __init__(self) -> None:
        self.blocks = load_blocks()

    def text(self, name: str, **values: object) -> str:
        return self.blocks[name].substitute({k: str(v) for k, v in values.items()})

    def lines(self, name: str, **values: object) -> list[str]:
        return [*self.text(name, **values).split("\n"), ""]


def _load(t: _Prose, sec: dict[str, Any]) -> str:
    return t.text(
        "load",
        before=sec.get("load_before"),
        after=sec.get("load_after"),
        seconds=f"{sec.get('seconds', 0):.0f}",
    )


def render(res: dict[str, Any], out: Path) -> None:
    t = _Prose()
    secs = res.get("sections", {})
    goals: list[str] = []
    md: list[str] = []
    m = res.get("machine", {})
    source = res.get("source", {})
    start_digest = source.get("digest")
    changed = [
        name
        for name, sec in secs.items()
        if start_digest and sec.get("source_digest") not in (None, start_digest)
    ]
    shared = max((res.get("load_start") or [0])[:1] + (res.get("load_end") or [0])[:1]) > 0.5
    header = t.lines(
        "header",
        command=res.get("command"),
        mode="quick" if res.get("quick") else "full",
        minutes=_f(res.get("seconds", 0) / 60, 1),
        started=res.get("started"),
        finished=res.get("finished"),
        nproc=m.get("nproc"),
        cpu_model=m.get("cpu_model"),
        mem_gib=m.get("mem_total_gib"),
        platform=m.get("platform"),
        python=m.get("python"),
        etcd=m.get("etcd"),
        packages=", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()),
        commit=source.get("commit", "?"),
        digest=source.get("digest", "?"),
        sources_changed=t.text("sources_changed", sections=", ".join(changed)) if changed else "",
        etcd_flags=res.get("etcd_flags"),
        load_start=res.get("load_start"),
        load_end=res.get("load_end"),
        shared=t.text("shared") if shared else "",
    )

    # 1. floor
    f = secs.get("floor")
    if f and "samples" in f:
        s = f["samples"]
        table = [
            *_header("ms"),
            _row("get, cold", s["get_cold"]),
            _row("get, hot", s["get_hot"]),
            _row("txn (create if absent), cold", s["txn_cold"]),
            _row("txn (create if absent), hot", s["txn_hot"]),
            _row("delete -> watch event, cold", s["watch_cold"]),
            _row("delete -> watch event, hot", s["watch_hot"]),
        ]
        md += t.lines("floor", load=_load(t, f), table="\n".join(table))

    # 2. in-process
    ip = secs.get("inproc")
    if ip and "samples" in ip:
        s = ip["samples"]
        a50, n50 = summary(s["aioelect"])["p50"], summary(s["naive"])["p50"]
        ratio = a50 / n50 if n50 else math.nan
        ok = ratio <= 1.2
        goals.append(t.text("goal_inproc", ratio=f"{ratio:.2f}", met=_met(ok)))
        table = [
            *_header("ms"),
            _row("aioelect: hold exit -> successor's body", s["aioelect"]),
            _row("naive raw aetcd: delete -> follower's txn done", s["naive"]),
            _row("(naive: delete -> follower sees the event)", s["naive_event"]),
        ]
        md += t.lines(
            "inproc",
            load=_load(t, ip),
            table="\n".join(table),
            ratio=f"{ratio:.2f}",
            met=_met(ok),
        )
        bd = ip.get("breakdown") or []
        if bd:
            rows = []
            for k in bd[0]:
                sm = summary([b[k] for b in bd])
                rows.append(f"| {k} | {_f(sm['p50'], 3)} | {_f(sm['p90'], 3)} |")
            md += t.lines("inproc_breakdown", trials=len(bd), rows="\n".join(rows))

    # 3. cross-process
    xp = secs.get("xproc")
    if xp and "samples" in xp:
        s = xp["samples"]
        sa, sg = summary(s["aioelect"]), summary(s["etcdctl"])
        ok50, ok99 = sa["p50"] <= sg["p50"], sa["p99"] <= sg["p99"]
        goals.append(
            t.text(
                "goal_xproc",
                a50=ms_(sa["p50"]),
                g50=ms_(sg["p50"]),
                a99=ms_(sa["p99"]),
                g99=ms_(sg["p99"]),
                met=_met(ok50 and ok99),
            )
        )
        table = [
            *_header("ms"),
            _row("aioelect", s["aioelect"]),
            _row("etcdctl elect", s["etcdctl"]),
            _row("(aioelect, stamped in the successor)", s["aioelect_self"]),
        ]
        if s.get("aioelect_signal_to_exit"):
            table += [
                _row(
                    "(aioelect: SIGINT -> the leader leaves its block)",
                    s["aioelect_signal_to_exit"],
                ),
                _row(
                    "(aioelect: leader leaves its block -> successor's body)",
                    s["aioelect_exit_to_elected"],
                ),
            ]
        md += t.lines(
            "xproc",
            load=_load(t, xp),
            table="\n".join(table),
            met50=_met(ok50),
            met99=_met(ok99),
        )

    # 4. crash
    cr = secs.get("crash")
    if cr and "samples" in cr:
        s = cr["samples"]
        sa, sg = summary(s["aioelect"]), summary(s["etcdctl"])
        bound = 1.6
        ok = sa["p99"] <= bound and sa["p99"] <= sg["p99"]
        goals.append(
            t.text(
                "goal_crash",
                a99=f"{sa['p99']:.3f}",
                g99=f"{sg['p99']:.3f}",
                bound=bound,
                met=_met(ok),
            )
        )
        table = [
            *_header("s"),
            _row("aioelect", s["aioelect"], unit="s", digits=3),
            _row("etcdctl lock --ttl 1", s["etcdctl"], unit="s", digits=3),
        ]
        md += t.lines("crash", load=_load(t, cr), table="\n".join(table), bound=bound, met=_met(ok))

    # 5. scale
    sc = secs.get("scale")
    if sc and "runs" in sc:
        md += _scale(t, sc, goals)

    # 6. churn
    ch = secs.get("churn")
    if ch:
        md += t.lines("churn_heading")
        if "error" in ch:
            md += t.lines(
                "churn_error", error=ch["error"], stderr="; ".join(ch.get("stderr", []))[-400:]
            )
        else:
            h = ch["handover"]
            if not ch.get("all_started", True):
                md += t.lines(
                    "churn_not_started",
                    started=ch.get("started"),
                    n=f"{ch['n']:,}",
                    start_s=f"{ch.get('start_s', 0):.0f}",
                )
            terms = ch["terms"] or 1
            rows = [
                f"| {k} | {v:,} | {v / terms:.2f} |"
                for k, v in sorted(ch["requests"].items(), key=lambda kv: -kv[1])
            ]
            md += t.lines(
                "churn",
                n=f"{ch['n']:,}",
                hold_ms=f"{ch['hold_mean_s'] * 1e3:.0f}",
                load=_load(t, ch),
                start_s=_f(ch.get("start_s"), 2),
                window_s=f"{ch['window_s']:.0f}",
                terms_per_s=f"{ch['terms_per_s']:.0f}",
                requests_per_term=_f(ch["requests_per_term"], 2),
                p50=_f(h["p50"] * 1e3, 1),
                p99=_f(h["p99"] * 1e3, 1),
                cpu=_f(ch["cpu_pct"], 0),
                etcd_cpu=_f(ch.get("etcd_cpu_pct"), 0),
                sessions_lost=ch.get("sessions_lost"),
                watch_recreated=ch.get("watch_recreated", "-"),
                gen2_count=ch["gc"]["gen2_count"],
                gen2_max_ms=f"{ch['gc']['gen2_max_ms']:.0f}",
                rows="\n".join(rows),
            )

    # 7. issue 17's fleet sections (bench/_fleet_report.py)
    from _fleet_report import render_fleet

    fleet_md, fleet_goals = render_fleet(secs)
    md += fleet_md
    goals += [f"| {goal} | {measured} | {_met(ok)} |" for goal, measured, ok in fleet_goals]

    # profiles
    pr = secs.get("profile")
    if pr:
        from _pyspy import markdown

        md += t.lines("profiles")
        for label, p in pr.items():
            if not isinstance(p, dict):
                continue
            if "error" in p:
                md += [f"- {label}: {p['error']}", ""]
            elif "total" in p:
                md += [markdown(f"{label} (`{p['file']}`)", p), ""]

    if goals:
        header += t.lines("goals", rows="\n".join(goals))
    out.write_text("\n".join([*header, *md, *t.lines("footer")]))
    with contextlib.suppress(ImportError):  # matplotlib is optional for the Markdown
        plot(res, out.with_name("results.png"))


def _scale(t: _Prose, sc: dict[str, Any], goals: list[str]) -> list[str]:
    """Section 5 (its goals go to ``goals``)."""
    md: list[str] = []
    runs = sc["runs"]
    traced = {(r["n"], r.get("mode")): r for r in sc.get("traced", [])}
    rows = []
    for r in runs:
        n = r["n"]
        if "error" in r:
            rows.append(t.text("scale_failed_row", n=f"{n:,}"))
            continue
        h = r.get("handover", {}).get("all", {})
        hf = r.get("handover_frozen", {}).get("all", {})
        gcs = r.get("start_gc", {})
        gcmax = max(gcs.get(f"gen{g}_max_ms", 0.0) for g in range(3)) if gcs else None
        cells = [
            f"{n:,}",
            _f(r.get("start_held_s"), 3),
            _f(r.get("start_all_s"), 3),
            _f(r.get("start_cpu_s"), 2),
            _f(r["rss_per_election"] / KIB, 1),
            _f(r.get("gc_objects_per_election"), 0),
            _f(r.get("idle_cpu_pct"), 2),
            _f(r.get("idle_frozen_cpu_pct"), 2),
            _f(h.get("p50", math.nan) * 1e3),
            _f(h.get("p99", math.nan) * 1e3),
            _f(hf.get("p50", math.nan) * 1e3),
            _f(hf.get("p99", math.nan) * 1e3),
            _f(gcmax, 0),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    md += t.lines("scale", load=_load(t, sc), rows="\n".join(rows))
    starts = _big_starts(sc)
    if len(starts) > 1:
        md += t.lines(
            "scale_starts",
            n=f"{max(r['n'] for r in runs):,}",
            more=len(starts) - 1,
            starts=", ".join(f"{s:.3f}" for s in starts),
            median=f"{statistics.median(starts):.3f}",
            worst=f"{max(starts):.3f}",
        )
    variants = sc.get("variants", [])
    if variants:
        rows = []
        for r in variants:
            if "error" in r:
                rows.append(
                    t.text(
                        "scale_variant_failed_row",
                        n=f"{r['n']:,}",
                        variant=r["variant"],
                        error=r["error"],
                    )
                )
                continue
            h = r.get("handover", {}).get("all", {})
            cells = [
                f"{r['n']:,}",
                r["variant"],
                _f(r.get("start_all_s"), 3),
                _f(r.get("start_cpu_s"), 2),
                _f(r["rss_per_election"] / KIB, 1),
                _f(r.get("gc_objects_per_election"), 0),
                _f(r.get("idle_cpu_pct"), 2),
                _f(h.get("p99", math.nan) * 1e3),
            ]
            rows.append("| " + " | ".join(cells) + " |")
        md += t.lines("scale_variants", rows="\n".join(rows))
    failed = [r for r in [*runs, *traced.values()] if "error" in r]
    if failed:
        rows = []
        for r in failed:
            what = f"N={r['n']:,}" + (
                f", {r['mode']} only, tracemalloc" if r.get("tracemalloc") else ""
            )
            tail = "; ".join(r.get("stderr", []))[-300:]
            stderr = f" (stderr: `{tail}`)" if tail else ""
            rows.append(t.text("scale_failed_run", what=what, error=r["error"], stderr=stderr))
        md += t.lines("scale_failed", rows="\n".join(rows))
    if traced:
        rows = []
        for n in sorted({k[0] for k in traced}):
            cells = []
            for mode in ("hold", "observe"):
                tr = traced.get((n, mode), {})
                if "traced_per_election" in tr:
                    cells += [
                        _f(tr["traced_per_election"] / KIB, 1),
                        _f(tr.get("gc_objects_per_election"), 0),
                    ]
                else:
                    cells += ["failed" if "error" in tr else "-", "-"]
            rows.append(f"| {n:,} | " + " | ".join(cells) + " |")
        md += t.lines("scale_traced", rows="\n".join(rows))
    goals += _scale_goals(t, sc, runs, traced)
    gc_rows = [r for r in runs if "start_gc" in r]
    if gc_rows:
        rows = []
        for r in gc_rows:
            g = r["start_gc"]
            gens = [f"{g[f'gen{i}_count']} / {g[f'gen{i}_max_ms']:.1f}" for i in range(3)]
            rows.append(f"| {r['n']:,} | " + " | ".join(gens) + " |")
        md += t.lines("scale_gc", rows="\n".join(rows))
    return md


def _scale_goals(
    t: _Prose,
    sc: dict[str, Any],
    runs: list[dict[str, Any]],
    traced: dict[tuple[int, Any], dict[str, Any]],
) -> list[str]:
    """The rows of goals 5a-5d."""
    by_n = {r["n"]: r for r in runs}
    big = by_n.get(10000)
    one = by_n.get(1)
    if big is None:
        return [t.text("goal_scale_quick", met=_met(None))]
    goals = []
    starts = _big_starts(sc)
    failed_starts = [r for r in [big, *sc.get("restarts", [])] if "error" in r]
    ok_start = not failed_starts and bool(starts) and max(starts) <= 2.0
    paused = next((v for v in sc.get("variants", []) if v.get("variant") == "gc paused"), None)
    if failed_starts:
        start_txt = t.text("start_failed", error=failed_starts[0]["error"])
    elif len(starts) > 1:
        start_txt = t.text(
            "start_worst",
            worst=f"{max(starts):.2f}",
            n=len(starts),
            median=f"{statistics.median(starts):.2f}",
        )
    else:
        start_txt = t.text("start_one", start=f"{big['start_all_s']:.2f}")
    if paused is not None and "error" not in paused:
        start_txt += t.text("start_paused", start=f"{paused['start_all_s']:.2f}")
    goals.append(t.text("goal_start", measured=start_txt, met=_met(ok_start)))
    if "error" in big:
        return [*goals, *t.text("goals_not_measured", met=_met(False)).split("\n")]
    per = big["rss_per_election"] / KIB
    heaps = [traced.get((10000, m), {}).get("traced_per_election") for m in ("hold", "observe")]
    heap_txt = ", ".join(
        t.text("heap", mode=m, kib=f"{h / KIB:.1f}")
        for m, h in zip(("hold", "observe"), heaps, strict=True)
        if h
    )
    goals.append(
        t.text(
            "goal_memory",
            rss=f"{per:.1f}",
            heaps=t.text("heaps", heaps=heap_txt) if heap_txt else "",
            met=_met(per < 10),
        )
    )
    goals.append(
        t.text(
            "goal_idle",
            idle=f"{big['idle_cpu_pct']:.2f}",
            frozen=f"{big['idle_frozen_cpu_pct']:.2f}",
            met=_met(big["idle_cpu_pct"] < 2),
        )
    )
    if one is not None and "error" not in one:
        p1 = one["handover"]["all"]["p99"]
        p10k = big["handover"]["all"]["p99"]
        goals.append(
            t.text(
                "goal_handover",
                p10k=f"{p10k * 1e3:.2f}",
                p1=f"{p1 * 1e3:.2f}",
                ratio=f"{p10k / p1:.2f}",
                met=_met(p10k <= 2 * p1),
            )
        )
    return goals


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
