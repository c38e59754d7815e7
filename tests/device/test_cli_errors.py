"""Mistakes a user makes get one clear line and the documented exit code, never a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cloud.local.ports import free_port
from tests.mqtt import finish, start_agent


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return finish(start_agent(*args, env=env))


def error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_key_readable_by_others_is_refused_with_the_fix(pki, tmp_path: Path, device_id):
    ident = pki.device(device_id)
    key = tmp_path / "key.pem"
    shutil.copy(ident.key, key)
    os.chmod(key, 0o644)
    code, _, err = run(
        "--id",
        device_id,
        "--broker",
        "mqtts://127.0.0.1:8883",
        "--cert",
        str(ident.cert),
        "--key",
        str(key),
        "--ca",
        str(ident.ca),
        "--outbox",
        str(tmp_path / "o.sqlite"),
    )
    assert code == 1
    line = error_line(err)
    assert str(key) in line and "mode 0644" in line and f"chmod 600 {key}" in line


def test_unknown_sensor_flag_is_a_usage_error(tmp_path: Path):
    code, _, err = run("--id", "s1", "--sensor", "thermometer", "--broker", "mqtt://127.0.0.1:1")
    assert code == 2
    assert "Invalid value for '--sensor'" in err and "Traceback" not in err


def test_unknown_sensor_from_the_environment_names_the_variable(tmp_path: Path):
    code, _, err = run(
        "--id",
        "s1",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--outbox",
        str(tmp_path / "o.sqlite"),
        env={"DEVICE_AGENT_SENSOR": "thermometer"},
    )
    assert code == 1
    line = error_line(err)
    assert "DEVICE_AGENT_SENSOR" in line and "simulated" in line


def test_missing_certificate_file_is_named(pki, tmp_path: Path, device_id):
    ident = pki.device(device_id)
    code, _, err = run(
        "--id",
        device_id,
        "--broker",
        "mqtts://127.0.0.1:8883",
        "--cert",
        str(tmp_path / "nope.pem"),
        "--key",
        str(ident.key),
        "--ca",
        str(ident.ca),
    )
    assert code == 1
    assert f"--cert: file {tmp_path / 'nope.pem'} not found" in error_line(err)


def test_tls_broker_without_certificates_says_what_to_give(tmp_path: Path):
    code, _, err = run("--id", "s1", "--broker", "mqtts://127.0.0.1:8883")
    assert code == 1
    assert "--cert, --key and --ca" in error_line(err)


@pytest.mark.parametrize("url", ["http://x:1", "mqtt://", "mqtts://host:99999"])
def test_bad_broker_url_is_explained(url: str, tmp_path: Path):
    code, _, err = run("--id", "s1", "--broker", url)
    assert code == 1
    assert "--broker" in error_line(err)


def test_unreachable_broker_gives_up_after_the_offline_limit_keeping_readings(
    tls_args, tmp_path: Path, device_id
):
    port = free_port()  # nothing listens there
    code, out, err = run(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{port}",
        *tls_args(device_id),
        "--count",
        "3",
        "--interval",
        "0",
        "--offline-limit",
        "1",
        "--outbox",
        str(tmp_path / "o.sqlite"),
    )
    assert code == 1
    line = error_line(err)
    assert f"cannot reach broker mqtts://127.0.0.1:{port}" in line
    assert "3 reading(s) kept in" in line
    assert "buffered 3" in out


def test_broker_with_an_untrusted_certificate_is_refused_at_once(
    shared_broker, tls_args, tmp_path: Path, device_id
):
    from cloud.identity.local_ca import LocalCA

    other_ca = LocalCA.create(tmp_path / "other-ca")
    args = tls_args(device_id)
    args[args.index("--ca") + 1] = str(other_ca.cert_path)
    code, _, err = run(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *args,
        "--count",
        "1",
        "--outbox",
        str(tmp_path / "o.sqlite"),
    )
    assert code == 1
    assert "failed verification" in error_line(err)


def test_config_file_values_are_used_and_flags_win(
    shared_broker, subscribe, tls_args, tmp_path: Path, device_id
):
    sub = subscribe(shared_broker.config.port)
    args = tls_args(device_id)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'broker = "mqtts://127.0.0.1:{shared_broker.config.port}"\n'
        f'cert = "{args[1]}"\nkey = "{args[3]}"\nca = "{args[5]}"\n'
        f'interval = 0\ncount = 500\noutbox = "{tmp_path / "o.sqlite"}"\n'
    )
    code, out, err = run("--id", device_id, "--config", str(conf), "--count", "7")
    assert code == 0, err
    assert "acknowledged 7," in out
    assert len(sub.wait_readings(device_id, 7)) >= 7


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path):
    conf = tmp_path / "agent.toml"
    conf.write_text('brokr = "mqtt://127.0.0.1:1"\n')
    code, _, err = run("--id", "s1", "--config", str(conf))
    assert code == 1
    assert "unknown setting(s) brokr" in error_line(err)
