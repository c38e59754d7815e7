"""The local stack's table: dynalite, which speaks DynamoDB's API and keeps its data in LevelDB.

The same boto3 code that talks to DynamoDB talks to it; unlike moto's server it keeps every
item through a restart or a SIGKILL, and answers a Query from an index instead of a walk over
the whole table. It is an npm package, pinned by `cloud/local/dynalite/package-lock.json`
and installed by `npm ci` on first use (or by `make setup`) into a cache folder named after
the lock file's hash, so an upgrade of the lock file installs afresh and never in place.

dynalite 3.2 (LevelDB through leveldown's prebuilt N-API binaries) runs on the Node.js 18
that Debian 12 ships and on newer ones; dynalite 4 declares Node.js >= 20.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cloud.errors import LocalStackError
from cloud.npm import NpmPackage

PACKAGE = NpmPackage(
    Path(__file__).with_name("dynalite"),
    "table-engine",
    "the local table engine",
    files=("package.json", "package-lock.json", "serve.js"),
)
#: Node.js versions dynalite 3.2's dependencies are known to run on here (18: Debian 12).
MIN_NODE_MAJOR = 18


def node_binary() -> str:
    """`node` ($NODE_BIN, else on PATH), checked to be new enough."""
    chosen = os.environ.get("NODE_BIN") or shutil.which("node") or shutil.which("nodejs")
    if not chosen or not os.access(chosen, os.X_OK):
        raise LocalStackError(
            "Node.js is not installed and the local table engine (dynalite) needs it: run "
            "`sudo apt-get install nodejs npm` (Debian, Ubuntu, Raspberry Pi OS) or "
            "`brew install node`"
        )
    try:
        version = subprocess.run(
            [chosen, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise LocalStackError(f"{chosen} --version failed ({exc}); is Node.js installed?") from None
    if major < MIN_NODE_MAJOR:
        raise LocalStackError(
            f"Node.js {version} is too old for the local table engine; it needs "
            f"{MIN_NODE_MAJOR} or newer"
        )
    return chosen


def ensure_installed() -> Path:
    """The folder holding serve.js and its node_modules, installing them when missing."""
    node_binary()
    return PACKAGE.ensure_installed()


def command(port: int, data_dir: Path) -> list[str]:
    """The table engine's command line: dynalite on 127.0.0.1:port, LevelDB in data_dir."""
    folder = ensure_installed()
    return [node_binary(), str(folder / "serve.js"), str(port), str(data_dir)]


if __name__ == "__main__":  # `python -m cloud.local.table_engine`: install ahead of time
    print(ensure_installed())
