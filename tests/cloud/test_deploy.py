"""`cloud deploy | destroy | status` against moto's server, and once against real AWS.

moto's CloudFormation creates the table, buckets, role and IoT policy, and skips the topic
rule, the Glue resources, the Athena workgroup and the bucket policies while reporting
CREATE_COMPLETE: so these tests check the real resources, and create the skipped ones
through moto's own APIs from the template's properties.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from cloud.aws import Endpoint
from cloud.errors import ConfigError
from cloud.identity.iot import certificate_id, provision_device, revoke_device_aws
from cloud.ingest.rule import to_item
from cloud.stack import template
from cloud.stack.deploy import (
    DeployError,
    DestroyRefused,
    StackEvent,
    StackNotFound,
    deploy,
    destroy,
    stack_resources,
)
from cloud.stack.resolver import Resolver
from cloud.stack.status import aws_status
from cloud.table import KEY_SCHEMA, query_readings
from tests.mqtt import finish, start_agent

POLL = 0.05  # moto finishes each stack operation within its API call


@pytest.fixture
def stack_name() -> str:
    """A stack name no other test uses (the session's moto server is thrown away after)."""
    return f"sp-{uuid.uuid4().hex[:10]}"


def stack_status(endpoint: Endpoint, name: str) -> str | None:
    try:
        return str(
            endpoint.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0][
                "StackStatus"
            ]
        )
    except ClientError as exc:
        assert "does not exist" in str(exc)
        return None


def error_code(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def test_deploy_creates_the_stack_and_reads_back_its_outputs(aws: Endpoint, stack_name: str):
    events: list[StackEvent] = []
    outputs = deploy(aws, stack_name, {}, events.append, poll_seconds=POLL)

    assert stack_status(aws, stack_name) == "CREATE_COMPLETE"
    assert set(outputs) == set(template.OUTPUTS)
    assert outputs["TableName"] == f"{stack_name}-SensorData"
    table = aws.client("dynamodb").describe_table(TableName=outputs["TableName"])["Table"]
    assert table["KeySchema"] == KEY_SCHEMA
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    s3 = aws.client("s3")
    for bucket in (outputs["ExportsBucket"], outputs["AthenaResultsBucket"]):
        assert bucket.startswith(stack_name)
        s3.head_bucket(Bucket=bucket)
    policy = aws.client("iot").get_policy(policyName=outputs["IotPolicyName"])
    assert "client/${iot:Connection.Thing.ThingName}" in policy["policyDocument"]
    assert outputs["RuleErrorsLocation"] == f"s3://{outputs['ExportsBucket']}/_rule-errors/"
    assert events, "no progress was reported"
    assert (events[-1].logical_id, events[-1].status) == (stack_name, "CREATE_COMPLETE")


def test_update_changes_a_parameter_and_keeps_the_rest_and_the_data(aws: Endpoint, stack_name: str):
    first = deploy(aws, stack_name, {"BytesScannedCutoffPerQuery": 20_000_000}, poll_seconds=POLL)
    ddb = aws.client("dynamodb")
    item = to_item(
        "sensors/dev-1/data",
        b'{"v":1,"sensor_id":"dev-1","ts":1764345600005,"seq":0,"temperature":1.5}',
    )
    ddb.put_item(TableName=first["TableName"], Item=item)

    events: list[StackEvent] = []
    second = deploy(
        aws, stack_name, {"AthenaResultsRetentionDays": 3}, events.append, poll_seconds=POLL
    )

    stack = aws.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert params["AthenaResultsRetentionDays"] == "3"
    assert params["BytesScannedCutoffPerQuery"] == "20000000"  # not reset to its default
    assert second == first
    assert [e.status for e in events if e.logical_id == stack_name][-1] == "UPDATE_COMPLETE"
    assert (
        ddb.get_item(
            TableName=first["TableName"], Key={k: item[k] for k in ("SensorId", "CurrentTime")}
        )["Item"]
        == item
    )

    # Nothing to change is not an error.
    assert deploy(aws, stack_name, {"AthenaResultsRetentionDays": 3}, poll_seconds=POLL) == first


def test_unknown_parameters_are_refused_before_anything_is_made(aws: Endpoint, stack_name: str):
    with pytest.raises(ConfigError, match="TableNmae"):
        deploy(aws, stack_name, {"TableNmae": "x"}, poll_seconds=POLL)
    assert stack_status(aws, stack_name) is None


def test_status_reports_stack_endpoint_table_and_each_devices_last_reading(
    aws: Endpoint, stack_name: str, tmp_path: Path
):
    outputs = deploy(aws, stack_name, poll_seconds=POLL)
    quiet, busy = f"{stack_name}-quiet", f"{stack_name}-busy"
    for device in (quiet, busy):
        provision_device(aws, tmp_path, device, outputs["IotPolicyName"])
    ddb = aws.client("dynamodb")
    base = 1_764_345_600_000
    for seq, ts in enumerate((base + 1000, base + 3000, base + 2000)):
        body = f'{{"v":1,"sensor_id":"{busy}","ts":{ts},"seq":{seq},"temperature":{seq}.5}}'
        ddb.put_item(
            TableName=outputs["TableName"], Item=to_item(f"sensors/{busy}/data", body.encode())
        )

    status = aws_status(aws, stack_name)
    assert status.stack_status == "CREATE_COMPLETE"
    assert status.outputs == outputs
    assert status.iot_endpoint and "-ats.iot." in status.iot_endpoint
    assert status.broker_url == f"mqtts://{status.iot_endpoint}:8883"
    assert status.table == outputs["TableName"]
    assert status.item_count == 3
    assert set(status.last_readings) == {quiet, busy}
    assert status.last_readings[quiet] is None
    newest = status.last_readings[busy]
    assert newest is not None and (newest.time_ms, newest.seq) == (base + 3000, 1)
    assert aws_status(aws, stack_name, exact_count=True).item_count == 3

    absent = aws_status(aws, f"{stack_name}-absent")
    assert absent.stack_status is None and absent.table is None and absent.last_readings == {}


def test_destroy_refuses_while_data_or_devices_remain_and_force_removes_everything(
    aws: Endpoint, stack_name: str, tmp_path: Path
):
    outputs = deploy(aws, stack_name, poll_seconds=POLL)
    resources = stack_resources(aws, stack_name)
    role = resources["TopicRuleRole"][1]
    s3 = aws.client("s3")
    bucket = outputs["ExportsBucket"]
    s3.put_object(Bucket=bucket, Key="sensor_data/part-00000.json", Body=b"{}\n")
    device = provision_device(aws, tmp_path, f"{stack_name}-dev", outputs["IotPolicyName"])

    with pytest.raises(DestroyRefused) as refused:
        destroy(aws, stack_name, poll_seconds=POLL)
    assert any(bucket in b for b in refused.value.blockers)
    assert any("device certificate" in b for b in refused.value.blockers)
    assert stack_status(aws, stack_name) == "CREATE_COMPLETE"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1

    events: list[StackEvent] = []
    result = destroy(aws, stack_name, force=True, on_event=events.append, poll_seconds=POLL)
    assert result.status == "DELETE_COMPLETE"
    assert result.emptied == {bucket: 1}
    assert result.detached == [device.certificate_arn]
    assert stack_status(aws, stack_name) in (None, "DELETE_COMPLETE")
    ddb, iam = aws.client("dynamodb"), aws.client("iam")
    assert error_code(lambda: ddb.describe_table(TableName=outputs["TableName"])) == (
        "ResourceNotFoundException"
    )
    for name in (bucket, outputs["AthenaResultsBucket"]):
        assert error_code(lambda name=name: s3.head_bucket(Bucket=name)) == "404"
    assert error_code(lambda: iam.get_role(RoleName=role)) == "NoSuchEntity"
    # moto deletes an IoT policy by its template name, unresolved (an Fn::If), so it stays;
    # destroy checks the real resources and says so rather than trusting the stack status.
    assert set(result.left_behind) <= {f"AWS::IoT::Policy {outputs['IotPolicyName']}"}

    with pytest.raises(StackNotFound):
        destroy(aws, stack_name, poll_seconds=POLL)


def test_resources_moto_skips_are_valid_api_input(aws: Endpoint, stack_name: str):
    """The topic rule, Glue database and tables and the Athena workgroup, made through
    moto's APIs from the deployed stack's resolved properties (botocore validates each
    request against the service's model first)."""
    outputs = deploy(aws, stack_name, poll_seconds=POLL)
    physical = {lid: pid for lid, (_, pid) in stack_resources(aws, stack_name).items() if pid}
    table = outputs["TableName"]
    role_arn = aws.client("iam").get_role(RoleName=physical["TopicRuleRole"])["Role"]["Arn"]
    r = Resolver(
        stack_name=stack_name,
        physical={**physical, "GlueDatabase": outputs["GlueDatabase"]},
        attributes={
            "SensorDataTable.Arn": aws.client("dynamodb").describe_table(TableName=table)["Table"][
                "TableArn"
            ],
            "TopicRuleRole.Arn": role_arn,
            "ExportsBucket.Arn": f"arn:aws:s3:::{outputs['ExportsBucket']}",
            "AthenaResultsBucket.Arn": f"arn:aws:s3:::{outputs['AthenaResultsBucket']}",
        },
    )

    rule = r.resource("SensorDataTopicRule")
    iot = aws.client("iot")
    iot.create_topic_rule(
        ruleName=rule["RuleName"], topicRulePayload=_api_shape(rule["TopicRulePayload"])
    )
    stored = iot.get_topic_rule(ruleName=outputs["TopicRuleName"])["rule"]
    assert stored["actions"][0]["dynamoDBv2"]["roleArn"] == role_arn
    iot.delete_topic_rule(ruleName=outputs["TopicRuleName"])

    glue = aws.client("glue")
    database = r.resource("GlueDatabase")
    glue.create_database(CatalogId=database["CatalogId"], DatabaseInput=database["DatabaseInput"])
    for logical_id in ("SensorDataGlueTable", "ReadingsGlueTable"):
        props = r.resource(logical_id)
        glue.create_table(
            CatalogId=props["CatalogId"],
            DatabaseName=props["DatabaseName"],
            TableInput=props["TableInput"],
        )
    readings = glue.get_table(DatabaseName=outputs["GlueDatabase"], Name="readings")["Table"]
    assert readings["StorageDescriptor"]["Location"] == f"s3://{outputs['ExportsBucket']}/readings/"
    assert readings["PartitionKeys"][0]["Name"] == "dt"
    assert readings["Parameters"]["projection.enabled"] == "true"
    glue.delete_database(Name=outputs["GlueDatabase"])

    workgroup = r.resource("AthenaWorkGroup")
    athena = aws.client("athena")
    athena.create_work_group(
        Name=workgroup["Name"],
        Description=workgroup["Description"],
        Configuration=workgroup["WorkGroupConfiguration"],
    )
    config = athena.get_work_group(WorkGroup=outputs["WorkGroup"])["WorkGroup"]["Configuration"]
    assert config["ResultConfiguration"]["OutputLocation"] == (
        f"s3://{outputs['AthenaResultsBucket']}/results/"
    )
    assert config["BytesScannedCutoffPerQuery"] == 1073741824
    athena.delete_work_group(WorkGroup=outputs["WorkGroup"], RecursiveDeleteOption=True)


def _api_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k[0].lower() + k[1:]: _api_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_api_shape(v) for v in value]
    return value


class StubbedEndpoint(Endpoint):
    """An endpoint whose clients are botocore-stubbed: for faults moto cannot make."""

    def __init__(self, clients: dict[str, Any]) -> None:
        super().__init__(None, "us-east-1")
        object.__setattr__(self, "_clients", clients)

    def client(self, service: str, **config: Any) -> Any:
        return self._clients[service]  # type: ignore[attr-defined]


def test_a_failed_create_is_reported_with_its_reasons_and_what_to_do():
    """CloudFormation rolls back a create that failed: deploy reports the failed resource's
    reason and says to destroy the stack before deploying again (moto never fails so)."""
    cfn = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stack_id = "arn:aws:cloudformation:us-east-1:123456789012:stack/sp-fail/1"
    now = datetime.datetime.now(datetime.UTC)

    def stack(status: str) -> dict[str, Any]:
        return {
            "Stacks": [
                {
                    "StackName": "sp-fail",
                    "StackId": stack_id,
                    "CreationTime": now,
                    "StackStatus": status,
                }
            ]
        }

    def event(n: int, logical: str, kind: str, status: str, reason: str = "") -> dict[str, Any]:
        return {
            "StackId": stack_id,
            "EventId": f"e{n}",
            "StackName": "sp-fail",
            "LogicalResourceId": logical,
            "ResourceType": kind,
            "Timestamp": now,
            "ResourceStatus": status,
            "ResourceStatusReason": reason,
        }

    started = event(1, "sp-fail", "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS")
    failed = event(
        2,
        "SensorDataTable",
        "AWS::DynamoDB::Table",
        "CREATE_FAILED",
        "sp-fail-SensorData already exists",
    )
    rolled_back = event(3, "sp-fail", "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE")
    with Stubber(cfn) as stub:
        stub.add_client_error(
            "describe_stacks", "ValidationError", "Stack with id sp-fail does not exist"
        )
        stub.add_response("create_stack", {"StackId": stack_id})
        stub.add_response("describe_stacks", stack("CREATE_IN_PROGRESS"))
        stub.add_response("describe_stack_events", {"StackEvents": [started]})
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"))
        stub.add_response("describe_stack_events", {"StackEvents": [rolled_back, failed, started]})
        events: list[StackEvent] = []
        with pytest.raises(DeployError) as info:
            deploy(
                StubbedEndpoint({"cloudformation": cfn}),
                "sp-fail",
                {},
                events.append,
                poll_seconds=0,
            )
        stub.assert_no_pending_responses()
    assert info.value.code == "ROLLBACK_COMPLETE"
    assert "SensorDataTable: sp-fail-SensorData already exists" in str(info.value)
    assert "cloud destroy" in str(info.value)
    assert [e.status for e in events] == [
        "CREATE_IN_PROGRESS",
        "CREATE_FAILED",
        "ROLLBACK_COMPLETE",
    ]


# -- real AWS -------------------------------------------------------------------------------


@pytest.fixture
def real_aws(request: pytest.FixtureRequest) -> Endpoint:
    """AWS itself: only with credentials, and only when asked for (`pytest -m aws`), since
    these tests create billable resources (cents) and take minutes."""
    if "aws" not in (request.config.option.markexpr or "").replace("not aws", ""):
        pytest.skip("real AWS: run with `pytest -m aws` (needs credentials)")
    if os.environ.get("AWS_ENDPOINT_URL"):
        pytest.skip("AWS_ENDPOINT_URL is set: that is not AWS")
    if boto3.session.Session().get_credentials() is None:
        pytest.skip("no AWS credentials (AWS_PROFILE, environment or ~/.aws)")
    return Endpoint()


@pytest.mark.aws
def test_on_aws_a_device_publishes_through_the_rule_into_the_table(
    real_aws: Endpoint, tmp_path: Path
):
    """deploy -> provision -> device-agent (awsiot transport) -> rule -> table -> revoke ->
    destroy, on a real account."""
    stack = f"sp-test-{uuid.uuid4().hex[:8]}"
    device = f"{stack}-dev"
    events: list[StackEvent] = []
    try:
        outputs = deploy(real_aws, stack, {}, events.append, poll_seconds=5)
        assert {e.status for e in events} >= {"CREATE_COMPLETE"}
        result = provision_device(real_aws, tmp_path, device, outputs["IotPolicyName"])
        assert result.certificate_matches_key
        agent = start_agent(
            *("--id", device, "--broker", result.broker_url),
            *("--cert", str(result.identity.cert), "--key", str(result.identity.key)),
            *("--ca", str(result.identity.ca), "--transport", "awsiot"),
            *("--count", "3", "--interval", "0.2", "--outbox", str(tmp_path / "outbox.db")),
        )
        code, _, err = finish(agent, timeout=120)
        assert code == 0, err
        ddb = real_aws.client("dynamodb")
        deadline = time.monotonic() + 60
        while len(rows := list(query_readings(ddb, outputs["TableName"], device))) < 3:
            assert time.monotonic() < deadline, f"the rule wrote {len(rows)} of 3 readings"
            time.sleep(2)
        assert sorted(r.seq for r in rows) == [0, 1, 2]
        status = aws_status(real_aws, stack)
        assert status.last_readings[device] == rows[0]
        # AWS names a certificate by the SHA-256 of its DER (moto, by default, of its PEM).
        assert certificate_id(result.identity.cert.read_bytes()) == result.certificate_id
        kept = revoke_device_aws(real_aws, tmp_path, device, delete=False)
        assert kept.certificate_ids == [result.certificate_id]
        # Detached but kept: found again through certs/<id>/cert.pem, and deleted.
        revoked = revoke_device_aws(real_aws, tmp_path, device)
        assert revoked.certificate_ids == [result.certificate_id]
    finally:
        with contextlib.suppress(ClientError):
            real_aws.client("iot").delete_thing(thingName=device)
        with contextlib.suppress(StackNotFound):
            destroy(real_aws, stack, force=True, poll_seconds=5)


def test_missing_credentials_are_a_config_error_that_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ConfigError, match="AWS_PROFILE"):
        aws_status(Endpoint(), "sensor-pipeline")
