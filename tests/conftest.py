"""Fixtures shared by every test folder: a local CA, and Mosquitto brokers on free ports."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.aws import Endpoint
from cloud.identity.local_ca import Identity, LocalCA
from cloud.local.mosquitto import BROKER_READERS, Mosquitto, MosquittoConfig
from cloud.local.moto import MotoServer
from cloud.local.ports import free_port
from cloud.table import create_table
from tests.mqtt import Subscriber, reap_children
from tests.nats import Nats

# No AWS call of a test may leave loopback: without credentials botocore would otherwise ask
# the EC2 instance metadata address for some. Subprocesses inherit it.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# This machine runs no NTP, so its kernel reports the clock unsynchronised, and agents would
# hold their readings for --clock-wait. Tests of that (tests/device/test_clock.py) set it.
os.environ.setdefault("DEVICE_AGENT_CLOCK_WAIT", "0")


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    reap_children()


#: Reader identities on the tests' brokers (beside the stack's own, BROKER_READERS). Each subscriber
#: and ingest of a test gets one of its own: the broker names a client by its certificate,
#: so two sharing one would take over each other's session, and a later test would inherit
#: the readings queued for an earlier one.
TEST_READERS = tuple(f"reader-{n}" for n in range(2000))
_readers = iter(TEST_READERS)


class Pki:
    """A CA for the test session, and certificates made on demand (cached by name)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = LocalCA.create(root / "ca")
        self.server = self.ca.issue(
            "localhost", root / "server", server_names=("127.0.0.1", "localhost")
        )
        self._issued: dict[str, Identity] = {}

    def device(self, name: str) -> Identity:
        if name not in self._issued:
            self._issued[name] = self.ca.issue(name, self.root / "devices" / name)
        return self._issued[name]

    def expired(self, name: str, folder: Path) -> Identity:
        """A certificate of this CA for `name` whose validity ended a day ago."""
        now = dt.datetime.now(dt.UTC)
        return self.ca.issue(
            name,
            folder,
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )

    def reader(self) -> tuple[str, Identity]:
        """A reader identity no other client of this session used: (its name, its files)."""
        name = next(_readers)
        return name, self.device(name)


@pytest.fixture
def tls_args(pki: Pki) -> Callable[[str], list[str]]:
    """`--cert --key --ca` flags for a device's certificate, made on demand."""

    def make(name: str) -> list[str]:
        ident = pki.device(name)
        return ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(ident.ca)]

    return make


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


BrokerFactory = Callable[..., Mosquitto]


@dataclass(frozen=True)
class AclExtraConfig(MosquittoConfig):
    """MosquittoConfig whose ACL file gets extra lines (e.g. a reader of `$SYS/#`)."""

    acl_extra: str = ""

    def write(self) -> None:
        super().write()
        with (self.folder / "acl").open("a") as acl:
            acl.write("\n" + self.acl_extra + "\n")


def broker_config(
    pki: Pki, folder: Path, port: int | None = None, acl_extra: str | None = None, **kwargs: Any
) -> MosquittoConfig:
    """The tests' broker: mutual TLS with the session's CA, on a free port unless given,
    every test reader allowed to read; `kwargs` are MosquittoConfig's other settings."""
    settings: dict[str, Any] = {
        "folder": folder,
        "port": port or free_port(),
        "ca": pki.ca.cert_path,
        "cert": pki.server.cert,
        "key": pki.server.key,
        "readers": (*BROKER_READERS, *TEST_READERS),
        **kwargs,
    }
    if acl_extra is None:
        return MosquittoConfig(**settings)
    return AclExtraConfig(**settings, acl_extra=acl_extra)


@pytest.fixture
def start_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Start brokers of this test's own (`broker_config`'s settings); all are killed when
    the test ends. `launch=False` only makes one, for a test that starts it later."""
    started: list[Mosquitto] = []

    def start(port: int | None = None, launch: bool = True, **kwargs: Any) -> Mosquitto:
        broker = Mosquitto(broker_config(pki, tmp_path_factory.mktemp("mosquitto"), port, **kwargs))
        started.append(broker)
        if launch:
            broker.start()
        return broker

    yield start
    for broker in started:
        broker.kill()


@pytest.fixture
def acl_broker(start_broker: BrokerFactory) -> Callable[..., Mosquitto]:
    """Brokers whose ACL file gets extra lines; killed when the test ends."""

    def start(acl_extra: str, **kwargs: Any) -> Mosquitto:
        return start_broker(acl_extra=acl_extra, **kwargs)

    return start


@pytest.fixture(scope="session")
def shared_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for tests that do not stop it; each test uses its own device ids."""
    broker = Mosquitto(broker_config(pki, tmp_path_factory.mktemp("shared-mosquitto")))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def nats(pki: Pki, tmp_path: Path) -> Iterator[Nats]:
    """A broker of this test's own that speaks MQTT 3.1.1 only (mutual TLS, the tests' CA)."""
    server = Nats(tmp_path / "nats", pki.server).start()
    yield server
    server.kill()


_ids = itertools.count()


@pytest.fixture
def device_id(request: pytest.FixtureRequest) -> str:
    """A sensor id no other test uses, so topics and sessions never collide."""
    return f"t{next(_ids)}-{request.node.name[:40].replace('[', '-').replace(']', '')}".replace(
        "_", "-"
    )


@pytest.fixture
def subscribe(pki: Pki) -> Iterator[Callable[..., Subscriber]]:
    subs: list[Subscriber] = []

    def make(port: int, topics: tuple[str, ...] = ("sensors/+/data",)) -> Subscriber:
        # A reader identity no other test used: a persistent session of an earlier test's
        # subscriber would hand this one the messages queued for it since.
        name, ident = pki.reader()
        sub = Subscriber(port, ident, topics, client_id=name)
        subs.append(sub)
        return sub.start()

    yield make
    for sub in subs:
        sub.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's server mode on a free port: the local AWS endpoint for the whole session."""
    server = MotoServer(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def aws(moto_server: MotoServer) -> Endpoint:
    return Endpoint.local(moto_server.port)


_tables = itertools.count()


@pytest.fixture
def table(aws: Endpoint) -> str:
    """A SensorData-shaped table of this test's own."""
    name = f"SensorData-{next(_tables)}"
    create_table(aws.client("dynamodb"), name)
    return name
