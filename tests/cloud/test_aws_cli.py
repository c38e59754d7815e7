"""The AWS commands as a user runs them, with CLOUD_TARGET=aws and AWS_ENDPOINT_URL set to a
moto server: deploy, status, provision, revoke, destroy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cloud(folder: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cloud", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_deploy_status_provision_revoke_destroy_against_the_endpoint(moto_server, tmp_path: Path):
    env = {
        "CLOUD_TARGET": "aws",
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-1",
    }
    stack = ["--stack-name", "cli-test"]
    code, out, err = cloud(tmp_path, env, "deploy", *stack)
    assert code == 0, err
    assert "TableName" in out and "IotPolicyName" in out
    assert "CREATE_COMPLETE" in err  # progress, on stderr

    code, out, err = cloud(tmp_path, env, "status", *stack)
    assert code == 0, err
    assert "target   aws (CLOUD_TARGET)" in out
    assert "stack    cli-test: CREATE_COMPLETE" in out
    assert "broker   mqtts://" in out and ":8883" in out
    assert "table    cli-test-SensorData: 0 item(s)" in out

    code, out, err = cloud(tmp_path, env, "provision", "--id", "pi-1", *stack)
    assert code == 0, err
    key = tmp_path / "certs/pi-1/key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs/pi-1").stat().st_mode & 0o777 == 0o700
    assert "run: device-agent --id pi-1 --broker mqtts://" in out
    assert "BEGIN" not in out + err  # no key or certificate body on the terminal

    code, out, err = cloud(tmp_path, env, "status", *stack)
    assert "device   pi-1: no readings" in out, out + err

    code, out, err = cloud(tmp_path, env, "revoke", "--id", "pi-1")
    assert code == 0, err
    assert "pi-1: 1 certificate(s) deactivated and deleted" in out

    code, out, err = cloud(tmp_path, env, "destroy", *stack)
    assert code == 0, err
    code, out, err = cloud(tmp_path, env, "status", *stack)
    assert "not deployed" in out


def test_destroy_refuses_a_stack_with_data_unless_forced(moto_server, aws, tmp_path: Path):
    env = {
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-2",
    }
    stack = ["--stack-name", "cli-full"]
    code, out, err = cloud(tmp_path, env, "deploy", *stack)
    assert code == 0, err
    bucket = next(line.split()[1] for line in out.splitlines() if line.startswith("ExportsBucket"))
    from cloud.aws import Endpoint

    Endpoint(moto_server.url, "eu-west-2").client("s3").put_object(
        Bucket=bucket, Key="x", Body=b"1"
    )
    code, _, err = cloud(tmp_path, env, "destroy", *stack)
    assert code == 1
    assert bucket in err and "--force" in err and "Traceback" not in err
    code, out, err = cloud(tmp_path, env, "destroy", *stack, "--force")
    assert code == 0, err
