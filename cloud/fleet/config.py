"""Desired configs: set them (merged into the device's current one, its version bumped)
and show them beside what the device reported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud.errors import FleetError
from cloud.fleet.store import Retained, RetainedStore
from device.errors import PayloadError
from device.payload import (
    Desired,
    Reported,
    config_desired_topic,
    config_reported_topic,
    encode_desired,
    parse_desired,
    parse_reported,
)


@dataclass(frozen=True)
class ConfigView:
    """A device's desired config and what it reported (either may be missing)."""

    sensor_id: str
    desired: Desired | None
    reported: Reported | None
    #: Why the retained reported config could not be read, when it could not.
    unreadable: str | None = None

    @property
    def state(self) -> str:
        """in sync (the desired version applied), refused, pending (not reported yet),
        "no desired" (nothing was ever set), or unreadable (a reported config we cannot
        read)."""
        if self.unreadable is not None:
            return "unreadable"
        if self.desired is None:
            return "no desired"
        if self.reported is None or self.reported.version != self.desired.version:
            return "pending"
        return "in sync" if self.reported.status == "applied" else "refused"


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


def _view(sensor_id: str, found: Mapping[str, Retained]) -> ConfigView:
    desired = _desired(sensor_id, found)
    retained = found.get(config_reported_topic(sensor_id))
    if retained is None:
        return ConfigView(sensor_id, desired, None)
    try:
        return ConfigView(sensor_id, desired, parse_reported(retained.payload, sensor_id))
    except PayloadError as exc:
        # Shown, not raised: the desired side and the other devices are still worth seeing.
        return ConfigView(sensor_id, desired, None, str(exc))


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
        merged = {**(dict(current.settings) if current else {}), **settings}
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
    return [_view(i, found) for i in sensor_ids]
