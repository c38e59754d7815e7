"""The alert rules file (config/alerts.toml): read, checked, and refused with its line.

A rule is a `[[rule]]` table with a `name`, a `when` condition and, optionally, the sensors
it watches (ids or glob patterns; every sensor when absent):

    [[rule]]
    name = "freezer-warm"
    when = "temperature > 8 for 10m"
    sensors = ["freezer-*"]

The conditions (`when`), one per kind:

    threshold   METRIC OP NUMBER [for DURATION]        temperature > 8 for 10m
    rate        METRIC rises|falls NUMBER in DURATION   temperature rises 2 in 10m
    stale       no reading for DURATION                no reading for 5m
    seq_gap     seq gap                                 seq gap
    offline     offline for DURATION                    offline for 1m

Every error names the file and line (`alerts.toml:12: ...`): tomllib's syntax errors carry
their line; for a value that parses but makes no sense, the line is found in the text.

(Over 400 lines: the file format, its five conditions and the line-finding are one idea,
what a rules file says; the evaluation of the conditions is cloud.alerts.engine.)
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import ConfigError
from device.columns import COLUMNS
from device.payload import SENSOR_ID_RE

DEFAULT_PATH = Path("config") / "alerts.toml"
#: The values a threshold or a rate may watch: every number a reading carries.
METRICS = tuple(c.payload for c in COLUMNS if c.kind == "number" and c.payload is not None)
KINDS = ("threshold", "rate", "stale", "seq_gap", "offline")
OPERATORS = (">=", "<=", ">", "<")
RULE_KEYS = ("name", "when", "sensors", "clear_after", "hysteresis")
DEFAULT_KEYS = ("clear_after", "max_per_minute")
#: Without a [defaults] max_per_minute: more notifications than this in a minute are held
#: back and summed up in one line, so a storm (a whole site losing power) is not a flood.
MAX_PER_MINUTE = 30

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_THRESHOLD = re.compile(
    rf"^(?P<metric>\w+)\s*(?P<op>>=|<=|>|<)\s*(?P<value>{_NUMBER})"
    rf"(?:\s+for\s+(?P<duration>.+))?$"
)
_RATE = re.compile(
    rf"^(?P<metric>\w+)\s+(?P<direction>rises|falls)\s+(?:by\s+)?(?P<amount>{_NUMBER})"
    rf"\s+(?:in|within)\s+(?P<window>.+)$"
)
_STALE = re.compile(r"^no readings?\s+for\s+(?P<duration>.+)$")
_SEQ_GAP = re.compile(r"^seq\s+gap$")
_OFFLINE = re.compile(r"^offline(?:\s+for\s+(?P<duration>.+))?$")
_GLOB = re.compile(r"[*?\[]")
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?")


class RulesError(ConfigError):
    """The rules file is missing, not TOML, or holds a rule that makes no sense: `where` is
    `file:line` (or the file alone), and the message is `where: reason`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def parse_duration_ms(text: str) -> int:
    """`10m`, `1h30m`, `500ms`, `1.5s` as milliseconds; ValueError says what is accepted."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 10m, 1h30m, 500ms")
    return int(total)


def format_duration(ms: int) -> str:
    """The shortest of `1h30m`, `10m`, `45s`, `500ms` for `ms`."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


def format_span(ms: int) -> str:
    """A measured time, as format_duration, to the second from a second up: "for 20s",
    not "for 20s1ms"."""
    return format_duration(ms if ms < 1000 else round(ms / 1000) * 1000)


# -- conditions, one class per kind ---------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """A metric past a value on every reading for `duration_ms` of device time."""

    metric: str
    op: str
    value: float
    duration_ms: int = 0
    #: How far back past the value a reading must be to clear: 8 with 1 clears at <= 7.
    hysteresis: float = 0.0
    kind: str = field(default="threshold", init=False)

    def holds(self, x: float) -> bool:
        return _compare(x, self.op, self.value)

    def cleared_by(self, x: float) -> bool:
        """Back on the safe side, by the hysteresis: the episode may clear."""
        if self.op in (">", ">="):
            return x <= self.value - self.hysteresis if self.hysteresis else not self.holds(x)
        return x >= self.value + self.hysteresis if self.hysteresis else not self.holds(x)


@dataclass(frozen=True)
class Rate:
    """A metric rose (or fell) by at least `amount` within a sliding window of device time:
    the newest reading against the lowest (highest) of the window."""

    metric: str
    direction: str  # "rises" or "falls"
    amount: float
    window_ms: int
    kind: str = field(default="rate", init=False)


@dataclass(frozen=True)
class Stale:
    """No reading received for `duration_ms` of the watcher's clock."""

    duration_ms: int
    kind: str = field(default="stale", init=False)


@dataclass(frozen=True)
class SeqGap:
    """A reading whose seq jumps past the last one + 1 (readings were lost). A seq going
    backwards is a device reset, a new count, not a gap."""

    kind: str = field(default="seq_gap", init=False)


@dataclass(frozen=True)
class Offline:
    """The device's status (retained, the offline one its last will) says offline for
    `duration_ms` of the watcher's clock."""

    duration_ms: int = 0
    kind: str = field(default="offline", init=False)


Condition = Threshold | Rate | Stale | SeqGap | Offline


def _compare(x: float, op: str, value: float) -> bool:
    if op == ">":
        return x > value
    if op == ">=":
        return x >= value
    if op == "<":
        return x < value
    return x <= value


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    condition: Condition
    #: Sensor ids and glob patterns; empty means every sensor.
    sensors: tuple[str, ...] = ()
    #: The condition must stay false this long before the episode is announced cleared:
    #: a sensor flapping around a threshold makes one episode, not one per flap.
    clear_after_ms: int = 0
    line: int = 0  # where the rule starts in its file, for messages

    @property
    def kind(self) -> str:
        return self.condition.kind

    def applies_to(self, sensor_id: str) -> bool:
        return not self.sensors or any(fnmatch.fnmatchcase(sensor_id, p) for p in self.sensors)

    @property
    def named_sensors(self) -> tuple[str, ...]:
        """The ids given literally (no pattern): watched even before they send anything."""
        return tuple(s for s in self.sensors if not _GLOB.search(s))


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    max_per_minute: int = MAX_PER_MINUTE
    source: str = ""

    def by_name(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


# -- reading the file -----------------------------------------------------------------------


def load_rules(path: Path) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(
            str(path), "no such file; write one (config/alerts.toml documents every rule kind)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), f"cannot read it: {exc}") from None
    return parse_rules(text, path.name)


def parse_rules(text: str, name: str = "alerts.toml") -> RuleSet:
    """The rules in `text` (the file's contents; `name` is how messages call it)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Its message ends "(at line 3, column 7)": ours puts the line first, as every
        # other error of this file does.
        found = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(exc)) or "not TOML"
        where = f"{name}:{found.group(1)}" if found else name
        raise RulesError(where, f"{reason} (not valid TOML)") from None
    locate = _Locator(text, name)
    unknown = sorted(set(doc) - {"rule", "defaults"})
    if unknown:
        raise RulesError(
            locate.table(unknown[0]),
            f"unknown section or key {unknown[0]!r}; the file holds [defaults] and [[rule]] tables",
        )
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RulesError(locate.key(None, "defaults"), "defaults must be a table: [defaults]")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise RulesError(
                locate.key("defaults", key),
                f"unknown key {key!r} in [defaults]; known: {', '.join(DEFAULT_KEYS)}",
            )
    default_clear = _duration(defaults, "clear_after", locate.key("defaults", "clear_after"), 0)
    max_per_minute = defaults.get("max_per_minute", MAX_PER_MINUTE)
    if not isinstance(max_per_minute, int) or isinstance(max_per_minute, bool):
        raise RulesError(locate.key("defaults", "max_per_minute"), "max_per_minute: a whole number")
    if max_per_minute < 1:
        raise RulesError(locate.key("defaults", "max_per_minute"), "max_per_minute: at least 1")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise RulesError(locate.key(None, "rule"), "rules are [[rule]] tables")
    if not raw_rules:
        raise RulesError(name, "no [[rule]] in the file: nothing to watch")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _rule(raw, index, locate, default_clear)
        if rule.name in seen:
            raise RulesError(
                locate.rule_key(index, "name"),
                f"a second rule named {rule.name!r} (the first is at line {seen[rule.name]}); "
                "names must be unique: episodes are kept by name",
            )
        seen[rule.name] = rule.line
        rules.append(rule)
    return RuleSet(tuple(rules), max_per_minute, name)


def _rule(raw: Mapping[str, Any], index: int, locate: _Locator, default_clear: int) -> Rule:
    def at(key: str) -> str:
        return locate.rule_key(index, key)

    for key in raw:
        if key not in RULE_KEYS:
            raise RulesError(at(key), f"unknown key {key!r}; a rule has {', '.join(RULE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RulesError(at("name"), 'a rule needs a name = "..." (a short unique label)')
    when = raw.get("when")
    if not isinstance(when, str):
        raise RulesError(
            at("when"), f'rule {name!r} needs when = "..." (e.g. "temperature > 8 for 10m")'
        )
    try:
        condition = parse_condition(when, raw.get("hysteresis"))
    except ValueError as exc:
        key = "hysteresis" if "hysteresis" in str(exc) else "when"
        raise RulesError(at(key), f"rule {name!r}: {exc}") from None
    sensors = raw.get("sensors", [])
    if isinstance(sensors, str):
        sensors = [sensors]
    if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
        raise RulesError(at("sensors"), f'rule {name!r}: sensors = ["sensor-3", "freezer-*"]')
    for sensor in sensors:
        if not sensor or not (_GLOB.search(sensor) or SENSOR_ID_RE.fullmatch(sensor)):
            raise RulesError(
                at("sensors"),
                f"rule {name!r}: {sensor!r} is neither a sensor id (letters, digits, '-', '_', "
                "':') nor a pattern with * ? or [...]",
            )
    clear = _duration(raw, "clear_after", at("clear_after"), default_clear)
    return Rule(name, when, condition, tuple(sensors), clear, locate.rule_line(index))


def parse_condition(when: str, hysteresis: object = None) -> Condition:
    """The condition a `when` text says; ValueError with what was expected."""
    text = " ".join(when.split())
    if hysteresis is not None and not _THRESHOLD.match(text):
        raise ValueError("hysteresis applies to a threshold (e.g. temperature > 8) only")
    if match := _THRESHOLD.match(text):
        metric = _metric(match["metric"])
        h = 0.0 if hysteresis is None else hysteresis
        if not isinstance(h, int | float) or isinstance(h, bool) or h < 0:
            raise ValueError(f"hysteresis: {hysteresis!r} must be a number >= 0")
        duration = _when_duration(match["duration"]) if match["duration"] else 0
        return Threshold(metric, match["op"], float(match["value"]), duration, float(h))
    if match := _RATE.match(text):
        amount = float(match["amount"])
        if amount <= 0:
            raise ValueError(f"{when!r}: the change must be above 0")
        window = _when_duration(match["window"])
        if window <= 0:
            raise ValueError(f"{when!r}: the window must be longer than 0s")
        return Rate(_metric(match["metric"]), match["direction"], amount, window)
    if match := _STALE.match(text):
        duration = _when_duration(match["duration"])
        if duration <= 0:
            raise ValueError(f"{when!r}: the duration must be longer than 0s")
        return Stale(duration)
    if _SEQ_GAP.match(text):
        return SeqGap()
    if match := _OFFLINE.match(text):
        return Offline(_when_duration(match["duration"]) if match["duration"] else 0)
    raise ValueError(
        f"when = {when!r} is not a condition; write one of: 'temperature > 8 for 10m' "
        "(also <, >=, <=), 'temperature rises 2 in 10m' (or falls), 'no reading for 5m', "
        "'seq gap', 'offline for 1m'"
    )


def _metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"{name!r} is not a metric of a reading; use one of {', '.join(METRICS)}")
    return name


def _when_duration(text: str) -> int:
    return parse_duration_ms(text)


def _duration(table: Mapping[str, Any], key: str, where: str, default: int) -> int:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str):
        raise RulesError(where, f'{key} = "30s": a duration in quotes (ms, s, m, h, d)')
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise RulesError(where, f"{key}: {exc}") from None


class _Locator:
    """Lines of the file's tables and keys, for errors tomllib cannot place: the TOML was
    valid, its meaning was not."""

    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.lines = text.splitlines()
        #: (line number, header name) of every table header, in order.
        self.headers: list[tuple[int, str]] = []
        for number, line in enumerate(self.lines, 1):
            if match := _HEADER.match(line):
                self.headers.append((number, match.group(1).strip().strip("\"'")))

    def _block(self, header: str | None, nth: int = 0) -> tuple[int, int]:
        """First and last line (1-based, inclusive) of the nth table named `header`; the
        top of the file before any table for None."""
        if header is None:
            end = self.headers[0][0] - 1 if self.headers else len(self.lines)
            return 1, end
        found = [i for i, (_, h) in enumerate(self.headers) if h == header]
        if nth >= len(found):
            return 1, len(self.lines)
        i = found[nth]
        start = self.headers[i][0]
        end = self.headers[i + 1][0] - 1 if i + 1 < len(self.headers) else len(self.lines)
        return start, end

    def _find_key(self, start: int, end: int, key: str) -> int | None:
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(start, end + 1):
            if pattern.match(self.lines[number - 1]):
                return number
        return None

    def key(self, header: str | None, key: str) -> str:
        start, end = self._block(header)
        return f"{self.name}:{self._find_key(start, end, key) or start}"

    def table(self, header: str) -> str:
        for number, h in self.headers:
            if h == header or h.startswith(header + "."):
                return f"{self.name}:{number}"
        return self.key(None, header)

    def rule_line(self, index: int) -> int:
        return self._block("rule", index)[0]

    def rule_key(self, index: int, key: str) -> str:
        start, end = self._block("rule", index)
        return f"{self.name}:{self._find_key(start, end, key) or start}"
