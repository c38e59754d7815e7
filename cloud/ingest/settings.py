"""What `cloud ingest` is told (IngestSettings, checked on construction) and what it counts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cloud.aws import Endpoint
from cloud.errors import ConfigError
from cloud.identity.local_ca import Identity
from cloud.ingest.rule import TOPIC_FILTER
from device.config import MQTT_VERSIONS

#: BatchWriteItem takes at most 25 put requests.
MAX_BATCH_WRITE_ITEMS = 25
#: BatchWriteItem calls in flight at most: botocore's connection pool holds 10.
MAX_WRITERS = 10


@dataclass(frozen=True)
class IngestSettings:
    host: str
    port: int
    tls: Identity | None  # None: plain MQTT, for a loopback broker only
    endpoint: Endpoint
    table: str
    dead_letter: Path  # JSON lines, see cloud.ingest.deadletter
    # One per instance: the broker keeps a session per id. Mosquitto (use_username_as_
    # clientid) replaces it with the certificate's name, so it must be that name.
    client_id: str = "ingest"
    # None: a plain subscription (one instance; kept across broker restarts). A group lets
    # several instances split the load, but Mosquitto 2.0 does not restore shared
    # subscriptions from persistence: until ingest resubscribes, readings are dropped.
    share_group: str | None = None
    batch_size: int = MAX_BATCH_WRITE_ITEMS
    batch_seconds: float = 0.2  # a partial batch is written after this long
    receive_maximum: int = 500  # unacknowledged messages the broker may send us at once
    report_every: float = 10.0
    session_expiry_seconds: int = 86_400  # the broker queues for us this long while we are away
    receipts: bool = True  # confirm each written reading to its device (see cloud.ingest.service)
    # auto: MQTT 5, or 3.1.1 when the broker refuses 5. Under 3.1.1 there is no receive
    # maximum (paho's inflight window bounds nothing incoming), no shared subscriptions and
    # no "session taken over" reason: a second ingest with our client id goes unnoticed.
    mqtt_version: str = "auto"
    writers: int = 4  # BatchWriteItem calls in flight at most (see cloud.ingest.service)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_WRITE_ITEMS:
            raise ConfigError(f"batch_size {self.batch_size}: use 1 to {MAX_BATCH_WRITE_ITEMS}")
        if not 1 <= self.writers <= MAX_WRITERS:
            raise ConfigError(f"writers {self.writers}: use 1 to {MAX_WRITERS}")
        if self.batch_seconds <= 0:
            raise ConfigError(f"batch_seconds {self.batch_seconds}: must be > 0")
        if not 1 <= self.receive_maximum <= 65_535:
            raise ConfigError(f"receive_maximum {self.receive_maximum}: use 1 to 65535")
        if self.report_every <= 0:
            raise ConfigError(f"report_every {self.report_every}: must be > 0")
        if self.share_group is not None and (
            not self.share_group or any(c in self.share_group for c in "/+#")
        ):
            raise ConfigError(f"share_group {self.share_group!r}: no '/', '+' or '#'")
        if self.mqtt_version not in MQTT_VERSIONS:
            raise ConfigError(f"mqtt_version {self.mqtt_version!r}: one of auto, 5, 3.1.1")
        if self.share_group is not None and self.mqtt_version == "3.1.1":
            raise ConfigError("share_group needs MQTT 5: shared subscriptions are not in 3.1.1")

    @property
    def topic(self) -> str:
        if self.share_group is None:
            return TOPIC_FILTER
        return f"$share/{self.share_group}/{TOPIC_FILTER}"


@dataclass
class IngestStats:
    received: int = 0
    written: int = 0  # items written (after collapsing duplicates)
    duplicates: int = 0  # messages whose key was in the same batch, or written lately
    dead_lettered: int = 0
    receipts: int = 0  # receipt messages published (one per sensor per write batch)
    retries: int = 0  # BatchWriteItem calls repeated (throttled, unprocessed items, no link)
    batches: int = 0
    connections: int = 0  # successful CONNACKs; more than one means reconnects
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def line(self) -> str:
        elapsed = self.seconds or time.monotonic() - self.started
        rate = self.received / elapsed if elapsed > 0 else 0.0
        return (
            f"ingest: received {self.received}, written {self.written}, "
            f"duplicates {self.duplicates}, dead-lettered {self.dead_lettered}, "
            f"retries {self.retries}, batches {self.batches}, connections {self.connections}, "
            f"receipts {self.receipts} in {elapsed:.1f}s ({rate:.0f} msg/s)"
        )
