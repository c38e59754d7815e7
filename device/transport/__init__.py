"""How readings leave the device: one interface, one module per MQTT client library.

A transport owns its connection and reconnects by itself; the agent hands it messages with
a token (the reading's seq) and hears back through callbacks when the broker acknowledged
one, or when the connection came or went. With `config.receipts` it also subscribes to the
device's receipt topic on every connection and hands on the readings each receipt confirms.
It subscribes to the device's desired config on every connection too (a broker that refuses
that gets a warning, once: the device runs on without remote config), hands each one on, and
publishes the device's retained state messages (reported config, health) untracked.

`session` is not a transport: it is the MQTT session over paho that the paho transport and
`cloud ingest` share (client, TLS, MQTT 5 or 3.1.1, connect errors, backoff).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from device.config import AgentConfig
from device.errors import ConfigError
from device.payload import config_desired_topic, receipt_topic


@dataclass(frozen=True)
class Callbacks:
    #: The broker acknowledged the publish made with this token (PUBACK, or sent for QoS 0).
    on_ack: Callable[[int], None]
    #: Connected (True) or lost (False), with a one-line reason for the log.
    on_connection: Callable[[bool, str], None]
    #: The transport gave up on this token without delivering it (a QoS 0 publish made
    #: while disconnected, an operation failed by the client): the agent sends it again.
    on_failed: Callable[[int], None]
    #: Something waiting will not fix (TLS refused, not authorized): the agent stops.
    on_fatal: Callable[[str], None]
    #: With `receipts`: ingest confirmed these readings ({seq: ts}) are in the table.
    on_receipt: Callable[[dict[int, int]], None]
    #: A message on the device's config/desired topic, as it came (b"": cleared).
    on_config: Callable[[bytes], None] = lambda payload: None


class Transport(Protocol):
    def start(self) -> None:
        """Begin connecting in the background; reconnects until `stop`."""

    def publish(self, topic: str, payload: bytes, qos: int, token: int) -> None:
        """Hand over a message; its fate comes back as `on_ack` or `on_failed`."""

    def publish_state(self, topic: str, payload: bytes) -> bool:
        """Publish a retained QoS 1 message of the device's own (health, reported config);
        False, and nothing sent, while not connected. No callback comes back for it: a
        refusal is only logged."""

    @property
    def mqtt_version(self) -> str:
        """The MQTT version spoken: "5" or "3.1.1"."""

    def stop(self, timeout: float) -> None:
        """Publish the retained `offline` status, disconnect and release everything."""


def make_transport(config: AgentConfig, callbacks: Callbacks) -> Transport:
    if config.transport == "awsiot":
        if config.mqtt_version == "3.1.1":
            raise ConfigError(
                "--transport awsiot speaks MQTT 5 only: use --transport paho with "
                "--mqtt-version 3.1.1"
            )
        try:
            from device.transport.awsiot import AwsIotTransport
        except ImportError as exc:
            raise ConfigError(
                f"--transport awsiot needs the AWS IoT Device SDK ({exc.name} is missing): "
                "pip install 'sensor-pipeline[awsiot]', or use --transport paho"
            ) from None

        return AwsIotTransport(config, callbacks)
    from device.transport.paho import PahoTransport

    return PahoTransport(config, callbacks)


def receipts_refused(config: AgentConfig, reason: str) -> str:
    """The fatal message when the broker will not let a device with --receipts get them."""
    return (
        f"broker {config.broker} refused the subscription to "
        f"{receipt_topic(config.sensor_id)}: {reason}; without it no reading is ever "
        "confirmed (run without --receipts, or let the device read its own topics in the "
        "broker's ACL)"
    )


def desired_refused(config: AgentConfig, reason: str) -> str:
    """The warning when the broker will not let a device read its desired config."""
    return (
        f"broker {config.broker} refused the subscription to "
        f"{config_desired_topic(config.sensor_id)}: {reason}; this device runs without "
        "remote config (let it read its own topics in the broker's ACL)"
    )
