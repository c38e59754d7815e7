"""The device agent as a child process of a bench: its command line, its console script,
how it ended, and its peak RSS.

agent_publish.py, agent_footprint.py and receipts.py run it with these; a bench imports this
inside its `harness.venv_imports` block, since it needs psutil.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import psutil
from broker import HOST
from harness import BenchError

from cloud.identity.local_ca import Identity

AGENT_ID = "bench-agent"


def find_agent_exe() -> Path:
    """The console script of this venv, not whatever `device-agent` is first on PATH."""
    exe = Path(sys.executable).parent / "device-agent"
    if not exe.is_file():
        raise BenchError(f"{exe} not found: install the project with `make setup`")
    return exe


def agent_argv(exe: Path, port: int, identity: Identity, outbox: Path, n: int) -> list[str]:
    """`device-agent` publishing n readings as fast as it can to the broker on `port`."""
    return [
        str(exe),
        "--id", AGENT_ID,
        "--broker", f"mqtts://{HOST}:{port}",
        "--cert", str(identity.cert),
        "--key", str(identity.key),
        "--ca", str(identity.ca),
        "--count", str(n),
        "--interval", "0",
        # Stamp at once: this machine runs no NTP, so its clock never reports synchronised.
        "--clock-wait", "0",
        "--outbox", str(outbox),
        "-q",
    ]  # fmt: skip


def exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class PeakRss:
    """The peak RSS of one child process, sampled every 20 ms on a thread.

    Not getrusage/wait4: on Linux a child's ru_maxrss starts from the RSS of the process
    that spawned it (exec keeps the old mm's high-water mark), so a bench that has grown to
    70 MiB would report 70 MiB for any child. /proc/PID/status VmHWM is the kernel's
    high-water mark of the exec'd program alone, and being a maximum it makes the 20 ms
    sampling miss nothing but growth in the child's last 20 ms. Without /proc (macOS),
    psutil's current RSS is sampled instead, which can miss short peaks.
    """

    INTERVAL = 0.02

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            self._sample_hwm(status)
        else:
            self._sample_psutil()

    def _sample_hwm(self, status: Path) -> None:
        try:
            # Opened once: the open file stays bound to this child even if its pid is
            # reused after it is reaped (reads then fail instead of showing another process).
            with status.open("rb") as fh:
                while not self._stop.is_set():
                    fh.seek(0)
                    for line in fh.read().splitlines():
                        if line.startswith(b"VmHWM:"):  # absent once the child is a zombie
                            kib = int(line.split()[1])
                            self.peak_bytes = max(self.peak_bytes, kib * 1024)
                    self._stop.wait(self.INTERVAL)
        except OSError:
            pass  # the child is gone

    def _sample_psutil(self) -> None:
        try:
            child = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.peak_bytes = max(self.peak_bytes, child.memory_info().rss)
                self._stop.wait(self.INTERVAL)
        except psutil.Error:
            pass  # the child is gone
