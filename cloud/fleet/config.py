"""Desired configs: set them (merged into the device's current one, its version bumped)
and show them beside what the device reported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud.fleet.errors import FleetError
from cloud.fleet.messages import (
    Desired,
    config_desired_topic,
    config_reported_topic,
    encode_desired,
    parse_desired,
    parse_reported,
)
from cloud.fleet.store import Retained, RetainedStore
from device.errors import PayloadError


@dataclass(frozen=True)
class ConfigView:
    """A device's desired config and what it reported (either may be missing)."""

    sensor_id: str
    desired: Desired | None
    reported: Mapping[str, Any] | None

    @property
    def state(self) -> str:
        """in sync (the desired version applied), refused, pending (not reported yet), or
        "no desired" (nothing was ever set)."""
        if self.desired is None:
            return "no desired"
        if self.reported is None or self.reported.get("version") != self.desired.version:
            return "pending"
        return "in sync" if self.reported.get("status") == "applied" else "refused"


def _desired(sensor_id: str, found: Mapping[str, Retained]) -> Desired | None:
    retained = found.get(config_desired_topic(sensor_id))
    if retained is None:
        return None
    try:
        return parse_desired(retained.payload)
    except PayloadError as exc:
        raise FleetError(
            f"{sensor_id}: its retained desired config is not valid ({exc}); its version is "
            "unknown, so nothing was published"
        ) from None


def _reported(found: Mapping[str, Retained], sensor_id: str) -> Mapping[str, Any] | None:
    retained = found.get(config_reported_topic(sensor_id))
    if retained is None:
        return None
    try:
        return parse_reported(retained.payload)
    except PayloadError as exc:
        # Shown as the device's error: the desired side is still worth seeing.
        return {"status": "unreadable", "error": str(exc)}


def set_config(
    store: RetainedStore, sensor_ids: Iterable[str], settings: Mapping[str, Any]
) -> list[Desired]:
    """Merge `settings` into each device's current desired config and publish it with the
    next version. Every current one is read (and checked) before any is published."""
    ids = sorted(set(sensor_ids))
    found = store.read([config_desired_topic(i) for i in ids])
    made = []
    for sensor_id in ids:
        current = _desired(sensor_id, found)
        version = 1 if current is None else current.version + 1
        merged = {**(current.settings if current else {}), **settings}
        made.append((sensor_id, Desired(version, merged)))
    for sensor_id, desired in made:
        store.publish(config_desired_topic(sensor_id), encode_desired(desired))
    return [d for _, d in made]


def config_views(store: RetainedStore, sensor_ids: Iterable[str]) -> list[ConfigView]:
    ids = sorted(set(sensor_ids))
    topics = [t for i in ids for t in (config_desired_topic(i), config_reported_topic(i))]
    return views_from(store.read(topics), ids)


def views_from(found: Mapping[str, Retained], sensor_ids: Iterable[str]) -> list[ConfigView]:
    """The config views of retained messages already read (`cloud devices` reads them all)."""
    return [ConfigView(i, _desired(i, found), _reported(found, i)) for i in sensor_ids]
