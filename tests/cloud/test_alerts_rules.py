"""The alert rules file: every kind parsed, and every mistake refused with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.alerts.rules import (
    DEFAULT_PATH,
    Offline,
    Rate,
    RulesError,
    SeqGap,
    Stale,
    Threshold,
    load_rules,
    parse_duration_ms,
    parse_rules,
)
from cloud.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_example_holds_every_kind():
    rules = load_rules(REPO / DEFAULT_PATH)
    kinds = {r.kind for r in rules.rules}
    assert kinds == {"threshold", "rate", "stale", "seq_gap", "offline"}
    warm = rules.by_name("freezer-warm")
    assert warm is not None
    assert warm.condition == Threshold("temperature", ">", 8.0, 600_000, 0.5)
    assert warm.sensors == ("freezer-*",) and warm.clear_after_ms == 60_000
    assert warm.applies_to("freezer-2") and not warm.applies_to("sensor-3")
    gaps = rules.by_name("lost-readings")
    assert gaps is not None and gaps.clear_after_ms == 0  # its own beats the default
    assert rules.max_per_minute == 30


@pytest.mark.parametrize(
    ("when", "condition"),
    [
        ("temperature > 8 for 10m", Threshold("temperature", ">", 8.0, 600_000)),
        ("humidity <= 30", Threshold("humidity", "<=", 30.0, 0)),
        ("pressure >= -1.5 for 1h30m", Threshold("pressure", ">=", -1.5, 5_400_000)),
        ("temperature  <  0 for 500ms", Threshold("temperature", "<", 0.0, 500)),
        ("temperature rises 2 in 10m", Rate("temperature", "rises", 2.0, 600_000)),
        ("temperature falls by 1.5 within 30s", Rate("temperature", "falls", 1.5, 30_000)),
        ("no reading for 5m", Stale(300_000)),
        ("no readings for 2s", Stale(2_000)),
        ("seq gap", SeqGap()),
        ("offline for 1m", Offline(60_000)),
        ("offline", Offline(0)),
    ],
)
def test_each_condition(when: str, condition: object):
    rules = parse_rules(f'[[rule]]\nname = "r"\nwhen = "{when}"\n')
    assert rules.rules[0].condition == condition


def test_durations():
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("1.5s") == 1500
    for bad in ("10", "m", "10 m", "-1s", "1y"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration_ms(bad)


def refusal(text: str) -> str:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "alerts.toml")
    return str(info.value)


GOOD = '[[rule]]\nname = "ok"\nwhen = "seq gap"\n\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # tomllib's own error, with its line first as ours are.
        (GOOD + '[[rule]]\nname = "x\n', "alerts.toml:6: "),
        (GOOD + '[[rule]]\nname = "hot"\nwhen = "temprature > 8"\n', "alerts.toml:7: "),
        (GOOD + '[[rule]]\nname = "hot"\nwhen = "temperature > 8 for 10 minutes"\n', ":7: "),
        (GOOD + '[[rule]]\nname = "ok"\nwhen = "offline"\n', ":6: "),
        (GOOD + '[[rule]]\nname = "s"\nwhen = "seq gap"\nsensor = ["a"]\n', ":8: "),
        (GOOD + '[[rule]]\nname = "s"\nwhen = "seq gap"\nsensors = ["a/b"]\n', ":8: "),
        (GOOD + '[[rule]]\nname = "s"\nwhen = "seq gap"\nhysteresis = 1\n', ":8: "),
        (GOOD + '[[rule]]\nname = "s"\nwhen = "seq gap"\nclear_after = 5\n', ":8: "),
        ('[defaults]\nclear_after = "soon"\n\n' + GOOD, "alerts.toml:2: "),
        ("[defaults]\nmax_per_minute = 0\n\n" + GOOD, "alerts.toml:2: "),
        (GOOD + '[[rule]]\nwhen = "seq gap"\n', "alerts.toml:5: "),
        (GOOD + "[alerts]\nx = 1\n", "alerts.toml:5: "),
        ("# nothing here\n", "alerts.toml: no [[rule]]"),
    ],
)
def test_a_mistake_is_refused_with_its_line(text: str, expected: str):
    assert expected in refusal(text)


def test_the_reasons_say_what_to_write():
    unknown_metric = refusal('[[rule]]\nname = "hot"\nwhen = "temprature > 8"\n')
    assert unknown_metric == (
        "alerts.toml:3: rule 'hot': 'temprature' is not a metric of a reading; use one of "
        "temperature, humidity, pressure"
    )
    nonsense = refusal('[[rule]]\nname = "x"\nwhen = "hot for a while"\n')
    assert nonsense.startswith("alerts.toml:3: rule 'x': when = 'hot for a while' is not a ")
    assert "'temperature > 8 for 10m'" in nonsense and "'seq gap'" in nonsense
    twice = refusal(GOOD + '[[rule]]\nname = "ok"\nwhen = "offline"\n')
    assert twice.startswith("alerts.toml:6: a second rule named 'ok' (the first is at line 1)")
    syntax = refusal('[[rule]]\nname = "x"\nwhen = seq gap\n')
    assert syntax.startswith("alerts.toml:3: ") and syntax.endswith("(not valid TOML)")


def test_the_cli_refuses_a_bad_file_with_the_line_and_exit_1(tmp_path: Path):
    bad = tmp_path / "alerts.toml"
    bad.write_text(GOOD + '[[rule]]\nname = "hot"\nwhen = "temperature > 8 for ten minutes"\n')
    for command in (["watch", "--no-sns", "--state", str(tmp_path / "s.json")], ["test"]):
        result = CliRunner().invoke(main, ["alerts", *command, "--rules", str(bad)])
        assert result.exit_code == 1, result.output
        assert result.output == (
            "Error: alerts.toml:7: rule 'hot': 'ten minutes' is not a duration; use e.g. 30s, 10m, "
            "1h30m, 500ms\n"
        )
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_missing_file_says_where_the_example_is(tmp_path: Path):
    result = CliRunner().invoke(main, ["alerts", "test", "--rules", str(tmp_path / "no.toml")])
    assert result.exit_code == 1
    assert "no.toml: no such file; write one (config/alerts.toml documents" in result.output
