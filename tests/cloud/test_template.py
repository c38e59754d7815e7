"""The CloudFormation template: lint, the committed file, least privilege, the rule's SQL.

moto's CloudFormation skips the topic rule and the Glue resources, so what it reports
proves nothing about them: here they are checked by cfn-lint, by their resolved properties,
and (the rule) by creating it through moto's IoT API from the template's own payload.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.aws import Endpoint
from cloud.export import layout
from cloud.ingest.rule import TOPIC_FILTER, rejected_rule_sql, rule_sql, to_item
from cloud.stack import template
from cloud.stack.resolver import Resolver
from cloud.table import KEY_SCHEMA
from device.columns import COLUMNS

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
#: Where `make lint` installs checkov (a venv of its own: its pins clash with the project's).
CHECKOV = Path(sys.executable).parent.parent / "lint-tools" / "bin" / "checkov"
THING = "${iot:Connection.Thing.ThingName}"
ACCOUNT, REGION = "123456789012", "us-east-1"
STACK = "sp-test"
RULES = ("SensorDataTopicRule", "RejectedReadingsTopicRule")
PHYSICAL = {
    "SensorDataTable": f"{STACK}-SensorData",
    "ExportsBucket": "sp-test-exports",
    "AthenaResultsBucket": "sp-test-athena",
    "GlueDatabase": "sp_test_sensors",
    "AlertsTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:{STACK}-alerts",
}
ATTRIBUTES = {
    "SensorDataTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK}-SensorData",
    "TopicRuleRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/{STACK}-TopicRuleRole-X",
    "ExportsBucket.Arn": "arn:aws:s3:::sp-test-exports",
    "AthenaResultsBucket.Arn": "arn:aws:s3:::sp-test-athena",
}


def resolver(stack: str = STACK, **parameters: Any) -> Resolver:
    return Resolver(
        stack_name=stack, parameters=parameters, physical=PHYSICAL, attributes=ATTRIBUTES
    )


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return as_list(document["Statement"])


def api_shape(value: Any) -> Any:
    """CloudFormation's TopicRulePayload spelling -> the IoT API's (lower camel case)."""
    if isinstance(value, dict):
        return {k[0].lower() + k[1:]: api_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [api_shape(v) for v in value]
    return value


# -- the file -------------------------------------------------------------------------------


def test_cfn_lint_passes_on_the_committed_template():
    assert CFN_LINT.exists(), f"{CFN_LINT} missing: pip install -e '.[dev]' (cfn-lint)"
    done = subprocess.run(
        [str(CFN_LINT), str(template.TEMPLATE_PATH)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not CHECKOV.exists(), reason=f"no {CHECKOV}: `make lint` installs it")
def test_checkov_finds_nothing_but_the_findings_the_template_skips_with_a_reason():
    env = {k: v for k, v in os.environ.items() if k not in ("BC_API_KEY", "PRISMA_API_URL")}
    env |= {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "true"}  # offline
    offline = ["--skip-download", "--skip-results-upload"]
    command = [str(CHECKOV), "--framework", "cloudformation", *offline, "-o", "json", "-f"]
    done = subprocess.run(
        [*command, str(template.TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    report = json.loads(done.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and done.returncode == 0, failed
    assert report["summary"]["passed"] >= 25 and report["summary"]["parsing_errors"] == 0
    skipped = {
        (c["check_id"], c["resource"].split(".")[-1], c["check_result"]["suppress_comment"])
        for c in report["results"]["skipped_checks"]
    }
    assert skipped == {
        (check, resource, reason)
        for resource, skips in template.SCANNER_SKIPS.items()
        for check, reason in skips.items()
    }


def test_committed_template_is_what_the_code_builds():
    assert template.is_current(), "stale template: run `python -m cloud.stack.template`"
    # The hand-rolled YAML writer says what a YAML reader (cfn-lint's, CloudFormation's) reads.
    assert yaml.safe_load(template.TEMPLATE_PATH.read_text()) == template.build()


def test_yaml_writer_quotes_what_yaml_would_misread():
    tricky = {"a": ["N", "no", "on", "2016-03-23", "x: y", "#c", "${x}", "", "*", "-1", "1e3"]}
    assert yaml.safe_load(template.render(tricky)) == tricky


# -- least privilege ------------------------------------------------------------------------


def test_device_policy_allows_only_its_own_client_id_and_topics():
    doc = resolver().resource("DevicePolicy")["PolicyDocument"]
    arn = f"arn:aws:iot:{REGION}:{ACCOUNT}"
    allowed = {
        (action, resource)
        for s in statements(doc)
        for action in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    }
    assert all(s["Effect"] == "Allow" for s in statements(doc))
    assert allowed == {
        ("iot:Connect", f"{arn}:client/{THING}"),
        ("iot:Publish", f"{arn}:topic/sensors/{THING}/data"),
        ("iot:Publish", f"{arn}:topic/sensors/{THING}/status"),
        ("iot:RetainPublish", f"{arn}:topic/sensors/{THING}/status"),
        # Issue 15: the device's reported config and health (retained), and its own desired
        # config to subscribe to and receive, nothing of another thing's.
        ("iot:Publish", f"{arn}:topic/sensors/{THING}/config/reported"),
        ("iot:RetainPublish", f"{arn}:topic/sensors/{THING}/config/reported"),
        ("iot:Publish", f"{arn}:topic/sensors/{THING}/health"),
        ("iot:RetainPublish", f"{arn}:topic/sensors/{THING}/health"),
        ("iot:Subscribe", f"{arn}:topicfilter/sensors/{THING}/config/desired"),
        ("iot:Receive", f"{arn}:topic/sensors/{THING}/config/desired"),
    }
    assert not any("*" in action or "*" in resource for action, resource in allowed)
    # MQTT wildcards would widen a topic filter beyond the thing's own.
    assert not any("+" in resource or "#" in resource for _, resource in allowed)


def test_rule_role_may_only_put_items_and_keep_failed_messages():
    props = resolver().resource("TopicRuleRole")
    trust = statements(props["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust] == [{"Service": "iot.amazonaws.com"}]
    rules = [resolver().resource(r)["RuleName"] for r in RULES]
    assert rules == ["sp_test_sensor_data", "sp_test_sensor_data_rejected"]
    assert trust[0]["Condition"]["ArnLike"]["aws:SourceArn"] == [
        f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/{name}" for name in rules
    ]
    granted = [s for policy in props["Policies"] for s in statements(policy["PolicyDocument"])]
    actions = [a for s in granted for a in as_list(s["Action"])]
    resources = [r for s in granted for r in as_list(s["Resource"])]
    assert not any("*" in a for a in actions)
    assert "*" not in resources and not any(r.endswith(":*") for r in resources)
    # DynamoDB: PutItem on the table and nothing else.
    dynamo = [(a, s["Resource"]) for s in granted for a in as_list(s["Action"]) if "dynamodb" in a]
    assert dynamo == [("dynamodb:PutItem", ATTRIBUTES["SensorDataTable.Arn"])]
    # The error action's statement is separate: PutObject under its prefix only, the one
    # resource with a wildcard (object keys are made by the rule).
    s3 = [s for s in granted if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert len(s3) == 1 and as_list(s3[0]["Action"]) == ["s3:PutObject"]
    assert s3[0]["Resource"] == f"arn:aws:s3:::sp-test-exports/{template.RULE_ERRORS_PREFIX}*"
    assert [r for r in resources if "*" in r] == [s3[0]["Resource"]]


# -- resources ------------------------------------------------------------------------------


def test_table_is_on_demand_with_pitr_and_optional_ttl():
    props = resolver().resource("SensorDataTable")
    assert props["TableName"] == f"{STACK}-SensorData"
    assert props["KeySchema"] == KEY_SCHEMA
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert "TimeToLiveSpecification" not in props  # off by default
    ttl = resolver(TtlAttribute="ExpiresAt").resource("SensorDataTable")
    assert ttl["TimeToLiveSpecification"] == {"AttributeName": "ExpiresAt", "Enabled": True}


@pytest.mark.parametrize("bucket", ["ExportsBucket", "AthenaResultsBucket"])
def test_buckets_are_private_and_encrypted(bucket: str):
    props = resolver().resource(bucket)
    assert "BucketName" not in props  # CloudFormation names it after the stack, uniquely
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert resolver(**{f"{bucket}Name": "my-bucket"}).resource(bucket)["BucketName"] == "my-bucket"


def test_athena_results_expire_and_scans_are_capped():
    rules = resolver(AthenaResultsRetentionDays=3).resource("AthenaResultsBucket")[
        "LifecycleConfiguration"
    ]["Rules"]
    assert [r["ExpirationInDays"] for r in rules if "ExpirationInDays" in r] == [3]
    config = resolver().resource("AthenaWorkGroup")["WorkGroupConfiguration"]
    assert config["ResultConfiguration"]["OutputLocation"] == "s3://sp-test-athena/results/"
    assert config["BytesScannedCutoffPerQuery"] == 1073741824
    assert config["EnforceWorkGroupConfiguration"] is True


def test_glue_tables_follow_the_export_layout():
    sensor_data = resolver().resource("SensorDataGlueTable")["TableInput"]
    assert sensor_data["Name"] == layout.data_prefix("datapipeline")
    sd = sensor_data["StorageDescriptor"]
    assert [(c["Name"], c["Type"]) for c in sd["Columns"]] == [
        ("sensorid", "struct<s:string>"),
        ("currenttime", "struct<n:bigint>"),
        ("temperature", "struct<n:float>"),
    ]
    assert sd["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    assert sd["SerdeInfo"]["Parameters"] == {"paths": "SensorId,CurrentTime,Temperature"}
    assert sd["Location"] == "s3://sp-test-exports/sensor_data/"

    readings = resolver().resource("ReadingsGlueTable")["TableInput"]
    assert readings["Name"] == layout.data_prefix("parquet")
    rd = readings["StorageDescriptor"]
    assert [(c["Name"], c["Type"]) for c in rd["Columns"]] == [
        (c.name, c.athena_type) for c in layout.PARQUET_COLUMNS
    ]
    assert "ParquetHiveSerDe" in rd["SerdeInfo"]["SerializationLibrary"]
    assert rd["Location"] == "s3://sp-test-exports/readings/"
    assert [k["Name"] for k in readings["PartitionKeys"]] == [layout.PARTITION_KEY]
    params = readings["Parameters"]
    assert params["projection.enabled"] == "true"
    assert params["projection.dt.type"] == "date"
    assert params["storage.location.template"] == "s3://sp-test-exports/readings/dt=${dt}/"
    # Rule errors live beside the data prefixes, never under them.
    assert not template.RULE_ERRORS_PREFIX.startswith(tuple(layout.DATA_PREFIX.values()))


def test_names_derive_from_the_stack_name_and_outputs_say_them():
    r = resolver("My-Stack")
    names = {
        "rule": r.resource("SensorDataTopicRule")["RuleName"],
        "database": r.resource("GlueDatabase")["DatabaseInput"]["Name"],
        "policy": r.resource("DevicePolicy")["PolicyName"],
        "workgroup": r.resource("AthenaWorkGroup")["Name"],
        "table": r.resource("SensorDataTable")["TableName"],
    }
    assert names == {
        "rule": "My_Stack_sensor_data",  # topic rule names allow no '-'
        "database": "My_Stack_sensors",
        "policy": "My-Stack-device",
        "workgroup": "My-Stack",
        "table": "My-Stack-SensorData",
    }
    outputs = r.resolve(template.build()["Outputs"])
    assert tuple(outputs) == template.OUTPUTS
    assert outputs["TopicRuleName"]["Value"] == names["rule"]
    assert outputs["IotPolicyName"]["Value"] == names["policy"]
    assert outputs["WorkGroup"]["Value"] == names["workgroup"]
    assert outputs["GlueDatabase"]["Value"] == names["database"]
    assert resolver("x", TopicRuleName="mine").resource("SensorDataTopicRule")["RuleName"] == "mine"


# -- the rule -------------------------------------------------------------------------------


def test_the_alerts_topic_is_encrypted_and_named_after_the_stack():
    topic = resolver().resource("AlertsTopic")
    assert topic == {
        "TopicName": f"{STACK}-alerts",
        "DisplayName": "sensor alerts",
        "KmsMasterKeyId": "alias/aws/sns",
    }
    outputs = resolver().resolve(template.build()["Outputs"])
    assert outputs["AlertsTopicArn"]["Value"] == PHYSICAL["AlertsTopic"]


def test_the_templates_rule_sql_is_the_rule_definition():
    payload = resolver().resource("SensorDataTopicRule")["TopicRulePayload"]
    assert payload["Sql"] == rule_sql()
    assert payload["AwsIotSqlVersion"] == "2016-03-23"
    assert payload["Actions"] == [
        {
            "DynamoDBv2": {
                "PutItem": {"TableName": PHYSICAL["SensorDataTable"]},
                "RoleArn": ATTRIBUTES["TopicRuleRole.Arn"],
            }
        }
    ]
    error = payload["ErrorAction"]["S3"]
    assert error["BucketName"] == PHYSICAL["ExportsBucket"]
    assert error["Key"].startswith(template.RULE_ERRORS_PREFIX)


def test_what_the_rule_refuses_is_kept_beside_what_it_failed_to_write(aws: Endpoint):
    """A message the WHERE refuses is no error to AWS IoT, so the error action never sees it:
    the second rule matches NOT (the same checks) and writes where the error action does."""
    payload = resolver().resource("RejectedReadingsTopicRule")["TopicRulePayload"]
    assert payload["Sql"] == rejected_rule_sql()
    assert payload["Sql"].endswith(f"WHERE NOT ({rule_sql().split(' WHERE ', 1)[1]})")
    assert payload["AwsIotSqlVersion"] == template.SQL_VERSION
    ((action,),) = [list(a.values()) for a in payload["Actions"]]
    error = resolver().resource("SensorDataTopicRule")["TopicRulePayload"]["ErrorAction"]["S3"]
    assert action["BucketName"] == error["BucketName"] == PHYSICAL["ExportsBucket"]
    assert action["RoleArn"] == error["RoleArn"]
    assert action["Key"].startswith(template.RULE_ERRORS_PREFIX + "${topic(2)}/rejected-")
    assert action["Key"] != error["Key"]
    # botocore checks the payload against the IoT API model before moto sees it.
    name = f"t_{uuid.uuid4().hex[:12]}{template.REJECTED_RULE_SUFFIX}"
    iot = aws.client("iot")
    iot.create_topic_rule(ruleName=name, topicRulePayload=api_shape(payload))
    stored = iot.get_topic_rule(ruleName=name)["rule"]
    assert stored["sql"] == rejected_rule_sql()
    assert stored["actions"][0]["s3"]["bucketName"] == PHYSICAL["ExportsBucket"]


_SQL = re.compile(r"^SELECT (?P<select>.+?) FROM '(?P<filter>[^']+)' WHERE (?P<where>.+)$")


def topic_matches(sql: str, topic: str) -> bool:
    parsed = _SQL.match(sql)
    assert parsed, f"cannot read {sql!r}"
    levels, parts = parsed["filter"].split("/"), topic.split("/")
    return len(levels) == len(parts) and all(
        f in ("+", p) for f, p in zip(levels, parts, strict=True)
    )


def select_item(sql: str, topic: str, payload: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The rule's SELECT over one message it matches, as AWS IoT SQL 2016-03-23 evaluates the
    subset it uses (fields by name, topic(n), timestamp()), typed the way the DynamoDBv2
    action writes attributes. Which messages match (the WHERE) is tested in
    tests/cloud/test_rule_checks.py, clause by clause."""
    parsed = _SQL.match(sql)
    assert parsed, f"cannot read {sql!r}"
    parts = topic.split("/")
    item: dict[str, Any] = {}
    for column in parsed["select"].split(", "):
        expr, alias = column.split(" AS ")
        if expr == "timestamp()":
            value: Any = now_ms
        elif m := re.fullmatch(r"topic\((\d+)\)", expr):
            value = parts[int(m[1]) - 1]
        elif re.fullmatch(r"[a-z_]+", expr):
            if expr not in payload:
                continue  # undefined: IoT SQL leaves the attribute out
            value = payload[expr]
        else:
            raise AssertionError(f"the evaluator does not know {expr!r}")
        item[alias] = {"S": value} if isinstance(value, str) else {"N": str(value)}
    return item


def as_values(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v["S"] if "S" in v else Decimal(v["N"]) for k, v in item.items()}


PAYLOADS = {
    "minimal": {"v": 1, "sensor_id": "s-1", "ts": 1764345600123, "seq": 42, "temperature": 21.37},
    "metrics": {
        "v": 1,
        "sensor_id": "s-1",
        "ts": 1764345600124,
        "seq": 43,
        "temperature": -3.5,
        "humidity": 40.25,
        "pressure": 1013.2,
    },
    "whole-number": {"v": 1, "sensor_id": "s-1", "ts": 1764345600125, "seq": 0, "temperature": 21},
}


def test_rule_as_moto_stores_it_has_our_sql_and_maps_payloads_as_ingest_does(aws: Endpoint):
    name = f"t_{uuid.uuid4().hex[:12]}"
    payload = resolver().resource("SensorDataTopicRule")["TopicRulePayload"]
    iot = aws.client("iot")
    # botocore checks the payload against the IoT API model before moto sees it.
    iot.create_topic_rule(ruleName=name, topicRulePayload=api_shape(payload))
    stored = iot.get_topic_rule(ruleName=name)["rule"]
    assert stored["sql"] == rule_sql()
    assert stored["awsIotSqlVersion"] == template.SQL_VERSION
    assert stored["actions"][0]["dynamoDBv2"]["putItem"]["tableName"] == PHYSICAL["SensorDataTable"]
    assert stored["errorAction"]["s3"]["bucketName"] == PHYSICAL["ExportsBucket"]

    select = _SQL.match(stored["sql"])
    assert select and select["filter"] == TOPIC_FILTER
    aliases = [c.split(" AS ")[1] for c in select["select"].split(", ")]
    assert aliases == [c.attribute for c in COLUMNS]

    topic = "sensors/s-1/data"
    now = 1764345700000
    assert topic_matches(stored["sql"], topic)
    assert not topic_matches(stored["sql"], "sensors/s-1/status")
    for label, body in PAYLOADS.items():
        by_rule = select_item(stored["sql"], topic, body, now)
        by_ingest = to_item(topic, json.dumps(body).encode(), received_ms=now)
        assert set(by_ingest) == set(by_rule), label
        assert {k: next(iter(v)) for k, v in by_ingest.items()} == {
            k: next(iter(v)) for k, v in by_rule.items()
        }, f"{label}: attribute types differ"
        assert as_values(by_ingest) == as_values(by_rule), label
