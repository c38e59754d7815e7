"""The `cloud` command's entry point: say in one line what to install when the cloud extra
is missing, instead of an ImportError from deep inside (the plain install is the agent)."""

from __future__ import annotations

import importlib.util
import sys

#: What `pip install 'sensor-pipeline[cloud]'` brings (pyproject.toml), by import name.
CLOUD_MODULES = ("boto3", "cryptography", "duckdb", "pyarrow", "matplotlib")


def missing_modules() -> list[str]:
    return [name for name in CLOUD_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    missing = missing_modules()
    if missing:
        sys.stderr.write(
            f"Error: `cloud` needs the cloud extra ({', '.join(missing)} not installed): "
            "pip install 'sensor-pipeline[cloud]'\n"
        )
        sys.exit(1)
    from cloud.cli import main as cli

    cli()
