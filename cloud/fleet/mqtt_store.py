"""The fleet's retained messages on the local stack's Mosquitto.

It connects as the fleet identity (cloud.local.mosquitto.FLEET_IDENTITY: a reader, which
the broker lets read every device's topics and write desired configs), never as `ingest`:
the broker takes a client's id from its certificate, so that would take over the running
ingest's session. A clean session leaves nothing queued behind it.

Knowing when the broker has sent every retained message: MQTT has no "end of retained"
signal. After the SUBACK the store publishes a marker to a topic it also subscribed to;
Mosquitto queues the retained messages of a subscription before it handles our next
PUBLISH, and delivers a client's messages in order, so once the marker comes back every
retained message has arrived. That is exact and as fast as the broker, where a quiet time
would be a guess that costs its length on every call.
"""

from __future__ import annotations

import secrets
import ssl
import threading
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.errors import FleetError
from cloud.fleet.store import Retained, matches
from cloud.identity.local_ca import Identity
from device.payload import receipt_topic

TIMEOUT = 5.0


class MqttStore:
    def __init__(self, host: str, port: int, identity: Identity, timeout: float = TIMEOUT) -> None:
        self.label = f"mqtts://{host}:{port}"
        self.timeout = timeout
        self.client_id = f"cloud-cli-{secrets.token_hex(4)}"
        #: Nobody is subscribed to the receipts of a device named after this client.
        self._marker_topic = receipt_topic(self.client_id)
        self._cond = threading.Condition()
        self._connack: str | None = None
        self._gone: str | None = None
        self._acks: dict[int, str] = {}
        self._subacks: dict[int, list[str]] = {}
        self._messages: list[tuple[str, bytes]] = []
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        client.tls_set(
            str(identity.ca),
            str(identity.cert),
            str(identity.key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        try:
            # clean_start: no session kept for us, nothing queued while we are away.
            client.connect(host, port, keepalive=30, clean_start=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise FleetError(
                f"cannot reach the local stack's broker at {self.label} ({exc}): "
                "`cloud local status` shows it; `cloud local up` starts what is missing"
            ) from None
        client.loop_start()
        self._wait(lambda: self._connack is not None or self._gone is not None, "a CONNACK")
        if self._connack != "Success":
            self.close()
            raise FleetError(
                f"the broker at {self.label} refused us: {self._connack or self._gone}"
            )

    # -- the store ----------------------------------------------------------------------

    def read(self, filters: Sequence[str]) -> dict[str, Retained]:
        rc, mid = self._client.subscribe([(f, 1) for f in (*filters, self._marker_topic)])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise FleetError(f"cannot subscribe at {self.label}: {mqtt.error_string(rc)}")
        self._wait(lambda: mid in self._subacks, "a SUBACK")
        refused = [
            f for f, r in zip(filters, self._subacks[mid], strict=False) if "Granted" not in r
        ]
        if refused:
            raise FleetError(f"the broker at {self.label} refused to subscribe to {refused[0]}")
        marker = secrets.token_hex(8).encode()
        self._publish(self._marker_topic, marker, retain=False)
        self._wait(lambda: (self._marker_topic, marker) in self._messages, "the retained messages")
        self._client.unsubscribe([*filters, self._marker_topic])
        with self._cond:
            found = {
                topic: Retained(payload)
                for topic, payload in self._messages
                if payload and any(matches(f, topic) for f in filters)
            }
            self._messages.clear()
        return found

    def publish(self, topic: str, payload: bytes) -> None:
        self._publish(topic, payload, retain=True)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- waiting on the broker ----------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._acks, f"the broker to acknowledge {topic}")
        reason = self._acks[info.mid]
        # MQTT 5's PUBACK says why a message was not taken (the ACL's "Not authorized").
        if reason not in ("Success", "No matching subscribers"):
            raise FleetError(f"the broker at {self.label} refused {topic}: {reason}")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: done() or self._gone is not None, self.timeout)
        if self._gone is not None and not done():
            raise FleetError(f"the broker at {self.label} closed the connection: {self._gone}")
        if not ok:
            raise FleetError(f"the broker at {self.label} sent no {what} in {self.timeout:g} s")

    def _notify(self, change: Callable[[], None]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _on_connect(
        self, client: mqtt.Client, u: object, f: object, reason: object, p: object
    ) -> None:
        self._notify(lambda: setattr(self, "_connack", str(reason)))

    def _on_disconnect(
        self, client: mqtt.Client, u: object, f: object, reason: object, p: object
    ) -> None:
        self._notify(lambda: setattr(self, "_gone", str(reason)))

    def _on_publish(
        self, client: mqtt.Client, u: object, mid: int, reason: object, p: object
    ) -> None:
        self._notify(lambda: self._acks.__setitem__(mid, str(reason)))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        u: object,
        mid: int,
        reasons: list[ReasonCode],
        p: Properties | None,
    ) -> None:
        self._notify(lambda: self._subacks.__setitem__(mid, [str(r) for r in reasons]))

    def _on_message(self, client: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, bytes(msg.payload))
        self._notify(lambda: self._messages.append(item))
