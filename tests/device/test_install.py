"""The plain install is the device agent, and nothing of the cloud half (README, Raspberry Pi).

`pip install .` into a fresh venv, as on a Pi: the agent runs and delivers, `cloud` says in
one line what to install, and no package of the cloud half came along. Every package the
plain install brings must exist for the Pi's CPUs as a wheel pip can install without
compiling: pure Python, or built for linux armv6l, armv7l and aarch64.

These need the package index (pip downloads paho-mqtt, click and setuptools, cached after
the first run), as `make setup` does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Pki
from tests.mqtt import REPO

#: What only the cloud half (or the awsiot transport) may bring; none is in a Pi's install.
CLOUD_ONLY = ("boto3", "botocore", "duckdb", "pyarrow", "matplotlib", "awscrt", "cryptography")
#: The Pis: Zero and 1 (armv6l), 2 and 3 on 32-bit Raspberry Pi OS (armv7l), 64-bit (aarch64).
PI_PLATFORMS = ("linux_armv6l", "linux_armv7l", "manylinux2014_aarch64")
#: The device the Pi install script installs (a module's: its install starts before its test).
PI_ID = "t-install-pi-service"


@dataclass(frozen=True)
class Venv:
    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # PYTHONPATH unset: the venv must find everything in what it installed.
        env = {"PATH": f"{self.root / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)}
        return subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what a checkout holds for installing (pip builds in the tree it is given)."""
    source = tmp_path_factory.mktemp("checkout")
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for name in ("device", "cloud", "config"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    return source


@dataclass(frozen=True)
class PiInstall:
    """config/install-pi.sh run under `root` (a PREFIX) for PI_ID, as the README's Raspberry
    Pi section runs it; `done` is its run, `script` and `env` run it again."""

    root: Path
    script: list[str]
    env: dict[str, str]
    calls: Path  # what the script asked of systemctl, a line per call
    done: Future[subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def pi_install(
    source: Path, shared_broker, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PiInstall]:
    """The Pi install script, started in the background: its venv and pip install take as
    long as the plain install's, and each is one core's work, so they run side by side."""
    work = tmp_path_factory.mktemp("pi-install")
    ident = pki.device(PI_ID)
    provisioned = work / "provisioned"  # certs/ID/ as `cloud provision` wrote it
    provisioned.mkdir()
    for name, path in (("cert.pem", ident.cert), ("key.pem", ident.key), ("ca.pem", ident.ca)):
        shutil.copy(path, provisioned / name)
    calls = work / "systemctl.calls"
    systemctl = work / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    systemctl.chmod(0o755)
    root = work / "pi"
    broker = f"mqtts://127.0.0.1:{shared_broker.config.port}"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work),
        "PREFIX": str(root),
        "SYSTEMCTL": str(systemctl),
        "AGENT_USER": "root",  # an existing user: the test makes none on this machine
    }
    script = [str(source / "config" / "install-pi.sh"), "--id", PI_ID, "--broker", broker]
    with ThreadPoolExecutor(max_workers=1) as pool:
        done = pool.submit(
            subprocess.run,
            [*script, "--certs", str(provisioned)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        yield PiInstall(root, script, env, calls, done)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, source: Path, pi_install: PiInstall) -> Venv:
    """A fresh venv with `pip install .` of a copy of the project (no extras); the Pi
    install script runs meanwhile."""
    work = tmp_path_factory.mktemp("plain-install")
    venv = Venv(work / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True, timeout=120)
    pip = venv.run(
        venv.bin("pip"), "install", "-q", "--disable-pip-version-check", str(source), cwd=work
    )
    assert pip.returncode == 0, pip.stderr
    return venv


def installed(venv: Venv, cwd: Path) -> dict[str, str]:
    listed = venv.run(venv.bin("pip"), "list", "--format", "json", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    return {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}


def test_the_plain_install_has_nothing_of_the_cloud_half(plain: Venv, tmp_path: Path) -> None:
    packages = installed(plain, tmp_path)
    assert {"sensor-pipeline", "paho-mqtt", "click"} <= set(packages)
    assert not set(CLOUD_ONLY) & set(packages), packages


def test_the_agent_runs_from_the_plain_install(
    plain: Venv, shared_broker, subscribe, device_id, tls_args, tmp_path: Path
) -> None:
    help_text = plain.run(plain.bin("device-agent"), "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--mqtt-version" in help_text.stdout, help_text.stderr

    sub = subscribe(shared_broker.config.port)
    # -X importtime: every module the agent imported, on stderr, to check none is the cloud's.
    run = plain.run(
        plain.bin("python"),
        "-X",
        "importtime",
        plain.bin("device-agent"),
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *tls_args(device_id),
        "--count",
        "5",
        "--interval",
        "0",
        "--clock-wait",
        "0",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert f"{device_id}: published 5, acknowledged 5, buffered 0" in run.stdout
    assert sorted(r["seq"] for r in sub.wait_readings(device_id, 5)) == list(range(5))
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "device.agent" in imported
    assert not {m for m in imported if m.split(".")[0] in ("cloud", *CLOUD_ONLY)}


def test_cloud_without_its_extra_says_what_to_install(plain: Venv, tmp_path: Path) -> None:
    run = plain.run(plain.bin("cloud"), "status", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("Error: `cloud` needs the cloud extra")
    assert "pip install 'sensor-pipeline[cloud]'" in line


def test_awsiot_without_its_extra_says_what_to_install(
    plain: Venv, tls_args, tmp_path: Path
) -> None:
    run = plain.run(
        plain.bin("device-agent"),
        "--id",
        "pi-1",
        "--broker",
        "mqtts://127.0.0.1:1",
        *tls_args("pi-1"),
        "--transport",
        "awsiot",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("Error: --transport awsiot needs the AWS IoT Device SDK"), line
    assert "pip install 'sensor-pipeline[awsiot]'" in line, line


@pytest.mark.parametrize("platform", PI_PLATFORMS)
def test_every_package_of_the_plain_install_installs_on_a_pi(
    plain: Venv, platform: str, tmp_path: Path
) -> None:
    """pip, asked for wheels only for the Pi's platform, finds one for each package."""
    wanted = [
        f"{name}=={version}"
        for name, version in installed(plain, tmp_path).items()
        if name not in ("sensor-pipeline", "pip", "setuptools")
    ]
    got = plain.run(
        plain.bin("pip"),
        "download",
        "-q",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        platform,
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--dest",
        str(tmp_path / "wheels"),
        *wanted,
        cwd=tmp_path,
    )
    assert got.returncode == 0, got.stderr
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert len(wheels) == len(wanted), wheels
    for wheel in wheels:
        tag = wheel.removesuffix(".whl").rsplit("-", 1)[1]
        assert tag == "any" or platform.split("_", 1)[1] in tag, wheel


def test_the_pi_install_script_sets_up_a_service_that_delivers(
    pi_install: PiInstall, shared_broker, subscribe, tmp_path: Path
) -> None:
    """config/install-pi.sh, as the README's Raspberry Pi section runs it, under a PREFIX.

    This machine runs no systemd: SYSTEMCTL records what the script asks of it, and the
    test then starts the unit's ExecStart as systemd would (its user, state and working
    directory), checking first that systemd-analyze accepts the unit.
    """
    device_id, root = PI_ID, pi_install.root
    done = pi_install.done.result()
    assert done.returncode == 0, done.stderr
    assert f"device-agent@{device_id} is running" in done.stdout
    assert pi_install.calls.read_text().splitlines() == [
        "daemon-reload",
        f"enable --now device-agent@{device_id}",
    ]
    folder = root / "etc/device-agent/certs" / device_id
    assert (folder.stat().st_mode & 0o777, (folder / "key.pem").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )

    unit = root / "etc/systemd/system/device-agent@.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit.with_name(f"device-agent@{device_id}.service"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    (exec_start,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    argv = exec_start.removeprefix("ExecStart=").replace("%i", device_id).split()
    state = root / "var/lib/device-agent"  # StateDirectory=, made by systemd
    state.mkdir(parents=True, mode=0o700)
    sub = subscribe(shared_broker.config.port)
    # --count to end the run; --clock-wait 0 as this machine's clock is never synchronised;
    # --interval 0, or the default 5 s between readings makes the five take 20 s.
    run = subprocess.run(
        [*argv, "--count", "5", "--interval", "0", "--clock-wait", "0"],
        cwd=state,
        env={"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"{device_id}: published 5, acknowledged 5, buffered 0" in run.stdout
    assert sorted(r["seq"] for r in sub.wait_readings(device_id, 5)) == list(range(5))
    assert (state / f"{device_id}.outbox.sqlite").exists()

    again = subprocess.run(
        [*pi_install.script, "--certs", str(tmp_path / "nowhere")],
        env=pi_install.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1
    (line,) = again.stderr.splitlines()
    assert line.startswith(f"Error: --certs {tmp_path / 'nowhere'} has no cert.pem"), line
