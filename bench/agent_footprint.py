"""What the agent costs a Raspberry Pi: the plain install's size, start-up time, peak RSS,
and the modules it imports at start.

The plain install (`pip install .`, no extras: what a Pi gets) is made in a fresh venv and
measured side by side with this venv's (the full `[dev]` install, cloud half included),
in alternating rounds against the same Mosquitto:
- size: the venv's site-packages, without pip and setuptools (every venv has those);
- start-up: `device-agent --help` from spawn to exit (Python plus the agent's imports);
- a first reading: `--count 1` from spawn to exit (start-up, TLS connect, publish, PUBACK);
- peak RSS: `--count 1000 --interval 0`, the kernel's high-water mark of the process.
Then the modules the plain agent imported (`python -X importtime`), by top-level package.

    .venv/bin/python bench/agent_footprint.py [--rounds R]

Needs the package index for the fresh venv (paho-mqtt, click, setuptools), as `make setup`
does. Exit 0 once measured, 1 when it could not be set up or a run failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    from agent_child import AGENT_ID, PeakRss, agent_argv
    from broker import setting_up, start_broker, start_subscriber


REPO = Path(__file__).resolve().parent.parent
#: Every venv has these; they are not the project's.
VENV_TOOLS = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")


@dataclass(frozen=True)
class Install:
    label: str
    bin: Path  # the venv's bin folder

    @property
    def agent(self) -> Path:
        return self.bin / "device-agent"

    @property
    def site_packages(self) -> Path:
        (found,) = (self.bin.parent / "lib").glob("python3*/site-packages")
        return found


def plain_install(root: Path) -> Install:
    """A fresh venv with `pip install .` of a copy of the project, as on a Pi."""
    source = root / "source"
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for name in ("device", "cloud"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = root / "plain"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode != 0:
        raise BenchError(f"pip install . failed: {pip.stderr.strip().splitlines()[-1:]}")
    return Install("plain", venv / "bin")


def size_mib(install: Install) -> float:
    total = 0
    for entry in install.site_packages.iterdir():
        if entry.name.split("-")[0] in VENV_TOOLS or entry.name in VENV_TOOLS:
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total / 2**20


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds from spawn to exit, and the peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    with PeakRss(proc.pid) as rss:
        _, err = proc.communicate(timeout=120)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:2])} exited {proc.returncode}: {err.strip()[-300:]}")
    return wall, rss.peak_bytes / 2**20


#: Run in the venv's Python: the agent's own entry point, writing sys.modules at exit.
_LIST_MODULES = """
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from device.cli import main
main()
"""


def imported_modules(install: Install, argv: list[str], cwd: Path) -> list[str]:
    """Every module loaded in the agent's process by the time it exits."""
    out = cwd / "modules.txt"
    run = subprocess.run(
        [str(install.bin / "python"), "-c", _LIST_MODULES, str(out), *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0:
        raise BenchError(f"device-agent exited {run.returncode}: {run.stderr.strip()[-300:]}")
    return out.read_text().split()


def measure(rounds: int) -> None:
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-agent-footprint-")
        with setting_up():
            broker = start_broker(root, stack)
            agent = broker.identity(AGENT_ID)
            start_subscriber(broker.port, broker.identity("ingest"), stack)
        port = broker.port
        print("making the plain install (pip install . in a fresh venv) ...", flush=True)
        installs = [plain_install(root), Install("full", Path(sys.executable).parent)]
        figures: dict[str, dict[str, list[float]]] = {
            i.label: collections.defaultdict(list) for i in installs
        }
        for r in range(rounds):
            for install in installs if r % 2 == 0 else reversed(installs):
                f = figures[install.label]
                outbox = root / f"{install.label}-{r}"
                f["help"].append(timed([str(install.agent), "--help"], root)[0])
                f["first"].append(
                    timed(agent_argv(install.agent, port, agent, outbox / "1", 1), root)[0]
                )
                wall, rss = timed(
                    agent_argv(install.agent, port, agent, outbox / "1000", 1000), root
                )
                f["rss"].append(rss)
                f["wall1000"].append(wall)

        print(f"\n{rounds} rounds, medians; plain = what a Pi installs, full = this venv\n")
        print(f"{'':<34}{'plain':>10}{'full':>10}{'plain/full':>12}")
        rows = [
            ("installed size (MiB)", size_mib(installs[0]), size_mib(installs[1])),
        ] + [
            (
                name,
                statistics.median(figures["plain"][key]),
                statistics.median(figures["full"][key]),
            )
            for name, key in (
                ("start-up: --help (s)", "help"),
                ("spawn to first PUBACK, exit (s)", "first"),
                ("1,000 readings, wall (s)", "wall1000"),
                ("peak RSS, 1,000 readings (MiB)", "rss"),
            )
        ]
        for name, plain, full in rows:
            print(f"{name:<34}{plain:>10.2f}{full:>10.2f}{plain / full:>12.2f}")

        modules = imported_modules(
            installs[0], agent_argv(installs[0].agent, port, agent, root / "imports", 1), root
        )
        by_package = collections.Counter(m.split(".")[0] for m in modules)
        stdlib = sum(n for name, n in by_package.items() if name in sys.stdlib_module_names)
        others = sorted(
            (name, n) for name, n in by_package.items() if name not in sys.stdlib_module_names
        )
        print(f"\nmodules loaded by the plain agent for one reading: {len(modules)}")
        print(f"  standard library: {stdlib} modules")
        print("  others: " + ", ".join(f"{name} ({n})" for name, n in others))
        print("  the agent's own: " + ", ".join(m for m in modules if m.startswith("device.")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds [5]")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    try:
        measure(args.rounds)
    except subprocess.SubprocessError as exc:  # a venv or pip that failed, a child stuck
        raise BenchError(str(exc)) from exc
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
