"""No secret reaches a log: a whole local scenario (broker, `cloud ingest`, agents that
succeed, agents refused by TLS, agents stopped by a bad key, a dead letter, an ingest that
fails on a missing table) with every log captured: agents' stdout and stderr, ingest's, the
Mosquitto log. None holds a line of any private key or certificate body in play, nor the
AWS secret key its processes had in their environment."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.identity.local_ca import Identity, LocalCA
from cloud.local.identities import INGEST_IDENTITY, device_identity
from cloud.local.mosquitto import Mosquitto
from cloud.local.moto import MotoServer
from cloud.local.state import StackState
from cloud.table import item_count
from tests.conftest import Pki
from tests.e2e.conftest import Agents, Proc, spawn
from tests.mqtt import MqttClient, wait_until

COUNT = 10


def pem_body_lines(path: Path) -> set[str]:
    """The base64 lines of a PEM file (long enough never to occur in a log by chance)."""
    return {
        ln.strip()
        for ln in path.read_text().splitlines()
        if ln.strip() and not ln.startswith("-----") and len(ln.strip()) >= 16
    }


def project_root(
    pki: Pki, folder: Path, broker: Mosquitto, moto: MotoServer, table: str, stand_in: int
) -> Path:
    """A project folder whose `var/local/stack.json` names this test's broker, moto server
    and table, so `cloud ingest --target local` runs from it as after `cloud local up`.
    `stand_in` is the pid of a process that passes for the stack's supervisor."""
    root = folder / "project"
    shutil.copytree(pki.ca.folder, root / "certs" / "local-ca")
    StackState(
        root=str(root),
        mqtt_port=broker.config.port,
        table_port=moto.port,
        data_dir=str(root / "var" / "local"),
        table=table,
        supervisor_pid=stand_in,
    ).save()
    return root


@pytest.fixture
def supervisor_stand_in() -> Iterator[int]:
    """A process whose command line names the supervisor: the stack "runs" while it does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "cloud.local.supervisor"],
        stdin=subprocess.PIPE,
    )
    yield proc.pid
    proc.communicate(b"")


def cloud_ingest(root: Path, folder: Path, name: str, env: dict[str, str], *args: str) -> Proc:
    ready = folder / f"{name}.ready"
    argv = [sys.executable, "-m", "cloud", "-v", "ingest", "--target", "local"]
    argv += ["--ready-file", str(ready), *args]
    proc = spawn(argv, folder, name, env, cwd=root)
    wait_until(lambda: ready.exists() or not proc.alive(), 30, f"{name} to subscribe")
    return proc


@pytest.mark.slow
def test_no_key_certificate_or_aws_secret_in_any_log(
    pki: Pki,
    start_broker: Callable[..., Mosquitto],
    moto_server: MotoServer,
    table: str,
    agents: Agents,
    device_id: str,
    tmp_path: Path,
    supervisor_stand_in: int,
) -> None:
    aws_secret = "e2e" + secrets.token_urlsafe(30)
    env = {"AWS_SECRET_ACCESS_KEY": aws_secret, "AWS_ACCESS_KEY_ID": "AKIAE2ETESTKEY00000"}
    agents.env = env
    broker = start_broker()
    port = broker.config.port
    root = project_root(pki, tmp_path, broker, moto_server, table, supervisor_stand_in)
    logs = tmp_path / "logs"
    ingest = cloud_ingest(root, logs, "ingest", env)
    assert ingest.alive(), ingest.err()

    # A project whose table is missing: ingest fails (on its own share group) with a message.
    broken = project_root(
        pki, tmp_path / "broken", broker, moto_server, f"{table}-missing", supervisor_stand_in
    )
    failing = cloud_ingest(
        broken, logs, "ingest-no-table", env, "--client-id", "ingest-2", "--share-group", "b"
    )

    ids = [f"{device_id}-{n}" for n in (1, 2)]
    good = [
        agents.one(ids[0], port, "-v", "--count", str(COUNT), "--interval", "0"),
        agents.one(ids[1], port, "-vv", "--count", str(COUNT), "--interval", "0"),
        agents.simulate(
            [f"{device_id}-s1", f"{device_id}-s2"], port, "-v", "--count", "5", "--interval", "0"
        ),
    ]

    # Refused: an expired certificate (refused until --offline-limit), a broker the agent
    # cannot verify (--ca of another CA), and a private key others can read.
    expired = pki.expired(f"{device_id}-old", tmp_path / "expired")
    other_ca = LocalCA.create(tmp_path / "other-ca")
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(pki.device(f"{device_id}-loose").key, loose / "key.pem")
    (loose / "key.pem").chmod(0o644)
    refused = {
        "--offline-limit": agents.one(
            f"{device_id}-old",
            port,
            "-v",
            "--offline-limit",
            "2",
            "--cert",
            str(expired.cert),
            "--key",
            str(expired.key),
            "--ca",
            str(expired.ca),
        ),
        "failed verification": agents.one(
            f"{device_id}-wrongca", port, "-v", "--count", "1", "--ca", str(other_ca.cert_path)
        ),
        "readable by group or others": agents.one(
            f"{device_id}-loose", port, "-v", "--count", "1", "--key", str(loose / "key.pem")
        ),
    }
    raw = MqttClient.open(port, pki.device(ids[1]), client_id=f"{ids[1]}-raw")
    try:
        raw.publish_all(f"sensors/{ids[1]}/data", [b"not a reading"])
    finally:
        raw.close()

    for proc in good:
        assert proc.wait(60) == 0, proc.err()[-2000:]
    for expected, proc in refused.items():
        assert proc.wait(60) == 1, proc.err()[-2000:]
        assert expected in proc.err(), proc.err()[-2000:]
    assert failing.wait(30) == 1, failing.err()[-2000:]
    assert "not found" in failing.err()
    total = 2 * COUNT + 2 * 5
    wait_until(lambda: item_count(moto_server_client(moto_server), table) >= total, 30, "items")
    wait_until(lambda: "dead letter" in ingest.err(), 15, "the dead letter in ingest's log")
    assert ingest.terminate() == 0, ingest.err()[-2000:]

    # Every secret in play, and every log there is.
    identities: list[Identity] = [
        pki.server,
        expired,
        pki.device(ids[0]),
        pki.device(ids[1]),
        pki.device(f"{device_id}-s1"),
        pki.device(f"{device_id}-s2"),
        pki.device(f"{device_id}-wrongca"),
        pki.device(f"{device_id}-loose"),
        device_identity(root, INGEST_IDENTITY),
    ]
    keys = [pki.ca.key_path, other_ca.key_path, *(i.key for i in identities)]
    certs = [pki.ca.cert_path, other_ca.cert_path, *(i.cert for i in identities)]
    needles = [(f"a line of private key {k}", ln) for k in keys for ln in pem_body_lines(k)]
    needles += [(f"a line of certificate {c}", ln) for c in certs for ln in pem_body_lines(c)]
    needles.append(("the AWS_SECRET_ACCESS_KEY", aws_secret))
    captured = [
        *sorted(agents.folder.glob("*.out")),
        *sorted(agents.folder.glob("*.err")),
        *sorted(logs.glob("*.out")),
        *sorted(logs.glob("*.err")),
        broker.config.log_path,
    ]
    texts = {path: path.read_text(errors="replace") for path in captured}
    assert len(texts) == 2 * (len(good) + len(refused) + 2) + 1
    assert all(texts[p] for p in captured if p.suffix == ".err" or p.suffix == ".log"), [
        p for p in captured if not texts[p]
    ]
    leaks = [
        f"{what} in {path}"
        for path, text in texts.items()
        for what, needle in needles
        if needle in text
    ]
    assert not leaks, "\n".join(leaks[:20])


def moto_server_client(moto: MotoServer):
    from cloud.aws import Endpoint

    return Endpoint.local(moto.port).client("dynamodb")
