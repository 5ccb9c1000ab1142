"""The chaos suite's own checks, on made-up events (pure logic, no etcd)."""

from __future__ import annotations

from _support import check_intervals, explain_overlaps, last_alive, leading_periods


def _events() -> list[dict[str, object]]:
    # Process 0 (a) leads term 10 from t=1; process 1 (b) is elected term 20 at t=3.
    return [
        {"event": "elected", "id": "a", "election": "e", "token": 10, "t": 1.0, "_proc": 0},
        {"event": "elected", "id": "b", "election": "e", "token": 20, "t": 3.0, "_proc": 1},
        {"event": "ended", "id": "b", "election": "e", "token": 20, "t": 4.0, "_proc": 1},
    ]


def test_a_killed_leader_overlaps_until_its_kill() -> None:
    """A leader killed at t=5 without an 'ended' event led until then: b overlaps it."""
    periods, open_terms = leading_periods(_events(), {0: 5.0})
    assert open_terms == []
    problems = check_intervals(periods)
    assert problems == ["e: b term 20 started 2.000 s before a term 10 ended"]


def test_no_overlap_when_the_killed_leader_last_ran_before() -> None:
    """Capped where the killed process last ran (paused at t=2, never woke): no overlap."""
    periods, _ = leading_periods(_events(), {0: 2.0})
    assert check_intervals(periods) == []


def test_explain_overlaps_tells_the_story() -> None:
    events = _events()
    timeline = [{"t": 2.0, "action": "pause", "id": "a"}, {"t": 9.0, "action": "pause", "id": "a"}]
    periods, _ = leading_periods(events, {0: 5.0})
    text = explain_overlaps(check_intervals(periods), events, timeline)
    lines = text.splitlines()
    assert lines[0].startswith("--- e: b term 20 started")
    assert [line.split()[2] for line in lines[1:]] == ["elected", "chaos", "elected", "ended"]
    assert "9.000" not in text  # actions far from the terms are left out


def test_last_alive() -> None:
    # Killed while paused: it last ran when paused.
    assert last_alive(10.0, 7.0, [], []) == 7.0
    # Killed 1 ms after a pause ended, never reported waking: it last ran when paused.
    assert last_alive(10.0, None, [(7.0, 9.999)], []) == 7.0
    # ... but it did wake (its watchdog said so): the kill instant.
    assert last_alive(10.0, None, [(7.0, 9.999)], [9.9995]) == 10.0
    # Killed long after its last pause: the kill instant.
    assert last_alive(10.0, None, [(7.0, 8.0)], []) == 10.0
    assert last_alive(10.0, None, [], []) == 10.0


def _woke(valid_until: float) -> dict[str, object]:
    return {
        "event": "woke",
        "id": "a",
        "t": 8.0,
        "gap": 6.5,
        "terms": [{"election": "e", "token": 10, "is_valid": False, "valid_until": valid_until}],
        "_proc": 0,
    }


def test_a_leader_that_woke_invalid_led_until_its_deadline() -> None:
    """a paused at t=1.5, then SIGCONT and SIGKILL at t=8: it ran long enough to report its
    term invalid (renew deadline 2.5) but not to end it. b, elected at t=3, does not
    overlap; with a deadline after b's start (4.0), it does."""
    events = _events()
    periods, _ = leading_periods([*events, _woke(2.5)], {0: 8.0})
    assert check_intervals(periods) == []
    periods, _ = leading_periods([*events, _woke(4.0)], {0: 8.0})
    assert check_intervals(periods) == ["e: b term 20 started 1.000 s before a term 10 ended"]
