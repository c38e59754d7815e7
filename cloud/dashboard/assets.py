"""The page's charting library, uPlot: an npm package pinned by web/package-lock.json,
installed into the cache on first use (cloud.npm) and served by the dashboard itself, so the
page loads nothing from the internet."""

from __future__ import annotations

from pathlib import Path

from cloud.errors import ConfigError
from cloud.npm import NpmPackage

PACKAGE = NpmPackage(
    Path(__file__).with_name("web"), "dashboard-assets", "the dashboard's charts", error=ConfigError
)
STATIC_DIR = Path(__file__).with_name("static")


def uplot_dir() -> Path:
    """uPlot's dist folder (uPlot.iife.min.js, uPlot.min.css)."""
    folder = PACKAGE.ensure_installed() / "node_modules" / "uplot" / "dist"
    if not (folder / "uPlot.iife.min.js").is_file():
        raise ConfigError(f"{folder} has no uPlot.iife.min.js: delete {folder.parents[2]}")
    return folder


if __name__ == "__main__":  # `python -m cloud.dashboard.assets`: install ahead of time
    print(uplot_dir())
