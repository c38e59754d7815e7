"""The IoT rule, defined once: the SQL deployed to AWS IoT and the mapping `cloud ingest` runs.

What is written comes from the reading's columns (`device.columns.COLUMNS`: each one's item
attribute, DynamoDB type and source); what is refused comes from the payload contract's own
table (`device.payload.FIELDS`, which `parse_payload` applies for `cloud ingest`), turned into
the rule's WHERE clause by `CHECKS`. So the deployed rule and the local bridge cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cloud.table import number
from device.columns import COLUMNS
from device.errors import PayloadError
from device.payload import (
    FIELDS,
    MAX_PAYLOAD_BYTES,
    SENSOR_ID_RE,
    VERSION,
    FieldRule,
    Reading,
    parse_payload,
)

TOPIC_FILTER = "sensors/+/data"


# -- what the rule refuses: payload v1's checks in AWS IoT SQL (2016-03-23) -------------------
# IoT SQL has no isNumber(), isString() or typeof(); the checks are built from what it has.
# Each must be true or false for every message, never Undefined (what a missing field or a
# function given the wrong type yields): the rejected-readings rule matches NOT (checks), and
# NOT Undefined is Undefined, so such a message would match neither rule and vanish. Hence
# every test that could be Undefined sits behind a CASE on isUndefined(), which never is.


@dataclass(frozen=True)
class Check:
    """One clause of the rule's WHERE and the local refusals (PayloadError reasons) it mirrors."""

    refusal: str  # what the rejected-readings rule says when this clause is false
    sql: str  # true or false for every message
    reasons: tuple[str, ...]


def _case(condition: str, then: str, otherwise: str) -> str:
    return (
        f"CASE {_grouped(condition)} WHEN true THEN {_grouped(then)} ELSE {_grouped(otherwise)} END"
    )


def _grouped(sql: str) -> str:
    """`sql` in parentheses, unless it is one function call: nested CASEs and ANDs read plainly."""
    return f"({sql})" if sql.startswith("CASE") or " OR " in sql or " AND " in sql else sql


def _is_number(field: str) -> str:
    # `x + 0` is x for an Int or a Decimal, x's text with "0" appended for a String (never
    # equal to x: `=` of mismatched types is false), and Undefined for a Boolean, Null, Array,
    # Object or a missing field.
    return _case(f"isUndefined({field} + 0)", "false", f"{field} + 0 = {field}")


def _field_sql(rule: FieldRule) -> str:
    n = rule.name
    if rule.kind == "version":
        sql = _case(f"isUndefined({n})", "false", f"{n} = {VERSION}")
    elif rule.kind == "sensor_id":
        # topic(2) is the device's thing name (the IoT policy allows no other); the id
        # pattern is checked on it all the same, as ingest does.
        pattern = f"^{SENSOR_ID_RE.pattern}$"
        assert "'" not in pattern
        same = f"{n} = topic(2) AND regexp_matches(topic(2), '{pattern}')"
        sql = _case(f"isUndefined({n})", "false", same)
    elif rule.kind == "integer":
        bounds = [f"floor({n}) = {n}"]
        if rule.minimum is not None:
            bounds.append(f"{n} >= {rule.minimum}")
        if rule.below is not None:
            bounds.append(f"{n} < {rule.below}")
        sql = _case(_is_number(n), " AND ".join(bounds), "false")
    else:
        sql = _is_number(n)
    if not rule.required:
        sql = _case(f"isUndefined({n})", "true", sql)
    return sql


def _size_sql(limit: int) -> str:
    """Payload at most `limit` bytes. IoT SQL has no payload size, but base64 has 4 characters
    for each 3 bytes, the last 4 ending in '==' when they hold 1 byte and '=' when 2."""
    b64 = "encode(*, 'base64')"
    whole, rest = divmod(limit, 3)
    within = f"length({b64}) <= {4 * whole}"
    if rest == 0:
        return within
    padding = "'=='" if rest == 1 else "'='"
    return f"{within} OR (length({b64}) = {4 * whole + 4} AND endswith({b64}, {padding}))"


#: Reasons `cloud ingest` refuses a message for that the rule's WHERE does not test, and why.
NOT_IN_RULE: Mapping[str, str] = {
    "unknown field": (
        "IoT SQL cannot list a payload's keys: the rule writes the known attributes only, "
        "so an extra field is dropped, not stored"
    ),
    "unexpected topic": f"the rule's topic filter, '{TOPIC_FILTER}', takes no other topic",
    "number out of range": (
        "DynamoDB refuses to store the number: the rule's error action keeps the message"
    ),
    **{
        f"non-finite {rule.name}": (
            "only a number beyond a double (1e999) parses as infinite, and DynamoDB refuses "
            "it: the rule's error action keeps the message"
        )
        for rule in FIELDS
        if rule.kind == "number"
    },
}


def _checks() -> tuple[Check, ...]:
    checks = [Check("oversize payload", _size_sql(MAX_PAYLOAD_BYTES), ("oversize payload",))]
    for rule in FIELDS:
        reasons = tuple(r for r in rule.reasons if r not in NOT_IN_RULE)
        refusal = "unsupported version" if rule.kind == "version" else f"bad {rule.name}"
        if rule.kind == "version":
            # The rules engine reads the fields of a JSON object only: for anything else
            # (NaN and Infinity are not JSON) every field is Undefined, and this is false.
            reasons += ("not JSON", "not UTF-8", "not a JSON object", "non-finite value")
            refusal += " or not a JSON object"
        checks.append(Check(refusal, _field_sql(rule), reasons))
    return tuple(checks)


#: The rule's WHERE, clause by clause, in the order `parse_payload` checks.
CHECKS = _checks()


def where_sql() -> str:
    """The rule's condition: true for exactly the messages that `cloud ingest` would write."""
    return " AND ".join(_grouped(check.sql) for check in CHECKS)


def rule_sql() -> str:
    """The topic rule's SQL (version 2016-03-23)."""
    selected = ", ".join(f"{c.source} AS {c.attribute}" for c in COLUMNS)
    # Built from our own constants only; no user value reaches this string.
    return f"SELECT {selected} FROM '{TOPIC_FILTER}' WHERE {where_sql()}"  # noqa: S608


def rejected_rule_sql() -> str:
    """The rule for the rest: each message the first rule refuses, as a dead letter.

    A message the WHERE refuses is not an error to AWS IoT (the rule just does not match),
    so the first rule's error action never sees it; this rule matches exactly those and
    keeps them, with the first check they fail, where the error action keeps failed writes.
    """
    reason = "'refused'"
    for check in reversed(CHECKS):
        reason = f"CASE {_grouped(check.sql)} WHEN false THEN '{check.refusal}' ELSE {reason} END"
    selected = (
        f"topic() AS topic, timestamp() AS received_ms, {reason} AS reason, "
        "encode(*, 'base64') AS payload_b64"
    )
    return f"SELECT {selected} FROM '{TOPIC_FILTER}' WHERE NOT ({where_sql()})"  # noqa: S608


def _storable(name: str, value: float | int) -> str:
    """DynamoDB's N: at most 38 significant digits, magnitude 1E-130 up to 1E+126, or 0."""
    text = number(value)
    d = Decimal(text)
    if d != 0 and (len(d.normalize().as_tuple().digits) > 38 or not -130 <= d.adjusted() <= 125):
        raise PayloadError("number out of range", f"{name} {text}: DynamoDB cannot store it")
    return text


def topic_sensor_id(topic: str) -> str:
    """`topic(2)`: the second level of `sensors/<id>/data`."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "sensors" or parts[2] != "data":
        raise PayloadError("unexpected topic", topic)
    return parts[1]


def to_item(topic: str, payload: bytes, received_ms: int | None = None) -> dict[str, Any]:
    """The DynamoDB item the rule writes for this message; PayloadError says why not."""
    return to_reading_and_item(topic, payload, received_ms)[1]


def to_reading_and_item(
    topic: str, payload: bytes, received_ms: int | None = None
) -> tuple[Reading, dict[str, Any]]:
    """The reading in this message and the item the rule writes for it (ingest confirms
    the reading to its device once the item is written); PayloadError says why not."""
    sensor_id = topic_sensor_id(topic)
    reading = parse_payload(payload, sensor_id)
    values: dict[str, Any] = reading.to_dict()
    # What the rule's IoT SQL functions give; the other columns' sources are payload fields.
    values["topic(2)"] = sensor_id
    values["timestamp()"] = int(time.time() * 1000) if received_ms is None else received_ms
    item: dict[str, Any] = {}
    for column in COLUMNS:
        value = values.get(column.source)
        if value is None:
            continue  # an optional metric the reading does not carry
        kind = column.dynamodb_type
        item[column.attribute] = {kind: value if kind == "S" else _storable(column.source, value)}
    return reading, item
