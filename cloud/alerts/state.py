"""What the alerts engine knows, kept on disk so a restart neither repeats nor forgets.

One JSON file: the active episodes (so a restarted watcher does not announce them again,
and announces their end once when it comes), each sensor the watcher has seen (its last
reading and status: a sensor that falls silent while the watcher is down is still watched
for staleness), the threshold runs under way, and the notifications not yet delivered to
the webhook or SNS. It is written whole, to a temporary file that is fsynced and renamed
over the old one (and the folder fsynced), so a crash leaves the old state or the new,
never half of one.

`active_alerts(path)` is the dashboard's read of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.errors import ConfigError
from cloud.fsync import fsync_dir

if TYPE_CHECKING:  # the dashboard reads the state without the AWS half
    from cloud.target import Target

VERSION = 1
STATE_NAME = "alerts-state.json"


@dataclass
class Episode:
    """A rule holding for one sensor, from the time it fired until it is announced cleared."""

    rule: str
    sensor_id: str
    kind: str
    since_ms: int
    fired_ms: int
    value: float | None
    message: str
    #: The condition has been false since then (on the rule's clock); it clears once that
    #: lasted the rule's clear_after.
    clearing_since_ms: int | None = None


@dataclass
class SensorState:
    #: When the watcher first heard of it (a reading, status or health; its clock).
    first_seen_ms: int
    #: When the watcher received its last reading (its clock), the device's ts and seq of it.
    last_reading_ms: int | None = None
    last_ts: int | None = None
    last_seq: int | None = None
    status: str | None = None  # "online" / "offline", from its status topic
    status_since_ms: int | None = None


@dataclass
class AlertState:
    sensors: dict[str, SensorState] = field(default_factory=dict)
    #: By (rule name, sensor id).
    episodes: dict[tuple[str, str], Episode] = field(default_factory=dict)
    #: Threshold runs under way: (rule, sensor) -> ts of the run's first reading.
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Notifications (their JSON) not yet handed to the webhook / SNS.
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "sensors": {k: asdict(v) for k, v in sorted(self.sensors.items())},
            "episodes": [asdict(e) for _, e in sorted(self.episodes.items())],
            "runs": [[r, s, ts] for (r, s), ts in sorted(self.runs.items())],
            "outbox": self.outbox,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AlertState:
        episodes = [Episode(**e) for e in raw.get("episodes", [])]
        return cls(
            sensors={k: SensorState(**v) for k, v in raw.get("sensors", {}).items()},
            episodes={(e.rule, e.sensor_id): e for e in episodes},
            runs={(r, s): int(ts) for r, s, ts in raw.get("runs", [])},
            outbox=list(raw.get("outbox", [])),
        )


def load_state(path: Path) -> AlertState:
    """The saved state, or an empty one when there is none yet."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return AlertState()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: the alerts state cannot be read ({exc}); move it away to start afresh "
            "(active alerts would be announced again)"
        ) from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ConfigError(f"{path}: not an alerts state of version {VERSION}; move it away")
    try:
        return AlertState.from_json(raw)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: the alerts state is damaged ({exc}); move it away") from None


def save_state(path: Path, state: AlertState) -> None:
    """Atomically: the old file or the new one survives a crash, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        json.dump(state.to_json(), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


#: Where the state of a watcher on AWS is kept, from the folder it runs in.
AWS_STATE = Path("var/alerts/aws-state.json")


def default_state_path(target: Target) -> Path:
    """CLOUD_ALERTS_STATE, else the local stack's data folder, else (AWS) AWS_STATE: the
    watcher writes there and the dashboard reads there, unless told otherwise."""
    given = os.environ.get("CLOUD_ALERTS_STATE")
    if given:
        return Path(given)
    if target.stack is None:
        return AWS_STATE
    return target.stack.data / STATE_NAME


@dataclass(frozen=True)
class ActiveAlert:
    """One active episode, as the dashboard shows it."""

    rule: str
    sensor_id: str
    kind: str
    since_ms: int
    message: str


def active_alerts(path: Path) -> list[ActiveAlert]:
    """The episodes active in the state at `path` (none if the watcher never ran), oldest
    first. Read-only: the watcher is the file's only writer."""
    state = load_state(path)
    alerts = [
        ActiveAlert(e.rule, e.sensor_id, e.kind, e.since_ms, e.message)
        for e in state.episodes.values()
    ]
    return sorted(alerts, key=lambda a: (a.since_ms, a.rule, a.sensor_id))
