"""`cloud plot`: the series read from the table or an export, and a PNG drawn from them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from click.testing import CliRunner, Result

from cloud.aws import Endpoint
from cloud.cli import main
from cloud.query.plot import PlotError, Series, render, series_from_export, series_from_table
from cloud.query.reports import Window
from tests.cloud.test_query import BASE, HALF_HOUR, INJECTION, READINGS, per_sensor, write_export

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def expected_series(sensors: tuple[str, ...], since_ms: int | None = None) -> Series:
    return {
        sensor: [
            (dt.datetime.fromtimestamp(ms / 1000, dt.UTC), temp)
            for _, ms, temp, _ in per_sensor()[sensor]
            if since_ms is None or ms >= since_ms
        ]
        for sensor in sensors
    }


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # axes, two lines, labels and a legend: not an empty canvas
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 800
    assert pixels.std() > 0  # something was drawn


@pytest.fixture(scope="module")
def ddb(aws: Endpoint) -> Any:
    return aws.client("dynamodb")  # one per module: a boto3 client is slow to make


@pytest.fixture
def seeded(ddb: Any, table: str) -> str:
    for sensor, ms, temp, seq in READINGS:
        ddb.put_item(
            TableName=table,
            Item={
                "SensorId": {"S": sensor},
                "CurrentTime": {"N": str(ms)},
                "Temperature": {"N": repr(temp)},
                "Seq": {"N": str(seq)},
            },
        )
    return table


def cloud(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_series_from_the_table(ddb: Any, seeded: str):
    sensors = ("sensor-2", "sensor-1")
    assert series_from_table(ddb, seeded, Window(sensor_ids=sensors)) == expected_series(sensors)
    since = BASE + 4 * HALF_HOUR
    got = series_from_table(ddb, seeded, Window(since_ms=since, sensor_ids=("sensor-1",)))
    assert got == expected_series(("sensor-1",), since)


def test_series_from_an_export_is_the_same(tmp_path: Path):
    sensors = ("sensor-1", "sensor-2")
    for formats in (("parquet",), ("datapipeline",)):
        root = write_export(tmp_path / formats[0], formats)
        assert series_from_export(root, Window(sensor_ids=sensors)) == expected_series(sensors)
        since = BASE + 4 * HALF_HOUR
        window = Window(since_ms=since, sensor_ids=("sensor-1",))
        assert series_from_export(root, window) == expected_series(("sensor-1",), since)


def test_no_data_for_a_sensor_is_an_error(ddb: Any, seeded: str, tmp_path: Path):
    with pytest.raises(PlotError, match="no readings for nope in"):
        series_from_table(ddb, seeded, Window(sensor_ids=("sensor-1", "nope")))
    root = write_export(tmp_path / "x", ("parquet",))
    with pytest.raises(PlotError, match="no readings for x' OR"):
        series_from_export(root, Window(sensor_ids=(INJECTION,)))


def test_render_writes_a_png(tmp_path: Path):
    out = render(expected_series(("sensor-1", "sensor-2")), tmp_path / "charts" / "t.png")
    assert out == tmp_path / "charts" / "t.png"
    assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["t.png"]  # no partial file left
    with pytest.raises(PlotError):
        render({"sensor-1": []}, tmp_path / "empty.png")


def test_cli_plot_from_the_table(
    aws: Endpoint, seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SENSOR_TABLE", seeded)
    out = tmp_path / "table.png"
    target = ("--target", "aws", "--endpoint-url", str(aws.url))
    result = cloud("plot", "--id", "sensor-1", "--id", "sensor-2", "--out", str(out), *target)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out} (11 reading(s) of 2 sensor(s))"
    assert_png(out)

    result = cloud("plot", "--id", "nope", "--out", str(tmp_path / "nope.png"), *target)
    assert result.exit_code == 1
    assert "no readings for nope" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "nope.png").exists()


def test_cli_plot_from_a_folder_export(tmp_path: Path):
    root = write_export(tmp_path / "export", ("datapipeline",))
    out = tmp_path / "export.png"
    since = dt.datetime.fromtimestamp((BASE + 4 * HALF_HOUR) / 1000, dt.UTC).isoformat()
    result = cloud(
        "plot", "--id", "sensor-1", "--since", since, "--data", str(root), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "(4 reading(s) of 1 sensor(s))" in result.stdout
    assert_png(out)
