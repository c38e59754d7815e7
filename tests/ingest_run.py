"""`cloud ingest` on a thread of the test process: start it, watch its counters, stop it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cloud.ingest.service import Ingest
from cloud.ingest.settings import IngestSettings, IngestStats


@dataclass
class Running:
    """An Ingest running on a thread of the test process."""

    ingest: Ingest
    stop: threading.Event = field(default_factory=threading.Event)
    outcome: IngestStats | BaseException | None = None
    wait_timeout: float = 30

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="test-ingest", daemon=True)

    def _run(self) -> None:
        try:
            self.outcome = self.ingest.run(self.stop)
        except BaseException as exc:  # handed to the test by finish()/wait()
            self.outcome = exc

    @property
    def stats(self) -> IngestStats:
        return self.ingest.stats

    def wait(self, predicate: Callable[[IngestStats], bool], timeout: float | None = None) -> None:
        """Poll the bridge's own counters (cheap, unlike scanning moto's table)."""
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        while not predicate(self.ingest.stats):
            if not self.thread.is_alive():
                raise AssertionError(f"ingest stopped early: {self.outcome!r}")
            assert time.monotonic() < deadline, f"timed out; {self.ingest.stats.line()}"
            time.sleep(0.02)

    def finish(self, timeout: float = 30) -> IngestStats:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "ingest did not stop"
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


def ingest_runner(
    kind: type[Running] = Running, wait_timeout: float = 30
) -> Iterator[Callable[..., Running]]:
    """The body of a `run_ingest` fixture: start ingest in-process, by default waiting for
    its subscription before the test publishes; every one started is stopped after."""
    started: list[Running] = []

    def start(settings: IngestSettings, wait_ready: bool = True, **kwargs: Any) -> Running:
        running = kind(Ingest(settings, **kwargs), wait_timeout=wait_timeout)
        started.append(running)
        running.thread.start()
        if wait_ready:
            deadline = time.monotonic() + 20
            while not running.ingest.ready.wait(0.05):
                assert running.thread.is_alive(), f"ingest stopped: {running.outcome!r}"
                assert time.monotonic() < deadline, "ingest never subscribed"
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(20)
