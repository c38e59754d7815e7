"""The Athena engine's plumbing against moto's server: the DDL and queries it sends, polling,
results, failures. moto's Athena runs no SQL (DESIGN.md): rows are injected through moto's
API, and the SQL itself is tested on DuckDB (test_query.py).

Two things moto cannot do are stubbed with botocore's Stubber, on a real client: a FAILED
query, and results over several pages (moto's GetQueryResults ignores MaxResults and
returns every row at once, with no NextToken)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner

from cloud.aws import LOCAL_CREDENTIALS, Endpoint
from cloud.cli import main
from cloud.errors import ConfigError, QueryError
from cloud.export.location import ExportRoot
from cloud.local.moto import MotoServer
from cloud.query import schema
from cloud.query.engines.athena import AthenaEngine, AthenaSettings, athena_literal
from cloud.query.reports import Window
from cloud.query.run import run_report

ACCOUNT = "123456789012"  # moto's default account

# Each test gets its own region: moto keeps Athena's executions and its queue of injected
# results per region, so a test can never take another's rows.
_REGIONS = itertools.cycle(
    [
        "us-west-1",
        "us-west-2",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "eu-central-1",
        "eu-north-1",
        "ap-south-1",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-northeast-1",
        "ap-northeast-2",
        "ca-central-1",
        "sa-east-1",
    ]
)
_names = itertools.count()

# The tutorial's DDL as the seed (shared/seed/iot-pipeline-tutorial.md) gives it.
SEED_DDL = """CREATE EXTERNAL TABLE IF NOT EXISTS sensor_data (
	sensorid    struct<s:string>,
	currenttime struct<n:bigint>,
	temperature struct<n:float>
)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
with serdeproperties ('paths' = 'SensorId,CurrentTime,Temperature')
LOCATION 's3://sensor-data-bryton/';"""
SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "iot-pipeline-tutorial.md"


def words(sql: str) -> list[str]:
    return sql.rstrip().rstrip(";").split()


class Athena:
    """One test's view of moto's Athena: its region, clients and injected results."""

    def __init__(self, server: MotoServer, bucket: str) -> None:
        self.server = server
        self.region = next(_REGIONS)
        self.endpoint = Endpoint(server.url, self.region)
        # One set of clients per test, handed to its engines too: a boto3 client takes a
        # few tenths of a second to make here, and the real construction path is run by
        # test_cli_query_on_athena and the report test.
        self.clients = {name: self.endpoint.client(name) for name in ("athena", "glue", "s3")}
        self.client = self.clients["athena"]
        self.bucket = bucket
        self.data = ExportRoot(f"s3://{bucket}/export")
        self.output = f"s3://{bucket}/results/"

    def inject(self, *results: dict[str, Any]) -> None:
        """Rows for the next queries started, in order (moto hands one to each start)."""
        body = {"account_id": ACCOUNT, "region": self.region, "results": list(results)}
        self._post("/moto-api/static/athena/query-results", body)

    def transitions(self, times: int | None) -> None:
        """Make each query take `times` polls per state (None: moto's default, at once)."""
        if times is None:
            self._post("/moto-api/state-manager/unset-transition", {"model_name": MODEL})
        else:
            transition = {"progression": "manual", "times": times}
            self._post(
                "/moto-api/state-manager/set-transition",
                {"model_name": MODEL, "transition": transition},
            )

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 (the moto server on loopback)
            self.server.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status in (200, 201)

    def recorded(self, query_id: str) -> dict[str, Any]:
        execution: dict[str, Any] = self.client.get_query_execution(QueryExecutionId=query_id)[
            "QueryExecution"
        ]
        return execution

    def register_tables(self, database: str) -> None:
        """What earlier runs' DDL leaves in Glue on AWS (moto's Athena never writes Glue)."""
        glue = self.clients["glue"]
        glue.create_database(DatabaseInput={"Name": database})
        for table in schema.TABLES:
            where = schema.table_location(table, self.data)
            glue.create_table(
                DatabaseName=database,
                TableInput={"Name": table, "StorageDescriptor": {"Location": where}},
            )

    def engine(self, **settings: Any) -> tuple[AthenaEngine, list[float]]:
        slept: list[float] = []
        engine = AthenaEngine(
            self.data,
            self.endpoint,
            AthenaSettings(output=self.output, **settings),
            clients=self.clients,
            sleep=slept.append,
        )
        return engine, slept


MODEL = "athena::execution"


@pytest.fixture
def athena(moto_server: MotoServer) -> Iterator[Athena]:
    helper = Athena(moto_server, f"athena-test-{next(_names)}-{int(time.time())}")
    s3 = helper.clients["s3"]
    s3.create_bucket(
        Bucket=helper.bucket, CreateBucketConfiguration={"LocationConstraint": helper.region}
    )
    # Athena never opens these here; the engine only checks that each table has data.
    for key in ("sensor_data/run-1-00000.json", "readings/dt=2023-11-14/run-1.parquet"):
        s3.put_object(Bucket=helper.bucket, Key=f"export/{key}", Body=b"{}\n")
    yield helper
    helper.transitions(None)


def column(name: str, kind: str) -> dict[str, Any]:
    return {"Name": name, "Label": name, "Type": kind, "Nullable": "UNKNOWN"}


def row(*values: str | None) -> dict[str, Any]:
    return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}


SUMMARY_COLUMNS = [
    column("sensor", "varchar"),
    column("readings", "bigint"),
    column("avg_temperature", "double"),
    column("last_time", "timestamp"),
]


# -- the DDL --------------------------------------------------------------------------------


def test_sensor_data_ddl_is_the_tutorials(tmp_path: Path):
    ddl = schema.athena_ddl("sensor_data", "s3://sensor-data-bryton")
    # The same statement, pointed at the export's datapipeline prefix.
    assert words(ddl) == words(
        SEED_DDL.replace("s3://sensor-data-bryton/", "s3://sensor-data-bryton/sensor_data/")
    )
    if SEED.exists():  # beside the repository in development and CI
        assert " ".join(words(SEED_DDL)) in " ".join(SEED.read_text().split())


def test_readings_ddl_projects_its_day_partitions():
    ddl = schema.athena_ddl("readings", "s3://bucket/pre/fix")
    assert "PARTITIONED BY (`dt` string)" in ddl and "STORED AS PARQUET" in ddl
    assert "LOCATION 's3://bucket/pre/fix/readings/'" in ddl
    properties = dict(re.findall(r"'([a-z.]+)' = '([^']*)'", ddl))
    assert properties == {
        "projection.enabled": "true",
        "projection.dt.type": "date",
        "projection.dt.format": "yyyy-MM-dd",
        "projection.dt.range": "2020-01-01,NOW",
        "projection.dt.interval": "1",
        "projection.dt.interval.unit": "DAYS",
        "storage.location.template": "s3://bucket/pre/fix/readings/dt=${dt}/",
    }
    for name in ("sensor_id", "time", "temperature", "seq", "received_at"):
        assert f"`{name}`" in ddl


def test_locations_never_come_from_free_text():
    with pytest.raises(ConfigError):
        schema.athena_ddl("sensor_data", "s3://bucket/x' ; DROP TABLE y; --")


# -- requests, polling, results -------------------------------------------------------------


def test_prepare_sends_the_database_and_table_ddl(athena: Athena):
    engine, _ = athena.engine()
    engine.prepare()
    sent = [athena.recorded(q) for q in engine.executions]
    assert [e["Query"] for e in sent] == [
        "CREATE DATABASE IF NOT EXISTS sensor_pipeline",
        schema.athena_ddl("readings", athena.data),
        schema.athena_ddl("sensor_data", athena.data),
    ]
    assert "QueryExecutionContext" not in sent[0] or not sent[0]["QueryExecutionContext"]
    for execution in sent:
        assert execution["WorkGroup"] == "primary"
        assert execution["ResultConfiguration"]["OutputLocation"].startswith(athena.output)
        assert execution["StatementType"] == "DDL"
    assert sent[1]["QueryExecutionContext"] == {
        "Database": "sensor_pipeline",
        "Catalog": "AwsDataCatalog",
    }
    engine.prepare()  # once per engine
    assert len(engine.executions) == 3


def test_query_with_parameters_polls_until_succeeded_and_skips_the_header(athena: Athena):
    engine, slept = athena.engine(first_poll=0.25, max_poll=1.0)
    engine.prepare()
    slept.clear()
    athena.inject(
        {
            "rows": [
                row("sensor", "readings", "avg_temperature", "last_time"),
                row("sensor-1", "7", "21.5", "2023-11-15 01:30:00.000"),
                row("sensor-2", "4", None, "2023-11-15 00:30:00.000"),
            ],
            "column_info": SUMMARY_COLUMNS,
        }
    )
    athena.transitions(2)  # QUEUED, RUNNING and SUCCEEDED take two polls each
    sql = "SELECT sensor, count(*) FROM readings WHERE sensor_id = ? AND time >= ?"
    since = dt.datetime(2023, 11, 14, 22, 0, tzinfo=dt.UTC)
    columns, rows = engine.execute(sql, ["x' OR '1'='1", since])
    assert columns == ["sensor", "readings", "avg_temperature", "last_time"]
    assert rows == [
        ("sensor-1", 7, 21.5, dt.datetime(2023, 11, 15, 1, 30)),
        ("sensor-2", 4, None, dt.datetime(2023, 11, 15, 0, 30)),
    ]
    # Capped exponential backoff between polls, and no poll after SUCCEEDED.
    assert slept == [0.25, 0.5, 1.0]
    sent = athena.recorded(engine.executions[-1])
    assert sent["Query"] == sql
    assert sent["ExecutionParameters"] == [
        "'x'' OR ''1''=''1'",
        "TIMESTAMP '2023-11-14 22:00:00.000'",
    ]
    assert sent["WorkGroup"] == "primary"
    assert sent["ResultConfiguration"]["OutputLocation"].startswith(athena.output)
    assert sent["Status"]["State"] == "SUCCEEDED"


def test_many_rows_come_back_whole(athena: Athena):
    engine, _ = athena.engine()
    engine.prepare()
    rows = [row("sensor", "n")] + [row(f"sensor-{i}", str(i)) for i in range(2500)]
    athena.inject(
        {"rows": rows, "column_info": [column("sensor", "varchar"), column("n", "integer")]}
    )
    _, got = engine.execute("SELECT sensor, n FROM readings")
    assert got == [(f"sensor-{i}", i) for i in range(2500)]


def test_a_report_sends_its_window_as_execution_parameters(athena: Athena):
    athena.register_tables("sensor_pipeline")  # so the report is the only execution
    athena.inject({"rows": [row("sensor")], "column_info": SUMMARY_COLUMNS})
    window = Window(since_ms=1_699_999_200_000, sensor_ids=("x' OR '1'='1",))
    _, rows = run_report(
        "summary",
        athena.data,
        window,
        engine="athena",
        endpoint=athena.endpoint,
        athena=AthenaSettings(output=athena.output),
    )
    assert rows == []
    (query_id,) = athena.client.list_query_executions()["QueryExecutionIds"]
    last = athena.recorded(query_id)
    assert "x' OR" not in last["Query"] and "FROM readings WHERE sensor_id IN (?)" in last["Query"]
    assert last["ExecutionParameters"] == [
        "'x'' OR ''1''=''1'",
        "TIMESTAMP '2023-11-14 22:00:00.000'",
        "'2023-11-14'",
    ]


def test_tables_already_at_this_location_are_left_alone(athena: Athena):
    athena.register_tables("sensor_pipeline")
    athena.clients["glue"].update_table(  # as another export's run left it
        DatabaseName="sensor_pipeline",
        TableInput={
            "Name": "readings",
            "StorageDescriptor": {"Location": "s3://elsewhere/old-export/readings/"},
        },
    )
    engine, _ = athena.engine()
    engine.prepare()
    assert [athena.recorded(q)["Query"] for q in engine.executions] == [
        "DROP TABLE IF EXISTS readings",
        schema.athena_ddl("readings", athena.data),
    ]


def test_cli_query_on_athena(athena: Athena, monkeypatch: pytest.MonkeyPatch):
    athena.register_tables("pipeline_cli")  # so the query is the only execution
    athena.inject(
        {
            "rows": [row("sensor", "n"), row("sensor-1", "7")],
            "column_info": [column("sensor", "varchar"), column("n", "bigint")],
        }
    )
    monkeypatch.setenv("AWS_REGION", athena.region)
    monkeypatch.setenv("ATHENA_DATABASE", "pipeline_cli")
    result = CliRunner().invoke(
        main,
        [
            "query",
            "SELECT sensorid.s AS sensor, count(*) AS n FROM sensor_data GROUP BY 1",
            "--engine",
            "athena",
            "--data",
            athena.data.url,
            "--athena-output",
            athena.output,
            "--endpoint-url",
            athena.server.url,
            "--target",
            "aws",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["sensor,n", "sensor-1,7"]
    (query_id,) = athena.client.list_query_executions()["QueryExecutionIds"]
    sent = athena.recorded(query_id)
    assert sent["QueryExecutionContext"]["Database"] == "pipeline_cli"
    assert sent["ResultConfiguration"]["OutputLocation"].startswith(athena.output)


# -- failures -------------------------------------------------------------------------------


def test_a_cancelled_query_is_a_query_error(athena: Athena):
    engine, _ = athena.engine()
    engine.prepare()
    query_id = engine.start("SELECT count(*) FROM sensor_data")
    athena.client.stop_query_execution(QueryExecutionId=query_id)
    with pytest.raises(QueryError, match=f"Athena query {query_id} was cancelled") as caught:
        engine.wait(query_id)
    assert caught.value.code == "CANCELLED"


def test_a_query_running_too_long_is_stopped(athena: Athena):
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    engine = AthenaEngine(
        athena.data,
        athena.endpoint,
        AthenaSettings(output=athena.output, timeout=3.0),
        clients=athena.clients,
        sleep=sleep,
        clock=lambda: now[0],
    )
    engine.prepare()
    athena.transitions(10_000)  # stays QUEUED
    query_id = engine.start("SELECT 1")
    with pytest.raises(QueryError, match="still QUEUED after 3s; stopped it"):
        engine.wait(query_id)
    athena.transitions(None)
    assert athena.recorded(query_id)["Status"]["State"] == "CANCELLED"
    assert sum(slept) <= 3.0 and slept[:3] == [0.2, 0.4, 0.8]


def test_athena_needs_s3_data(tmp_path: Path, athena: Athena):
    with pytest.raises(ConfigError, match="reads S3 only"):
        AthenaEngine(ExportRoot(str(tmp_path)), athena.endpoint, AthenaSettings())
    engine = AthenaEngine(
        ExportRoot(f"s3://{athena.bucket}/nothing-here"),
        athena.endpoint,
        AthenaSettings(),
        clients=athena.clients,
    )
    with pytest.raises(QueryError, match="no export data at"):
        engine.execute("SELECT 1")


def stubbed_engine() -> tuple[AthenaEngine, Stubber]:
    client = boto3.client("athena", region_name="us-east-1", **LOCAL_CREDENTIALS)
    engine = AthenaEngine(
        ExportRoot("s3://bucket/export"),
        Endpoint("http://127.0.0.1:9", "us-east-1"),  # never reached: every call is stubbed
        AthenaSettings(output="s3://bucket/results/"),
        clients={"athena": client, "glue": object(), "s3": object()},
        sleep=lambda _: None,
    )
    return engine, Stubber(client)


def test_a_failed_query_says_why():
    engine, stub = stubbed_engine()
    reason = "COLUMN_NOT_FOUND: line 1:8: Column 'nope' cannot be resolved"
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-1"})
    stub.add_response(
        "get_query_execution",
        {"QueryExecution": {"QueryExecutionId": "q-1", "Status": {"State": "RUNNING"}}},
    )
    stub.add_response(
        "get_query_execution",
        {
            "QueryExecution": {
                "QueryExecutionId": "q-1",
                "Status": {"State": "FAILED", "StateChangeReason": reason + "\nmore detail"},
            }
        },
    )
    with stub, pytest.raises(QueryError) as caught:
        engine.wait(engine.start("SELECT nope FROM sensor_data"))
    assert str(caught.value) == f"Athena query q-1 failed: {reason}"
    assert caught.value.code == "FAILED"
    stub.assert_no_pending_responses()


def test_a_refused_query_is_one_line():
    engine, stub = stubbed_engine()
    stub.add_client_error(
        "start_query_execution",
        "InvalidRequestException",
        "No output location provided. An output location is required either through the "
        "Workgroup result configuration setting or as an API input.",
    )
    with stub, pytest.raises(QueryError, match="set --athena-output or ATHENA_OUTPUT"):
        engine.start("SELECT 1")


def test_results_over_several_pages():
    engine, stub = stubbed_engine()
    info = {"ColumnInfo": [{"Name": "sensor", "Type": "varchar"}, {"Name": "n", "Type": "bigint"}]}
    pages = [
        ([row("sensor", "n"), row("a", "1"), row("b", "2")], "t1"),
        ([row("c", "3"), row("sensor", "4")], "t2"),  # a value equal to a header is data
        ([row("d", None)], None),
    ]
    for i, (rows, token) in enumerate(pages):
        response: dict[str, Any] = {"ResultSet": {"Rows": rows, "ResultSetMetadata": info}}
        if token:
            response["NextToken"] = token
        expected: dict[str, Any] = {"QueryExecutionId": "q-1", "MaxResults": 1000}
        if i:
            expected["NextToken"] = pages[i - 1][1]
        stub.add_response("get_query_results", response, expected)
    with stub:
        columns, rows = engine.fetch("q-1")
    assert columns == ["sensor", "n"]
    assert rows == [("a", 1), ("b", 2), ("c", 3), ("sensor", 4), ("d", None)]
    stub.assert_no_pending_responses()


def test_parameters_become_athena_literals():
    assert athena_literal("it's") == "'it''s'"
    assert athena_literal(42) == "42"
    assert athena_literal(21.5) == "21.5"
    assert athena_literal(dt.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)) == (
        "TIMESTAMP '2024-01-02 03:04:05.006'"
    )
    with pytest.raises(QueryError):
        athena_literal(float("nan"))


def test_settings_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ATHENA_WORKGROUP", "analysts")
    monkeypatch.setenv("ATHENA_DATABASE", "from_env")
    monkeypatch.delenv("ATHENA_OUTPUT", raising=False)
    settings = AthenaSettings.resolve(database="from_flag", default_output="s3://b/r/")
    assert (settings.workgroup, settings.database, settings.output) == (
        "analysts",
        "from_flag",
        "s3://b/r/",
    )
    with pytest.raises(ConfigError, match="ATHENA_DATABASE"):
        AthenaSettings.resolve(database="Bad-Name")
