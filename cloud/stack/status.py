"""`cloud status` on AWS: what is deployed and what arrived.

The stack and its Outputs, the account's IoT data endpoint (the devices' broker), the table's
item count and each device's newest reading. Devices are the things whose certificates carry
the stack's IoT policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.errors import DeployError, aws_code, aws_message
from cloud.stack.deploy import (
    DEFAULT_STACK_NAME,
    Clients,
    describe_stack,
    outputs_of,
    policy_targets,
)
from cloud.table import Row, item_count, query_readings
from cloud.target import aws_errors


@dataclass(frozen=True)
class AwsStatus:
    stack_name: str
    stack_status: str | None  # None: not deployed
    outputs: dict[str, str]
    iot_endpoint: str | None  # the account's ATS data endpoint, for devices
    table: str | None
    item_count: int | None
    item_count_exact: bool  # False: DynamoDB's own figure, refreshed about every 6 hours
    last_readings: dict[str, Row | None]  # thing name -> its newest reading

    @property
    def broker_url(self) -> str | None:
        return f"mqtts://{self.iot_endpoint}:8883" if self.iot_endpoint else None


@aws_errors("reading the IoT data endpoint", DeployError)
def iot_data_endpoint(endpoint: Endpoint) -> str:
    """The account's `iot:Data-ATS` host, which devices connect to on port 8883."""
    return ats_host(endpoint.client("iot"))


def ats_host(iot: Any) -> str:
    """`iot_data_endpoint` with an IoT client at hand."""
    try:
        reply = iot.describe_endpoint(endpointType="iot:Data-ATS")
    except ClientError as exc:
        raise DeployError(
            f"cannot read the IoT data endpoint: {aws_message(exc)}", aws_code(exc)
        ) from None
    return str(reply["endpointAddress"])


@aws_errors("listing the devices", DeployError)
def device_things(endpoint: Endpoint, policy_name: str) -> list[str]:
    """The things whose certificates carry the stack's IoT policy: its devices."""
    return _device_things(endpoint.client("iot"), policy_name)


def _device_things(iot: Any, policy_name: str) -> list[str]:
    things: set[str] = set()
    for target in policy_targets(iot, policy_name):
        for page in iot.get_paginator("list_principal_things").paginate(principal=target):
            things.update(page.get("things", []))
    return sorted(things)


@aws_errors("status", DeployError)
def aws_status(
    endpoint: Endpoint,
    stack_name: str = DEFAULT_STACK_NAME,
    table: str | None = None,
    *,
    exact_count: bool = False,
) -> AwsStatus:
    """What is deployed and what arrived. `table` defaults to the stack's TableName output.

    The item count is DynamoDB's own (free, up to ~6 hours old) unless `exact_count`, which
    scans the whole table: read units for every item, so not for a large table.
    """
    client = Clients(endpoint)
    stack = describe_stack(client("cloudformation"), stack_name)
    outputs = outputs_of(stack) if stack else {}
    table = table or outputs.get("TableName")
    iot_host = ats_host(client("iot"))
    count: int | None = None
    readings: dict[str, Row | None] = {}
    ddb = client("dynamodb")
    if table:
        try:
            if exact_count:
                count = item_count(ddb, table)
            else:
                count = int(ddb.describe_table(TableName=table)["Table"].get("ItemCount", 0))
        except ClientError as exc:
            if aws_code(exc) != "ResourceNotFoundException":
                raise DeployError(
                    f"cannot read table {table}: {aws_message(exc)}", aws_code(exc)
                ) from None
            table = None
    policy = outputs.get("IotPolicyName")
    if policy:
        for thing in _device_things(client("iot"), policy):
            newest = next(iter(query_readings(ddb, table, thing, limit=1)), None) if table else None
            readings[thing] = newest
    return AwsStatus(
        stack_name=stack_name,
        stack_status=str(stack["StackStatus"]) if stack else None,
        outputs=outputs,
        iot_endpoint=iot_host,
        table=table,
        item_count=count,
        item_count_exact=exact_count,
        last_readings=readings,
    )
