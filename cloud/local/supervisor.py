"""Keeps the local stack's parts running: starts each, and restarts one that dies.

`cloud local up` starts this as a detached process (`python -m cloud.local.supervisor ROOT`);
it runs the table engine, the broker and ingest as its children, in that order, and writes
what each is doing to `var/local/supervisor.json` (the only writer of that file). A part that
exits is started again after a capped, doubling delay (0.5 s up to 10 s; back to 0.5 s once
it has run for 30 s), and each exit and restart is logged.

Signals: SIGTERM or SIGINT stops the parts (ingest first, so it acknowledges what it wrote;
the table engine last) and then the supervisor; SIGHUP starts at once any part waiting out
its delay; SIGUSR1 restarts the broker (to load a new revocation list). The children get
SIGTERM from the kernel if the supervisor itself dies (PR_SET_PDEATHSIG), so no part is left
running unwatched: `cloud local up` then starts the whole stack again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("cloud.local.supervisor")

RESTART_INITIAL = 0.5
RESTART_CAP = 10.0
#: A part that ran this long before it died is restarted after the shortest delay again.
STABLE_AFTER = 30.0
STOP_TIMEOUT = 20.0
TICK = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass
class PartSpec:
    """How to run one part. `argv` and `prepare` are called before every start."""

    name: str
    argv: Callable[[], list[str]]
    log_path: Path
    ready: Callable[[], bool]
    needle: str  # a string its command line contains, to tell it from a reused pid
    after: tuple[str, ...] = ()  # parts that must be running before this one starts
    prepare: Callable[[], None] = lambda: None
    on_ready: Callable[[], None] = lambda: None
    cwd: Path | None = None


@dataclass
class PartStatus:
    """What `cloud local status` shows of a part."""

    name: str
    state: str = "waiting"  # waiting, starting, running, restarting, stopped
    pid: int | None = None
    started_at: float | None = None  # epoch seconds of the current process's start
    restarts: int = 0
    last_exit: str | None = None
    log: str = ""


@dataclass
class SupervisorStatus:
    pid: int
    started_at: float
    parts: dict[str, PartStatus] = field(default_factory=dict)
    stopping: bool = False

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SupervisorStatus | None:
        try:
            raw = json.loads(path.read_text())
            parts = {name: PartStatus(**p) for name, p in raw.pop("parts").items()}
            return cls(parts=parts, **raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # written by another version, or damaged: treated as not running


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The supervisor may have died between fork and prctl: then nobody would watch us.
    if os.getppid() == 1:
        os._exit(1)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class _Part:
    def __init__(self, spec: PartSpec) -> None:
        self.spec = spec
        self.status = PartStatus(spec.name, log=str(spec.log_path))
        self.proc: subprocess.Popen[bytes] | None = None
        self.next_start = 0.0
        self.failures = 0  # consecutive short runs, for the delay

    def start(self) -> None:
        self.spec.prepare()
        argv = self.spec.argv()
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.spec.cwd,
                preexec_fn=_die_with_parent,
            )
        self.status.pid = self.proc.pid
        self.status.started_at = time.time()
        self.status.state = "starting"
        log.info("%s started (pid %d)", self.spec.name, self.proc.pid)

    def reap(self) -> bool:
        """True if the process has exited (and schedules its restart)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        ran = time.time() - (self.status.started_at or time.time())
        self.failures = 0 if ran >= STABLE_AFTER else self.failures + 1
        delay = min(RESTART_CAP, RESTART_INITIAL * 2 ** max(0, self.failures - 1))
        self.status.last_exit = f"{_describe_exit(code)} after {ran:.1f}s"
        self.status.state = "restarting"
        self.status.pid = None
        self.status.started_at = None
        self.status.restarts += 1
        self.next_start = time.monotonic() + delay
        self.proc = None
        log.warning(
            "%s %s; restart %d in %.1fs (log: %s)",
            self.spec.name,
            self.status.last_exit,
            self.status.restarts,
            delay,
            self.spec.log_path,
        )
        return True

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.spec.name, STOP_TIMEOUT)
                self.proc.kill()
                self.proc.wait()
        log.info("%s stopped (%s)", self.spec.name, _describe_exit(self.proc.returncode))
        self.proc = None
        self.status.pid = None
        self.status.started_at = None


class Supervisor:
    def __init__(self, specs: list[PartSpec], status_path: Path) -> None:
        self.parts = [_Part(s) for s in specs]
        self.status_path = status_path
        self.status = SupervisorStatus(
            os.getpid(), time.time(), {p.spec.name: p.status for p in self.parts}
        )
        self._stop = False
        self._kick = False
        self._restart: set[str] = set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop = True
        elif signum == signal.SIGHUP:
            self._kick = True
        elif signum == signal.SIGUSR1:
            self._restart.add("mosquitto")

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        log.info("supervisor started (pid %d)", os.getpid())
        self.status.save(self.status_path)
        try:
            while not self._stop:
                if self._tick():
                    self.status.save(self.status_path)
                time.sleep(TICK)
        finally:
            self.status.stopping = True
            self.status.save(self.status_path)
            for part in reversed(self.parts):
                part.stop()
                part.status.state = "stopped"
                self.status.save(self.status_path)
            log.info("supervisor stopped")

    def _tick(self) -> bool:
        """One pass over the parts; True if anything changed."""
        changed = False
        now = time.monotonic()
        if self._kick:
            self._kick = False
            for part in self.parts:
                part.next_start = min(part.next_start, now)
                part.failures = 0
        states = {p.spec.name: p.status.state for p in self.parts}
        for part in self.parts:
            name = part.spec.name
            if name in self._restart:
                self._restart.discard(name)
                if part.proc is not None:
                    log.info("%s: restarting on request", name)
                    part.stop()
                    part.next_start = now
                    changed = True
            if part.reap():
                changed = True
            elif part.proc is None:
                deps_up = all(states.get(d) == "running" for d in part.spec.after)
                if now >= part.next_start and deps_up:
                    try:
                        part.start()
                    except Exception as exc:  # a missing binary, a bad config: try again later
                        part.failures += 1
                        part.next_start = now + RESTART_CAP
                        part.status.state = "restarting"
                        part.status.last_exit = f"could not start: {exc}"
                        log.error("%s could not start: %s", name, exc)
                    changed = True
            elif part.status.state == "starting" and part.spec.ready():
                try:
                    part.spec.on_ready()
                except Exception as exc:  # e.g. the table engine not answering yet
                    log.warning("%s: not ready yet (%s)", name, exc)
                else:
                    part.status.state = "running"
                    log.info("%s running (pid %s)", name, part.status.pid)
                    changed = True
            states[name] = part.status.state
        return changed


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from cloud.local.parts import part_specs
    from cloud.local.state import StackState, supervisor_status_path

    root = Path(argv[0])
    state = StackState.load(root)
    if state is None:
        log.error("no stack state in %s; start the stack with `cloud local up`", root)
        return 1
    Supervisor(part_specs(state), supervisor_status_path(root)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
