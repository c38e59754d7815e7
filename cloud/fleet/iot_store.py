"""The fleet's retained messages on AWS IoT Core, through its data plane's HTTPS API
(boto3 `iot-data`), with the user's own AWS credentials.

Needs, beside what the other commands need: iot:DescribeEndpoint, iot:ListRetainedMessages,
iot:GetRetainedMessage, and iot:Publish with iot:RetainPublish on
`topic/sensors/*/config/desired` (README, Managing the fleet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.errors import FleetError, aws_code, aws_message
from cloud.fleet.store import Retained, matches
from cloud.stack.status import iot_data_endpoint


def data_endpoint(endpoint: Endpoint) -> Endpoint:
    """Where iot-data calls go: the account's own ATS host on AWS (botocore's default host
    is not the account's), or the endpoint given (a moto server) as it is."""
    if endpoint.url is not None:
        return endpoint
    return Endpoint(f"https://{iot_data_endpoint(endpoint)}", endpoint.region)


class IotDataStore:
    def __init__(self, endpoint: Endpoint) -> None:
        self._client: Any = data_endpoint(endpoint).client("iot-data")

    def read(self, filters: Sequence[str]) -> dict[str, Retained]:
        try:
            return self._read(filters)
        except ClientError as exc:
            raise _refused("reading the retained messages", exc) from None

    def _read(self, filters: Sequence[str]) -> dict[str, Retained]:
        wanted = [f for f in filters if "+" not in f and "#" not in f]
        topics = set(wanted)
        if len(wanted) < len(filters):
            for page in self._client.get_paginator("list_retained_messages").paginate():
                for item in page.get("retainedTopics", []):
                    if any(matches(f, item["topic"]) for f in filters):
                        topics.add(item["topic"])
        found: dict[str, Retained] = {}
        for topic in sorted(topics):
            try:
                reply = self._client.get_retained_message(topic=topic)
            except ClientError as exc:
                if aws_code(exc) == "ResourceNotFoundException":
                    continue  # none on that topic (or cleared since it was listed)
                raise
            payload = reply.get("payload") or b""
            if payload:
                found[topic] = Retained(payload, reply.get("lastModifiedTime"))
        return found

    def publish(self, topic: str, payload: bytes) -> None:
        try:
            self._client.publish(topic=topic, qos=1, retain=True, payload=payload)
        except ClientError as exc:
            raise _refused(f"publishing {topic}", exc) from None

    def close(self) -> None:
        self._client.close()


def _refused(what: str, exc: ClientError) -> FleetError:
    # One line: a server's error page (moto's, a proxy's) would otherwise be its HTML.
    message = (aws_message(exc).strip().splitlines() or [""])[0]
    code = aws_code(exc)
    return FleetError(f"AWS IoT refused {what}: {code}: {message}", code)
