"""Markdown for issue 17's sections (``bench/_fleet.py``), called by ``_report.render``."""

from __future__ import annotations

import math
from typing import Any

Goal = tuple[str, str, bool | None]
MIB = 2**20


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _ms(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else _f(x * 1e3, digits)


def _load(sec: dict[str, Any]) -> str:
    lb, la = sec.get("load_before"), sec.get("load_after")
    return f"load average (1/5/15 min) before {lb}, after {la}; {sec.get('seconds', 0):.0f} s"


def _error(sec: dict[str, Any]) -> list[str]:
    return [f"**{sec['error']}**", ""]


def _noisy(sec: dict[str, Any], goals: list[Goal]) -> list[str]:
    md = ["### Noisy neighbours (goal 1; `--only noisy`)", ""]
    if "error" in sec:
        return md + _error(sec)
    p = sec["params"]
    same, other, quiet = sec["same"], sec["other"], sec["quiet"]
    md += [
        "Two idle processes, each an Elector holding one election and observing the other's, "
        f"while a third process churns {p['noisy_n']:,} elections (two Electors, two candidates "
        "each, hold/resign loops, mean hold 50 ms) under the same prefix, then under another "
        f"prefix; CPU from /proc over {p['noisy_window']:g} s after a {p['noisy_warmup']:g} s "
        "warm-up (10 ms ticks: about 0.1 pp resolution). " + _load(sec),
        "",
        "| churner | idle Elector CPU (% of a core, mean of 2) | churner terms/s "
        "| churner CPU (%) | etcd CPU (%) |",
        "|---|--:|--:|--:|--:|",
        f"| none | {_f(quiet['idle_cpu_pct'])} | - | - | {_f(quiet['etcd_cpu_pct'], 0)} |",
    ]
    for label, c in (("same prefix", same), ("other prefix", other)):
        md.append(
            f"| {label} | **{_f(c['idle_cpu_pct'])}** | {_f(c['churner_terms_per_s'], 0)} "
            f"| {_f(c['churner_cpu_pct'], 0)} | {_f(c['etcd_cpu_pct'], 0)} |"
        )
    diff = sec["difference_pp"]
    md += ["", f"Difference, same minus other prefix: **{_f(diff)} percentage points**.", ""]
    goals.append(
        (
            "noisy neighbour: idle Elector < 1 % CPU, within 0.5 pp of another prefix",
            f"{_f(same['idle_cpu_pct'])} % ({_f(diff)} pp)",
            same["idle_cpu_pct"] < 1.0 and abs(diff) <= 0.5,
        )
    )
    return md


def _entry(sec: dict[str, Any], goals: list[Goal]) -> list[str]:
    md = ["### Entry vs the prefix's size (goal 2; `--only entry`)", ""]
    if "error" in sec:
        return md + _error(sec)
    p = sec["params"]
    e, b = sec["empty"], sec["big"]
    md += [
        "A fresh process per trial builds an `Elector`, enters it and wins one election "
        f"(`hold` body running), under an empty prefix and under one holding "
        f"{p['entry_keys']:,} other keys (16-byte values, in other elections; written "
        f"beforehand in {_f(sec['fill_s'], 1)} s, not timed); medians of "
        f"{p['entry_trials']} trials each, interleaved. RSS growth: after the win minus "
        "before `Elector(...)`. " + _load(sec),
        "",
        "| prefix | construct + enter (ms) | enter -> body (ms) | total (ms) | RSS growth (MiB) |",
        "|---|--:|--:|--:|--:|",
    ]
    for label, c in (("empty", e), (f"{p['entry_keys']:,} other keys", b)):
        md.append(
            f"| {label} | {_ms(c['enter_s'])} | {_ms(c['win_s'])} | **{_ms(c['total_s'])}** "
            f"| {_f(c['rss_growth'] / MIB, 1)} |"
        )
    ratio, rss = sec["time_ratio"], sec["rss_from_keys"] / MIB
    md += [
        "",
        f"Time ratio {_f(ratio)}x; RSS attributable to the other keys {_f(rss, 1)} MiB.",
        "",
    ]
    goals.append(
        (
            "entry under 100,000 other keys: within 1.2x of empty, < 1 MiB more",
            f"{_f(ratio)}x, {_f(rss, 1)} MiB",
            ratio <= 1.2 and rss < 1.0,
        )
    )
    return md


def _fanout(sec: dict[str, Any], goals: list[Goal]) -> list[str]:
    md = ["### etcd's fan-out (goal 3; `--only fanout`)", ""]
    if "error" in sec:
        return md + _error(sec)
    md += [
        f"{sec['processes']} processes under one prefix: 2 hand one election back and forth "
        f"({sec['changes']} graceful handovers; each is the leader's resign and its "
        f"re-campaign: {_f(sec['writes_per_change'], 1)} writes), the other "
        f"{sec['processes'] - 2} each hold an election of their own, idle. "
        "`etcd_debugging_mvcc_events_total` (events etcd sent to watchers) scraped from "
        "`/metrics` before and after, less the same processes' idle rate "
        f"({_f(sec['idle_events'], 0)} events in {_f(sec['idle_seconds'], 1)} s). " + _load(sec),
        "",
        "| | |",
        "|---|--:|",
        f"| events sent per leader change | **{_f(sec['events_per_change'], 1)}** |",
        f"| events sent per write (watchers per event) | {_f(sec['events_per_write'], 1)} |",
        f"| handover p50 / p99 (ms) | {_ms(sec['handover']['p50'], 2)} / "
        f"{_ms(sec['handover']['p99'], 2)} |",
        "",
    ]
    goals.append(
        (
            f"fan-out, {sec['processes']} processes, 2 taking part: at most 2 + a constant",
            f"{_f(sec['events_per_write'], 1)} events per write "
            f"({_f(sec['events_per_change'], 1)} per change)",
            None,  # the issue names no constant
        )
    )
    return md


def _fleet(sec: dict[str, Any], goals: list[Goal]) -> list[str]:
    md = ["### Scale out: a simulated fleet (goal 5; `--only fleet`)", ""]
    if "error" in sec:
        return md + _error(sec)
    p = sec["params"]
    md += [
        f"P processes x {p['fleet_per']} elections each, {p['fleet_candidates']} candidates "
        f"per election on {p['fleet_candidates']} processes (`Elector.leadership` with "
        "`on_leader_change`), one etcd; a probe election handed back and forth between two "
        f"more processes ({p['fleet_trials']} handovers, {1e3 * 0.05:.0f} ms apart) with the "
        f"fleet idle, then churning (each fleet process resigns a random term of its own "
        f"{p['fleet_churn_rate']:g} times a second; the other candidate takes over). Start: "
        "spawn of the fleet until every candidate has seen a leader of each of its elections "
        f"and every candidate key is in etcd. CPU in % of one core. Stopped: {sec['stopped']}. "
        + _load(sec),
        "",
        "| processes | elections | start (s) | etcd CPU idle / churn | etcd RSS idle / churn (MiB) "
        "| fleet CPU idle / churn | fleet RSS (MiB) | terms/s | probe p99 idle / churn (ms) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for pt in sec["points"]:
        if "error" in pt:
            md.append(f"| {pt['procs']} | {_f(pt['elections'])} | {pt['error']} |||||||")
            continue
        i, c = pt["idle"], pt["churn"]
        md.append(
            f"| {pt['procs']} | {_f(pt['elections'])} | {_f(pt['start_s'], 1)} "
            f"| {_f(i['etcd_cpu_pct'], 0)} / {_f(c['etcd_cpu_pct'], 0)} "
            f"| {_f(i['etcd_rss_mib'], 0)} / {_f(c['etcd_rss_mib'], 0)} "
            f"| {_f(i['fleet_cpu_pct'], 0)} / {_f(c['fleet_cpu_pct'], 0)} "
            f"| {_f(c['fleet_rss_mib'], 0)} | {_f(c['resigns_per_s'], 0)} "
            f"| {_ms(i['handover']['p99'])} / **{_ms(c['handover']['p99'])}** |"
        )
    largest = sec.get("largest_within_2x")
    md += [
        "",
        "Largest fleet up to which the probe's p99 under churn stays within 2x of the "
        "smallest fleet's: "
        f"**{largest if largest is not None else '-'} processes**.",
        "",
    ]
    goals.append(("scale out: largest fleet before the probe's p99 doubles", f"{largest}", None))
    return md


def render_fleet(secs: dict[str, Any]) -> tuple[list[str], list[Goal]]:
    """The Markdown of the sections present, and their lines for the goals table."""
    parts = {"noisy": _noisy, "entry": _entry, "fanout": _fanout, "fleet": _fleet}
    present = [k for k in parts if secs.get(k)]
    goals: list[Goal] = []
    if not present:
        return [], goals
    md = [
        "## 7. A process pays for the elections it takes part in (issue 17)",
        "",
        "Driven through the public API only (`bench/_fleet.py`, `bench/_fleet_member.py`), "
        "so the same code measures before and after the mirror's rewrite.",
        "",
    ]
    for k in present:
        md += parts[k](secs[k], goals)
    return md, goals
