"""Payload fuzzing: whatever bytes a device (or anyone with a device's certificate) publishes,
the rule either makes a table item whose fields match the payload, or refuses it with a
PayloadError and a reason; nothing else. End to end: every message is an item in the table
or a dead letter with its reason, and ingest keeps going.

Hypothesis runs derandomized (the same cases on every run and in CI) with no deadline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cloud.aws import Endpoint
from cloud.ingest.deadletter import read_dead_letters
from cloud.ingest.rule import to_item
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import Mosquitto
from device.columns import TS_MAX_MS, TS_MIN_MS
from device.errors import PayloadError
from device.payload import MAX_PAYLOAD_BYTES, OPTIONAL_METRICS, parse_payload
from tests.conftest import Pki
from tests.e2e.conftest import Running
from tests.mqtt import MqttClient
from tests.table import scan_items

SENSOR = "fuzz-1"
TOPIC = f"sensors/{SENSOR}/data"

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies ------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN and infinities are encoded as the non-JSON tokens NaN / Infinity
    st.sampled_from([0, -0.0, 1e-130, 1e-131, 9.9e125, 1e126, 5e-324, 1.7976931348623157e308]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(["v", "sensor_id", "ts", "seq", "temperature", *OPTIONAL_METRICS])


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid payload v1 dict, then zero to three mutations of the kind devices get wrong."""
    body: dict[str, Any] = {
        "v": 1,
        "sensor_id": SENSOR,
        "ts": draw(st.integers(min_value=TS_MIN_MS, max_value=TS_MAX_MS - 1)),
        "seq": draw(st.integers(min_value=0, max_value=2**31)),
        "temperature": draw(st.floats(min_value=-60, max_value=150, allow_nan=False)),
    }
    for metric in OPTIONAL_METRICS:
        if draw(st.booleans()):
            body[metric] = draw(st.floats(min_value=0, max_value=2000, allow_nan=False))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "replace", "number", "extra", "identity"]))
        if kind == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif kind == "replace":
            body[draw(field_names)] = draw(json_values)
        elif kind == "number":
            body[draw(field_names)] = draw(numbers)
        elif kind == "extra":
            body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            body["sensor_id"] = draw(st.sampled_from(["fuzz-2", "", "a/b", "+", SENSOR.upper()]))
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # allow_nan: NaN/Infinity become their bare tokens


payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(encode),
    near_valid().map(encode),
    near_valid().map(encode),
)


# -- the checks --------------------------------------------------------------------------------


def check_item(body: dict[str, Any], item: dict[str, Any]) -> None:
    """The item the rule made holds exactly the payload's values (AssertionError if not)."""

    def n(column: str) -> float | None:
        value = item.get(column)
        return None if value is None else float(value["N"])

    def expect(metric: str) -> float | None:
        return float(body[metric]) if metric in body else None

    assert item.get("SensorId") == {"S": SENSOR}
    assert int(item["CurrentTime"]["N"]) == body["ts"]
    assert int(item["Seq"]["N"]) == body["seq"]
    assert n("Temperature") == float(body["temperature"])
    for metric in OPTIONAL_METRICS:
        assert n(metric.capitalize()) == expect(metric), metric
    columns = {"SensorId", "CurrentTime", "Temperature", "Seq", "ReceivedAt"}
    assert set(item) <= columns | {m.capitalize() for m in OPTIONAL_METRICS}


def outcome(payload: bytes) -> dict[str, Any] | PayloadError:
    """What the rule does with a payload: its item, or the PayloadError that refuses it.
    Any other exception escapes and fails the test."""
    try:
        parse_payload(payload, SENSOR)
    except PayloadError as err:
        with pytest.raises(PayloadError):
            to_item(TOPIC, payload, received_ms=1)  # the rule refuses what the device would
        return err
    try:
        return to_item(TOPIC, payload, received_ms=1)
    except PayloadError as err:  # the rule may refuse more (what the table cannot hold)
        return err


@settings(FUZZ, max_examples=1500)
@given(st.binary(max_size=MAX_PAYLOAD_BYTES + 64))
def test_arbitrary_bytes_are_refused_with_a_reason(payload: bytes) -> None:
    result = outcome(payload)
    if isinstance(result, PayloadError):
        assert result.reason and str(result).startswith(result.reason)


@settings(FUZZ, max_examples=1000)
@given(json_values)
def test_arbitrary_json_values_are_refused_with_a_reason(value: Any) -> None:
    result = outcome(encode(value))
    assert isinstance(result, PayloadError), "no arbitrary value is a reading by chance"
    assert result.reason


@settings(FUZZ, max_examples=2000)
@given(near_valid())
def test_near_valid_payloads_make_matching_items_or_are_refused(body: dict[str, Any]) -> None:
    result = outcome(encode(body))
    if isinstance(result, PayloadError):
        assert result.reason
        return
    check_item(body, result)


def dynamodb_number_problem(text: str) -> str | None:
    """Why DynamoDB would refuse this N value, if it would: at most 38 significant digits,
    magnitude from 1E-130 up to (not including) 1E+126, or zero."""
    value = Decimal(text)
    if not value.is_finite():
        return "not finite"
    if value == 0:
        return None
    digits = len(value.normalize().as_tuple().digits)
    if digits > 38:
        return f"{digits} significant digits"
    if not -130 <= value.adjusted() <= 125:
        return f"magnitude 1E{value.adjusted()} outside 1E-130 .. 1E+125"
    return None


@settings(FUZZ, max_examples=1000)
@given(near_valid())
def test_every_item_the_rule_makes_is_one_dynamodb_accepts(body: dict[str, Any]) -> None:
    """A reading that passes the rule but that DynamoDB refuses halts `cloud ingest` (the
    write fails, is not retryable, and the message is never acknowledged), so the rule must
    refuse it as a dead letter instead."""
    result = outcome(encode(body))
    if isinstance(result, PayloadError):
        return
    for name, value in result.items():
        if "N" in value:
            problem = dynamodb_number_problem(value["N"])
            assert problem is None, f"{name} = {value['N']}: DynamoDB refuses it ({problem})"


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 2000,
        b'{"":' * 1000,
        b'{"v":1,"sensor_id":"fuzz-1","ts":1,"seq":0,"temperature":' + b"[" * 1500,
    ],
    ids=["arrays", "objects", "inside-a-reading"],
)
def test_deeply_nested_json_is_refused_with_a_reason(payload: bytes) -> None:
    assert len(payload) <= MAX_PAYLOAD_BYTES  # not caught by the size check
    assert isinstance(outcome(payload), PayloadError)


# -- end to end: a real broker, a real ingest, the real table ----------------------------------


def collect_payloads(n: int) -> list[bytes]:
    """n payloads made by Hypothesis (derandomized), for one pass through the pipeline."""
    made: list[bytes] = []

    @settings(
        FUZZ,
        max_examples=n,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads)
    def gather(payload: bytes) -> None:
        made.append(payload)

    gather()
    return made


@pytest.mark.slow
def test_every_fuzzed_message_is_an_item_or_a_dead_letter_with_its_reason(
    start_broker: Callable[..., Mosquitto],
    pki: Pki,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
    tmp_path: Path,
) -> None:
    sent = collect_payloads(300)
    sent.append(b"x" * (MAX_PAYLOAD_BYTES + 1))
    expected = {p: outcome(p) for p in sent}
    refused = [p for p in sent if isinstance(expected[p], PayloadError)]
    valid = [p for p in sent if not isinstance(expected[p], PayloadError)]
    assert len(valid) >= 30 and len(refused) >= 100, "the mix exercises both paths"

    port = start_broker().config.port
    running = run_ingest(make_ingest_settings(port))
    device = MqttClient.open(port, pki.device(SENSOR), SENSOR)
    try:
        reasons = device.publish_all(TOPIC, sent)
    finally:
        device.close()
    assert set(reasons) == {"Success"}, "the broker takes every message; the rule judges"
    bodies = [json.loads(p) for p in valid]
    running.settle(len(sent), items=len({b["ts"] for b in bodies}))
    stats = running.finish()

    letters = list(read_dead_letters(make_ingest_settings(port).dead_letter))
    assert len(letters) == len(refused) == stats.dead_lettered
    # A dead letter keeps only a prefix of an oversize payload; its hash names it whole.
    by_hash = {hashlib.sha256(p).hexdigest(): outcome for p, outcome in expected.items()}
    for letter in letters:
        err = by_hash.get(letter.sha256)
        assert isinstance(err, PayloadError), f"dead-lettered a valid reading {letter.payload!r}"
        assert letter.reason == err.reason and letter.topic == TOPIC

    items = scan_items(aws.client("dynamodb"), table)
    by_key = {(i["SensorId"]["S"], int(i["CurrentTime"]["N"])): i for i in items}
    assert len(items) == len({(SENSOR, b["ts"]) for b in bodies})
    for key, item in by_key.items():
        candidates = [b for b in bodies if (SENSOR, b["ts"]) == key]
        assert candidates, f"an item nobody sent: {key}"
        errors = []
        for body in candidates:  # readings that share a key: the item is one of them
            try:
                check_item(body, item)
                break
            except AssertionError as exc:
                errors.append(exc)
        else:
            raise AssertionError(f"item {item} matches none of {candidates}: {errors}")
    assert stats.received == len(sent)
