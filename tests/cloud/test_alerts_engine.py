"""The alerts engine on crafted events: each kind fires once and clears once, a flapping
sensor is one episode, a restart repeats nothing, and a replay of the table's readings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloud.alerts.engine import CLEARED, FIRED, Engine, Notification
from cloud.alerts.notify import FloodGate
from cloud.alerts.replay import replay
from cloud.alerts.rules import parse_rules
from cloud.alerts.state import AlertState, active_alerts, load_state, save_state
from cloud.live.events import LiveEvent
from cloud.table import Row
from device.payload import Reading

T0 = 1_764_345_600_000  # 2025-11-28T16:00:00Z
S = 1000


def engine(rules: str, state: AlertState | None = None, started: int = T0) -> Engine:
    return Engine(parse_rules(rules), state or AlertState(), started)


def rule(when: str, **keys: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f'[[rule]]\nname = "r"\nwhen = "{when}"\n{extra}'


def reading(ts: int, temperature: float = 20.0, seq: int = 0, sensor: str = "s1") -> LiveEvent:
    r = Reading(sensor, ts, seq, temperature)
    return LiveEvent("reading", sensor, ts, reading=r)


def status(sensor: str, text: str, at: int, retained: bool = False) -> LiveEvent:
    return LiveEvent("status", sensor, at, status=text, retained=retained)


def feed(e: Engine, events: list[LiveEvent]) -> list[tuple[str, int]]:
    """(event, at) of each notification, in order."""
    out: list[tuple[str, int]] = []
    for event in events:
        out += [(n.event, n.at_ms) for n in e.on_event(event)]
    return out


def test_threshold_fires_after_its_duration_of_device_time_and_clears_once():
    e = engine(rule("temperature > 8 for 10s"))
    temps = [5, 9, 9.5, 10, 12, 11, 7, 6, 9]  # a reading every 5 s
    events = [reading(T0 + i * 5 * S, t, i) for i, t in enumerate(temps)]
    notes = [n for ev in events for n in e.on_event(ev)]
    assert [(n.event, n.at_ms, n.since_ms, n.value) for n in notes] == [
        (FIRED, T0 + 15 * S, T0 + 5 * S, 10.0),  # 9 at 5 s, still above at 15 s
        (CLEARED, T0 + 30 * S, T0 + 5 * S, 7.0),
    ]
    assert notes[0].message == "temperature 10 > 8 for 10s (since 2025-11-28T16:00:05.000Z)"
    assert notes[1].message == "temperature back to 7 (rule: > 8)"
    assert notes[0].to_json() == {
        "event": "fired",
        "rule": "r",
        "when": "temperature > 8 for 10s",
        "sensor_id": "s1",
        "kind": "threshold",
        "since": "2025-11-28T16:00:05.000Z",
        "at": "2025-11-28T16:00:15.000Z",
        "value": 10.0,
        "message": notes[0].message,
        "episode": f"r/s1/{T0 + 5 * S}",
    }
    # The last 9 starts a new run, not yet 10 s long.
    assert e.state.episodes == {}


def test_a_threshold_run_broken_before_its_duration_fires_nothing():
    e = engine(rule("temperature >= 8 for 10s"))
    temps = [8, 9, 7, 8, 9]
    assert feed(e, [reading(T0 + i * 4 * S, t, i) for i, t in enumerate(temps)]) == []


def test_hysteresis_and_clear_after_keep_a_flapping_sensor_one_episode():
    e = engine(rule("temperature > 8", hysteresis="1.0", clear_after='"20s"'))
    temps = [9, 8, 8.5, 7.5, 9, 6.9, 7, 6, 5, 5]  # a reading every 5 s
    got = feed(e, [reading(T0 + i * 5 * S, t, i) for i, t in enumerate(temps)])
    # 8 and 7.5 are inside the band, 6.9 starts the clear, 20 s of it later it is cleared.
    assert got == [(FIRED, T0), (CLEARED, T0 + 45 * S)]


def test_rate_of_change_fires_on_a_rise_within_the_window_and_clears():
    e = engine(rule("temperature rises 2 in 30s"))
    temps = [20, 20.5, 21, 22.5, 23, 23, 23, 23, 23]  # every 10 s
    notes = [n for i, t in enumerate(temps) for n in e.on_event(reading(T0 + i * 10 * S, t, i))]
    assert [(n.event, n.at_ms, n.since_ms) for n in notes] == [
        (FIRED, T0 + 30 * S, T0),  # 22.5 against 20 at 0 s
        (CLEARED, T0 + 60 * S, T0),  # 22.5 at 30 s is the window's lowest by then
    ]
    assert notes[0].message == "temperature rose 2.5 in 30s (20 -> 22.5)"
    assert notes[0].value == 2.5


def test_a_fall_is_its_own_direction():
    e = engine(rule("temperature falls 3 in 1m"))
    got = feed(e, [reading(T0 + i * 10 * S, t, i) for i, t in enumerate([10, 12, 11, 8.5])])
    assert got == [(FIRED, T0 + 30 * S)]  # 12 -> 8.5


def test_seq_gap_fires_on_a_jump_clears_in_order_and_a_reset_is_no_gap():
    e = engine(rule("seq gap"))
    seqs = [5, 6, 9, 10, 11, 0, 1, 1]
    notes = [n for i, q in enumerate(seqs) for n in e.on_event(reading(T0 + i * S, 20, q))]
    assert [(n.event, n.at_ms, n.value, n.message) for n in notes] == [
        (FIRED, T0 + 2 * S, 2.0, "seq 6 -> 9: 2 reading(s) missing"),
        (CLEARED, T0 + 3 * S, 10.0, "seq in order again at 10"),
    ]


def test_a_redelivered_reading_is_not_a_reset_then_a_gap():
    e = engine(rule("seq gap"))
    events = [reading(T0, 20, 10), reading(T0 + S, 20, 11), reading(T0, 20, 10)]
    events.append(reading(T0 + 2 * S, 20, 12))
    assert feed(e, events) == []


def test_staleness_fires_for_a_named_sensor_that_never_sent_anything():
    e = engine(rule("no reading for 5s", sensors='["freezer-9"]'))
    assert e.tick(T0 + 4_999) == []
    notes = e.tick(T0 + 6 * S)
    assert [(n.event, n.sensor_id, n.at_ms) for n in notes] == [(FIRED, "freezer-9", T0 + 5 * S)]
    assert notes[0].message == "no reading for 5s (none since 2025-11-28T16:00:00.000Z)"
    assert e.tick(T0 + 60 * S) == []  # once per episode
    cleared = e.on_event(reading(T0 + 61 * S, sensor="freezer-9"))
    assert [(n.event, n.message) for n in cleared] == [(CLEARED, "reading again after 1m1s")]


def test_staleness_for_a_pattern_watches_the_sensors_seen_statuses_included():
    e = engine(rule("no reading for 5s", sensors='["freezer-*"]'))
    e.on_event(status("freezer-1", "online", T0, retained=True))
    e.on_event(reading(T0 + S, sensor="freezer-2"))
    e.on_event(reading(T0 + S, sensor="other"))
    fired = {(n.sensor_id, n.at_ms) for n in e.tick(T0 + 7 * S)}
    assert fired == {("freezer-1", T0 + 5 * S), ("freezer-2", T0 + 6 * S)}


def test_offline_fires_after_its_duration_on_the_watchers_clock_and_clears_when_online():
    e = engine(rule("offline for 10s"))
    assert e.on_event(status("s1", "online", T0, retained=True)) == []
    assert e.on_event(status("s1", "offline", T0 + S)) == []
    assert e.tick(T0 + 10 * S) == []
    notes = e.tick(T0 + 12 * S)
    assert [(n.event, n.since_ms, n.at_ms) for n in notes] == [(FIRED, T0 + S, T0 + 11 * S)]
    assert e.tick(T0 + 20 * S) == []
    notes = e.on_event(status("s1", "online", T0 + 30 * S))
    assert [(n.event, n.at_ms, n.message) for n in notes] == [
        (CLEARED, T0 + 30 * S, "online again after 29s")
    ]


def test_a_restart_does_not_repeat_an_episode_and_announces_its_end_once(tmp_path: Path):
    rules = rule("temperature > 8")
    path = tmp_path / "state.json"
    first = engine(rules)
    assert feed(first, [reading(T0, 9, 0)]) == [(FIRED, T0)]
    save_state(path, first.state)
    assert [(a.rule, a.sensor_id, a.kind, a.since_ms) for a in active_alerts(path)] == [
        ("r", "s1", "threshold", T0)
    ]

    second = engine(rules, load_state(path), started=T0 + 60 * S)
    # The broker's queued readings: one already taken in before, one still too warm.
    assert feed(second, [reading(T0, 9, 0), reading(T0 + S, 9.5, 1)]) == []
    assert feed(second, [reading(T0 + 2 * S, 5, 2)]) == [(CLEARED, T0 + 2 * S)]
    save_state(path, second.state)
    assert active_alerts(path) == []


def test_after_a_restart_staleness_counts_from_the_restart_not_from_the_last_reading(
    tmp_path: Path,
):
    rules = rule("no reading for 5s")
    first = engine(rules)
    first.on_event(reading(T0, sensor="s1"))
    path = tmp_path / "state.json"
    save_state(path, first.state)
    restarted = engine(rules, load_state(path), started=T0 + 60 * S)
    # Readings queued while it was away come after the reconnect: not stale yet...
    assert restarted.tick(T0 + 61 * S) == []
    # ...but a sensor remembered from the last run that stays silent is.
    assert [(n.sensor_id, n.at_ms) for n in restarted.tick(T0 + 65 * S)] == [("s1", T0 + 65 * S)]


def test_episodes_of_a_rule_removed_from_the_file_are_forgotten():
    state = AlertState()
    feed(engine(rule("temperature > 8"), state), [reading(T0, 9, 0)])
    assert state.episodes
    engine('[[rule]]\nname = "other"\nwhen = "seq gap"\n', state)
    assert state.episodes == {}


def note(n: int) -> Notification:
    return Notification(FIRED, f"r{n % 2}", "seq gap", f"s{n}", "seq_gap", T0, T0, 1.0, "gap")


def test_the_flood_gate_holds_back_what_is_over_the_cap_and_sums_it_up():
    gate = FloodGate(per_minute=3)
    sent = gate.admit([note(n) for n in range(7)], T0)
    assert [b["sensor_id"] for b in sent] == ["s0", "s1", "s2"]
    assert gate.admit([], T0 + 59 * S) == []
    summary = gate.admit([note(9)], T0 + 60 * S)
    assert summary[0] == {
        "event": "held",
        "count": 4,
        "rules": {"r1": 2, "r0": 2},
        "from": "2025-11-28T16:00:00.000Z",
        "at": "2025-11-28T16:01:00.000Z",
        "message": "4 more notification(s) since 2025-11-28T16:00:00.000Z not sent (over 3 a "
        "minute): r1 x2, r0 x2",
    }
    assert [b["sensor_id"] for b in summary[1:]] == ["s9"]  # a new minute


def test_a_clear_goes_where_its_fire_went_whatever_the_cap():
    """A storm's clears: those of fires sent are sent (past the cap: no incident is left open
    at the receiver), those of fires held are held (no clear of an unknown episode)."""
    gate = FloodGate(per_minute=2)
    fires = [note(n) for n in range(4)]
    assert [b["sensor_id"] for b in gate.admit(fires, T0)] == ["s0", "s1"]
    clears = [dataclasses.replace(n, event=CLEARED) for n in fires]
    assert [(b["event"], b["sensor_id"]) for b in gate.admit(clears, T0 + S)] == [
        ("cleared", "s0"),
        ("cleared", "s1"),
    ]
    (summary,) = gate.admit([], T0 + 60 * S)
    assert (summary["event"], summary["count"]) == ("held", 4)  # two fires, their two clears


def test_a_restart_mid_rise_neither_clears_nor_fires_again(tmp_path: Path):
    """A rate window starts empty after a restart: until it is its length again it cannot
    say "steady", so a rise still under way stays one episode."""
    rules = rule("temperature rises 3 in 10m")
    climb = [reading(T0 + i * 10 * S, round(20 + i * 0.1, 1), i) for i in range(80)]
    first = engine(rules)  # 0.1 every 10 s: 3 degrees up at 300 s
    assert feed(first, climb[:40]) == [(FIRED, T0 + 300 * S)]
    path = tmp_path / "state.json"
    save_state(path, first.state)
    second = engine(rules, load_state(path), started=T0 + 400 * S)
    assert feed(second, climb[40:]) == []


def test_replay_runs_the_table_on_its_own_clock():
    rules = parse_rules(
        '[[rule]]\nname = "warm"\nwhen = "temperature > 8 for 20s"\n\n'
        '[[rule]]\nname = "quiet"\nwhen = "no reading for 30s"\nsensors = ["a", "never"]\n\n'
        '[[rule]]\nname = "down"\nwhen = "offline"\n'
    )
    a = [Row("a", T0 + i * 10 * S, t, i, {}) for i, t in enumerate([5, 9, 9, 9, 5])]
    a.append(Row("a", T0 + 120 * S, 5, 5, {}))  # after 80 s of silence
    b = [Row("b", T0 + 5 * S, 9, 0, {})]
    result = replay(rules, [a, b], ["a", "b", "never"], T0, T0 + 140 * S)
    got = [(n.event, n.rule, n.sensor_id, (n.at_ms - T0) // S) for n in result.notifications]
    assert got == [
        (FIRED, "quiet", "never", 30),
        (FIRED, "warm", "a", 30),
        (CLEARED, "warm", "a", 40),
        (FIRED, "quiet", "a", 70),
        (CLEARED, "quiet", "a", 120),
    ]
    assert [(e.rule, e.sensor_id) for e in result.active] == [("quiet", "never")]
    assert result.skipped == ["down"] and result.readings == 7
