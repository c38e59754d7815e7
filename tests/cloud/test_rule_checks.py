"""The AWS rule refuses what `cloud ingest` refuses (issue 12 item 7).

There is no AWS IoT SQL engine to run locally, so the rule's WHERE is checked as text: every
reason for which the local validator refuses a message maps to a clause of the deployed
rule (or to a stated reason why the rule leaves it to something else), and each clause says
in IoT SQL what the payload contract (`device.payload.FIELDS`) says in Python.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from cloud.ingest.rule import (
    CHECKS,
    NOT_IN_RULE,
    Check,
    rejected_rule_sql,
    rule_sql,
    to_item,
    where_sql,
)
from device.columns import TS_MAX_MS, TS_MIN_MS
from device.errors import PayloadError
from device.payload import FIELDS, MAX_PAYLOAD_BYTES, OPTIONAL_METRICS, SENSOR_ID_RE

TOPIC = "sensors/s-1/data"
VALID: dict[str, Any] = {
    "v": 1,
    "sensor_id": "s-1",
    "ts": 1_764_345_600_123,
    "seq": 42,
    "temperature": 21.5,
}


def body(**changes: Any) -> bytes:
    """VALID with fields changed; a value of `...` removes the field."""
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


# One message per way the local validator refuses one, with the reason it gives.
INVALID: list[tuple[str, bytes, str]] = [
    (TOPIC, body(pad="x" * MAX_PAYLOAD_BYTES), "oversize payload"),
    (TOPIC, b"\xff\xfe", "not UTF-8"),
    (TOPIC, b"temperature=21.5", "not JSON"),
    (TOPIC, b"[1]", "not a JSON object"),
    (TOPIC, body().replace(b"21.5", b"NaN"), "non-finite value"),
    (TOPIC, body(v=2), "unsupported version"),
    (TOPIC, body(v=...), "unsupported version"),
    (TOPIC, body(v=True), "unsupported version"),
    (TOPIC, body(sensor_id=...), "missing sensor_id"),
    (TOPIC, body(sensor_id=7), "bad sensor_id"),
    ("sensors/s 1/data", body(sensor_id="s 1"), "bad sensor_id"),
    (TOPIC, body(sensor_id="someone-else"), "sensor_id differs from topic"),
    (TOPIC, body(ts=...), "missing ts"),
    (TOPIC, body(ts="1764345600123"), "non-integer ts"),
    (TOPIC, body(ts=1_764_345_600_123.5), "non-integer ts"),
    (TOPIC, body(ts=1_764_345_600), "ts out of range"),
    (TOPIC, body(ts=1_764_345_600_123_000), "ts out of range"),
    (TOPIC, body(seq=...), "missing seq"),
    (TOPIC, body(seq=None), "non-integer seq"),
    (TOPIC, body(seq=-1), "negative seq"),
    (TOPIC, body(temperature=...), "missing temperature"),
    (TOPIC, body(temperature="21.5"), "non-numeric temperature"),
    (TOPIC, body(temperature=True), "non-numeric temperature"),
    (TOPIC, body().replace(b"21.5", b"1e999"), "non-finite temperature"),
    (TOPIC, body(temperature=1e200), "number out of range"),
    (TOPIC, body(colour="red"), "unknown field"),
    ("sensors/s-1/status", body(), "unexpected topic"),
]
for _metric in OPTIONAL_METRICS:
    INVALID += [
        (TOPIC, body(**{_metric: "40"}), f"non-numeric {_metric}"),
        (TOPIC, body(**{_metric: None}), f"non-numeric {_metric}"),
        (TOPIC, body(**{_metric: 7.25}).replace(b"7.25", b"1e999"), f"non-finite {_metric}"),
    ]


def refusal(topic: str, payload: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        to_item(topic, payload, received_ms=1)
    return info.value.reason


def check_for(reason: str) -> Check:
    (check,) = [c for c in CHECKS if reason in c.reasons]
    return check


def by_refusal(name: str) -> str:
    (check,) = [c for c in CHECKS if c.refusal == name]
    return check.sql


@pytest.mark.parametrize(("topic", "payload", "reason"), INVALID)
def test_each_refusal_of_ingest_is_a_clause_of_the_rules_where_or_says_why_not(
    topic: str, payload: bytes, reason: str
) -> None:
    assert refusal(topic, payload) == reason
    if reason in NOT_IN_RULE:
        assert not any(reason in c.reasons for c in CHECKS), "both a clause and a reason why not"
        return
    check = check_for(reason)  # exactly one clause stands for it
    assert f"({check.sql})" in where_sql()
    assert rule_sql().endswith(f" WHERE {where_sql()}")


def test_the_cases_cover_every_reason_the_contract_and_the_rule_know():
    walked = {reason for _, _, reason in INVALID}
    mapped = {r for c in CHECKS for r in c.reasons} | set(NOT_IN_RULE)
    assert walked == mapped
    # Every reason a field of the contract can give is among them.
    assert {r for rule in FIELDS for r in rule.reasons} <= walked


def test_what_the_rule_leaves_to_others_is_only_what_iot_sql_cannot_test():
    numbers = [rule.name for rule in FIELDS if rule.kind == "number"]
    assert set(NOT_IN_RULE) == {
        "unknown field",  # IoT SQL cannot list a payload's keys
        "unexpected topic",  # the topic filter
        "number out of range",  # DynamoDB refuses it: the error action keeps it
        *(f"non-finite {n}" for n in numbers),  # 1e999: DynamoDB refuses it too
    }


def test_each_field_clause_is_the_contracts_rule_in_iot_sql():
    ts = by_refusal("bad ts")
    for text in ("isUndefined(ts + 0)", "ts + 0 = ts", "floor(ts) = ts"):
        assert text in ts
    assert f"ts >= {TS_MIN_MS}" in ts and f"ts < {TS_MAX_MS}" in ts
    seq = by_refusal("bad seq")
    assert "floor(seq) = seq" in seq and "seq >= 0" in seq and "seq <" not in seq
    temperature = by_refusal("bad temperature")
    assert temperature == (
        "CASE isUndefined(temperature + 0) WHEN true THEN false "
        "ELSE temperature + 0 = temperature END"
    )
    for metric in OPTIONAL_METRICS:  # absent is fine, present must be a number
        sql = by_refusal(f"bad {metric}")
        assert sql.startswith(f"CASE isUndefined({metric}) WHEN true THEN true ELSE (")
        assert f"{metric} + 0 = {metric}" in sql
    sensor_id = by_refusal("bad sensor_id")
    assert sensor_id.startswith("CASE isUndefined(sensor_id) WHEN true THEN false")
    assert "sensor_id = topic(2)" in sensor_id
    assert f"regexp_matches(topic(2), '^{SENSOR_ID_RE.pattern}$')" in sensor_id
    version = by_refusal("unsupported version or not a JSON object")
    assert version == "CASE isUndefined(v) WHEN true THEN false ELSE v = 1 END"


def test_the_size_clause_is_the_contracts_limit_in_base64():
    sql = by_refusal("oversize payload")
    # Its numbers are what base64 makes of payloads at and just past the limit.
    at, past = (
        base64.b64encode(b"x" * n).decode() for n in (MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1)
    )
    below = base64.b64encode(b"x" * (MAX_PAYLOAD_BYTES - MAX_PAYLOAD_BYTES % 3)).decode()
    assert len(at) == len(past) and at.endswith("==") and not past.endswith("==")
    assert sql == (
        f"length(encode(*, 'base64')) <= {len(below)} OR (length(encode(*, 'base64')) = "
        f"{len(at)} AND endswith(encode(*, 'base64'), '=='))"
    )


def test_the_rule_uses_only_functions_aws_iot_sql_has():
    # From the AWS IoT SQL reference; it has no isNumber(), isString() or typeof(), and a
    # rule calling one would fail to deploy.
    documented = {
        "isUndefined",
        "floor",
        "topic",
        "encode",
        "length",
        "endswith",
        "regexp_matches",
        "timestamp",
    }
    for sql in (rule_sql(), rejected_rule_sql()):
        unquoted = re.sub(r"'[^']*'", "''", sql)
        called = set(re.findall(r"([A-Za-z_]\w*)\(", unquoted))
        assert called <= documented, called - documented
        assert unquoted.count("CASE") == unquoted.count(" END")
        assert unquoted.count("(") == unquoted.count(")")


def test_the_rejected_rule_matches_the_rest_and_names_the_first_check_failed():
    sql = rejected_rule_sql()
    assert sql.endswith(f" WHERE NOT ({where_sql()})")
    select = sql.split(" FROM ", 1)[0]
    refusals = re.findall(r"WHEN false THEN '([^']*)'", select)
    assert refusals == [c.refusal for c in CHECKS]
    assert "encode(*, 'base64') AS payload_b64" in select and "topic() AS topic" in select
