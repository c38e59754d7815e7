"""npm packages the cloud side runs or serves, each pinned by a lock file in the repository
and installed by `npm ci` on first use (or by `make setup`) into a cache folder named after
the files' hash: an upgrade of a lock file installs afresh, never in place, and nothing is
fetched at run time once installed.

Two use it: the local table engine (cloud.local.table_engine, dynalite on Node.js) and the
dashboard page's charting library (cloud.dashboard.assets, served from this machine).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloud.errors import LocalStackError, PipelineError


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sensor-pipeline"


@dataclass(frozen=True)
class NpmPackage:
    """A folder of the repository holding package.json, package-lock.json (and `files`)."""

    folder: Path
    #: The cache folder's name before its hash (table-engine, dashboard-assets).
    name: str
    #: What it is, for messages: "the local table engine".
    what: str
    files: tuple[str, ...] = ("package.json", "package-lock.json")
    #: The error class its failures are reported as.
    error: type[PipelineError] = LocalStackError

    def install_dir(self) -> Path:
        """Where this lock file's packages live: one folder per lock file content."""
        digest = hashlib.sha256()
        for name in self.files:
            digest.update((self.folder / name).read_bytes())
        return _cache_root() / f"{self.name}-{digest.hexdigest()[:12]}"

    def ensure_installed(self) -> Path:
        """The installed folder (its files and node_modules), installing it when missing."""
        target = self.install_dir()
        if (target / ".installed").exists():
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise self.error(
                f"npm is not installed and {self.what} is installed with it: run "
                "`sudo apt-get install nodejs npm` (Debian, Ubuntu, Raspberry Pi OS) or "
                "`brew install node`"
            )
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in self.files:
            shutil.copy2(self.folder / name, staging / name)
        proc = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise self.error(f"installing {self.what} (npm ci) failed: {last}")
        (staging / ".installed").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target
