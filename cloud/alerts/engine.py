"""The rules evaluated: events and a clock in, fired and cleared notifications out.

Pure: no I/O, no clock of its own. `cloud alerts watch` feeds it the live stream and a
tick every second (staleness and offline need time to pass with no event at all);
`cloud alerts test` feeds it the table's readings with their own times as the clock.

An episode is one (rule, sensor) holding: it fires once, when the condition starts to hold
(a threshold: has held for its duration), and clears once, when the condition has been
false for the rule's clear_after. Thresholds, rates and seq gaps run on the readings'
timestamps (device time); staleness and offline on the watcher's clock, the `now_ms` of
ticks and the `received_ms` of events.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cloud.alerts.rules import (
    Offline,
    Rate,
    Rule,
    RuleSet,
    SeqGap,
    Stale,
    Threshold,
    format_duration,
    format_span,
)
from cloud.alerts.state import AlertState, Episode, SensorState
from cloud.live.events import LiveEvent
from cloud.timeparse import iso_ms
from device.payload import Reading

log = logging.getLogger(__name__)

FIRED, CLEARED = "fired", "cleared"


@dataclass(frozen=True)
class Notification:
    """An episode's start or end: what every notifier sends (webhook JSON: `to_json`)."""

    event: str  # FIRED or CLEARED
    rule: str
    when: str
    sensor_id: str
    kind: str
    since_ms: int  # when the episode began
    at_ms: int  # when it fired, or cleared
    value: float | None  # the reading's value, the change, the seqs missing; None for time
    message: str

    @property
    def episode(self) -> str:
        """Stable across fire, clear and restarts: a receiver can drop a repeat by it."""
        return f"{self.rule}/{self.sensor_id}/{self.since_ms}"

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "rule": self.rule,
            "when": self.when,
            "sensor_id": self.sensor_id,
            "kind": self.kind,
            "since": iso_ms(self.since_ms),
            "at": iso_ms(self.at_ms),
            "value": self.value,
            "message": self.message,
            "episode": self.episode,
        }


def _num(x: float) -> str:
    return f"{x:g}"


class Engine:
    """Evaluates `rules` over events, keeping what it knows in `state` (the caller saves it).

    `started_ms` is when this run began (watcher's clock): a sensor a rule names that has
    never sent anything is stale from then, and after a restart a sensor's staleness is
    measured from no earlier than then, since readings queued by the broker while the
    watcher was away arrive only after it reconnects.
    """

    def __init__(self, rules: RuleSet, state: AlertState, started_ms: int) -> None:
        self.rules = rules
        self.state = state
        self.started_ms = started_ms
        #: Rate windows per (rule, sensor): (ts, value) of the readings in the window that
        #: may yet be its lowest (rises) or highest (falls).
        self._windows: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        #: The ts of each window's first reading in this run: a window begun after a
        #: restart holds less than its length until then, and cannot tell "steady again".
        self._windows_from: dict[tuple[str, str], int] = {}
        #: Per rule name, the sensors it watches (`_watched`); per sensor, its rules.
        self._watching: dict[str, list[str]] = {}
        self._rules_of: dict[str, list[Rule]] = {}
        names = {r.name for r in rules.rules}
        for key in [k for k in state.episodes if k[0] not in names]:
            log.info("forgetting the active episode of %s on %s: no such rule now", *key)
            del state.episodes[key]
        for key in [k for k in state.runs if k[0] not in names]:
            del state.runs[key]

    # -- input ------------------------------------------------------------------------------

    def listening_from(self, now_ms: int) -> None:
        """The stream receives (again) from `now_ms`: silence is measured from no earlier."""
        self.started_ms = max(self.started_ms, now_ms)

    def know(self, sensor_id: str, seen_ms: int) -> None:
        """A sensor exists (e.g. it has readings in the range replayed) though it sent
        nothing yet: time-based rules watch it."""
        self._sensor(sensor_id, seen_ms)

    def on_event(self, event: LiveEvent) -> list[Notification]:
        if event.kind == "reading" and event.reading is not None:
            return self.on_reading(event.reading, event.received_ms)
        if event.kind == "status" and event.status is not None:
            return self.on_status(event.sensor_id, event.status, event.received_ms)
        self._sensor(event.sensor_id, event.received_ms)  # health: the sensor exists
        return []

    def on_reading(self, reading: Reading, received_ms: int) -> list[Notification]:
        sensor = self._sensor(reading.sensor_id, received_ms)
        if sensor.last_ts is not None and reading.ts <= sensor.last_ts:
            # A redelivery or an older reading: its news was taken in already, and its seq
            # would look like a reset followed by a gap.
            return []
        previous_seq = sensor.last_seq
        sensor.last_reading_ms = max(received_ms, sensor.last_reading_ms or 0)
        sensor.last_ts, sensor.last_seq = reading.ts, reading.seq
        notes: list[Notification] = []
        for rule in self._rules_for(reading.sensor_id):
            c = rule.condition
            if isinstance(c, Threshold):
                notes += self._threshold(rule, c, reading)
            elif isinstance(c, Rate):
                notes += self._rate(rule, c, reading)
            elif isinstance(c, SeqGap):
                notes += self._seq_gap(rule, reading, previous_seq)
            elif isinstance(c, Stale):
                notes += self._stale_reading(rule, reading.sensor_id, received_ms)
        return notes

    def on_status(self, sensor_id: str, status: str, received_ms: int) -> list[Notification]:
        sensor = self._sensor(sensor_id, received_ms)
        if status != sensor.status:
            # A retained status repeated at a restart keeps the time it began.
            sensor.status, sensor.status_since_ms = status, received_ms
        notes: list[Notification] = []
        for rule in self._rules_for(sensor_id):
            if isinstance(rule.condition, Offline):
                notes += self._offline(rule, rule.condition, sensor_id, sensor, received_ms)
        return notes

    def tick(self, now_ms: int) -> list[Notification]:
        """What time alone changed, on the watcher's clock: staleness and offline durations.
        (The other kinds' clears, clear_after included, move on readings: the readings'
        clock is theirs.)"""
        notes: list[Notification] = []
        for rule in self.rules.rules:
            c = rule.condition
            if isinstance(c, Stale):
                for sensor_id in self._watched(rule):
                    notes += self._stale_tick(rule, c, sensor_id, now_ms)
            elif isinstance(c, Offline):
                for sensor_id in self._watched(rule):
                    sensor = self.state.sensors.get(sensor_id)
                    if sensor is not None:
                        notes += self._offline(rule, c, sensor_id, sensor, now_ms)
        return notes

    # -- the kinds --------------------------------------------------------------------------

    def _threshold(self, rule: Rule, c: Threshold, r: Reading) -> list[Notification]:
        x = self._value(r, c.metric)
        if x is None:
            return []
        key = (rule.name, r.sensor_id)
        episode = self.state.episodes.get(key)
        if episode is None:
            if not c.holds(x):
                self.state.runs.pop(key, None)
                return []
            start = self.state.runs.setdefault(key, r.ts)
            if r.ts - start < c.duration_ms:
                return []
            del self.state.runs[key]
            span = f" for {format_span(r.ts - start)}" if c.duration_ms else ""
            text = f"{c.metric} {_num(x)} {c.op} {_num(c.value)}{span} (since {iso_ms(start)})"
            return [self._fire(rule, r.sensor_id, start, r.ts, x, text)]
        if not c.cleared_by(x):
            episode.clearing_since_ms = None
            return []
        text = f"{c.metric} back to {_num(x)} (rule: {c.op} {_num(c.value)})"
        return self._clearing(rule, episode, r.ts, x, text)

    def _rate(self, rule: Rule, c: Rate, r: Reading) -> list[Notification]:
        x = self._value(r, c.metric)
        if x is None:
            return []
        key = (rule.name, r.sensor_id)
        # The window's lowest (rises) or highest (falls) reading, the newest of equals, kept
        # as a monotonic queue: each reading goes in and out once, however long the window.
        window = self._windows.setdefault(key, deque())
        filled_from = self._windows_from.setdefault(key, r.ts)
        rises = c.direction == "rises"
        while window and (window[-1][1] >= x if rises else window[-1][1] <= x):
            window.pop()
        window.append((r.ts, x))
        while window[0][0] < r.ts - c.window_ms:
            window.popleft()
        base_ts, base = window[0]
        change = x - base if rises else base - x
        holds = change >= c.amount
        episode = self.state.episodes.get(key)
        if episode is None:
            if not holds:
                return []
            verb = "rose" if c.direction == "rises" else "fell"
            text = (
                f"{c.metric} {verb} {_num(round(change, 6))} in {format_span(r.ts - base_ts)}"
                f" ({_num(base)} -> {_num(x)})"
            )
            return [self._fire(rule, r.sensor_id, base_ts, r.ts, round(change, 6), text)]
        if holds:
            episode.clearing_since_ms = None
            return []
        if r.ts - filled_from < c.window_ms:
            return []  # a window not yet its length (since a restart): no verdict on a clear
        text = f"{c.metric} steady again at {_num(x)}"
        return self._clearing(rule, episode, r.ts, x, text)

    def _seq_gap(self, rule: Rule, r: Reading, previous: int | None) -> list[Notification]:
        key = (rule.name, r.sensor_id)
        episode = self.state.episodes.get(key)
        gap = previous is not None and r.seq > previous + 1
        if gap:
            assert previous is not None
            missing = r.seq - previous - 1
            text = f"seq {previous} -> {r.seq}: {missing} reading(s) missing"
            if episode is None:
                return [self._fire(rule, r.sensor_id, r.ts, r.ts, float(missing), text)]
            episode.clearing_since_ms = None  # a further gap: the same episode
            return []
        if episode is None:
            return []
        return self._clearing(rule, episode, r.ts, float(r.seq), f"seq in order again at {r.seq}")

    def _stale_reading(self, rule: Rule, sensor_id: str, received_ms: int) -> list[Notification]:
        episode = self.state.episodes.get((rule.name, sensor_id))
        if episode is None:
            return []
        quiet = format_span(max(0, received_ms - episode.since_ms))
        return self._clearing(rule, episode, received_ms, None, f"reading again after {quiet}")

    def _stale_tick(self, rule: Rule, c: Stale, sensor_id: str, now: int) -> list[Notification]:
        key = (rule.name, sensor_id)
        episode = self.state.episodes.get(key)
        sensor = self.state.sensors.get(sensor_id)
        last = sensor.last_reading_ms if sensor is not None else None
        if episode is not None:
            if episode.clearing_since_ms is None:
                return []
            if now - max(last or 0, self.started_ms) >= c.duration_ms:
                episode.clearing_since_ms = None  # silent again before it could clear
                return []
            quiet = format_span(max(0, episode.clearing_since_ms - episode.since_ms))
            return self._clearing(rule, episode, now, None, f"reading again after {quiet}")
        reference = max(last or 0, self.started_ms)
        due = reference + c.duration_ms
        if now < due:
            return []
        if last is None:
            text = (
                f"no reading for {format_duration(c.duration_ms)} (none since {iso_ms(reference)})"
            )
        else:
            text = f"no reading for {format_duration(c.duration_ms)} (last at {iso_ms(last)})"
        return [self._fire(rule, sensor_id, last or reference, due, None, text)]

    def _offline(
        self, rule: Rule, c: Offline, sensor_id: str, sensor: SensorState, now: int
    ) -> list[Notification]:
        key = (rule.name, sensor_id)
        episode = self.state.episodes.get(key)
        offline = sensor.status == "offline"
        since = sensor.status_since_ms if sensor.status_since_ms is not None else now
        if episode is None:
            if not offline or now - since < c.duration_ms:
                return []
            text = f"offline for {format_span(now - since)} (since {iso_ms(since)})"
            return [self._fire(rule, sensor_id, since, since + c.duration_ms, None, text)]
        if offline:
            episode.clearing_since_ms = None
            return []
        online_at = since if episode.clearing_since_ms is None else episode.clearing_since_ms
        away = format_span(max(0, online_at - episode.since_ms))
        if episode.clearing_since_ms is None:
            episode.clearing_since_ms = online_at
        return self._clearing(rule, episode, now, None, f"online again after {away}")

    # -- episodes ---------------------------------------------------------------------------

    def _fire(
        self, rule: Rule, sensor_id: str, since: int, at: int, value: float | None, text: str
    ) -> Notification:
        self.state.episodes[(rule.name, sensor_id)] = Episode(
            rule.name, sensor_id, rule.kind, since, at, value, text
        )
        return Notification(
            FIRED, rule.name, rule.when, sensor_id, rule.kind, since, at, value, text
        )

    def _clearing(
        self, rule: Rule, episode: Episode, now: int, value: float | None, text: str
    ) -> list[Notification]:
        """The condition is false at `now` (the rule's clock): clear once it has been for
        clear_after."""
        if episode.clearing_since_ms is None:
            episode.clearing_since_ms = now
        if now - episode.clearing_since_ms < rule.clear_after_ms:
            return []
        del self.state.episodes[(rule.name, episode.sensor_id)]
        return [
            Notification(
                CLEARED,
                rule.name,
                rule.when,
                episode.sensor_id,
                rule.kind,
                episode.since_ms,
                now,
                value,
                text,
            )
        ]

    # -- helpers ----------------------------------------------------------------------------

    def _sensor(self, sensor_id: str, seen_ms: int) -> SensorState:
        sensor = self.state.sensors.get(sensor_id)
        if sensor is None:
            sensor = self.state.sensors[sensor_id] = SensorState(first_seen_ms=seen_ms)
            self._watching.clear()  # a new sensor: each rule's list is made again
        return sensor

    def _rules_for(self, sensor_id: str) -> Iterable[Rule]:
        rules = self._rules_of.get(sensor_id)
        if rules is None:  # once per sensor: every reading asks
            rules = self._rules_of[sensor_id] = [
                r for r in self.rules.rules if r.applies_to(sensor_id)
            ]
        return rules

    def _watched(self, rule: Rule) -> list[str]:
        """The sensors a time-based rule watches: those it names, and every sensor seen
        (now or in an earlier run) that it matches. Kept until a new sensor appears: every
        tick asks, and matching a fleet's ids against patterns each time was most of a
        replay's time."""
        watched = self._watching.get(rule.name)
        if watched is None:
            seen = [s for s in self.state.sensors if rule.applies_to(s)]
            watched = self._watching[rule.name] = sorted(set(rule.named_sensors) | set(seen))
        return watched

    @staticmethod
    def _value(r: Reading, metric: str) -> float | None:
        return r.temperature if metric == "temperature" else r.metrics.get(metric)
