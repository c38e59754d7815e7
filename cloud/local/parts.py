"""The local stack's parts, as the supervisor runs them: the table engine (dynalite,
DynamoDB's API over LevelDB), Mosquitto (mutual TLS, ACL, persistence) and `cloud ingest`."""

from __future__ import annotations

import sys
from pathlib import Path

from cloud.identity.local_ca import certs_dir
from cloud.identity.revocation import ensure_crl
from cloud.local import table_engine
from cloud.local.identities import BROKER_IDENTITY, local_ca
from cloud.local.mosquitto import MosquittoConfig, mosquitto_binary
from cloud.local.ports import is_listening
from cloud.local.state import NEEDLES, StackState, state_dir
from cloud.local.supervisor import PartSpec


def broker_config(state: StackState) -> MosquittoConfig:
    """The stack's broker, always with the local CA's revocation list applied."""
    root = Path(state.root)
    server = certs_dir(root) / BROKER_IDENTITY
    return MosquittoConfig(
        folder=state.broker_dir,
        port=state.mqtt_port,
        ca=local_ca(root).cert_path,
        cert=server / "cert.pem",
        key=server / "key.pem",
        plaintext_port=state.plaintext_port,
        crl=ensure_crl(root),
    )


def part_specs(state: StackState) -> list[PartSpec]:
    """How the supervisor runs each part of `state`."""
    from cloud.table import create_table

    root = Path(state.root)
    logs = state.logs_dir
    broker = broker_config(state)
    ready_file = state_dir(root) / "ingest.ready"
    specs = [
        PartSpec(
            name="table",
            argv=lambda: table_engine.command(state.table_port, state.table_dir),
            log_path=logs / "table.log",
            ready=lambda: is_listening(state.table_port),
            needle=NEEDLES["table"],
            prepare=lambda: state.table_dir.mkdir(parents=True, exist_ok=True),
            # Idempotent: also makes the table again in a data folder that lost it.
            on_ready=lambda: create_table(state.endpoint.client("dynamodb"), state.table),
        ),
        PartSpec(
            name="mosquitto",
            argv=lambda: [mosquitto_binary(), "-c", str(broker.conf_path)],
            log_path=broker.log_path,
            ready=lambda: is_listening(state.mqtt_port),
            needle=NEEDLES["mosquitto"],
            prepare=broker.write,
        ),
        PartSpec(
            name="ingest",
            argv=lambda: [
                sys.executable,
                "-m",
                "cloud",
                "ingest",
                "--target",
                "local",
                "--ready-file",
                str(ready_file),
            ],
            log_path=logs / "ingest.log",
            # Readings published before ingest subscribes would still be queued for its
            # session, but a first-ever session does not exist yet: wait until it does.
            ready=ready_file.exists,
            needle=NEEDLES["ingest"],
            after=("table", "mosquitto"),
            prepare=lambda: ready_file.unlink(missing_ok=True),
            cwd=root,
        ),
    ]
    return [s for s in specs if s.name in state.parts]
