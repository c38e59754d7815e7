"""Payload v1: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from device.columns import TS_MAX_MS, TS_MIN_MS
from device.errors import PayloadError
from device.payload import (
    Desired,
    Reading,
    Reported,
    encode_desired,
    encode_health,
    encode_reported,
    parse_desired,
    parse_health,
    parse_payload,
    parse_reported,
)


def test_round_trip_keeps_every_field():
    r = Reading("sensor-3", 1764345600123, 42, 21.37, {"humidity": 40.5})
    assert json.loads(r.to_payload()) == {
        "v": 1,
        "sensor_id": "sensor-3",
        "ts": 1764345600123,
        "seq": 42,
        "temperature": 21.37,
        "humidity": 40.5,
    }
    assert parse_payload(r.to_payload(), "sensor-3") == r


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1]", "not a JSON object"),
        (
            b'{"v":2,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":1}',
            "unsupported version",
        ),
        (b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0}', "missing temperature"),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":"hot"}',
            "non-numeric temperature",
        ),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":NaN}',
            "non-finite value",
        ),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":Infinity}',
            "non-finite value",
        ),
        (b'{"v":1,"sensor_id":"s","ts":1764345600123.5,"seq":0,"temperature":1}', "non-integer ts"),
        (b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":-1,"temperature":1}', "negative seq"),
        # ts in seconds, in microseconds, before 2000 and from 2100 on: not epoch ms
        (b'{"v":1,"sensor_id":"s","ts":1764345600,"seq":0,"temperature":1}', "ts out of range"),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123000,"seq":0,"temperature":1}',
            "ts out of range",
        ),
        (b'{"v":1,"sensor_id":"s","ts":946684799999,"seq":0,"temperature":1}', "ts out of range"),
        (b'{"v":1,"sensor_id":"s","ts":4102444800000,"seq":0,"temperature":1}', "ts out of range"),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":true}',
            "non-numeric temperature",
        ),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":1,"colour":2}',
            "unknown field",
        ),
        (
            b'{"v":1,"sensor_id":"other","ts":1764345600123,"seq":0,"temperature":1}',
            "sensor_id differs from topic",
        ),
        (
            b'{"v":1,"sensor_id":"s","ts":1764345600123,"seq":0,"temperature":1,"pad":"'
            + b"x" * 5000
            + b'"}',
            "oversize payload",
        ),
    ],
)
def test_invalid_payloads_are_rejected_with_a_reason(payload: bytes, reason: str):
    with pytest.raises(PayloadError) as info:
        parse_payload(payload, "s")
    assert info.value.reason == reason


@pytest.mark.parametrize("sensor_id", ["", "a/b", "a+", "#", "x" * 129, "sensor 3"])
def test_sensor_ids_that_would_break_topics_are_refused(sensor_id: str):
    with pytest.raises(PayloadError, match="bad sensor_id"):
        Reading(sensor_id, 1, 0, 20.0)


@pytest.mark.parametrize("ts", [TS_MIN_MS, TS_MAX_MS - 1])
def test_ts_range_holds_its_ends_and_the_exporter_can_make_dates_of_them(ts: int):
    body = {"v": 1, "sensor_id": "s", "ts": ts, "seq": 0, "temperature": 1}
    reading = parse_payload(json.dumps(body).encode(), "s")
    assert reading.ts == ts
    year = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).year
    assert year in (2000, 2099)


# -- the fleet's state messages: desired and reported config, health ------------------------

HEALTH = {
    "v": 1,
    "sensor_id": "s1",
    "ts": 1_764_345_600_000,
    "agent_version": "0.1.0",
    "uptime_s": 12.5,
    "mqtt_version": "5",
    "outbox_depth": 3,
    "oldest_unsent_age_s": 1.5,
    "dropped": 0,
    "read_errors": 1,
    "reconnects": 2,
    "clock_synced": True,
    "peak_rss_kib": 39_700,
    "soc_temp_c": None,
    "config_version": 4,
}


def test_desired_reported_and_health_survive_their_encoding():
    desired = Desired(3, {"interval": 10.0, "sensor": "bme280"})
    assert parse_desired(encode_desired(desired)) == desired
    reported = Reported("s1", 3, "refused", {"interval": 5.0}, "interval: must be at least 0")
    assert parse_reported(encode_reported(reported), "s1") == reported
    health = parse_health(json.dumps(HEALTH).encode(), "s1")
    assert json.loads(encode_health(health)) == HEALTH


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v": 1, "version": 0, "settings": {}}', "version out of range"),
        (b'{"v": 1, "version": 2}', "bad desired config"),
        (b'{"v": 1, "version": 2, "settings": {"interval": [1]}}', "bad settings"),
        (b'{"v": 1, "version": 2, "settings": {}, "extra": 1}', "bad desired config"),
        (b"[]", None),
        (b'{"v": 1, "version": 2, "settings": {"x": "' + b"a" * 5000 + b'"}}', "oversize payload"),
    ],
)
def test_a_desired_config_that_is_not_one_is_refused_with_a_short_reason(payload, reason):
    with pytest.raises(PayloadError) as err:
        parse_desired(payload)
    if reason is not None:
        assert err.value.reason == reason


def test_health_from_another_device_or_missing_a_field_is_refused():
    body = json.dumps(HEALTH).encode()
    with pytest.raises(PayloadError, match="sensor_id differs from topic"):
        parse_health(body, "s2")
    partial = {k: v for k, v in HEALTH.items() if k != "outbox_depth"}
    with pytest.raises(PayloadError, match="missing outbox_depth"):
        parse_health(json.dumps(partial).encode(), "s1")
    with pytest.raises(PayloadError):
        parse_health(json.dumps({**HEALTH, "mqtt_version": "4"}).encode(), "s1")
