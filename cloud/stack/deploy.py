"""`cloud deploy | destroy` on AWS: the template of `cloud.stack.template` as one stack.

deploy creates the stack or updates it (parameters not given keep their current values, as
`aws cloudformation deploy` does), reports each stack event while it waits, and returns the
stack's Outputs. destroy refuses while the stack holds data (objects in its buckets, items
in its table) or devices still use its IoT policy, unless forced; forced, it empties the
buckets and detaches the policy, deletes the stack, then checks that each resource is gone
(the stack's status alone is not proof: moto, for one, reports success for resources it
skipped). What runs (`cloud status`) is reported by `cloud.stack.status`.

Both operations live here, past the usual length, because they share the stack plumbing
(describing it, its event feed, the wait for it to settle, AWS's errors as the project's).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from cloud.aws import Endpoint
from cloud.errors import (
    ConfigError,
    DeployError,
    DestroyRefused,
    StackNotFound,
    aws_code,
    aws_message,
)
from cloud.stack import template
from cloud.target import aws_errors

log = logging.getLogger(__name__)

DEFAULT_STACK_NAME = "sensor-pipeline"
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
#: On every resource that takes tags: lets the bill be split by project (cost allocation tag).
STACK_TAGS = [{"Key": "project", "Value": "sensor-pipeline"}]
POLL_SECONDS = 5.0
TIMEOUT_SECONDS = 30 * 60
SUCCESS = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
#: Stacks in these states cannot be updated; the message says what to do instead.
STUCK = {
    "ROLLBACK_COMPLETE": "its first creation failed and was rolled back",
    "ROLLBACK_FAILED": "its first creation failed and could not be rolled back",
    "DELETE_FAILED": "an earlier destroy failed half-way",
    "REVIEW_IN_PROGRESS": "it holds only an unexecuted change set",
}


@dataclass(frozen=True)
class StackEvent:
    time: dt.datetime
    logical_id: str
    resource_type: str
    status: str
    reason: str = ""
    physical_id: str = ""

    @classmethod
    def from_api(cls, event: Mapping[str, Any]) -> StackEvent:
        return cls(
            time=event["Timestamp"],
            logical_id=event.get("LogicalResourceId", ""),
            resource_type=event.get("ResourceType", ""),
            status=event.get("ResourceStatus", ""),
            reason=event.get("ResourceStatusReason", ""),
            physical_id=event.get("PhysicalResourceId", ""),
        )

    @property
    def failed(self) -> bool:
        return self.status.endswith("_FAILED")

    def line(self) -> str:
        text = f"{self.time:%H:%M:%S} {self.status:<20} {self.resource_type} {self.logical_id}"
        return f"{text}: {self.reason}" if self.reason else text


EventHandler = Callable[[StackEvent], None]


class Clients:
    """One boto3 client per service for the length of one operation: making a client
    loads its service model (~0.2 s here), and an operation may need it many times."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._made: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._made:
            self._made[service] = self.endpoint.client(service)
        return self._made[service]


def describe_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack (by name or id), or None if there is none."""
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if aws_code(exc) == "ValidationError" and "does not exist" in aws_message(exc):
            return None
        raise DeployError(
            f"cannot describe stack {stack}: {aws_message(exc)}", aws_code(exc)
        ) from None
    return dict(stacks[0]) if stacks else None


def outputs_of(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}


@aws_errors("reading the stack's outputs", DeployError)
def stack_outputs(endpoint: Endpoint, stack_name: str = DEFAULT_STACK_NAME) -> dict[str, str]:
    """The deployed stack's Outputs (TableName, ExportsBucket, IotPolicyName, ...)."""
    stack = describe_stack(endpoint.client("cloudformation"), stack_name)
    if stack is None:
        raise StackNotFound(f"no stack {stack_name}: deploy it with `cloud deploy`")
    return outputs_of(stack)


@aws_errors("listing the stack's resources", DeployError)
def stack_resources(endpoint: Endpoint, stack_name: str) -> dict[str, tuple[str, str]]:
    """Logical id -> (resource type, physical id) of the stack's resources."""
    return _resources(endpoint.client("cloudformation"), stack_name)


def _resources(cfn: Any, stack_name: str) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    try:
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name):
            for r in page["StackResourceSummaries"]:
                # moto lists the resource types it skipped without a logical id.
                if r.get("LogicalResourceId"):
                    found[r["LogicalResourceId"]] = (
                        r["ResourceType"],
                        r.get("PhysicalResourceId", ""),
                    )
    except ClientError as exc:
        raise DeployError(
            f"cannot list resources of {stack_name}: {aws_message(exc)}", aws_code(exc)
        ) from None
    return found


def _parameters(
    params: Mapping[str, str | int], current: Mapping[str, str] | None
) -> list[dict[str, str]]:
    """The Parameters argument: the overrides, plus every current value that differs from
    the template's default (what UsePreviousValue means, which moto does not implement for
    parameters created from their defaults)."""
    unknown = sorted(set(params) - set(template.PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown stack parameter(s) {', '.join(unknown)}; the template takes "
            + ", ".join(template.PARAMETERS)
        )
    values = {k: str(v) for k, v in params.items()}
    for key, value in (current or {}).items():
        default = str(template.PARAMETERS.get(key, {}).get("Default", ""))
        if key in template.PARAMETERS and key not in values and value != default:
            values[key] = value
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


class _EventFeed:
    """The stack's new events, oldest first, each reported once. CloudFormation lists them
    newest first and keeps the whole history, so only the pages since the last call are
    read."""

    def __init__(self, cfn: Any, stack_id: str) -> None:
        self.cfn = cfn
        self.stack_id = stack_id
        self.seen: set[str] = set()
        self.after: dt.datetime | None = None

    def skip_history(self) -> None:
        """The events so far belong to earlier operations, not to the one about to start."""
        events = self.cfn.describe_stack_events(StackName=self.stack_id)["StackEvents"]
        if events:
            self.after = events[0]["Timestamp"]
            self.seen.update(e["EventId"] for e in events)

    def new(self) -> list[StackEvent]:
        fresh: list[dict[str, Any]] = []
        pages = self.cfn.get_paginator("describe_stack_events").paginate(StackName=self.stack_id)
        for page in pages:
            old = [e for e in page["StackEvents"] if self._old(e)]
            fresh += [e for e in page["StackEvents"] if not self._old(e)]
            if old:
                break
        self.seen.update(e["EventId"] for e in fresh)
        return [StackEvent.from_api(e) for e in reversed(fresh)]

    def _old(self, event: Mapping[str, Any]) -> bool:
        return event["EventId"] in self.seen or (
            self.after is not None and event["Timestamp"] <= self.after
        )


def _wait(
    cfn: Any,
    stack_id: str,
    feed: _EventFeed,
    on_event: EventHandler | None,
    poll_seconds: float,
    timeout: float,
) -> tuple[str, list[StackEvent]]:
    """Poll until the stack leaves *_IN_PROGRESS; report events; return the final status."""
    deadline = time.monotonic() + timeout
    failures: list[StackEvent] = []
    while True:
        stack = describe_stack(cfn, stack_id)
        if stack is None:  # AWS keeps deleted stacks describable by id; moto drops them
            return "DELETE_COMPLETE", failures
        try:
            events = feed.new()
        except ClientError as exc:
            log.info("no events for %s: %s", stack_id, aws_message(exc))
            events = []
        for event in events:
            if event.failed:
                failures.append(event)
            if on_event is not None:
                on_event(event)
        status = str(stack["StackStatus"])
        if not status.endswith("_IN_PROGRESS"):
            return status, failures
        if time.monotonic() > deadline:
            raise DeployError(
                f"stack {stack_id} still {status} after {timeout:.0f}s; "
                "watch it in the CloudFormation console"
            )
        time.sleep(poll_seconds)


def _failure_text(failures: list[StackEvent]) -> str:
    reasons = [f"{e.logical_id}: {e.reason}" for e in failures if e.reason]
    return "; ".join(reasons[:5]) or "no reason given"


@aws_errors("deploy", DeployError)
def deploy(
    endpoint: Endpoint,
    stack_name: str = DEFAULT_STACK_NAME,
    params: Mapping[str, str | int] | None = None,
    on_event: EventHandler | None = None,
    *,
    poll_seconds: float = POLL_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, str]:
    """Create or update the stack and wait for it; return its Outputs.

    `params` override template parameters (names as in `cloud.stack.template.PARAMETERS`); on an
    update, parameters not given keep their current values. An update with no changes is
    not an error.
    """
    cfn = endpoint.client("cloudformation")
    body = template.render()
    existing = describe_stack(cfn, stack_name)
    common: dict[str, Any] = {
        "StackName": stack_name,
        "TemplateBody": body,
        "Capabilities": CAPABILITIES,
        "Tags": STACK_TAGS,
    }
    try:
        if existing is None:
            common["Parameters"] = _parameters(params or {}, None)
            stack_id = cfn.create_stack(**common)["StackId"]
            feed = _EventFeed(cfn, stack_id)
        else:
            status = str(existing["StackStatus"])
            stack_id = str(existing["StackId"])
            if status in STUCK:
                raise DeployError(
                    f"stack {stack_name} is {status} ({STUCK[status]}); run `cloud destroy` "
                    "and deploy again"
                )
            if status.endswith("_IN_PROGRESS"):
                raise DeployError(f"stack {stack_name} is busy ({status}); try again later")
            feed = _EventFeed(cfn, stack_id)
            feed.skip_history()
            current = {
                p["ParameterKey"]: p.get("ParameterValue", "")
                for p in existing.get("Parameters") or []
            }
            common["Parameters"] = _parameters(params or {}, current)
            cfn.update_stack(**common)
    except ClientError as exc:
        if aws_code(exc) == "ValidationError" and "No updates are to be performed" in aws_message(
            exc
        ):
            log.info("stack %s is up to date", stack_name)
            return outputs_of(existing or {})
        raise DeployError(
            f"cannot deploy stack {stack_name}: {aws_message(exc)}", aws_code(exc)
        ) from None
    status, failures = _wait(cfn, stack_id, feed, on_event, poll_seconds, timeout)
    if status not in SUCCESS:
        hint = "; run `cloud destroy`, fix that and deploy again" if status in STUCK else ""
        raise DeployError(
            f"stack {stack_name} ended {status}: {_failure_text(failures)}{hint}", status
        )
    return outputs_of(describe_stack(cfn, stack_id) or {})


# -- destroy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestroyResult:
    stack_name: str
    status: str  # DELETE_COMPLETE
    emptied: dict[str, int] = field(default_factory=dict)  # bucket -> objects deleted
    detached: list[str] = field(default_factory=list)  # certificate ARNs
    left_behind: list[str] = field(default_factory=list)  # "Type name" still existing


def _object_versions(s3: Any, bucket: str, limit: int | None = None) -> Iterator[dict[str, str]]:
    """Every object version and delete marker (a bucket with either cannot be deleted)."""
    count = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            yield {"Key": item["Key"], "VersionId": item.get("VersionId") or "null"}
            count += 1
            if limit is not None and count >= limit:
                return


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if aws_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def _empty_bucket(s3: Any, bucket: str) -> int:
    deleted = 0
    batch: list[dict[str, str]] = []
    for obj in _object_versions(s3, bucket):
        batch.append(obj)
        if len(batch) == 1000:  # DeleteObjects takes at most 1000 keys
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            deleted += len(batch)
            batch = []
    if batch:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        deleted += len(batch)
    return deleted


def policy_targets(iot: Any, policy: str) -> list[str]:
    targets: list[str] = []
    try:
        for page in iot.get_paginator("list_targets_for_policy").paginate(policyName=policy):
            targets.extend(page.get("targets", []))
    except ClientError as exc:
        if aws_code(exc) == "ResourceNotFoundException":
            return []
        raise
    return targets


def _table_has_items(ddb: Any, table: str) -> bool:
    try:
        return bool(ddb.scan(TableName=table, Limit=1, Select="COUNT")["Count"])
    except ClientError as exc:
        if aws_code(exc) == "ResourceNotFoundException":
            return False
        raise


def _still_there(client: Clients, kind: str, name: str) -> bool:
    """Does the resource a stack deletion should have removed still exist?"""
    missing = {"ResourceNotFoundException", "NoSuchEntity", "404", "NoSuchBucket", "NotFound"}
    try:
        if kind == "AWS::DynamoDB::Table":
            client("dynamodb").describe_table(TableName=name)
        elif kind == "AWS::S3::Bucket":
            return _bucket_exists(client("s3"), name)
        elif kind == "AWS::IoT::Policy":
            client("iot").get_policy(policyName=name)
        elif kind == "AWS::IAM::Role":
            client("iam").get_role(RoleName=name)
        else:
            return False
    except ClientError as exc:
        if aws_code(exc) in missing:
            return False
        raise
    return True


@aws_errors("destroy", DeployError)
def destroy(
    endpoint: Endpoint,
    stack_name: str = DEFAULT_STACK_NAME,
    force: bool = False,
    on_event: EventHandler | None = None,
    *,
    poll_seconds: float = POLL_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
) -> DestroyResult:
    """Delete the stack. Without `force`, refuse while its buckets hold objects, its table
    holds items, or device certificates use its IoT policy (AWS cannot delete an attached
    policy); with `force`, empty, detach, then delete. Raises StackNotFound if absent."""
    client = Clients(endpoint)
    cfn = client("cloudformation")
    stack = describe_stack(cfn, stack_name)
    if stack is None:
        raise StackNotFound(f"no stack {stack_name}; nothing to destroy")
    stack_id = str(stack["StackId"])
    if str(stack["StackStatus"]).endswith("_IN_PROGRESS"):
        raise DeployError(f"stack {stack_name} is busy ({stack['StackStatus']}); try again later")
    outputs = outputs_of(stack)
    resources = _resources(cfn, stack_id)
    buckets = [pid for kind, pid in resources.values() if kind == "AWS::S3::Bucket" and pid]
    tables = [pid for kind, pid in resources.values() if kind == "AWS::DynamoDB::Table" and pid]
    policy = outputs.get("IotPolicyName")
    s3, iot = client("s3"), client("iot")

    nonempty = [b for b in buckets if _bucket_exists(s3, b) and any(_object_versions(s3, b, 1))]
    filled = [t for t in tables if _table_has_items(client("dynamodb"), t)]
    targets = policy_targets(iot, policy) if policy else []
    if not force:
        blockers = [f"bucket {b} holds objects" for b in nonempty]
        blockers += [f"table {t} holds readings" for t in filled]
        if targets:
            blockers.append(
                f"{len(targets)} device certificate(s) use IoT policy {policy} "
                "(`cloud revoke --id ID` each device)"
            )
        if blockers:
            raise DestroyRefused(
                f"stack {stack_name} not destroyed: {'; '.join(blockers)}. "
                "Pass --force to delete all of it.",
                blockers,
            )
    detached: list[str] = []
    for target in targets:
        iot.detach_policy(policyName=policy, target=target)
        detached.append(target)
    feed = _EventFeed(cfn, stack_id)
    feed.skip_history()
    emptied: dict[str, int] = {}
    status, failures = "", list[StackEvent]()
    refused: Exception | None = None
    # An IoT error action may still add an object between emptying and deletion; then the
    # bucket's deletion fails and one more round (forced) finishes the job.
    for _attempt in range(2 if force else 1):
        for bucket in buckets if force else []:
            if _bucket_exists(s3, bucket) and (n := _empty_bucket(s3, bucket)):
                emptied[bucket] = emptied.get(bucket, 0) + n
        try:
            cfn.delete_stack(StackName=stack_id)
            refused = None
        except (ClientError, BotoCoreError, ResponseParserError) as exc:
            # The answer can be lost while the deletion goes ahead (moto answers a failure
            # to delete a resource with an unparsable error, yet drops the stack): the
            # stack's state decides, below.
            log.info("DeleteStack of %s answered with an error: %s", stack_name, exc)
            refused = exc
        status, failures = _wait(cfn, stack_id, feed, on_event, poll_seconds, timeout)
        if status == "DELETE_COMPLETE":
            break
    if status != "DELETE_COMPLETE":
        why = str(refused) if refused is not None and not failures else _failure_text(failures)
        raise DeployError(
            f"stack {stack_name} is {status}: {why}; fix that and run `cloud destroy` again",
            status,
        )
    # The policy by its name: moto lists it without a physical id.
    to_check = {(kind, pid) for kind, pid in resources.values() if pid}
    if policy:
        to_check.add(("AWS::IoT::Policy", policy))
    left = sorted(f"{kind} {pid}" for kind, pid in to_check if _still_there(client, kind, pid))
    return DestroyResult(stack_name, status, emptied, detached, left)
