"""The AWS side as one CloudFormation template, built from the project's own definitions.

`build()` returns the template as a dict: the SensorData table, the devices' IoT policy, the
topic rule (its SQL from `cloud.ingest.rule.rule_sql()`) and the rule that keeps what it refuses
(`cloud.ingest.rule.rejected_rule_sql()`), the rules' role, the exports and Athena
results buckets, the Glue catalog tables over the export layout (`cloud.export.layout`), an
Athena workgroup and the SNS topic `cloud alerts watch` publishes to. `render()` turns it
into YAML; the committed file `cloud/cloudformation/sensor-pipeline.yaml` is exactly that
text, so the file works with plain `aws cloudformation deploy --template-file ...
--capabilities CAPABILITY_NAMED_IAM`, and a test fails when it is stale (`python -m
cloud.stack.template` rewrites it). The YAML writer is `cloud.stack.yaml_text`;
`cloud.stack.resolver` evaluates the template's functions.

The module stays longer than most: `build()` is the whole template as one literal, and its
resources refer to one another by logical id, so they read best side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud.export import layout
from cloud.ingest.rule import TOPIC_FILTER, rejected_rule_sql, rule_sql
from cloud.query import schema
from cloud.stack import yaml_text
from cloud.table import ATTRIBUTES, KEY_SCHEMA
from device.payload import (
    config_desired_topic,
    config_reported_topic,
    data_topic,
    health_topic,
    status_topic,
)

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "cloudformation" / "sensor-pipeline.yaml"
DESCRIPTION = (
    "sensor-pipeline: SensorData table, AWS IoT policy and topic rules, exports and Athena "
    "results buckets, Glue catalog, Athena workgroup and alerts topic"
)
SQL_VERSION = "2016-03-23"
#: Where the topic rule's error action keeps messages it could not write (exports bucket),
#: and the rejected-readings rule the messages it refused. Outside the data prefixes of
#: `cloud.export.layout`, so no Athena table ever reads them.
RULE_ERRORS_PREFIX = "_rule-errors/"
#: The rejected-readings rule is named after the topic rule, with this suffix.
REJECTED_RULE_SUFFIX = "_rejected"
ATHENA_RESULTS_PREFIX = "results/"
#: The IoT policy variable naming the connected thing (`${!...}` is Fn::Sub's literal form).
THING_VARIABLE = "${!iot:Connection.Thing.ThingName}"
_PLACEHOLDER = "thing-name-placeholder"

#: Findings of checkov (`make lint`) this stack accepts, with the reason, by resource. They go
#: into each resource's Metadata, where the scanner reads them, so a new finding fails lint.
SCANNER_SKIPS: dict[str, dict[str, str]] = {
    "SensorDataTable": {
        "CKV_AWS_119": (
            "Encrypted at rest with DynamoDB's AWS owned key. A customer managed KMS key "
            "adds a monthly key fee and KMS requests for key control a small deployment "
            "does not need; point-in-time recovery keeps the data recoverable."
        ),
    },
    "ExportsBucket": {
        "CKV_AWS_18": (
            "Access logs need a further bucket and are billed per request; devices never "
            "reach this bucket. For an audit, turn on CloudTrail S3 data events."
        ),
        "CKV_AWS_21": (
            "Exports are made again from the SensorData table (point-in-time recovery on) "
            "and re-runs rewrite their files: versions would keep every rewrite, at cost."
        ),
    },
    "AthenaResultsBucket": {
        "CKV_AWS_18": (
            "Query results are disposable and expire after AthenaResultsRetentionDays: "
            "access logs would cost more than what they watch."
        ),
        "CKV_AWS_21": (
            "Query results are disposable copies that expire after "
            "AthenaResultsRetentionDays: versions would only keep them longer."
        ),
    },
}

#: Template parameter defaults ("" means: derive the name from the stack's name).
PARAMETERS: dict[str, dict[str, Any]] = {
    "TableName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-zA-Z0-9_.-]{3,255}$",
        "Description": "DynamoDB table name [<stack name>-SensorData]",
    },
    "ExportsBucketName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        "Description": "S3 bucket for exports and rule errors [generated from the stack name]",
    },
    "AthenaResultsBucketName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        "Description": "S3 bucket for Athena query results [generated from the stack name]",
    },
    "IotPolicyName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-zA-Z0-9+=,.@_-]{1,128}$",
        "Description": "IoT policy attached to device certificates [<stack name>-device]",
    },
    "TopicRuleName": {
        "Type": "String",
        "Default": "",
        # 128 characters at most in all, with REJECTED_RULE_SUFFIX for the second rule.
        "AllowedPattern": "^$|^[a-zA-Z0-9_]{1,119}$",
        "Description": (
            "IoT topic rule name [<stack name>_sensor_data, '-' as '_']; the rule keeping "
            "refused readings is named <this>_rejected"
        ),
    },
    "GlueDatabaseName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-z0-9_]{1,255}$",
        "Description": "Glue database for Athena [<stack name>_sensors, lower case, '-' as '_']",
    },
    "WorkGroupName": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-zA-Z0-9._-]{1,128}$",
        "Description": "Athena workgroup [<stack name>]",
    },
    "TtlAttribute": {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^[a-zA-Z0-9_.-]{1,255}$",
        "Description": (
            "Item attribute holding an expiry time in epoch seconds; empty turns TTL off "
            "(the rule writes no such attribute yet)"
        ),
    },
    "AthenaResultsRetentionDays": {
        "Type": "Number",
        "Default": 7,
        "MinValue": 1,
        "Description": "Days Athena query results are kept",
    },
    "BytesScannedCutoffPerQuery": {
        "Type": "Number",
        "Default": 1073741824,
        "MinValue": 10000000,
        "Description": "Athena cancels a query of this workgroup that scans more bytes",
    },
}
_NAME_PARAMETERS = (
    "TableName",
    "ExportsBucketName",
    "AthenaResultsBucketName",
    "IotPolicyName",
    "TopicRuleName",
    "GlueDatabaseName",
    "WorkGroupName",
    "TtlAttribute",
)

#: What `cloud deploy` reads back; each is also the Output's key.
OUTPUTS = (
    "TableName",
    "ExportsBucket",
    "AthenaResultsBucket",
    "WorkGroup",
    "GlueDatabase",
    "IotPolicyName",
    "TopicRuleName",
    "RuleErrorsLocation",
    "AlertsTopicArn",
)
#: SNS's AWS managed key: the alerts topic is encrypted at rest at no key fee. A publisher of
#: this account (`cloud alerts watch`) needs only sns:Publish, as that key's policy lets the
#: account use it through SNS; AWS services (CloudWatch alarms, EventBridge) cannot publish
#: under it, and would need a customer managed key.
ALERTS_TOPIC_KEY = "alias/aws/sns"


def _ref(name: str) -> dict[str, Any]:
    return {"Ref": name}


def _sub(text: str) -> dict[str, Any]:
    return {"Fn::Sub": text}


def _arn(resource: str, attribute: str = "Arn") -> dict[str, Any]:
    return {"Fn::GetAtt": [resource, attribute]}


def _given(parameter: str) -> str:
    return f"Has{parameter}"


def _name(parameter: str, default: Any) -> dict[str, Any]:
    """The parameter's value if given, else `default` (an expression of the stack name)."""
    return {"Fn::If": [_given(parameter), _ref(parameter), default]}


def _underscored(text: str) -> dict[str, Any]:
    """`text` (an Fn::Sub string) with '-' as '_': rule and Glue names allow no '-'."""
    return {"Fn::Join": ["_", {"Fn::Split": ["-", _sub(text)]}]}


def _rule_arn(name: Any) -> dict[str, Any]:
    return {
        "Fn::Sub": [
            "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:rule/${RuleName}",
            {"RuleName": name},
        ]
    }


def _topic_arn(topic: str) -> dict[str, Any]:
    return _sub(f"arn:${{AWS::Partition}}:iot:${{AWS::Region}}:${{AWS::AccountId}}:topic/{topic}")


def _device_topic(make: Any) -> str:
    """A device's topic from `device.payload` with the thing-name policy variable as its id."""
    topic: str = make(_PLACEHOLDER)
    return topic.replace(_PLACEHOLDER, THING_VARIABLE)


def _private_bucket(lifecycle: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        },
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "LifecycleConfiguration": {
            "Rules": [
                {
                    "Id": "abort-incomplete-uploads",
                    "Status": "Enabled",
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                },
                *lifecycle,
            ]
        },
    }


def _tls_only_policy(bucket: str) -> dict[str, Any]:
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": _ref(bucket),
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyPlainHttp",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [_arn(bucket), _sub(f"${{{bucket}.Arn}}/*")],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            },
        },
    }


def _topic_filter_arn(topic_filter: str) -> dict[str, Any]:
    return _sub(
        "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:topicfilter/" + topic_filter
    )


def device_policy_document() -> dict[str, Any]:
    """A thing may connect only as its own name, publish only its own readings, status,
    reported config and health, and subscribe to and receive only its own desired config."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAsOwnThingName",
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": _sub(
                    "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:client/"
                    + THING_VARIABLE
                ),
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Sid": "PublishOwnReadingsStatusConfigAndHealth",
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [
                    _topic_arn(_device_topic(data_topic)),
                    _topic_arn(_device_topic(status_topic)),
                    _topic_arn(_device_topic(config_reported_topic)),
                    _topic_arn(_device_topic(health_topic)),
                ],
            },
            {
                # The retained online/offline status (the retained last will too), reported
                # config and health: IoT Core asks for RetainPublish beside Publish.
                "Sid": "RetainOwnStatusConfigAndHealth",
                "Effect": "Allow",
                "Action": "iot:RetainPublish",
                "Resource": [
                    _topic_arn(_device_topic(status_topic)),
                    _topic_arn(_device_topic(config_reported_topic)),
                    _topic_arn(_device_topic(health_topic)),
                ],
            },
            {
                # Its own desired config (retained, so it arrives on subscribing), no other.
                "Sid": "SubscribeOwnDesiredConfig",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": _topic_filter_arn(_device_topic(config_desired_topic)),
            },
            {
                "Sid": "ReceiveOwnDesiredConfig",
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": _topic_arn(_device_topic(config_desired_topic)),
            },
        ],
    }


def _glue_table(name: str, input_: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "AWS::Glue::Table",
        "Properties": {
            "CatalogId": _ref("AWS::AccountId"),
            "DatabaseName": _ref("GlueDatabase"),
            "TableInput": {"Name": name, **input_},
        },
    }


def _sensor_data_table() -> dict[str, Any]:
    prefix = layout.data_prefix("datapipeline")
    return _glue_table(
        prefix,
        {
            "Description": "The tutorial's table: Data Pipeline JSON lines, struct columns",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "json", "EXTERNAL": "TRUE"},
            "StorageDescriptor": {
                "Columns": [
                    {"Name": f.column, "Type": f.athena_type} for f in schema.SENSOR_DATA_FIELDS
                ],
                "Location": _sub(f"s3://${{ExportsBucket}}/{prefix}/"),
                "InputFormat": "org.apache.hadoop.mapred.TextInputFormat",
                "OutputFormat": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                "SerdeInfo": {
                    "SerializationLibrary": schema.JSON_SERDE,
                    "Parameters": {"paths": ",".join(f.key for f in schema.SENSOR_DATA_FIELDS)},
                },
            },
        },
    )


def _readings_table() -> dict[str, Any]:
    prefix = layout.data_prefix("parquet")
    key = layout.PARTITION_KEY
    location = f"s3://${{ExportsBucket}}/{prefix}/"
    return _glue_table(
        prefix,
        {
            "Description": "Flat typed readings: Parquet, partitioned by UTC day (projected)",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {
                "classification": "parquet",
                "EXTERNAL": "TRUE",
                **dict(schema.READINGS_PROJECTION),
                "storage.location.template": _sub(f"{location}{key}=${{!{key}}}/"),
            },
            "PartitionKeys": [{"Name": key, "Type": "string", "Comment": "UTC day, YYYY-MM-DD"}],
            "StorageDescriptor": {
                "Columns": [
                    {"Name": c.name, "Type": c.athena_type, "Comment": c.doc}
                    for c in layout.PARQUET_COLUMNS
                ],
                "Location": _sub(location),
                "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                "SerdeInfo": {"SerializationLibrary": schema.PARQUET_SERDE},
            },
        },
    )


def build() -> dict[str, Any]:
    """The whole template, as CloudFormation reads it."""
    # Each name is one expression, used by its resource and by its Output alike (an Output
    # of `Ref` would do on AWS, but moto returns no usable Ref for several of these types).
    rule_name = _name("TopicRuleName", _underscored("${AWS::StackName}-sensor-data"))
    rejected_rule_name = {"Fn::Join": ["", [rule_name, REJECTED_RULE_SUFFIX]]}
    policy_name = _name("IotPolicyName", _sub("${AWS::StackName}-device"))
    database_name = _name("GlueDatabaseName", _underscored("${AWS::StackName}-sensors"))
    workgroup_name = _name("WorkGroupName", _sub("${AWS::StackName}"))
    resources: dict[str, Any] = {
        "SensorDataTable": {
            "Type": "AWS::DynamoDB::Table",
            # `cloud destroy` deletes the table (it refuses while it holds items, unless
            # forced); an update that would replace it keeps the old one instead.
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": _name("TableName", _sub("${AWS::StackName}-SensorData")),
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": ATTRIBUTES,
                "KeySchema": KEY_SCHEMA,
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "TimeToLiveSpecification": {
                    "Fn::If": [
                        _given("TtlAttribute"),
                        {"AttributeName": _ref("TtlAttribute"), "Enabled": True},
                        _ref("AWS::NoValue"),
                    ]
                },
            },
        },
        "DevicePolicy": {
            "Type": "AWS::IoT::Policy",
            "Properties": {
                "PolicyName": policy_name,
                "PolicyDocument": device_policy_document(),
            },
        },
        "TopicRuleRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": (
                    "Lets the sensor-data topic rules write readings and keep failures "
                    "and refused messages"
                ),
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "iot.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            # Only our own rules may use this role (confused deputy).
                            "Condition": {
                                "StringEquals": {"aws:SourceAccount": _ref("AWS::AccountId")},
                                "ArnLike": {
                                    "aws:SourceArn": [
                                        _rule_arn(rule_name),
                                        _rule_arn(rejected_rule_name),
                                    ]
                                },
                            },
                        }
                    ],
                },
                "Policies": [
                    {
                        "PolicyName": "write-readings",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Sid": "PutReadings",
                                    "Effect": "Allow",
                                    "Action": "dynamodb:PutItem",
                                    "Resource": _arn("SensorDataTable"),
                                },
                                {
                                    # The error action's and the rejected-readings rule's
                                    # only right: add objects under their prefix of the
                                    # exports bucket.
                                    "Sid": "KeepFailedMessages",
                                    "Effect": "Allow",
                                    "Action": "s3:PutObject",
                                    "Resource": _sub(
                                        f"${{ExportsBucket.Arn}}/{RULE_ERRORS_PREFIX}*"
                                    ),
                                },
                            ],
                        },
                    }
                ],
            },
        },
        "SensorDataTopicRule": {
            "Type": "AWS::IoT::TopicRule",
            "Properties": {
                "RuleName": rule_name,
                "TopicRulePayload": {
                    "Description": f"Readings on {TOPIC_FILTER} into the SensorData table",
                    "Sql": rule_sql(),
                    "AwsIotSqlVersion": SQL_VERSION,
                    "RuleDisabled": False,
                    "Actions": [
                        {
                            "DynamoDBv2": {
                                "PutItem": {"TableName": _ref("SensorDataTable")},
                                "RoleArn": _arn("TopicRuleRole"),
                            }
                        }
                    ],
                    "ErrorAction": {
                        "S3": {
                            "BucketName": _ref("ExportsBucket"),
                            # Substitution templates of the rule, not of CloudFormation.
                            "Key": RULE_ERRORS_PREFIX + "${topic(2)}/${timestamp()}-${newuuid()}",
                            "RoleArn": _arn("TopicRuleRole"),
                        }
                    },
                },
            },
        },
        # What the first rule's WHERE refuses is no error to AWS IoT (the rule just does not
        # match), so its error action never sees it. This rule matches exactly those messages
        # (NOT of the same checks) and keeps each beside the failed writes, with the check it
        # failed and its payload in base64: AWS's counterpart of `cloud ingest`'s dead letters.
        "RejectedReadingsTopicRule": {
            "Type": "AWS::IoT::TopicRule",
            "Properties": {
                "RuleName": rejected_rule_name,
                "TopicRulePayload": {
                    "Description": f"Messages on {TOPIC_FILTER} that are not payload v1 readings",
                    "Sql": rejected_rule_sql(),
                    "AwsIotSqlVersion": SQL_VERSION,
                    "RuleDisabled": False,
                    "Actions": [
                        {
                            "S3": {
                                "BucketName": _ref("ExportsBucket"),
                                "Key": RULE_ERRORS_PREFIX
                                + "${topic(2)}/rejected-${timestamp()}-${newuuid()}",
                                "RoleArn": _arn("TopicRuleRole"),
                            }
                        }
                    ],
                },
            },
        },
        "ExportsBucket": {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BucketName": _name("ExportsBucketName", _ref("AWS::NoValue")),
                **_private_bucket([]),
            },
        },
        "ExportsBucketPolicy": _tls_only_policy("ExportsBucket"),
        "AthenaResultsBucket": {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "BucketName": _name("AthenaResultsBucketName", _ref("AWS::NoValue")),
                **_private_bucket(
                    [
                        {
                            "Id": "expire-athena-results",
                            "Status": "Enabled",
                            "ExpirationInDays": _ref("AthenaResultsRetentionDays"),
                        }
                    ]
                ),
            },
        },
        "AthenaResultsBucketPolicy": _tls_only_policy("AthenaResultsBucket"),
        "GlueDatabase": {
            "Type": "AWS::Glue::Database",
            "Properties": {
                "CatalogId": _ref("AWS::AccountId"),
                "DatabaseInput": {
                    "Name": database_name,
                    "Description": "sensor-pipeline exports, for Athena",
                },
            },
        },
        # Where `cloud alerts watch` publishes on AWS; subscribe e-mail, SMS, a queue or a
        # Lambda function to it. It holds no data, so a stack update may replace it freely.
        "AlertsTopic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {
                "TopicName": _sub("${AWS::StackName}-alerts"),
                "DisplayName": "sensor alerts",
                "KmsMasterKeyId": ALERTS_TOPIC_KEY,
            },
        },
        "SensorDataGlueTable": _sensor_data_table(),
        "ReadingsGlueTable": _readings_table(),
        "AthenaWorkGroup": {
            "Type": "AWS::Athena::WorkGroup",
            "Properties": {
                "Name": workgroup_name,
                "Description": "sensor-pipeline queries: results expire, scans are capped",
                "State": "ENABLED",
                # Deleting the stack also deletes the workgroup's saved queries.
                "RecursiveDeleteOption": True,
                "WorkGroupConfiguration": {
                    "EnforceWorkGroupConfiguration": True,
                    "PublishCloudWatchMetricsEnabled": True,
                    "BytesScannedCutoffPerQuery": _ref("BytesScannedCutoffPerQuery"),
                    "EngineVersion": {"SelectedEngineVersion": "Athena engine version 3"},
                    "ResultConfiguration": {
                        "OutputLocation": _sub(
                            f"s3://${{AthenaResultsBucket}}/{ATHENA_RESULTS_PREFIX}"
                        ),
                        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
                    },
                },
            },
        },
    }
    outputs_values: dict[str, Any] = {
        "TableName": _ref("SensorDataTable"),
        "ExportsBucket": _ref("ExportsBucket"),
        "AthenaResultsBucket": _ref("AthenaResultsBucket"),
        "WorkGroup": workgroup_name,
        "GlueDatabase": database_name,
        "IotPolicyName": policy_name,
        "TopicRuleName": rule_name,
        "RuleErrorsLocation": _sub(f"s3://${{ExportsBucket}}/{RULE_ERRORS_PREFIX}"),
        "AlertsTopicArn": _ref("AlertsTopic"),
    }
    assert tuple(outputs_values) == OUTPUTS
    for logical_id, skips in SCANNER_SKIPS.items():
        resources[logical_id]["Metadata"] = {
            "checkov": {"skip": [{"id": i, "comment": c} for i, c in skips.items()]}
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": DESCRIPTION,
        "Parameters": PARAMETERS,
        "Conditions": {
            _given(p): {"Fn::Not": [{"Fn::Equals": [_ref(p), ""]}]} for p in _NAME_PARAMETERS
        },
        "Resources": resources,
        "Outputs": {name: {"Value": value} for name, value in outputs_values.items()},
    }


def render(template: Mapping[str, Any] | None = None) -> str:
    """The template as block-style YAML, long-form intrinsic functions, stable order."""
    header = [
        "Generated by `python -m cloud.stack.template` from cloud/stack/template.py: do not "
        "edit by hand.",
        "Deploy: aws cloudformation deploy --template-file cloud/cloudformation/"
        "sensor-pipeline.yaml \\",
        "  --stack-name sensor-pipeline --capabilities CAPABILITY_NAMED_IAM",
    ]
    return yaml_text.dump(build() if template is None else template, header)


def write(path: Path = TEMPLATE_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path


def is_current(path: Path = TEMPLATE_PATH) -> bool:
    """Does the committed file hold exactly what `render()` makes now?"""
    try:
        return path.read_text() == render()
    except FileNotFoundError:
        return False


def main(argv: list[str]) -> int:
    """`python -m cloud.stack.template [--check]`: rewrite the committed template, or check it."""
    if argv[1:] == ["--check"]:
        if is_current():
            return 0
        print(f"{TEMPLATE_PATH} is stale: run `python -m cloud.stack.template`", file=sys.stderr)
        return 1
    print(f"wrote {write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
