"""Reading the tests' SensorData tables (moto's DynamoDB): every item, what is missing or
doubled against "each (sensor, seq) exactly once", and waiting for a count to settle."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cloud.table import item_count


def scan_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def settle(
    count: Callable[[], int],
    target: int,
    quiet: float,
    timeout: float,
    what: str,
    every: float = 0.1,
) -> int:
    """Poll `count` until it reaches `target` or stops changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last < target:
        now = time.monotonic()
        if now - since >= quiet:
            return last
        assert now < deadline, f"timed out after {timeout:g}s waiting for {what} ({last})"
        time.sleep(every)
        value = count()
        if value != last:
            last, since = value, time.monotonic()
    return last


def settle_items(ddb: Any, table: str, n: int, quiet: float = 4.0, timeout: float = 90) -> int:
    """Until the table holds n items, or its count stopped growing for `quiet` seconds
    (COUNT scans run at ~3k items/s on moto, so they are paced)."""
    return settle(lambda: item_count(ddb, table), n, quiet, timeout, f"{n} items", every=0.5)


def missing_seqs(items: list[dict[str, Any]], ids: list[str], count: int) -> dict[str, list[int]]:
    """Per sensor, the seqs in 0..count-1 with no item in the table."""
    seen = {(i["SensorId"]["S"], int(i["Seq"]["N"])) for i in items}
    return {s: [q for q in range(count) if (s, q) not in seen] for s in ids}


def seq_ranges(seqs: list[int]) -> str:
    """Sorted seqs as runs, e.g. "0-2, 5, 7-9": a gap of hundreds stays one line."""
    runs: list[list[int]] = []
    for q in seqs:
        if runs and q == runs[-1][1] + 1:
            runs[-1][1] = q
        else:
            runs.append([q, q])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def seq_problems(items: list[dict[str, Any]], ids: list[str], count: int) -> list[str]:
    """What is wrong with the table against "every (sensor, seq) in 0..count-1 exactly once"."""
    seen = Counter((i["SensorId"]["S"], int(i["Seq"]["N"])) for i in items)
    problems: list[str] = []
    for sensor, missing in missing_seqs(items, ids, count).items():
        if missing:
            problems.append(f"{sensor}: {len(missing)} missing seq(s), first {missing[:10]}")
    doubled = {k: n for k, n in seen.items() if n > 1}
    if doubled:
        problems.append(f"seq(s) in more than one item: {sorted(doubled.items())[:10]}")
    strangers = {k for k in seen if k[0] not in ids or not 0 <= k[1] < count}
    if strangers:
        problems.append(f"items nobody sent: {sorted(strangers)[:10]}")
    if len(items) != len(ids) * count:
        problems.append(f"{len(items)} items, expected {len(ids) * count}")
    return problems


def assert_every_reading_once(ddb: Any, table: str, ids: list[str], count: int) -> None:
    problems = seq_problems(scan_items(ddb, table), ids, count)
    assert not problems, "table is not exactly one item per reading:\n" + "\n".join(problems)
