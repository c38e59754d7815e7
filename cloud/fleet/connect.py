"""The store of the side a command acts on, and the devices that side knows of."""

from __future__ import annotations

from pathlib import Path

from cloud.errors import StackNotFound
from cloud.fleet.iot_store import IotDataStore
from cloud.fleet.mqtt_store import MqttStore
from cloud.fleet.store import FLEET_FILTERS, RetainedStore, device_of
from cloud.local.identities import device_identity
from cloud.local.mosquitto import FLEET_IDENTITY
from cloud.stack.deploy import stack_outputs
from cloud.stack.status import device_things
from cloud.target import Target


def open_store(target: Target) -> RetainedStore:
    """Locally the stack's broker as the fleet identity (a reader of its own, issued by the
    local CA on first use); on AWS, IoT Core's data plane."""
    if target.stack is not None:
        identity = device_identity(Path(target.stack.root), FLEET_IDENTITY)
        return MqttStore("127.0.0.1", target.stack.mqtt_port, identity)
    return IotDataStore(target.endpoint)


def known_devices(store: RetainedStore, target: Target, stack_name: str) -> set[str]:
    """Every device id seen on a retained status, health or config topic, and the stack's
    things (`policy_things`)."""
    ids = {found[0] for topic in store.read(FLEET_FILTERS) if (found := device_of(topic))}
    return ids | policy_things(target, stack_name)


def policy_things(target: Target, stack_name: str) -> set[str]:
    """On AWS, every thing whose certificate carries the stack's policy, a device that
    never connected included; none locally, where a device is what the broker has seen."""
    if target.stack is not None:
        return set()
    try:
        policy = stack_outputs(target.endpoint, stack_name).get("IotPolicyName")
    except StackNotFound:
        return set()  # no stack deployed: the retained topics are all there is
    return set(device_things(target.endpoint, policy)) if policy else set()
