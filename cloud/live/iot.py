"""The live stream on AWS: IoT Core's MQTT over WebSockets, the handshake signed (SigV4)
with the user's own AWS credentials, the same ones every other `cloud` command uses. The
cloud side needs no certificate of its own, and never a device's.

Needs (README, Dashboard): iot:Connect on `client/cloud-*`, iot:Subscribe on
`topicfilter/sensors/*`, iot:Receive on `topic/sensors/*`. IoT Core sends the retained
status and health of every device at subscribe time, as Mosquitto does locally.

Not exercised against IoT Core here (no AWS). tests/cloud/test_live_iot.py runs it against
a stand-in (tests/iot_endpoint.py): a signed WebSocket handshake, relayed to a real
Mosquitto, since Debian 12's cannot open a WebSockets listener itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
from enum import Enum
from pathlib import Path
from typing import Any

from cloud.live.stream import TOPICS, OnEvent, OnState, event_of, now_ms

log = logging.getLogger(__name__)

#: SUBACK reason codes from here up are refusals (MQTT 5).
_SUBACK_FAILURE_MIN = 0x80


class IotLiveStream:
    def __init__(
        self,
        host: str,
        region: str,
        watcher: str,
        on_event: OnEvent,
        on_state: OnState,
        port: int = 443,
        ca: Path | None = None,
    ) -> None:
        # awsiotsdk (awscrt) comes with the awsiot extra: imported only for AWS.
        from awscrt import auth, mqtt5
        from awsiot import mqtt5_client_builder

        self._mqtt5: Any = mqtt5
        self.label = f"wss://{host}" if port == 443 else f"wss://{host}:{port}"
        self._on_event = on_event
        self._on_state = on_state
        self._client: Any = mqtt5_client_builder.websockets_with_default_aws_signing(
            endpoint=host,
            port=port,
            region=region,
            credentials_provider=auth.AwsCredentialsProvider.new_default_chain(),
            # cloud-dashboard-..., cloud-alerts-...: the IAM policy's client/cloud-*.
            client_id=f"cloud-{watcher}-{secrets.token_hex(4)}",
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            enable_metrics_collection=False,
            # None: the system's trust store, which holds IoT Core's (Amazon Root CA 1).
            # A test's stand-in endpoint has the tests' CA.
            ca_filepath=str(ca) if ca is not None else None,
            on_lifecycle_connection_success=self._connected,
            on_lifecycle_connection_failure=self._failed,
            on_lifecycle_disconnection=self._disconnected,
            on_publish_received=self._received,
        )

    def start(self) -> None:
        self._client.start()

    def stop(self) -> None:
        self._client.stop()

    def _connected(self, data: Any) -> None:
        mqtt5 = self._mqtt5
        future = self._client.subscribe(
            mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(t, qos=mqtt5.QoS.AT_LEAST_ONCE) for t in TOPICS]
            )
        )
        future.add_done_callback(self._subscribed)

    def _subscribed(self, future: concurrent.futures.Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            self._on_state(f"IoT Core at {self.label} did not confirm the subscriptions ({exc})")
            return
        codes = getattr(future.result(), "reason_codes", None) or []
        refused = [c for c in codes if not isinstance(c, Enum) or c.value >= _SUBACK_FAILURE_MIN]
        if refused:
            self._on_state(
                f"IoT Core at {self.label} refused to subscribe to sensors/+/...: the "
                "credentials need iot:Subscribe and iot:Receive on sensors/* (README, Dashboard)"
            )
        else:
            self._on_state(None)

    def _failed(self, data: Any) -> None:
        self._on_state(f"cannot connect to IoT Core at {self.label} ({data.exception}); retrying")

    def _disconnected(self, data: Any) -> None:
        self._on_state(f"lost IoT Core at {self.label} ({data.exception}); reconnecting")

    def _received(self, data: Any) -> None:
        packet = data.publish_packet
        event = event_of(packet.topic, bytes(packet.payload or b""), bool(packet.retain), now_ms())
        if event is not None:
            self._on_event(event)
